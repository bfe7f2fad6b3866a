"""Caption files: llm_gen's JSONL output and the packaged LMPT caption JSON."""

import json
import re
from pathlib import Path

from kdpvlpa.utils.files import read_text

MAX_LISTED = 5
_TAIL_TAG = re.compile(r"<\s*/?\s*tail\s*>", re.IGNORECASE)
_SPACES = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])")
REQUIRED_JSONL_KEYS = ("image_id", "caption")


class CaptionFileError(ValueError):
    """A caption file is missing, malformed or does not cover the split."""


def strip_tail_tags(text):
    """Remove STAG's `<tail>` / `</tail>` tags, keeping the words inside.

    Args:
        text: str.

    Returns:
        str with the tags removed and whitespace collapsed.

    Example:
    >>> strip_tail_tags("A <tail>cow</tail> grazes near a  person.")
    'A cow grazes near a person.'
    """
    text = _TAIL_TAG.sub("", text)  # "<tail>cow</tail>s" reads "cows"
    text = _SPACES.sub(" ", text).strip()
    return _SPACE_BEFORE_PUNCT.sub(r"\1", text)


def _key(image_id):
    # VOC ids are str, COCO ids int; llm_gen may write either.
    return str(image_id).strip()


def _first_few(items):
    shown = ", ".join(str(i) for i in items[:MAX_LISTED])
    more = len(items) - MAX_LISTED
    return shown + (f" (and {more} more)" if more > 0 else "")


def _read_lmpt_json(path, data):
    for key in ("image_ids", "captions"):
        if key not in data:
            raise CaptionFileError(
                f"Caption file {path} is a JSON object without the key {key!r} "
                f"(keys found: {', '.join(sorted(data))}). Expected either "
                "the JSON form with 'image_ids' and 'captions' or JSON Lines "
                "with 'image_id' and 'caption' on every line."
            )
    ids, captions = data["image_ids"], data["captions"]
    if not isinstance(ids, list) or not isinstance(captions, list):
        raise CaptionFileError(
            f"Caption file {path}: 'image_ids' and 'captions' must be lists."
        )
    if len(ids) != len(captions):
        raise CaptionFileError(
            f"Caption file {path}: {len(ids)} image_ids but {len(captions)} "
            "captions."
        )
    return [
        (i + 1, image_id, caption)
        for i, (image_id, caption) in enumerate(zip(ids, captions))
    ]


def _read_jsonl(path, text):
    records = []
    lines = text.split("\n")
    torn_tail = not text.endswith("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            message = f"Caption file {path}, line {number} is not valid JSON ({error})."
            if number == len(lines) and torn_tail:
                message += (
                    " It is the last line and has no newline: the writer was "
                    "probably interrupted. Rerun generate-captions with the "
                    "same output file to repair it."
                )
            raise CaptionFileError(message) from None
        if not isinstance(record, dict):
            raise CaptionFileError(
                f"Caption file {path}, line {number}: expected a JSON object, "
                f"got {type(record).__name__}."
            )
        absent = [k for k in REQUIRED_JSONL_KEYS if k not in record]
        if absent:
            raise CaptionFileError(
                f"Caption file {path}, line {number}: missing key(s) "
                f"{', '.join(absent)} (keys found: {', '.join(sorted(record))})."
            )
        records.append((number, record["image_id"], record["caption"]))
    return records


def read_caption_records(path):
    """All `(line, image_id, caption)` records of a caption file.

    Args:
        path: str or `Path`. JSONL (llm_gen) or the packaged JSON format.

    Returns:
        list of `(int, id, str)`; `line` is the line number for JSONL and the
        1-based position for the JSON format.

    Example:
    >>> read_caption_records("captions.jsonl")[0]  # doctest: +SKIP
    (1, '2008_000023', 'A bottle of beer ...')
    """
    path = Path(path)
    if not path.is_file():
        raise CaptionFileError(f"Caption file not found: {path}")
    text = read_text(path, "Caption file", CaptionFileError)
    if not text.strip():
        raise CaptionFileError(f"Caption file {path} is empty.")
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, dict) and "image_id" not in whole:
        records = _read_lmpt_json(path, whole)
    else:
        records = _read_jsonl(path, text)
    for where, image_id, caption in records:
        if not isinstance(caption, str):
            raise CaptionFileError(
                f"Caption file {path}, entry {where} (image {image_id!r}): the "
                f"caption must be a string, got {type(caption).__name__}."
            )
    return records


def load_caption_file(path, image_ids):
    """Captions for `image_ids`, in that order, from a caption file.

    Reads (a) llm_gen's JSON Lines, one object a line with `image_id` and
    `caption` (tags already stripped; `raw_caption` and `status` are kept
    in the file but not needed here), and (b) the JSON form of the packaged
    `*_captions_lmpt.json` (`image_ids`, `captions`). Ids are compared as
    strings, so `554625` and `"554625"` match. Extra images in the file are
    ignored. Leftover `<tail>` tags are stripped; other captions are
    returned unchanged.

    Args:
        path: str or `Path`. The caption file.
        image_ids: sequence. The split's image ids.

    Returns:
        list of str, one caption per image id.

    Raises:
        CaptionFileError: missing file, a line that is not JSON (with its
            number), missing keys, duplicate image ids, or split images
            absent from the file (how many, the first few ids).

    Example:
    >>> captions = load_caption_file("runs/voc/captions.jsonl",
    ...                              train.image_ids)  # doctest: +SKIP
    """
    path = Path(path)
    records = read_caption_records(path)
    by_id = {}
    for where, image_id, caption in records:
        key = _key(image_id)
        if key in by_id:
            raise CaptionFileError(
                f"Caption file {path}: image id {image_id!r} appears more than "
                f"once (entries {by_id[key][0]} and {where}). Each image needs "
                "exactly one caption."
            )
        by_id[key] = (where, caption)
    absent = [i for i in image_ids if _key(i) not in by_id]
    if absent:
        raise CaptionFileError(
            f"Caption file {path} has no caption for {len(absent)} of "
            f"{len(image_ids)} images of the split. First missing ids: "
            f"{_first_few(absent)}."
        )
    captions = [by_id[_key(i)][1] for i in image_ids]
    return [strip_tail_tags(c) if _TAIL_TAG.search(c) else c for c in captions]

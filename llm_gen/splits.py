"""Reading the training split that captions are generated for.

The split is a train JSON in the format of `kdpvlpa/data/splits/*_train.json`
(keys `dataset`, `class_names`, `image_ids`, `labels`, `class_freq`), either one
packaged with kdpvlpa (`voc_lt`, `coco_lt`) or a file given by path. Original
captions come from a JSON with keys `image_ids` and `captions`, in the format of
`*_train_captions_lmpt.json`. Only the standard library is used here.
"""

import dataclasses
import functools
import hashlib
import importlib.resources
import json
import os

PACKAGED_DATASETS = ("voc_lt", "coco_lt")

# Training frequency below which a class is a tail class (METHOD.md, DBL).
TAIL_THRESHOLD = 20

# VOC writes some class names as one word; the prompt and the captions use the
# natural spelling.
NATURAL_NAMES = {
    "diningtable": "dining table",
    "pottedplant": "potted plant",
    "tvmonitor": "tv monitor",
}


class SplitError(ValueError):
    """Raised when a split or caption file is missing or malformed."""


@dataclasses.dataclass(frozen=True)
class ImageItem:
    """One image to describe.

    Args:
        image_id: str or int. The id exactly as in the split's `image_ids`.
        labels: tuple of str. Natural class names of the image, split order.
        tail_labels: tuple of str. The labels that are tail classes.
        original_caption: str or None. The image's original caption.
    """

    image_id: object
    labels: tuple
    tail_labels: tuple
    original_caption: object = None


@dataclasses.dataclass(frozen=True)
class Split:
    """A training split: its classes, tail set and images.

    Args:
        dataset: str. The dataset name stored in every record: the packaged
            key (`voc_lt`) or the split file's `dataset` field.
        class_names: tuple of str. Natural class names, in class-index order.
        class_freq: tuple of int. Training images per class.
        tail_classes: tuple of str. Class names with `class_freq < 20`.
        items: tuple of `ImageItem`, in split order.
        source: str. Where the split was read from (for messages).
    """

    dataset: str
    class_names: tuple
    class_freq: tuple
    tail_classes: tuple
    items: tuple
    source: str

    @property
    def image_ids(self):
        return [item.image_id for item in self.items]

    @functools.cached_property
    def original_captions_digest(self):
        """A short digest of every image's original caption, or `"none"`.

        LLM records carry it, so that files whose prompts were made from
        other original captions (another `--original-captions` file, or
        `--no-original-captions`) are not resumed or merged together.
        """
        if all(item.original_caption is None for item in self.items):
            return "none"
        pairs = [[str(item.image_id), item.original_caption] for item in self.items]
        payload = json.dumps(pairs, ensure_ascii=False).encode("utf-8")
        return "sha256:" + hashlib.sha256(payload).hexdigest()[:16]


def natural_class_name(name):
    """Return the spelling of a class name used in prompts and captions."""
    return NATURAL_NAMES.get(name, name.replace("_", " "))


def _read_json(path, what):
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except FileNotFoundError:
        raise SplitError(f"{what} not found: {path}") from None
    except UnicodeDecodeError as e:
        raise SplitError(
            f"{what} {path} is not UTF-8 text ({e.reason} at byte {e.start})."
        ) from None
    except json.JSONDecodeError as e:
        raise SplitError(f"{what} {path} is not valid JSON: {e}") from None


def _packaged(name):
    return importlib.resources.files("kdpvlpa.data") / "splits" / name


def packaged_split_path(dataset):
    if dataset not in PACKAGED_DATASETS:
        raise SplitError(
            f"Unknown dataset {dataset!r}; expected one of {PACKAGED_DATASETS} "
            "or a --split-file."
        )
    return _packaged(f"{dataset}_train.json")


def packaged_captions_path(dataset):
    return _packaged(f"{dataset}_train_captions_lmpt.json")


def read_original_captions(path, image_ids=None):
    """Read an original-caption file into a dict image id -> caption.

    Args:
        path: path-like. A JSON with lists `image_ids` and `captions`.
        image_ids: optional list. The split's ids; every caption id must be
            one of them.
    """
    data = _read_json(path, "Original caption file")
    if not isinstance(data, dict) or not isinstance(data.get("image_ids"), list):
        raise SplitError(
            f"Original caption file {path} must be a JSON object with lists "
            "'image_ids' and 'captions'."
        )
    ids, captions = data["image_ids"], data.get("captions")
    if not isinstance(captions, list) or len(captions) != len(ids):
        raise SplitError(
            f"Original caption file {path}: 'captions' must be a list as long "
            f"as 'image_ids' ({len(ids)}), got "
            f"{len(captions) if isinstance(captions, list) else type(captions).__name__}."
        )
    for i, caption in enumerate(captions):
        if caption is not None and not isinstance(caption, str):
            raise SplitError(
                f"Original caption file {path}: caption {i} is "
                f"{type(caption).__name__}, expected a string or null."
            )
    result = dict(zip(ids, captions))
    if len(result) != len(ids):
        raise SplitError(f"Original caption file {path} repeats image ids.")
    if image_ids is not None:
        known = set(image_ids)
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise SplitError(
                f"Original caption file {path} has {len(unknown)} image ids "
                f"that are not in the split, e.g. {unknown[:3]!r} (wrong file, "
                "or ids of the wrong type: VOC ids are strings, COCO ids ints)."
            )
    return result


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _check_split_types(data, source):
    def fail(key, expected):
        raise SplitError(f"Split file {source}: {key!r} must be {expected}.")

    names = data["class_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        fail("class_names", "a list of non-empty strings")
    ids = data["image_ids"]
    if not isinstance(ids, list) or not all(isinstance(i, str) or _is_int(i) for i in ids):
        fail("image_ids", "a list of strings or integers")
    labels = data["labels"]
    if not isinstance(labels, list) or not all(isinstance(row, list) for row in labels):
        fail("labels", "a list with one list of class indices per image")
    freq = data.get("class_freq")
    if freq is not None and (not isinstance(freq, list) or not all(
            _is_int(f) and f >= 0 for f in freq)):
        fail("class_freq", "a list of non-negative integers (training images per class)")


def load_split(dataset=None, split_file=None, original_captions=None,
               use_original_captions=True):
    """Load a training split with its tail set and original captions.

    Args:
        dataset: str or None. A packaged split, `"voc_lt"` or `"coco_lt"`.
        split_file: path-like or None. A train JSON in the packaged format;
            takes precedence over `dataset`.
        original_captions: path-like or None. A caption JSON; by default the
            packaged LMPT captions of a packaged dataset, none for a file.
        use_original_captions: bool. False leaves every original caption out.

    Returns:
        A `Split`.
    """
    if split_file is None and dataset is None:
        raise SplitError("Give a --dataset or a --split-file.")
    if split_file is not None:
        source = os.fspath(split_file)
        data = _read_json(split_file, "Split file")
    else:
        path = packaged_split_path(dataset)
        source = f"packaged {dataset}"
        data = json.loads(path.read_text(encoding="utf-8"))
        if original_captions is None and use_original_captions:
            original_captions = packaged_captions_path(dataset)

    if not isinstance(data, dict):
        raise SplitError(f"Split file {source} must hold a JSON object.")
    missing = [k for k in ("class_names", "image_ids", "labels") if k not in data]
    if missing:
        raise SplitError(f"Split file {source} lacks the key(s) {missing}.")
    if data.get("split", "train") != "train":
        # A test split's labels would make every class common: no tail tags.
        raise SplitError(
            f"Split file {source} is the {data['split']!r} split; captions are "
            "written for the training split only."
        )
    _check_split_types(data, source)
    raw_names = data["class_names"]
    ids, labels = data["image_ids"], data["labels"]
    if len(ids) != len(labels):
        raise SplitError(
            f"Split file {source}: {len(ids)} image_ids but {len(labels)} "
            "label lists."
        )
    if len(set(ids)) != len(ids):
        raise SplitError(f"Split file {source} repeats image ids.")
    num_classes = len(raw_names)
    for i, image_labels in enumerate(labels):
        if not all(_is_int(c) and 0 <= c < num_classes for c in image_labels):
            raise SplitError(
                f"Split file {source}: labels of image {ids[i]!r} must be class "
                f"indices in [0, {num_classes}), got {image_labels!r}."
            )
    class_freq = data.get("class_freq")
    if class_freq is None:
        class_freq = [0] * num_classes
        for image_labels in labels:
            for c in set(image_labels):
                class_freq[c] += 1
    if len(class_freq) != num_classes:
        raise SplitError(
            f"Split file {source}: class_freq has {len(class_freq)} entries for "
            f"{num_classes} classes."
        )

    names = tuple(natural_class_name(n) for n in raw_names)
    tail_index = {c for c in range(num_classes) if class_freq[c] < TAIL_THRESHOLD}
    captions = {}
    if original_captions is not None and use_original_captions:
        captions = read_original_captions(original_captions, ids)

    items = []
    for image_id, image_labels in zip(ids, labels):
        ordered = sorted(set(image_labels))
        items.append(
            ImageItem(
                image_id=image_id,
                labels=tuple(names[c] for c in ordered),
                tail_labels=tuple(names[c] for c in ordered if c in tail_index),
                original_caption=captions.get(image_id),
            )
        )
    return Split(
        # A packaged split is named by its key (`voc_lt`), so that `captions
        # merge` can find it again from the records.
        dataset=dataset if split_file is None else (
            data.get("dataset") or os.path.splitext(os.path.basename(source))[0]
        ),
        class_names=names,
        class_freq=tuple(int(f) for f in class_freq),
        tail_classes=tuple(names[c] for c in sorted(tail_index)),
        items=tuple(items),
        source=source,
    )

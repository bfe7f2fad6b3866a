"""Generating the caption file: shards, resume, batched attempts, fallback."""

import dataclasses
import os
import re
import zlib

from llm_gen.backends.base import (
    CaptionBackend,
    FailedAnswer,
    SamplingSettings,
    chat_template_digest,
)
from llm_gen.prompt import PROMPT_VERSION, build_messages
from llm_gen.records import (
    CaptionFileError,
    CaptionWriter,
    index_records,
    read_records,
    repair_torn_tail,
)
from llm_gen.template import TEMPLATE_VERSION, template_caption
from llm_gen.validate import strip_tags, validate, word_count

SCHEMA_VERSION = 1

# The `validation` setting: METHOD.md's rules, or those plus the strict extras
# (`validate(strict=True)`). Records written before the setting existed carry
# no key; they were validated with the strict rules.
VALIDATION_METHOD = "method"
VALIDATION_STRICT = "strict"

# Failed outputs are kept in the record for inspection, cut to this length.
_MAX_LOGGED_OUTPUT = 2000


@dataclasses.dataclass(frozen=True)
class Shard:
    """Part `index` of `count` (0-based): every `count`-th image of the split."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, spec):
        """Parse `"i/n"` with 0 <= i < n."""
        if spec is None:
            return cls()
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(spec))
        if not m:
            raise ValueError(
                f"Bad shard {spec!r}: expected 'i/n', e.g. '0/4' for the first of "
                "four shards."
            )
        index, count = int(m.group(1)), int(m.group(2))
        if count < 1 or not 0 <= index < count:
            raise ValueError(
                f"Bad shard {spec!r}: need 0 <= i < n (shards are numbered from 0)."
            )
        return cls(index, count)

    def select(self, items):
        return list(items)[self.index::self.count]

    def __str__(self):
        return f"{self.index}/{self.count}"


def image_seed(base_seed, image_id, attempt):
    """A seed for one image and attempt that does not depend on batching or
    sharding, so a rerun or another shard layout reproduces the same text."""
    return zlib.crc32(f"{base_seed}:{image_id!r}:{attempt}".encode("utf-8")) & 0x7FFFFFFF


def _base_record(split, item):
    record = {
        "image_id": item.image_id,
        "dataset": split.dataset,
        "labels": list(item.labels),
        "tail_labels": list(item.tail_labels),
        "original_caption": item.original_caption,
        # Which original captions the prompts were made from (all images'),
        # so that `captions merge` can refuse shards made from others.
        "original_captions": split.original_captions_digest,
    }
    return record


def _finish_record(record, raw, status, source, attempts, violations, log, backend,
                   shard, seed, strict):
    record.update(
        caption=strip_tags(raw),
        raw_caption=raw,
        status=status,
        source=source,
        attempts=attempts,
        violations=violations,
        word_count=word_count(strip_tags(raw)),
    )
    if log:
        record["failed_attempts"] = log
    record.update(backend.describe())
    record.update(
        prompt_version=PROMPT_VERSION if not backend.is_template else None,
        template_version=TEMPLATE_VERSION if source == "template" else None,
        validation=_validation_setting(backend.name, strict),
        sampling=None if backend.is_template else {
            **backend.sampling.as_dict(), "image_seed": seed,
        },
        shard=str(shard),
        schema_version=SCHEMA_VERSION,
    )
    return record


def load_existing(out_path, split, shard, settings=None):
    """Repair and read an existing output file for a resumed run.

    Args:
        settings: dict or None. `run_settings` of this run; every record
            already in the file must have been written with them.

    Returns:
        `(records, message)`: the finished records, and a repair message or
        None.
    """
    if not os.path.exists(out_path) or os.path.getsize(out_path) == 0:
        return [], None
    # Everything is checked before the file is touched: a file that is not
    # this run's (another tool's, another split's) is refused unchanged.
    records, _ = read_records(out_path, allow_torn_tail=True)
    by_id = index_records(records, out_path)
    split_ids = set(split.image_ids)
    foreign = [i for i in by_id if i not in split_ids]
    if foreign:
        raise CaptionFileError(
            f"{out_path} holds {len(foreign)} images that are not in the split "
            f"{split.source}, e.g. {foreign[:3]!r}; it belongs to another dataset. "
            "Give another --out."
        )
    # Records past a smaller --limit are fine; records of another shard are not.
    in_shard = {item.image_id for item in shard.select(split.items)}
    outside = [i for i in by_id if i not in in_shard]
    if outside:
        raise CaptionFileError(
            f"{out_path} holds {len(outside)} images outside shard {shard}, "
            f"e.g. {outside[:3]!r}; was it written with another --shard?"
        )
    datasets = {r.get("dataset") for r in records} - {None}
    if datasets and datasets != {split.dataset}:
        raise CaptionFileError(
            f"{out_path} was written for dataset(s) {sorted(datasets)}, not "
            f"{split.dataset!r}."
        )
    # The original caption is part of the prompt: another --original-captions
    # file, or --no-original-captions, would make other captions.
    originals = {item.image_id: item.original_caption for item in split.items}
    for image_id, record in by_id.items():
        if (record.get("backend") != "template"  # the template reads no caption
                and "original_caption" in record
                and record["original_caption"] != originals[image_id]):
            raise CaptionFileError(
                f"{out_path} was written with the original caption "
                f"{record['original_caption']!r} for image {image_id!r}, but this run "
                f"gives {originals[image_id]!r} (--original-captions, "
                "--no-original-captions). Resuming would mix captions made from "
                "different prompts in one file: give another --out, or rerun with "
                "the file's original captions."
            )
    if settings is not None:
        check_settings(out_path, records, settings)
    return records, repair_torn_tail(out_path)


def _validation_setting(backend_name, strict):
    """The `validation` setting of a run: None for the template backend, whose
    captions are valid under both rule sets."""
    if backend_name == "template":
        return None
    return VALIDATION_STRICT if strict else VALIDATION_METHOD


def run_settings(backend, model=None, sampling=None, strict_validation=False,
                 chat_template=None):
    """The settings that decide what a caption says, compared on resume.

    Args:
        backend: a `CaptionBackend`, or a backend name.
        model: str or None. With a name: the `--model` given; None when the
            backend resolves it itself (openai), which then goes unchecked
            until the backend is built.
        sampling: `SamplingSettings` or None. With a name.
        strict_validation: bool. Whether answers are checked with
            `validate(strict=True)`.
        chat_template: str or None. With a name: the `--chat-template` text
            (None: the model's own).

    Returns:
        A dict with `backend`, `model`, `prompt_version`, `sampling`,
        `validation` (`"method"` or `"strict"`; None for the template
        backend) and `chat_template` (`chat_template_digest`).
    """
    if isinstance(backend, CaptionBackend):
        described = backend.describe()
        name, model, sampling = backend.name, described["model"], backend.sampling
        template = described.get("chat_template")
    else:
        name, template = backend, chat_template_digest(chat_template)
    validation = _validation_setting(name, strict_validation)
    if name == "template":
        return {"backend": name, "model": TEMPLATE_VERSION, "prompt_version": None,
                "sampling": None, "validation": validation, "chat_template": None}
    return {"backend": name, "model": model, "prompt_version": PROMPT_VERSION,
            "sampling": (sampling or SamplingSettings()).as_dict(),
            "validation": validation, "chat_template": template}


def record_settings(record):
    """The `run_settings` a record was written with.

    A record without a `validation` key predates the setting: an LLM
    backend's was validated with the strict rules.
    """
    sampling = record.get("sampling")
    if isinstance(sampling, dict):
        # Each image has its own seed, derived from the base seed kept here.
        sampling = {k: v for k, v in sampling.items() if k != "image_seed"}
    if "validation" in record:
        validation = record["validation"]
    else:
        validation = _validation_setting(record.get("backend"), strict=True)
    return {"backend": record.get("backend"), "model": record.get("model"),
            "prompt_version": record.get("prompt_version"), "sampling": sampling,
            "validation": validation, "chat_template": record.get("chat_template"),
            "original_captions": record.get("original_captions")}


def _model_key(model):
    # The same weights may sit at another path on another machine (or be
    # spelled `./models/x/`): models are compared by their folder's name.
    if not isinstance(model, str):
        return model
    return os.path.basename(os.path.normpath(model.replace("\\", "/")))


def differing_setting(found, wanted):
    """The first key whose value differs between two `run_settings`, or None.

    A `model` of None in `wanted` is not compared; models are compared by
    their last path component. `original_captions` is compared only when
    both records have it (records written before it existed lack it; a
    resumed run compares each image's original caption instead).
    """
    for key, value in wanted.items():
        if key == "model":
            if value is not None and _model_key(found[key]) != _model_key(value):
                return key
        elif key == "original_captions":
            if None not in (value, found.get(key)) and found[key] != value:
                return key
        elif found[key] != value:
            return key
    return None


def check_settings(out_path, records, settings):
    """Refuse to add records written with other settings to a file.

    A resumed file would otherwise mix, say, template captions with an LLM's,
    two models', or captions checked with other validation rules, without a
    word. The template version of fallback records is not compared: only the
    template backend's own.
    """
    for record in records:
        found = record_settings(record)
        key = differing_setting(found, settings)
        if key is not None:
            hint = (" (--strict-validation gives 'strict'; records written "
                    "before the setting existed read as 'strict')"
                    if key == "validation" else "")
            raise CaptionFileError(
                f"{out_path} was written with {key} {found[key]!r} (image "
                f"{record.get('image_id')!r}), but this run uses {key} "
                f"{settings[key]!r}. Resuming would mix captions made with "
                "different settings in one file: give another --out, or rerun "
                f"with the file's settings{hint}."
            )


def generate_captions(split, backend, out_path, *, max_attempts=3, batch_size=512,
                      shard=Shard(), limit=None, progress=None, log=None,
                      settings=None, strict_validation=False):
    """Write one caption record per image of a split, resuming a partial file.

    Args:
        split: `llm_gen.splits.Split`.
        backend: a `CaptionBackend`, or a callable that builds one; a callable
            is called only when some image is pending, and its backend is
            closed at the end.
        out_path: path-like. The JSONL file; records are appended.
        max_attempts: int. LLM attempts per image before the template is used.
        batch_size: int. Images whose prompts go to the backend together; the
            records of a batch are written as each becomes final. 0 sends all
            pending images at once.
        shard: `Shard`. The part of the split this run handles.
        limit: int or None. Only the first `limit` images of the shard.
        progress: callable(n) or None, called with the number of images
            newly finished: first with those an earlier run finished, then
            with 0 once the backend is ready, then per image (template) or
            per batch once its records are on disk (LLM backends).
        log: callable(str) or None, for messages about the file.
        settings: dict or None. With a backend factory: `run_settings` of the
            backend it will build, so that a file written with other settings
            is refused before the model loads, even when nothing is pending.
            The built backend's settings are checked in any case. Its
            `validation` is taken from `strict_validation`.
        strict_validation: bool. Check answers with `validate(strict=True)`:
            every mention of a tail class tagged, and no class the image lacks
            mentioned even untagged, beyond METHOD.md's rules. Stored in each
            record as `validation` (`"strict"` or `"method"`; None for the
            template backend).

    Returns:
        A dict: counts of `written`, `skipped` and each status.

    Raises:
        CaptionFileError: the file is malformed or not a caption file,
            belongs to another split or shard, or was written with other
            settings (backend, model, prompt version, sampling, validation,
            chat template) or other original captions.
    """
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}.")
    out_path = os.fspath(out_path)
    items = shard.select(split.items)
    if limit is not None:
        items = items[:limit]
    log = log or (lambda message: None)
    progress = progress or (lambda n: None)

    # Lock first, so that two runs never repair or append the same file.
    existed = os.path.exists(out_path)
    writer = CaptionWriter(out_path)
    try:
        owned = not isinstance(backend, CaptionBackend)
        if not owned:
            settings = run_settings(backend, strict_validation=strict_validation)
        elif settings is not None:
            settings = {**settings, "validation": _validation_setting(
                settings.get("backend"), strict_validation)}
        records, message = load_existing(out_path, split, shard, settings)
        done = {record["image_id"] for record in records}
        if message:
            log(f"{out_path}: {message}")
        pending = [item for item in items if item.image_id not in done]
        counts = {"written": 0, "skipped": len(items) - len(pending),
                  "valid": 0, "retried": 0, "fallback": 0}
        if counts["skipped"]:
            progress(counts["skipped"])

        def emit(record):
            writer.write(record)
            counts["written"] += 1
            counts[record["status"]] += 1

        if not pending:
            return counts
        if owned:
            # A factory: the model is loaded only when there is work to do.
            backend = backend()
        progress(0)  # the timed work starts now, after the model loaded
        try:
            if owned and done:
                # The model name an openai server reports is known only now.
                check_settings(out_path, records,
                               run_settings(backend, strict_validation=strict_validation))
            size = batch_size if batch_size and batch_size > 0 else len(pending)
            for start in range(0, len(pending), size):
                batch = pending[start:start + size]
                written = counts["written"]
                if backend.is_template:
                    for item in batch:
                        emit(_template_record(split, item, backend, shard,
                                              strict_validation))
                        progress(1)
                else:
                    _run_batch(split, batch, backend, max_attempts, shard, emit,
                               strict_validation)
                writer.sync()
                if not backend.is_template:
                    # An LLM answers a whole batch at once: its records count
                    # once they are on disk.
                    progress(counts["written"] - written)
        finally:
            if owned:
                backend.close()
    except BaseException:
        if not existed and os.path.getsize(out_path) == 0:
            # A run that failed before writing (its model did not load) leaves
            # no empty file behind. The lock is still held; a run that opened
            # the file meanwhile sees it is gone once it gets the lock.
            os.remove(out_path)
        raise
    finally:
        writer.close()
    return counts


def _template_record(split, item, backend, shard, strict):
    raw = template_caption(item)
    violations = validate(raw, item.labels, item.tail_labels, split.class_names,
                          strict=strict)
    record = _base_record(split, item)
    record["original_captions"] = None  # the template reads no caption
    return _finish_record(
        record, raw, "valid" if not violations else "fallback", "template", 0,
        violations, None, backend, shard, None, strict,
    )


def _run_batch(split, batch, backend, max_attempts, shard, emit, strict):
    history = {item.image_id: [] for item in batch}
    last_seed = {}
    active = list(batch)
    for attempt in range(1, max_attempts + 1):
        if not active:
            break
        # Only the last failed answer is fed back: the conversation stays
        # within the model's context however many attempts are allowed.
        conversations = [
            build_messages(item, history[item.image_id][-1:], backend.supports_system_role,
                           strict)
            for item in active
        ]
        seeds = [image_seed(backend.sampling.seed, item.image_id, attempt) for item in active]
        outputs = backend.generate(conversations, seeds)
        if len(outputs) != len(active):
            raise RuntimeError(
                f"Backend {backend.name} returned {len(outputs)} answers for "
                f"{len(active)} prompts."
            )
        still = []
        for item, output, seed in zip(active, outputs, seeds):
            last_seed[item.image_id] = seed
            if isinstance(output, FailedAnswer):
                # The engine refused the prompt; asking again would not help.
                history[item.image_id].append(
                    (output, [f"the model could not answer this prompt ({output.reason})"])
                )
                continue
            violations = validate(output, item.labels, item.tail_labels,
                                  split.class_names, strict=strict)
            if not violations:
                failed = [
                    {"output": o[:_MAX_LOGGED_OUTPUT], "violations": v}
                    for o, v in history[item.image_id]
                ]
                record = _base_record(split, item)
                emit(_finish_record(
                    record, output, "valid" if attempt == 1 else "retried", "llm",
                    attempt, [], failed, backend, shard, seed, strict,
                ))
            else:
                history[item.image_id].append((output, violations))
                still.append(item)
        active = still
    # Every attempt failed, or the engine refused the prompt.
    given_up = {item.image_id for item in active} | {
        image_id for image_id, h in history.items() if h and isinstance(h[-1][0], FailedAnswer)
    }
    for item in batch:
        if item.image_id not in given_up:
            continue
        failed = [
            {"output": o[:_MAX_LOGGED_OUTPUT], "violations": v}
            for o, v in history[item.image_id]
        ]
        raw = template_caption(item)
        record = _base_record(split, item)
        record = _finish_record(
            record, raw, "fallback", "template", len(failed),
            failed[-1]["violations"], failed, backend, shard,
            last_seed[item.image_id], strict,
        )
        # `violations` are the last LLM answer's; the template's own, if any
        # (too many labels for 80 words), are kept apart.
        template_violations = validate(raw, item.labels, item.tail_labels,
                                       split.class_names, strict=strict)
        if template_violations:
            record["template_violations"] = template_violations
        emit(record)

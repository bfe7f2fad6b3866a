"""Statistics of a caption file, and merging shard files."""

import collections
import os
import tempfile

from llm_gen.generate import differing_setting, record_settings
from llm_gen.records import CaptionFileError, dump_record, read_records
from llm_gen.validate import count_class_mentions, word_count


def caption_stats(records, class_names=()):
    """Summarise caption records.

    The Table 4 figure of the paper is tail-class mentions per tail-class
    instance: over every (image, tail class of the image) pair, the number of
    times the class is named in the caption, divided by the number of pairs.
    It is computed for the original captions and for the generated ones.

    Args:
        records: list of record dicts.
        class_names: iterable of str. Every class of the dataset, so that a
            longer class ("teddy bear") is not counted as a shorter one
            ("bear"); defaults to the labels seen in the records.

    Returns:
        A dict of counts and means.
    """
    status = collections.Counter(r["status"] for r in records)
    source = collections.Counter(r.get("source", "llm") for r in records)
    backend = collections.Counter(str(r.get("backend")) for r in records)
    names = list(class_names) or sorted(
        {name for r in records for name in r.get("labels", [])}
    )
    words = [word_count(r["caption"]) for r in records]
    instances = 0
    generated_mentions = 0
    original_mentions = 0
    with_original = 0
    instances_with_original = 0
    for r in records:
        tails = r.get("tail_labels") or []
        original = r.get("original_caption")
        if original:
            with_original += 1
        for name in tails:
            instances += 1
            generated_mentions += count_class_mentions(r["caption"], name, names)
            if original:
                instances_with_original += 1
                original_mentions += count_class_mentions(original, name, names)
    attempts = [r.get("attempts", 0) for r in records if r.get("source") != "template"
                or r["status"] == "fallback"]
    return {
        "images": len(records),
        "status": {k: status.get(k, 0) for k in ("valid", "retried", "fallback")},
        "source": dict(source),
        "backend": dict(backend),
        "mean_words": sum(words) / len(words) if words else 0.0,
        "min_words": min(words) if words else 0,
        "max_words": max(words) if words else 0,
        "mean_llm_attempts": sum(attempts) / len(attempts) if attempts else 0.0,
        "tail_instances": instances,
        "tail_mentions_per_instance_generated": (
            generated_mentions / instances if instances else None
        ),
        "images_with_original_caption": with_original,
        "tail_mentions_per_instance_original": (
            original_mentions / instances_with_original if instances_with_original else None
        ),
    }


def format_stats(stats, path=""):
    """The stats dict as a short human-readable report."""
    def ratio(value):
        return "n/a" if value is None else f"{value:.3f}"

    n = stats["images"] or 1
    lines = [f"{path}" if path else "captions", f"  images            {stats['images']}"]
    for key in ("valid", "retried", "fallback"):
        count = stats["status"][key]
        lines.append(f"  {key:<17} {count} ({100 * count / n:.1f} %)")
    lines.append(
        "  source            "
        + ", ".join(f"{k} {v}" for k, v in sorted(stats["source"].items()))
    )
    lines.append(
        "  backend           "
        + ", ".join(f"{k} {v}" for k, v in sorted(stats["backend"].items()))
    )
    lines.append(
        f"  words             mean {stats['mean_words']:.1f}, "
        f"min {stats['min_words']}, max {stats['max_words']}"
    )
    lines.append(f"  LLM attempts      mean {stats['mean_llm_attempts']:.2f}")
    lines.append(
        f"  tail-class mentions per tail-class instance (paper Table 4: "
        f"0.438 -> 1.883), over {stats['tail_instances']} instances:"
    )
    lines.append(
        f"    original captions   {ratio(stats['tail_mentions_per_instance_original'])}"
        f" ({stats['images_with_original_caption']} images have one)"
    )
    lines.append(
        f"    generated captions  {ratio(stats['tail_mentions_per_instance_generated'])}"
    )
    return "\n".join(lines)


def merge_shards(shard_paths, out_path, split=None, overwrite=False):
    """Join shard files into one, checking each image appears exactly once.

    Args:
        shard_paths: list of path-like. The shard files.
        out_path: path-like. The merged file, written in split order (or in
            shard order without a split) and replaced atomically.
        split: `Split` or None. With a split, every image of it must appear and
            no other.
        overwrite: bool. Replace an existing `out_path`.

    Returns:
        The number of records written.
    """
    out_path = os.fspath(out_path)
    if os.path.exists(out_path) and not overwrite:
        raise CaptionFileError(f"{out_path} exists; pass --overwrite to replace it.")
    by_id = {}
    where = {}
    duplicates = []
    first = None  # (settings, path) of the first record
    for path in shard_paths:
        records, torn = read_records(path, allow_torn_tail=True)
        if torn:
            raise CaptionFileError(
                f"{path} ends with an unfinished record (a killed run); rerun its "
                "generation command to finish that shard first."
            )
        for record in records:
            settings = record_settings(record)
            if first is None:
                first = (settings, os.fspath(path))
            elif (key := differing_setting(settings, first[0])) is not None:
                hint = (" (prompts made from other original captions: "
                        "--original-captions, --no-original-captions)"
                        if key == "original_captions" else "")
                raise CaptionFileError(
                    f"Cannot merge: {first[1]} was written with {key} "
                    f"{first[0][key]!r} but {path} (image {record['image_id']!r}) with "
                    f"{settings[key]!r}{hint}; one file holds captions of one setting."
                )
            image_id = record["image_id"]
            if image_id in by_id:
                duplicates.append((image_id, where[image_id], os.fspath(path)))
                continue
            by_id[image_id] = record
            where[image_id] = os.fspath(path)
    if duplicates:
        shown = "; ".join(f"{i!r} in {a} and {b}" for i, a, b in duplicates[:5])
        raise CaptionFileError(
            f"{len(duplicates)} images appear more than once: {shown}."
        )
    if split is not None:
        expected = split.image_ids
        missing = [i for i in expected if i not in by_id]
        known = set(expected)
        extra = [i for i in by_id if i not in known]
        if missing or extra:
            problems = []
            if missing:
                problems.append(f"{len(missing)} images of the split are missing, "
                                f"e.g. {missing[:3]!r}")
            if extra:
                problems.append(f"{len(extra)} images are not in the split, "
                                f"e.g. {extra[:3]!r}")
            raise CaptionFileError("Cannot merge: " + "; ".join(problems) + ".")
        order = expected
    else:
        order = list(by_id)
    directory = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".merge-", suffix=".jsonl")
    try:
        with os.fdopen(fd, "wb") as f:
            for image_id in order:
                f.write(dump_record(by_id[image_id]))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out_path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return len(order)

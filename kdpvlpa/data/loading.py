"""The one loading path shared by VOC-LT, COCO-LT and the synthetic set.

A split file (the JSON format of `kdpvlpa/data/splits/`) plus a dataset root
becomes an `LTDataset`; the images are checked up front.
"""

import warnings
from pathlib import Path

import numpy as np

from kdpvlpa.data.captions import load_caption_file
from kdpvlpa.data.dataset import LTDataset
from kdpvlpa.data.images import (
    CorruptImageError,
    MissingImagesError,
    corrupt_images_message,
    missing_images_message,
    scan_images,
)
from kdpvlpa.data.splits import frequency_groups, load_split_file, natural_class_names

REQUIRED_KEYS = ("class_names", "image_ids", "image_paths", "labels")


def _labels_matrix(label_lists, num_classes, where):
    labels = np.zeros((len(label_lists), num_classes), dtype=np.float32)
    for row, positives in enumerate(label_lists):
        for c in positives:
            if not isinstance(c, int) or not 0 <= c < num_classes:
                raise ValueError(
                    f"{where}: image {row} has label {c!r}, outside the class "
                    f"indices 0..{num_classes - 1}."
                )
            labels[row, c] = 1.0
    return labels


def _select(split, image_ids, where):
    ids = split["image_ids"]
    if image_ids is None:
        return list(range(len(ids)))
    position = {str(i): n for n, i in enumerate(ids)}
    wanted = {str(i) for i in image_ids}
    unknown = [i for i in image_ids if str(i) not in position]
    if unknown:
        raise ValueError(
            f"{where}: {len(unknown)} requested image ids are not in the split, "
            f"e.g. {unknown[:5]}."
        )
    # Split order, whatever order the ids were given in.
    return [n for n, i in enumerate(ids) if str(i) in wanted]


def dataset_from_split(
    split,
    root,
    name,
    captions=None,
    allow_missing=False,
    verify_images=False,
    image_ids=None,
    how_to_get="Check the dataset root.",
    progress=None,
):
    """Build an `LTDataset` from a split dict and check its images.

    Args:
        split: dict. A split in the packaged JSON format.
        root: str or `Path`. The folder the split's `image_paths` are
            relative to.
        name: str. Dataset key stored in the result ("voc_lt", ...).
        captions: None, a list of str aligned with `split["image_ids"]`, or
            a caption file path (see `load_caption_file`).
        allow_missing: bool. Drop missing images with a warning instead of
            raising `MissingImagesError`. An explicit user choice: by default
            nothing is ever trained or evaluated on a partial set.
        verify_images: bool. Decode every image up front; a corrupt one
            raises `CorruptImageError` naming the file.
        image_ids: sequence or None. Keep only these images (split order).
        how_to_get: str. Where to get the data (ends the missing-images
            message).
        progress: bool or None. Progress while verifying images.

    Returns:
        `LTDataset`.

    Example:
    >>> from kdpvlpa.data import load_split
    >>> test = dataset_from_split(load_split("voc_lt", "test"), "data/voc",
    ...                           name="voc_lt")  # doctest: +SKIP
    """
    where = f"{split.get('dataset', name)} {split.get('split', '?')} split"
    absent = [k for k in REQUIRED_KEYS if k not in split]
    if absent:
        raise ValueError(f"{where}: the split file lacks the key(s) {', '.join(absent)}.")
    part = split.get("split")
    if part not in ("train", "test"):
        raise ValueError(f"{where}: 'split' must be 'train' or 'test', got {part!r}.")
    num_images = len(split["image_ids"])
    for key in ("image_paths", "labels"):
        if len(split[key]) != num_images:
            raise ValueError(
                f"{where}: {num_images} image_ids but {len(split[key])} {key}."
            )
    class_names = natural_class_names(split["class_names"])
    num_classes = len(class_names)

    freq_key = "class_freq" if part == "train" else "train_class_freq"
    if freq_key in split:
        class_freq = np.asarray(split[freq_key], dtype=np.int64)
    elif part == "train":
        class_freq = _labels_matrix(split["labels"], num_classes, where).sum(0)
    else:
        raise ValueError(
            f"{where}: a test split needs 'train_class_freq' (the training "
            "frequencies that define head / medium / tail)."
        )
    if all(k in split for k in ("head", "medium", "tail")):
        groups = split["head"], split["medium"], split["tail"]
    else:
        groups = frequency_groups(class_freq)

    keep = _select(split, image_ids, where)
    root = Path(root).expanduser().resolve()
    paths = [root / split["image_paths"][n] for n in keep]
    display = f"{split.get('dataset', name)} {part}"
    scan = scan_images(paths, verify=verify_images, progress=progress)
    if not root.is_dir():
        how_to_get = f"The dataset root {root} does not exist. {how_to_get}"
    else:
        folders = sorted({str(p.parent) for p in scan.missing if not p.parent.is_dir()})
        if folders:
            how_to_get = f"Folder(s) not found: {', '.join(folders[:3])}. {how_to_get}"
    if scan.missing:
        message = missing_images_message(scan.missing, scan.total, display, how_to_get)
        if not allow_missing or len(scan.missing) == len(paths):
            if len(scan.missing) < len(paths):
                message += (
                    " To use only the images that are present, pass "
                    "allow_missing=True (--allow-missing on the command line; an "
                    "explicit choice: results on a "
                    "partial set do not compare with published ones)."
                )
            raise MissingImagesError(message)
        warnings.warn(
            f"{message} allow_missing=True: continuing with the "
            f"{scan.present} images present. Class frequencies and "
            "head/medium/tail groups stay those of the full split.",
            stacklevel=3,
        )
    if scan.corrupt:
        raise CorruptImageError(corrupt_images_message(scan.corrupt, scan.total, display))
    if scan.missing:
        missing = set(scan.missing)
        keep = [n for n, p in zip(keep, paths) if p not in missing]
        paths = [p for p in paths if p not in missing]

    ids = [split["image_ids"][n] for n in keep]
    labels = _labels_matrix([split["labels"][n] for n in keep], num_classes, where)
    if captions is None:
        kept_captions = None
    elif isinstance(captions, (str, Path)):
        kept_captions = load_caption_file(captions, ids)
    else:
        if len(captions) != num_images:
            raise ValueError(
                f"{where}: {len(captions)} captions for {num_images} images."
            )
        kept_captions = [captions[n] for n in keep]
    return LTDataset(
        name=name,
        split=part,
        root=root,
        class_names=class_names,
        image_ids=ids,
        image_paths=paths,
        labels=labels,
        captions=kept_captions,
        class_freq=class_freq,
        head=list(groups[0]),
        medium=list(groups[1]),
        tail=list(groups[2]),
    )


def load_lt_split(
    split_json_path,
    root,
    captions_json=None,
    name=None,
    allow_missing=False,
    verify_images=False,
    image_ids=None,
    how_to_get="Check the dataset root.",
    progress=None,
):
    """Load any split file in the packaged JSON format as an `LTDataset`.

    The loaders of VOC-LT, COCO-LT and the synthetic set all end here.

    Args:
        split_json_path: str or `Path`. A `*_train.json` or `*_test.json`.
        root: str or `Path`. The folder its `image_paths` are relative to.
        captions_json: str, `Path` or None. A caption file (llm_gen JSONL or
            the packaged captions JSON) for these images.
        name: str or None. Dataset key; default: the file name before
            `_train` / `_test`.
        allow_missing, verify_images, image_ids, how_to_get, progress: see
            `dataset_from_split`.

    Returns:
        `LTDataset`.

    Example:
    >>> train = load_lt_split("data/synthetic/synthetic_lt_train.json",
    ...                       "data/synthetic")  # doctest: +SKIP
    """
    split_json_path = Path(split_json_path)
    split = load_split_file(split_json_path)
    if name is None:
        name = split_json_path.stem.rsplit("_", 1)[0]
    return dataset_from_split(
        split,
        root,
        name=name,
        captions=captions_json,
        allow_missing=allow_missing,
        verify_images=verify_images,
        image_ids=image_ids,
        how_to_get=how_to_get,
        progress=progress,
    )


def load_split_dir(
    root,
    split,
    prefix="synthetic_lt",
    name=None,
    captions=None,
    allow_missing=False,
    verify_images=False,
    image_ids=None,
    how_to_get="Check the dataset folder.",
    progress=None,
):
    """Load a dataset folder that carries its own split files.

    The folder holds `<prefix>_train.json`, `<prefix>_test.json` and
    optionally `<prefix>_train_captions.json`, with image paths relative to
    the folder (the layout `make_synthetic_lt` writes).

    Args:
        root: str or `Path`. The dataset folder.
        split: str. "train" or "test".
        prefix: str. File-name prefix of the split files.
        name: str or None. Dataset key; default: `prefix`.
        captions: str, `Path` or None. A caption file; default: the folder's
            `<prefix>_<split>_captions.json` when it exists.
        allow_missing, verify_images, image_ids, how_to_get, progress: see
            `dataset_from_split`.

    Returns:
        `LTDataset`.

    Example:
    >>> train = load_split_dir("data/synthetic", "train")  # doctest: +SKIP
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    root = Path(root).expanduser()
    split_path = root / f"{prefix}_{split}.json"
    if not split_path.is_file():
        raise FileNotFoundError(
            f"No split file {split_path}. {how_to_get}"
        )
    if captions is None:
        default = root / f"{prefix}_{split}_captions.json"
        captions = default if default.is_file() else None
    return load_lt_split(
        split_path,
        root,
        captions_json=captions,
        name=name or prefix,
        allow_missing=allow_missing,
        verify_images=verify_images,
        image_ids=image_ids,
        how_to_get=how_to_get,
        progress=progress,
    )

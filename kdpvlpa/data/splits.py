"""The packaged VOC-LT and COCO-LT split files (JSON) and class-name helpers.

The split files live in `kdpvlpa/data/splits/` (see the README there for their
provenance and the non-commercial terms of the DBL lists).
"""

import json
from importlib import resources
from pathlib import Path

from kdpvlpa.utils.files import read_text

DATASETS = ("voc_lt", "coco_lt")
PARTS = ("train", "test")

# VOC's class names are single tokens; prompts and captions use natural words.
_NATURAL_NAMES = {
    "diningtable": "dining table",
    "pottedplant": "potted plant",
    "tvmonitor": "tv monitor",
}

# The head / medium / tail rule of DBL `tools/create_longtail_dataset.py` and
# LMPT `lmpt/metrics.py::ltAnalysis`: ">= 100" and "< 20" in code.
HEAD_MIN_FREQ = 100
TAIL_MAX_FREQ = 20


def _splits_dir():
    return Path(str(resources.files("kdpvlpa.data").joinpath("splits")))


def split_file_path(dataset, part):
    """Path of a packaged split file.

    Args:
        dataset: str. "voc_lt" or "coco_lt".
        part: str. "train", "test" or "train_captions_lmpt".

    Returns:
        `pathlib.Path` of the JSON file inside the installed package.

    Example:
    >>> split_file_path("voc_lt", "train").name
    'voc_lt_train.json'
    """
    if dataset not in DATASETS:
        raise ValueError(
            f"Unknown dataset {dataset!r}. Packaged splits exist for: "
            f"{', '.join(DATASETS)}."
        )
    valid_parts = PARTS + ("train_captions_lmpt",)
    if part not in valid_parts:
        raise ValueError(
            f"Unknown split part {part!r} for {dataset!r}. Valid parts: "
            f"{', '.join(valid_parts)}."
        )
    return _splits_dir() / f"{dataset}_{part}.json"


def load_split_file(path):
    """Read one split file (the packaged JSON format) into a dict.

    Args:
        path: str or `Path`. A `*_train.json`, `*_test.json` or captions JSON.

    Returns:
        The parsed dict.

    Example:
    >>> split = load_split_file("data/synthetic_lt_train.json")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Split file not found: {path}")
    try:
        data = json.loads(read_text(path, "Split file"))
    except json.JSONDecodeError as error:
        raise ValueError(f"Split file {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"Split file {path} must hold a JSON object, got {type(data).__name__}."
        )
    return data


def load_split(dataset, part):
    """Load a packaged VOC-LT / COCO-LT split.

    Args:
        dataset: str. "voc_lt" or "coco_lt".
        part: str. "train" or "test" (or "train_captions_lmpt" for LMPT's
            original training captions).

    Returns:
        A dict with the keys described in `kdpvlpa/data/splits/README.md`
        (`class_names`, `image_ids`, `image_paths`, `labels`, `head`, ...).

    Example:
    >>> split = load_split("voc_lt", "train")
    >>> split["num_images"], len(split["class_names"])
    (1142, 20)
    """
    return load_split_file(split_file_path(dataset, part))


def natural_class_names(names):
    """Class names as words: VOC's `diningtable` becomes "dining table".

    Args:
        names: list of str. Class names as stored in a split file.

    Returns:
        A new list of str: `diningtable`, `pottedplant` and `tvmonitor` read
        "dining table", "potted plant", "tv monitor"; underscores become
        spaces; other names are unchanged.

    Example:
    >>> natural_class_names(["pottedplant", "sheep", "traffic_light"])
    ['potted plant', 'sheep', 'traffic light']
    """
    return [_NATURAL_NAMES.get(n, n).replace("_", " ") for n in names]


def frequency_groups(class_freq):
    """Head / medium / tail class indices from training frequencies.

    Args:
        class_freq: sequence of int. Training images per class.

    Returns:
        `(head, medium, tail)`: lists of class indices with frequency
        `>= 100`, `20..99` and `< 20` (the DBL / LMPT rule).

    Example:
    >>> frequency_groups([150, 20, 19])
    ([0], [1], [2])
    """
    head, medium, tail = [], [], []
    for c, n in enumerate(class_freq):
        if n >= HEAD_MIN_FREQ:
            head.append(c)
        elif n >= TAIL_MAX_FREQ:
            medium.append(c)
        else:
            tail.append(c)
    return head, medium, tail

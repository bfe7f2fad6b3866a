"""Scan a dataset root: which images of each split are present, missing, corrupt."""

from pathlib import Path

from kdpvlpa.data.coco import COCO_HOW_TO_GET
from kdpvlpa.data.images import scan_images
from kdpvlpa.data.splits import load_split, load_split_file
from kdpvlpa.data.synthetic import PREFIX as SYNTHETIC_PREFIX
from kdpvlpa.data.synthetic import SYNTHETIC_HOW_TO_GET
from kdpvlpa.data.voc import VOC_HOW_TO_GET

HOW_TO_GET = {
    "voc_lt": VOC_HOW_TO_GET,
    "coco_lt": COCO_HOW_TO_GET,
    "synthetic": SYNTHETIC_HOW_TO_GET,
}
DISPLAY_NAMES = {"voc_lt": "VOC-LT", "coco_lt": "COCO-LT", "synthetic": "Synthetic-LT"}


def _split_dict(dataset, root, split):
    if dataset == "synthetic":
        path = Path(root) / f"{SYNTHETIC_PREFIX}_{split}.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"No synthetic split file {path}. {SYNTHETIC_HOW_TO_GET}"
            )
        return load_split_file(path)
    return load_split(dataset, split)


def scan_dataset(dataset, root, verify_images=False, progress=None):
    """Scan both splits of a dataset under `root` without raising on gaps.

    Args:
        dataset: str. "voc_lt", "coco_lt" or "synthetic".
        root: str or `Path`. The dataset root.
        verify_images: bool. Decode each present image to find corrupt ones.
        progress: bool or None. Progress lines while verifying.

    Returns:
        dict: split name -> `ImageScan`.

    Example:
    >>> scans = scan_dataset("voc_lt", "data/voc")  # doctest: +SKIP
    >>> scans["test"].present, len(scans["test"].missing)  # doctest: +SKIP
    (4952, 0)
    """
    if dataset not in HOW_TO_GET:
        raise ValueError(
            f"Unknown dataset {dataset!r}; expected one of {', '.join(HOW_TO_GET)}."
        )
    root = Path(root).expanduser().resolve()
    scans = {}
    for split in ("train", "test"):
        paths = [root / p for p in _split_dict(dataset, root, split)["image_paths"]]
        scans[split] = scan_images(
            paths, verify=verify_images, progress=progress,
            label=f"verifying {split}",
        )
    return scans

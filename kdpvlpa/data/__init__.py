"""Datasets: VOC-LT, COCO-LT, a synthetic long-tailed set, caption files.

Pure numpy / pillow / json: importing this package never imports keras or
torch, so `llm_gen` and the CLI can use it cheaply.
"""

from kdpvlpa.data.captions import (
    CaptionFileError,
    load_caption_file,
    read_caption_records,
    strip_tail_tags,
)
from kdpvlpa.data.coco import (
    CaptionsMissingError,
    load_coco_captions,
    load_coco_labels_from_instances,
    load_coco_lt,
)
from kdpvlpa.data.dataset import LTDataset
from kdpvlpa.data.images import (
    CorruptImageError,
    ImageScan,
    MissingImagesError,
    check_images,
    find_missing_images,
    load_image,
    scan_images,
)
from kdpvlpa.data.loading import dataset_from_split, load_lt_split, load_split_dir
from kdpvlpa.data.splits import (
    frequency_groups,
    load_split,
    load_split_file,
    natural_class_names,
)
from kdpvlpa.data.synthetic import (
    SyntheticSetInUseError,
    load_synthetic_lt,
    make_synthetic_lt,
    synthetic_caption,
    synthetic_class_names,
    synthetic_lt_in_use,
)
from kdpvlpa.data.voc import (
    load_voc_labels_from_annotations,
    load_voc_lt,
    parse_voc_xml,
)

DATASET_LOADERS = {
    "voc_lt": load_voc_lt,
    "coco_lt": load_coco_lt,
    "synthetic": load_synthetic_lt,
}


def load_dataset(dataset, root, split="train", **kwargs):
    """Load a split of any supported dataset by its recipe name.

    Args:
        dataset: str. "voc_lt", "coco_lt" or "synthetic" (`recipe.data.dataset`).
        root: str or `Path`. The dataset root.
        split: str. "train" or "test".
        **kwargs: passed to the dataset's loader (`allow_missing`,
            `verify_images`, `image_ids`, `captions`, `progress`, ...).

    Returns:
        `LTDataset`.

    Example:
    >>> test = load_dataset("voc_lt", "data/voc", "test")  # doctest: +SKIP
    """
    if dataset not in DATASET_LOADERS:
        raise ValueError(
            f"Unknown dataset {dataset!r}; expected one of "
            f"{', '.join(DATASET_LOADERS)}."
        )
    return DATASET_LOADERS[dataset](root, split=split, **kwargs)


__all__ = [
    "DATASET_LOADERS",
    "CaptionFileError",
    "CaptionsMissingError",
    "CorruptImageError",
    "ImageScan",
    "LTDataset",
    "MissingImagesError",
    "SyntheticSetInUseError",
    "check_images",
    "dataset_from_split",
    "find_missing_images",
    "frequency_groups",
    "load_caption_file",
    "load_coco_captions",
    "load_coco_labels_from_instances",
    "load_coco_lt",
    "load_dataset",
    "load_image",
    "load_lt_split",
    "load_split",
    "load_split_dir",
    "load_split_file",
    "load_synthetic_lt",
    "load_voc_labels_from_annotations",
    "load_voc_lt",
    "make_synthetic_lt",
    "natural_class_names",
    "parse_voc_xml",
    "read_caption_records",
    "scan_images",
    "strip_tail_tags",
    "synthetic_caption",
    "synthetic_class_names",
    "synthetic_lt_in_use",
]

"""COCO-LT: COCO 2017 train images of the DBL split, val2017 as the test set.

Expected layout under `root` (where the COCO 2017 zips were extracted):

    root/train2017/<12-digit id>.jpg               train (COCO-LT train)
    root/val2017/<12-digit id>.jpg                 test (val2017)
    root/annotations/captions_train2017.json       original train captions
    root/annotations/instances_val2017.json        optional, label cross-check
    root/annotations/instances_train2017.json      optional, label cross-check
"""

import json
from pathlib import Path

import numpy as np

from kdpvlpa.data.captions import load_caption_file
from kdpvlpa.data.loading import dataset_from_split
from kdpvlpa.data.splits import load_split, split_file_path
from kdpvlpa.data.voc import compare_labels
from kdpvlpa.utils.files import read_text

COCO_HOW_TO_GET = (
    "COCO-LT needs MS COCO 2017: download "
    "http://images.cocodataset.org/zips/train2017.zip, "
    "http://images.cocodataset.org/zips/val2017.zip and "
    "http://images.cocodataset.org/annotations/annotations_trainval2017.zip "
    "and extract them into the data folder, so that it holds train2017/, "
    "val2017/ and annotations/ (see kdpvlpa/data/README.md)."
)
_INSTANCES_OF_SPLIT = {"train": "instances_train2017.json", "test": "instances_val2017.json"}
MAX_LISTED = 5


class CaptionsMissingError(ValueError):
    """COCO's caption annotations lack some images of the split."""


def _read_json(path, what):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}. {COCO_HOW_TO_GET}")
    try:
        return json.loads(read_text(path, what))
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} {path} is not valid JSON: {error}") from None


def _require(data, keys, path):
    if not isinstance(data, dict):
        raise ValueError(
            f"{path} does not hold a JSON object; is it a COCO annotation file?"
        )
    absent = [k for k in keys if k not in data]
    if absent:
        raise ValueError(
            f"{path} lacks the key(s) {', '.join(absent)}; is it a COCO "
            "annotation file?"
        )


def default_caption_source(root):
    """Where `captions="auto"` reads COCO-LT's original training captions:
    `"annotations"` when `annotations/captions_train2017.json` is under `root`,
    else `"lmpt"` (the packaged file)."""
    caption_file = Path(root).expanduser() / "annotations" / "captions_train2017.json"
    return "annotations" if caption_file.is_file() else "lmpt"


def load_coco_captions(json_path, image_ids):
    """Original COCO captions: all captions of an image joined with spaces.

    This is how LMPT built `coco_lt_captions.txt`: the (usually five) human
    captions of an image, in file order, stripped and joined by one space.

    Args:
        json_path: str or `Path`. `annotations/captions_train2017.json`.
        image_ids: sequence of int. COCO image ids.

    Returns:
        list of str, one per image id.

    Raises:
        CaptionsMissingError: some images have no caption (how many, the
            first few ids).

    Example:
    >>> caps = load_coco_captions("data/coco/annotations/captions_train2017.json",
    ...                           [554625])  # doctest: +SKIP
    """
    data = _read_json(json_path, "COCO caption annotations")
    _require(data, ("annotations",), json_path)
    if not isinstance(data["annotations"], list):
        raise ValueError(f"{json_path}: 'annotations' must be a list of annotations.")
    by_image = {}
    for index, ann in enumerate(data["annotations"]):
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        caption = ann.get("caption") if isinstance(ann, dict) else None
        if isinstance(image_id, bool) or not isinstance(image_id, int) or not isinstance(
                caption, str):
            raise ValueError(
                f"{json_path}: annotation {index} needs an integer 'image_id' and a "
                f"'caption' string; it is {str(ann)[:200]}"
            )
        by_image.setdefault(image_id, []).append(caption.strip())
    absent = [i for i in image_ids if int(i) not in by_image]
    if absent:
        shown = ", ".join(str(i) for i in absent[:MAX_LISTED])
        raise CaptionsMissingError(
            f"{json_path} has no caption for {len(absent)} of {len(image_ids)} "
            f"images of the split, e.g. {shown}. Use the 2017 caption file "
            "from annotations_trainval2017.zip."
        )
    return [" ".join(by_image[int(i)]) for i in image_ids]


def _degenerate(ann):
    box = ann.get("bbox")
    width, height = (box[2], box[3]) if box is not None and len(box) == 4 else (1, 1)
    return ann.get("area", 1) <= 0 or width < 1 or height < 1


def load_coco_labels_from_instances(json_path, image_ids, class_names, include_crowd=True):
    """Multi-hot labels from a COCO `instances_*.json` file.

    COCO's 80 category ids (1..90 with gaps) are sorted ascending and mapped
    to columns 0..79, the standard COCO-80 order of the split files.

    Args:
        json_path: str or `Path`. E.g. `annotations/instances_val2017.json`.
        image_ids: sequence of int. COCO image ids (rows).
        class_names: list of str. Expected names in column order; compared
            with the file's category names (spaces and underscores alike).
        include_crowd: bool. Count `iscrowd=1` annotations as positives.

    As DBL's parser, which made the COCO-LT labels, an annotation marked
    `ignore`, or with no area or a box under 1 pixel wide or high, is not
    a positive.

    Returns:
        `np.ndarray` of shape `(len(image_ids), len(class_names))`, float32.
        Images without annotations get an all-zero row.

    Raises:
        ValueError: the categories do not match `class_names`, or some
            image ids are not in the file.

    Example:
    >>> labels = load_coco_labels_from_instances(
    ...     "data/coco/annotations/instances_val2017.json",
    ...     test.image_ids, test.class_names)  # doctest: +SKIP
    """
    data = _read_json(json_path, "COCO instance annotations")
    _require(data, ("images", "annotations", "categories"), json_path)
    categories = sorted(data["categories"], key=lambda c: int(c["id"]))
    names = [c["name"] for c in categories]
    squash = [n.replace("_", " ").lower() for n in class_names]
    if [n.replace("_", " ").lower() for n in names] != squash:
        raise ValueError(
            f"{json_path}: its {len(names)} categories (sorted by id) do not "
            f"match the {len(class_names)} class names of the split; first "
            f"categories: {names[:5]}."
        )
    column = {int(c["id"]): n for n, c in enumerate(categories)}
    known = {int(im["id"]) for im in data["images"]}
    absent = [i for i in image_ids if int(i) not in known]
    if absent:
        shown = ", ".join(str(i) for i in absent[:MAX_LISTED])
        raise ValueError(
            f"{json_path} does not list {len(absent)} of {len(image_ids)} "
            f"images, e.g. {shown}."
        )
    row = {int(i): r for r, i in enumerate(image_ids)}
    labels = np.zeros((len(image_ids), len(class_names)), dtype=np.float32)
    for ann in data["annotations"]:
        r = row.get(int(ann["image_id"]))
        if r is None or (not include_crowd and ann.get("iscrowd", 0)):
            continue
        if ann.get("ignore", False) or _degenerate(ann):
            continue
        labels[r, column[int(ann["category_id"])]] = 1.0
    return labels


def load_coco_lt(
    root,
    split="train",
    allow_missing=False,
    verify_images=False,
    image_ids=None,
    captions="auto",
    check_labels=False,
    progress=None,
):
    """Load COCO-LT (Wu et al. 2020) from a COCO 2017 root.

    Labels, frequencies and head / medium / tail groups come from the
    packaged split. All images are checked before anything is returned.

    Args:
        root: str or `Path`. Folder holding `train2017/`, `val2017/` and
            `annotations/`.
        split: str. "train" (1,909 train2017 images) or "test" (5,000
            val2017 images, 48 of them without labels).
        allow_missing: bool. Drop missing images with a warning instead of
            raising `MissingImagesError` (explicit choice only).
        verify_images: bool. Decode every image to find corrupt ones.
        image_ids: sequence or None. Load only these images of the split.
        captions: "auto", "annotations", "lmpt", None, or a caption file path.
            Train-split original captions: "annotations" reads
            `annotations/captions_train2017.json`; "lmpt" uses the packaged
            LMPT file (the same human captions, joined the same way); "auto"
            (default) takes the annotation file when it exists, else LMPT's.
            A path loads that caption file (e.g. STAG captions). Ignored
            (None) for the test split unless a path is given.
        check_labels: bool. Also read `annotations/instances_*2017.json` and
            raise if the labels differ from the split file.
        progress: bool or None. Progress while verifying images.

    Returns:
        `LTDataset` with `name="coco_lt"`.

    Raises:
        MissingImagesError: images are missing (how many, the first few,
            where to download COCO).
        CaptionsMissingError: the caption annotations lack some images.

    Example:
    >>> train = load_coco_lt("data/coco", split="train")  # doctest: +SKIP
    >>> len(train.head), len(train.medium), len(train.tail)  # doctest: +SKIP
    (22, 33, 25)
    """
    if split not in _INSTANCES_OF_SPLIT:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    valid = ("auto", "annotations", "lmpt", None)
    if not isinstance(captions, (str, Path)) and captions is not None:
        raise ValueError(f"captions must be one of {valid} or a path, got {captions!r}.")
    root = Path(root).expanduser()
    split_dict = load_split("coco_lt", split)
    caption_file = root / "annotations" / "captions_train2017.json"
    source = captions
    if split == "test" and captions in ("auto", "annotations", "lmpt"):
        source = None
    elif captions == "auto":
        source = default_caption_source(root)
    dataset = dataset_from_split(
        split_dict,
        root,
        name="coco_lt",
        captions=None if source in ("annotations", "lmpt", None) else source,
        allow_missing=allow_missing,
        verify_images=verify_images,
        image_ids=image_ids,
        how_to_get=COCO_HOW_TO_GET,
        progress=progress,
    )
    if source == "annotations":
        dataset.captions = load_coco_captions(caption_file, dataset.image_ids)
    elif source == "lmpt":
        dataset.captions = load_caption_file(
            split_file_path("coco_lt", "train_captions_lmpt"), dataset.image_ids
        )
    if check_labels:
        path = root / "annotations" / _INSTANCES_OF_SPLIT[split]
        found = load_coco_labels_from_instances(
            path, dataset.image_ids, split_dict["class_names"]
        )
        compare_labels(dataset.labels, found, dataset.image_ids, f"COCO-LT {split}")
    return dataset


"""VOC-LT: VOC2012 training images of the DBL split, VOC2007 test images.

Expected layout under `root` (the folder both VOC tars were extracted into):

    root/VOCdevkit/VOC2012/JPEGImages/<id>.jpg     train (VOC-LT train)
    root/VOCdevkit/VOC2012/Annotations/<id>.xml    optional, label cross-check
    root/VOCdevkit/VOC2007/JPEGImages/<id>.jpg     test (VOC2007 test)
    root/VOCdevkit/VOC2007/Annotations/<id>.xml    optional, label cross-check
"""

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from kdpvlpa.data.loading import dataset_from_split
from kdpvlpa.data.splits import load_split, split_file_path

VOC_HOW_TO_GET = (
    "VOC-LT needs PASCAL VOC 2012 trainval (train images) and VOC 2007 test "
    "(test images): download "
    "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar "
    "and http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar "
    "and extract both into the data folder, so that it holds "
    "VOCdevkit/VOC2012/JPEGImages and VOCdevkit/VOC2007/JPEGImages "
    "(see kdpvlpa/data/README.md)."
)
_YEAR_OF_SPLIT = {"train": 2012, "test": 2007}


def _squash(name):
    # "dining table", "diningtable" and "DiningTable" are the same VOC class.
    return name.replace(" ", "").replace("_", "").lower()


def parse_voc_xml(path, class_names):
    """Class indices present in one VOC annotation file.

    Every `<object>` counts, including those marked `<difficult>1</difficult>`
    (as DBL's `XMLDataset` and LMPT's lists). Only an object's own `<name>` is
    read, not the `<name>` of its `<part>`s (VOC2012 person layout: head,
    hand, foot).

    Args:
        path: str or `Path`. `VOCdevkit/VOC20xx/Annotations/<id>.xml`.
        class_names: list of str. VOC names, raw (`diningtable`) or natural
            ("dining table").

    Returns:
        set of int class indices.

    Raises:
        FileNotFoundError: no such file.
        ValueError: malformed XML, or an object name not in `class_names`.

    Example:
    >>> names = load_split("voc_lt", "test")["class_names"]
    >>> parse_voc_xml("data/voc/VOCdevkit/VOC2007/Annotations/000001.xml",
    ...               names)  # doctest: +SKIP
    {11, 14}
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VOC annotation not found: {path}")
    try:
        tree = ET.parse(path)
    except ET.ParseError as error:
        raise ValueError(f"Malformed VOC annotation {path}: {error}") from None
    index = {_squash(n): c for c, n in enumerate(class_names)}
    present = set()
    for obj in tree.getroot().findall("object"):
        name_node = obj.find("name")
        if name_node is None or not (name_node.text or "").strip():
            raise ValueError(f"VOC annotation {path}: an <object> has no <name>.")
        name = name_node.text.strip()
        if _squash(name) not in index:
            raise ValueError(
                f"VOC annotation {path}: unknown class {name!r}; expected one of "
                f"{', '.join(class_names)}."
            )
        present.add(index[_squash(name)])
    return present


def load_voc_labels_from_annotations(root, year, image_ids, class_names):
    """Multi-hot labels read from VOC XML annotations.

    Args:
        root: str or `Path`. Folder holding `VOCdevkit/`.
        year: int or str. 2007 or 2012.
        image_ids: sequence of str. VOC ids, e.g. "2008_000023".
        class_names: list of str. Class order of the columns.

    Returns:
        `np.ndarray` of shape `(len(image_ids), len(class_names))`, float32.

    Raises:
        FileNotFoundError: annotation files are missing (how many, the first
            few).

    Example:
    >>> labels = load_voc_labels_from_annotations(
    ...     "data/voc", 2007, test.image_ids, test.class_names)  # doctest: +SKIP
    """
    folder = Path(root).expanduser() / "VOCdevkit" / f"VOC{year}" / "Annotations"
    paths = [folder / f"{i}.xml" for i in image_ids]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:5])
        raise FileNotFoundError(
            f"{len(missing)} of {len(paths)} VOC{year} annotation files are "
            f"missing, e.g. {shown}. They come with the same VOC tar as the "
            "images."
        )
    labels = np.zeros((len(paths), len(class_names)), dtype=np.float32)
    for row, path in enumerate(paths):
        labels[row, sorted(parse_voc_xml(path, class_names))] = 1.0
    return labels


def compare_labels(expected, found, image_ids, what):
    """Raise `ValueError` if two label matrices differ, naming the images.

    Args:
        expected: array (N, C). Labels of the split file.
        found: array (N, C). Labels read from the annotations.
        image_ids: sequence. Row ids, for the message.
        what: str. Names the comparison in the message.

    Returns:
        None.

    Example:
    >>> compare_labels(np.eye(2), np.eye(2), ["a", "b"], "demo")
    """
    differ = np.flatnonzero((np.asarray(expected) != np.asarray(found)).any(axis=1))
    if differ.size:
        shown = ", ".join(str(image_ids[i]) for i in differ[:5])
        raise ValueError(
            f"{what}: labels of {differ.size} of {len(image_ids)} images differ "
            f"between the split file and the annotations, e.g. {shown}."
        )


def load_voc_lt(
    root,
    split="train",
    allow_missing=False,
    verify_images=False,
    image_ids=None,
    captions=None,
    check_labels=False,
    progress=None,
):
    """Load VOC-LT (Wu et al. 2020) from a VOCdevkit root.

    Labels, frequencies and head / medium / tail groups come from the
    packaged split; the train split's original captions from the packaged
    LMPT caption file. All images are checked before anything is returned.

    Args:
        root: str or `Path`. Folder holding `VOCdevkit/VOC2012` and
            `VOCdevkit/VOC2007`.
        split: str. "train" (1,142 VOC2012 images) or "test" (4,952 VOC2007
            test images).
        allow_missing: bool. Drop missing images with a warning instead of
            raising `MissingImagesError` (explicit choice only).
        verify_images: bool. Decode every image to find corrupt ones.
        image_ids: sequence or None. Load only these images of the split.
        captions: str, `Path` or None. A caption file (e.g. STAG captions
            from llm_gen) replacing the default captions; default: LMPT's
            original captions for train, none for test.
        check_labels: bool. Also read `VOCdevkit/VOC20xx/Annotations` and
            raise if the labels differ from the split file.
        progress: bool or None. Progress while verifying images.

    Returns:
        `LTDataset` with `name="voc_lt"`.

    Raises:
        MissingImagesError: images are missing (how many, the first few,
            where to download VOC).
        CorruptImageError: with `verify_images`, a file cannot be decoded.

    Example:
    >>> train = load_voc_lt("data/voc", split="train")  # doctest: +SKIP
    >>> train.tail  # doctest: +SKIP
    [0, 2, 3, 5, 9, 12, 16, 18]
    """
    if split not in _YEAR_OF_SPLIT:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    split_dict = load_split("voc_lt", split)
    if captions is None and split == "train":
        captions = split_file_path("voc_lt", "train_captions_lmpt")
    dataset = dataset_from_split(
        split_dict,
        root,
        name="voc_lt",
        captions=captions,
        allow_missing=allow_missing,
        verify_images=verify_images,
        image_ids=image_ids,
        how_to_get=VOC_HOW_TO_GET,
        progress=progress,
    )
    if check_labels:
        year = _YEAR_OF_SPLIT[split]
        found = load_voc_labels_from_annotations(
            root, year, dataset.image_ids, split_dict["class_names"]
        )
        compare_labels(dataset.labels, found, dataset.image_ids, f"VOC-LT {split}")
    return dataset

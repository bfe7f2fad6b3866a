import numpy as np
import pytest

from kdpvlpa.data import (
    CorruptImageError,
    MissingImagesError,
    load_split,
    load_voc_labels_from_annotations,
    load_voc_lt,
    parse_voc_xml,
)
from lt_data_helpers import voc_xml

VOC_NAMES = load_split("voc_lt", "train")["class_names"]


def test_parse_voc_xml_counts_difficult_and_ignores_parts(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(voc_xml("a", ["diningtable", "person", "cow"], difficult={2}))
    # Parts of the person are named "head" and "hand": not classes.
    assert parse_voc_xml(path, VOC_NAMES) == {
        VOC_NAMES.index("diningtable"), VOC_NAMES.index("person"), VOC_NAMES.index("cow")}
    natural = [n.replace("diningtable", "dining table") for n in VOC_NAMES]
    assert parse_voc_xml(path, natural) == parse_voc_xml(path, VOC_NAMES)


def test_parse_voc_xml_errors(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(voc_xml("a", ["unicorn"]))
    with pytest.raises(ValueError, match="unknown class 'unicorn'"):
        parse_voc_xml(path, VOC_NAMES)
    path.write_text("<annotation><object>")
    with pytest.raises(ValueError, match="Malformed VOC annotation .*a.xml"):
        parse_voc_xml(path, VOC_NAMES)


@pytest.mark.parametrize("split, year", [("train", 2012), ("test", 2007)])
def test_load_voc_lt_subset(voc_root, split, year):
    root, train_ids, test_ids = voc_root
    ids = train_ids if split == "train" else test_ids
    ds = load_voc_lt(root, split=split, image_ids=ids[::-1], verify_images=True, check_labels=True)
    packaged = load_split("voc_lt", split)
    assert ds.name == "voc_lt" and ds.split == split
    assert ds.image_ids == ids  # split order
    assert ds.class_names[10] == "dining table"
    assert ds.image_paths[0] == (root / f"VOCdevkit/VOC{year}/JPEGImages/{ids[0]}.jpg").resolve()
    assert all(p.is_absolute() for p in ds.image_paths)
    expected = np.zeros((len(ids), 20), np.float32)
    for row, labels in enumerate(packaged["labels"][: len(ids)]):
        expected[row, labels] = 1
    np.testing.assert_array_equal(ds.labels, expected)
    # Training frequencies on both splits.
    assert ds.class_freq.tolist() == load_split("voc_lt", "train")["class_freq"]
    assert (ds.head, ds.medium, ds.tail) == (packaged["head"], packaged["medium"], packaged["tail"])
    if split == "train":
        assert ds.captions[0] == "a bottle of beer and a candle on a table with pizza and a television."
    else:
        assert ds.captions is None


def test_labels_from_annotations_and_mismatch(voc_root):
    root, train_ids, _ = voc_root
    labels = load_voc_labels_from_annotations(root, 2012, train_ids, VOC_NAMES)
    ds = load_voc_lt(root, image_ids=train_ids)
    np.testing.assert_array_equal(labels, ds.labels)
    xml = root / "VOCdevkit/VOC2012/Annotations" / f"{train_ids[1]}.xml"
    xml.write_text(voc_xml(train_ids[1], ["sheep"]))
    with pytest.raises(ValueError, match=f"labels of 1 of 4 images differ.*{train_ids[1]}"):
        load_voc_lt(root, image_ids=train_ids, check_labels=True)
    xml.unlink()
    with pytest.raises(FileNotFoundError, match="1 of 4 VOC2012 annotation files are missing"):
        load_voc_labels_from_annotations(root, 2012, train_ids, VOC_NAMES)


def test_missing_images_error(voc_root):
    root, train_ids, _ = voc_root
    with pytest.raises(MissingImagesError) as info:
        load_voc_lt(root, split="train")
    message = str(info.value)
    assert "VOC-LT train: 1138 of 1142 images are missing" in message
    assert message.count("VOCdevkit/VOC2012/JPEGImages/20") == 5  # the first 5 listed
    assert "(and 1133 more)" in message
    assert "VOCtrainval_11-May-2012.tar" in message and "VOCtest_06-Nov-2007.tar" in message
    assert "allow_missing=True" in message


def test_nothing_there(tmp_path):
    with pytest.raises(MissingImagesError, match="4952 of 4952.*does not exist") as info:
        load_voc_lt(tmp_path / "nowhere", split="test")
    assert "allow_missing" not in str(info.value)  # nothing would be left


def test_allow_missing_drops_with_warning(voc_root):
    root, train_ids, _ = voc_root
    (root / "VOCdevkit/VOC2012/JPEGImages" / f"{train_ids[2]}.jpg").unlink()
    with pytest.warns(UserWarning, match="1 of 4 images are missing"):
        ds = load_voc_lt(root, image_ids=train_ids, allow_missing=True)
    assert ds.image_ids == [train_ids[0], train_ids[1], train_ids[3]]
    assert len(ds.captions) == ds.labels.shape[0] == 3


def test_corrupt_image_named(voc_root):
    root, train_ids, _ = voc_root
    bad = root / "VOCdevkit/VOC2012/JPEGImages" / f"{train_ids[0]}.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    load_voc_lt(root, image_ids=train_ids)  # existence check only
    with pytest.raises(CorruptImageError, match=f"{train_ids[0]}.jpg"):
        load_voc_lt(root, image_ids=train_ids, verify_images=True)


def test_unknown_ids_and_split(voc_root):
    root, _, _ = voc_root
    with pytest.raises(ValueError, match="1 requested image ids are not in the split"):
        load_voc_lt(root, image_ids=["1999_000001"])
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        load_voc_lt(root, split="val")

import json

import numpy as np
import pytest

from kdpvlpa.data import (
    CaptionsMissingError,
    MissingImagesError,
    load_coco_labels_from_instances,
    load_coco_lt,
    load_split,
)
from kdpvlpa.data.splits import split_file_path
from lt_data_helpers import COCO_CATEGORY_IDS

COCO_NAMES = load_split("coco_lt", "train")["class_names"]


def test_train_with_captions_from_annotations(coco_root):
    root, train_ids, _ = coco_root
    ds = load_coco_lt(root, "train", image_ids=train_ids, verify_images=True)
    assert ds.image_ids == train_ids
    assert ds.image_paths[0].name == f"{train_ids[0]:012d}.jpg"
    assert ds.image_paths[0].parent.name == "train2017"
    # All captions of an image, stripped, joined with one space, in file order.
    assert ds.captions[0] == f"caption 0 of image {train_ids[0]}. caption 1 of image {train_ids[0]}."
    assert ds.labels.shape == (3, 80)
    assert (len(ds.head), len(ds.medium), len(ds.tail)) == (22, 33, 25)


def test_caption_sources(coco_root):
    root, train_ids, _ = coco_root
    lmpt = load_coco_lt(root, "train", image_ids=train_ids, captions="lmpt")
    packaged = json.loads(split_file_path("coco_lt", "train_captions_lmpt").read_text())
    assert lmpt.captions[0] == packaged["captions"][0]
    (root / "annotations" / "captions_train2017.json").unlink()
    assert load_coco_lt(root, "train", image_ids=train_ids).captions == lmpt.captions  # auto
    with pytest.raises(FileNotFoundError, match="captions_train2017.json"):
        load_coco_lt(root, "train", image_ids=train_ids, captions="annotations")


def test_captions_missing_for_some_images(coco_root):
    root, train_ids, _ = coco_root
    path = root / "annotations" / "captions_train2017.json"
    data = json.loads(path.read_text())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != train_ids[1]]
    path.write_text(json.dumps(data))
    with pytest.raises(CaptionsMissingError, match=f"no caption for 1 of 3 images.*{train_ids[1]}"):
        load_coco_lt(root, "train", image_ids=train_ids)


@pytest.mark.parametrize("annotation", [
    {"image_id": 1, "caption": None}, {"image_id": 1}, {"image_id": "1", "caption": "x"}, 3,
])
def test_malformed_caption_annotations_are_named(coco_root, annotation):
    root, train_ids, _ = coco_root
    path = root / "annotations" / "captions_train2017.json"
    data = json.loads(path.read_text())
    data["annotations"].insert(2, annotation)
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"{path}: annotation 2 needs an integer 'image_id'"):
        load_coco_lt(root, "train", image_ids=train_ids)


@pytest.mark.parametrize("text", ["null", "[]", "3"])
def test_a_caption_file_that_is_not_an_object_is_named(coco_root, text):
    root, train_ids, _ = coco_root
    path = root / "annotations" / "captions_train2017.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"{path} does not hold a JSON object"):
        load_coco_lt(root, "train", image_ids=train_ids)


def test_a_run_with_its_own_captions_does_not_read_the_annotation_file(coco_root):
    from kdpvlpa.recipes import load_recipe
    from kdpvlpa.training.pipeline import load_data, load_test_data, train_split_size

    root, _, _ = coco_root
    (root / "annotations" / "captions_train2017.json").write_text("{not json")
    recipe = load_recipe("coco_lt")
    with pytest.warns(UserWarning, match="missing"):
        with pytest.raises(ValueError, match="not valid JSON"):
            load_data(recipe, root, allow_missing=True)
    with pytest.warns(UserWarning, match="missing"):
        train, test = load_data(recipe, root, allow_missing=True, train_captions=False)
    assert train.captions is None and train.num_images == 3 and test.num_images == 3
    # Evaluation reads no training image at all.
    import shutil

    shutil.rmtree(root / "train2017")
    with pytest.warns(UserWarning, match="missing"):
        assert load_test_data(recipe, root, allow_missing=True).num_images == 3
    assert train_split_size(recipe, root) == 1909


def test_test_split_and_instances_cross_check(coco_root):
    root, _, test_ids = coco_root
    ds = load_coco_lt(root, "test", image_ids=test_ids, check_labels=True)
    assert ds.captions is None
    assert ds.labels[-1].sum() == 0  # val2017 images without labels stay in
    assert ds.class_freq.tolist() == load_split("coco_lt", "train")["class_freq"]


def test_category_id_mapping(coco_root):
    root, _, test_ids = coco_root
    path = root / "annotations" / "instances_val2017.json"
    data = json.loads(path.read_text())
    data["annotations"] = [
        {"image_id": test_ids[0], "category_id": 90, "iscrowd": 0},   # toothbrush
        {"image_id": test_ids[0], "category_id": 13, "iscrowd": 0},   # stop sign (id 12 unused)
        {"image_id": test_ids[1], "category_id": 1, "iscrowd": 1},    # a crowd of people
    ]
    path.write_text(json.dumps(data))
    labels = load_coco_labels_from_instances(path, test_ids, COCO_NAMES)
    assert np.flatnonzero(labels[0]).tolist() == [COCO_NAMES.index("stop sign"), 79]
    assert COCO_NAMES[79] == "toothbrush" and COCO_CATEGORY_IDS[79] == 90
    assert labels[1, 0] == 1
    no_crowd = load_coco_labels_from_instances(path, test_ids, COCO_NAMES, include_crowd=False)
    assert no_crowd[1].sum() == 0
    with pytest.raises(ValueError, match="does not list 1 of 1 images"):
        load_coco_labels_from_instances(path, [123], COCO_NAMES)
    with pytest.raises(ValueError, match="do not match"):
        load_coco_labels_from_instances(path, test_ids, COCO_NAMES[::-1])
    with pytest.raises(ValueError, match="labels of 2 of 3 images differ"):
        load_coco_lt(root, "test", image_ids=test_ids, check_labels=True)


def test_annotations_dbl_skipped_are_not_positives(coco_root):
    # DBL's parser (which made the split's labels) skips an annotation marked
    # ignore, with area <= 0, or with a box under 1 pixel wide or high.
    root, _, test_ids = coco_root
    path = root / "annotations" / "instances_val2017.json"
    data = json.loads(path.read_text())
    box = lambda w, h: {"bbox": [5.0, 5.0, w, h], "area": w * h}  # noqa: E731
    data["annotations"] = [
        {"image_id": test_ids[0], "category_id": 1, "iscrowd": 0, **box(0.5, 20.0)},
        {"image_id": test_ids[0], "category_id": 2, "iscrowd": 0, **box(20.0, 0.9)},
        {"image_id": test_ids[0], "category_id": 3, "iscrowd": 0, "bbox": [1, 1, 4, 4],
         "area": 0.0},
        {"image_id": test_ids[0], "category_id": 4, "iscrowd": 0, "ignore": 1, **box(9, 9)},
        {"image_id": test_ids[0], "category_id": 5, "iscrowd": 0, **box(1.0, 1.0)},
        {"image_id": test_ids[1], "category_id": 1, "iscrowd": 1, **box(30.0, 40.0)},
    ]
    path.write_text(json.dumps(data))
    labels = load_coco_labels_from_instances(path, test_ids, COCO_NAMES)
    assert np.flatnonzero(labels[0]).tolist() == [COCO_CATEGORY_IDS.index(5)]
    assert np.flatnonzero(labels[1]).tolist() == [0]  # a crowd box counts, as in DBL


def test_missing_images(coco_root):
    root, _, _ = coco_root
    with pytest.raises(MissingImagesError) as info:
        load_coco_lt(root, "test")
    message = str(info.value)
    assert "COCO-LT test: 4997 of 5000 images are missing" in message
    assert "val2017/000000" in message and "val2017.zip" in message

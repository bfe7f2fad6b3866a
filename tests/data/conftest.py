"""Small VOCdevkit- and COCO-shaped folders built from the packaged splits."""

import json

import pytest

from kdpvlpa.data.splits import load_split
from lt_data_helpers import COCO_CATEGORY_IDS, VOC_TEST_IDS, VOC_TRAIN_IDS, voc_xml, write_jpeg


def _write_voc_split(root, year, split, count):
    names = split["class_names"]
    ids = split["image_ids"][:count]
    for n, (image_id, labels) in enumerate(zip(ids, split["labels"][:count])):
        write_jpeg(root / "VOCdevkit" / f"VOC{year}" / "JPEGImages" / f"{image_id}.jpg", n)
        objects = [names[c] for c in labels]
        if objects:
            objects.append(objects[0])  # a second instance of a class
        xml = voc_xml(image_id, objects, difficult={0})  # first object is difficult
        path = root / "VOCdevkit" / f"VOC{year}" / "Annotations" / f"{image_id}.xml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(xml)
    return ids


@pytest.fixture
def voc_root(tmp_path):
    """A VOCdevkit root with the first few train (2012) and test (2007) images."""
    root = tmp_path / "voc"
    train_ids = _write_voc_split(root, 2012, load_split("voc_lt", "train"), VOC_TRAIN_IDS)
    test_ids = _write_voc_split(root, 2007, load_split("voc_lt", "test"), VOC_TEST_IDS)
    return root, train_ids, test_ids


def _coco_ids(split, count, want_empty=False):
    ids = split["image_ids"][:count]
    if want_empty:
        empty = next(i for i, l in zip(split["image_ids"], split["labels"]) if not l)
        ids = ids[: count - 1] + [empty]
    return ids


@pytest.fixture
def coco_root(tmp_path):
    """A COCO 2017 root: a few images and real-format annotation JSON files."""
    root = tmp_path / "coco"
    train, test = load_split("coco_lt", "train"), load_split("coco_lt", "test")
    train_ids = _coco_ids(train, 3)
    test_ids = _coco_ids(test, 3, want_empty=True)
    for n, image_id in enumerate(train_ids):
        write_jpeg(root / "train2017" / f"{image_id:012d}.jpg", n)
    for n, image_id in enumerate(test_ids):
        write_jpeg(root / "val2017" / f"{image_id:012d}.jpg", 10 + n)
    (root / "annotations").mkdir(parents=True)

    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 40, "height": 30}
              for i in train_ids + [999999]]
    annotations = []
    for i in train_ids + [999999]:
        for k in range(2):
            annotations.append({"image_id": i, "id": len(annotations) + 1,
                                "caption": f"  caption {k} of image {i}. "})
    (root / "annotations" / "captions_train2017.json").write_text(json.dumps({
        "info": {}, "licenses": [], "images": images, "annotations": annotations,
    }))

    categories = [{"id": cid, "name": name, "supercategory": "x"}
                  for cid, name in zip(COCO_CATEGORY_IDS, test["class_names"])]
    rows = dict(zip(test["image_ids"], test["labels"]))
    inst = []
    for i in test_ids:
        for c in rows[i]:
            inst.append({"image_id": i, "category_id": COCO_CATEGORY_IDS[c],
                         "id": len(inst) + 1, "iscrowd": 0, "bbox": [1, 1, 5, 5],
                         "area": 25.0, "segmentation": [[1, 1, 5, 1, 5, 5]]})
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps({
        "info": {}, "licenses": [],
        "images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in test_ids],
        "annotations": inst,
        "categories": categories[::-1],  # file order need not be id order
    }))
    return root, train_ids, test_ids

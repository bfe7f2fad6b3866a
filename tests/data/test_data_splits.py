import pytest

from kdpvlpa.data import frequency_groups, load_split, load_split_file, natural_class_names


@pytest.mark.parametrize(
    "dataset, part, num_images, num_classes",
    [("voc_lt", "train", 1142, 20), ("voc_lt", "test", 4952, 20),
     ("coco_lt", "train", 1909, 80), ("coco_lt", "test", 5000, 80)],
)
def test_packaged_splits(dataset, part, num_images, num_classes):
    split = load_split(dataset, part)
    assert split["split"] == part
    assert len(split["image_ids"]) == len(split["labels"]) == num_images
    assert len(split["class_names"]) == num_classes
    freq = split["class_freq"] if part == "train" else split["train_class_freq"]
    if part == "train":  # the stored frequencies are the label counts
        counts = [0] * num_classes
        for labels in split["labels"]:
            for c in labels:
                counts[c] += 1
        assert counts == freq
    # The packaged groups follow the >= 100 / < 20 rule on training frequency.
    assert frequency_groups(freq) == (split["head"], split["medium"], split["tail"])


def test_unknown_dataset_and_part():
    with pytest.raises(ValueError, match="Unknown dataset 'imagenet'.*voc_lt, coco_lt"):
        load_split("imagenet", "train")
    with pytest.raises(ValueError, match="Unknown split part 'val'"):
        load_split("voc_lt", "val")


def test_natural_class_names():
    names = load_split("voc_lt", "train")["class_names"]
    natural = natural_class_names(names)
    assert natural[names.index("diningtable")] == "dining table"
    assert natural[names.index("pottedplant")] == "potted plant"
    assert natural[names.index("tvmonitor")] == "tv monitor"
    assert natural[0] == "aeroplane"
    coco = load_split("coco_lt", "train")["class_names"]
    assert natural_class_names(coco) == coco


def test_load_split_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_split_file(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        load_split_file(bad)


def test_load_split_file_encoding(tmp_path):
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + b'{"class_names": ["caf\xc3\xa9"]}')
    assert load_split_file(bom) == {"class_names": ["caf\u00e9"]}
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(b'{"class_names":\n ["caf\xe9"]}')
    with pytest.raises(ValueError, match=r"latin1.json is not UTF-8 text: byte 0xe9 on line 2"):
        load_split_file(latin1)


def test_data_package_imports_neither_keras_nor_torch():
    import subprocess
    import sys

    code = (
        "import sys, kdpvlpa.data, kdpvlpa.data.cli, kdpvlpa.recipes; "
        "heavy = [m for m in ('keras', 'torch') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

import json

from click.testing import CliRunner

from kdpvlpa.data import load_split
from kdpvlpa.data.cli import data


def _run(*args):
    return CliRunner().invoke(data, ["check", *args])


def test_check_reports_missing_without_traceback(voc_root):
    root, _, _ = voc_root
    result = _run("--dataset", "voc_lt", "--data-dir", str(root))
    assert result.exit_code == 1
    assert "train: 1142 images: 4 present, 1138 missing" in result.output
    assert "test : 4952 images: 4 present, 4948 missing" in result.output
    assert "Error: VOC-LT train: 1138 of 1142 images are missing" in result.output
    assert "VOCtrainval_11-May-2012.tar" in result.output
    assert "Traceback" not in result.output


def test_check_complete_synthetic_set(tmp_path):
    from kdpvlpa.data import make_synthetic_lt

    root = make_synthetic_lt(tmp_path / "s", num_classes=4, num_train=20, num_test=10, image_size=16)
    result = _run("--dataset", "synthetic", "--data-dir", str(root), "--verify-images")
    assert result.exit_code == 0, result.output
    assert "train: 20 images: 20 present, 0 missing, 0 corrupt" in result.output
    bad = next((root / "images" / "test").iterdir())
    bad.write_bytes(b"garbage")
    result = _run("--dataset", "synthetic", "--data-dir", str(root), "--verify-images")
    assert result.exit_code == 1 and bad.name in result.output
    assert "1 corrupt" in result.output and "cannot be decoded" in result.output


def test_check_coco_and_bad_options(coco_root, tmp_path):
    root, _, _ = coco_root
    result = _run("--dataset", "coco_lt", "--data-dir", str(root))
    assert result.exit_code == 1
    # The caption file is read, not only found: this one covers 3 images.
    assert "captions: annotations/captions_train2017.json found but unusable" in result.output
    assert "has no caption for 1906 of 1909 images" in result.output
    captions = root / "annotations" / "captions_train2017.json"
    ids = load_split("coco_lt", "train")["image_ids"]
    captions.write_text(json.dumps({"annotations": [
        {"image_id": i, "id": n, "caption": "a cat."} for n, i in enumerate(ids)]}))
    result = _run("--dataset", "coco_lt", "--data-dir", str(root))
    assert "json found, a caption for every training image" in result.output
    captions.write_text(json.dumps({"annotations": [{"image_id": ids[0], "caption": None}]}))
    result = _run("--dataset", "coco_lt", "--data-dir", str(root))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "annotation 0 needs an integer 'image_id' and a 'caption' string" in result.output
    result = _run("--dataset", "synthetic", "--data-dir", str(tmp_path / "none"))
    assert result.exit_code == 1 and "No synthetic split file" in result.output
    assert _run("--dataset", "imagenet", "--data-dir", str(tmp_path)).exit_code == 2

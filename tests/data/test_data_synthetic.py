import json
import subprocess
import sys

import numpy as np
import pytest

from kdpvlpa.data import (
    SyntheticSetInUseError,
    load_dataset,
    load_image,
    load_lt_split,
    load_synthetic_lt,
    make_synthetic_lt,
    synthetic_caption,
    synthetic_class_names,
    synthetic_lt_in_use,
)

FILES = ("synthetic_lt_train.json", "synthetic_lt_test.json", "synthetic_lt_train_captions.json")


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return make_synthetic_lt(tmp_path_factory.mktemp("syn") / "set")


def test_long_tailed_groups(synthetic_root):
    train = load_synthetic_lt(synthetic_root, "train", verify_images=True)
    assert (train.num_images, train.num_classes, train.name) == (400, 12, "synthetic")
    assert train.head and train.medium and train.tail
    assert (train.class_freq < 20).sum() >= 3
    assert (train.class_freq >= 100).sum() >= 2
    assert train.class_freq.tolist() == train.labels.sum(axis=0).astype(int).tolist()
    assert (train.labels.sum(axis=1) >= 1).all()  # every training image has a label
    test = load_synthetic_lt(synthetic_root, "test")
    assert test.class_freq.tolist() == train.class_freq.tolist()  # training frequencies
    assert (test.labels.sum(axis=0) >= 10).all()  # every class has test positives


def test_co_occurrence_structure(synthetic_root):
    split = json.loads((synthetic_root / FILES[0]).read_text())
    prob = np.array(split["condition_prob"])
    off_diagonal = prob - np.eye(len(prob))
    # Some rare classes appear mostly with one frequent class (rider with bicycle).
    assert (off_diagonal >= 0.7).sum() >= 3


def test_written_format_loads_through_generic_loader(synthetic_root):
    split = json.loads((synthetic_root / FILES[0]).read_text())
    for key in ("dataset", "split", "class_names", "image_ids", "image_paths", "labels",
                "class_freq", "neg_class_freq", "head", "medium", "tail", "condition_prob"):
        assert key in split
    test_split = json.loads((synthetic_root / FILES[1]).read_text())
    for key in ("train_class_freq", "test_pos_count", "num_images_without_labels", "head"):
        assert key in test_split
    assert not split["image_paths"][0].startswith("/")
    # Images spread over the split and asked for out of order: the dataset
    # keeps split order, and each image gets its own caption from the file.
    wanted = split["image_ids"][3::41][::-1]
    ds = load_lt_split(synthetic_root / FILES[0], synthetic_root,
                       captions_json=synthetic_root / FILES[2], image_ids=wanted)
    assert ds.num_images == len(wanted) == 10 and ds.name == "synthetic_lt"
    assert ds.image_ids == wanted[::-1]
    caption_file = json.loads((synthetic_root / FILES[2]).read_text())
    by_id = dict(zip(caption_file["image_ids"], caption_file["captions"]))
    assert ds.captions == [by_id[i] for i in ds.image_ids]
    assert len(set(ds.captions)) > 1
    same = load_dataset("synthetic", synthetic_root, "train", image_ids=ds.image_ids)
    np.testing.assert_array_equal(same.labels, ds.labels)


def test_images_and_captions(synthetic_root):
    train = load_synthetic_lt(synthetic_root, "train", image_ids=None)
    pixels = load_image(train.image_paths[0])
    assert pixels.shape == (64, 64, 3)
    for caption, row in zip(train.captions[:20], train.labels[:20]):
        assert caption.startswith("a photo of ")
        for c in np.flatnonzero(row):
            assert train.class_names[c] in caption


def test_seeded_reproducibility(synthetic_root, tmp_path):
    again = make_synthetic_lt(tmp_path / "again")
    for name in FILES:
        assert (again / name).read_text() == (synthetic_root / name).read_text()
    first = json.loads((again / FILES[0]).read_text())["image_paths"][:3]
    for rel in first:
        assert (again / rel).read_bytes() == (synthetic_root / rel).read_bytes()
    other = make_synthetic_lt(tmp_path / "other", seed=7, num_train=60, num_test=20)
    other_labels = json.loads((other / FILES[0]).read_text())["labels"]
    assert other_labels != json.loads((again / FILES[0]).read_text())["labels"][:60]


def test_idempotent_and_regenerates_on_new_parameters(tmp_path):
    root = make_synthetic_lt(tmp_path / "s", num_classes=5, num_train=40, num_test=20, image_size=32)
    stamp = {n: (root / n).stat().st_mtime_ns for n in FILES}
    make_synthetic_lt(tmp_path / "s", num_classes=5, num_train=40, num_test=20, image_size=32)
    assert stamp == {n: (root / n).stat().st_mtime_ns for n in FILES}
    make_synthetic_lt(tmp_path / "s", num_classes=5, num_train=30, num_test=20, image_size=32)
    assert load_synthetic_lt(root, "train").num_images == 30
    assert len(list((root / "images" / "train").iterdir())) == 30  # stale images removed
    # An incomplete folder (an image deleted) is rebuilt, not reused.
    next((root / "images" / "test").iterdir()).unlink()
    make_synthetic_lt(tmp_path / "s", num_classes=5, num_train=30, num_test=20, image_size=32)
    assert load_synthetic_lt(root, "test").num_images == 20


def test_names_captions_and_bad_arguments(tmp_path):
    names = synthetic_class_names(30)
    assert len(set(names)) == 30 and names[0] == "red circle"
    assert synthetic_caption(["orange ring"]) == "a photo of an orange ring."
    with pytest.raises(ValueError, match="num_classes must be in 2..144, got 1"):
        make_synthetic_lt(tmp_path, num_classes=1)
    with pytest.raises(ValueError, match="num_train must be an int"):
        make_synthetic_lt(tmp_path, num_train=10.5)
    with pytest.raises(FileNotFoundError, match="make_synthetic_lt"):
        load_synthetic_lt(tmp_path / "empty", "train")


@pytest.mark.parametrize("damage", [b"[]", b"null", b"\xff\xfe garbage", b""])
def test_a_damaged_split_file_is_redrawn(tmp_path, damage):
    args = dict(num_classes=5, num_train=30, num_test=20, image_size=32)
    root = make_synthetic_lt(tmp_path / "s", **args)
    good = (root / FILES[0]).read_bytes()
    (root / FILES[0]).write_bytes(damage)
    make_synthetic_lt(tmp_path / "s", **args)
    assert (root / FILES[0]).read_bytes() == good


def test_a_set_in_use_by_another_process_is_not_redrawn(tmp_path):
    args = dict(num_classes=5, num_train=30, num_test=20, image_size=32)
    root = tmp_path / "s"
    # Another process (a demo run with seed 1) holds the set until told to stop.
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys\nfrom kdpvlpa.data import synthetic_lt_in_use\n"
         f"with synthetic_lt_in_use({str(root)!r}, seed=1, **{args!r}):\n"
         "    print('held', flush=True)\n    sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        drawn = {n: (root / n).read_bytes() for n in FILES}
        with pytest.raises(SyntheticSetInUseError, match="held with other settings.*--data-dir"):
            make_synthetic_lt(root, seed=2, **args)
        with pytest.raises(SyntheticSetInUseError, match="held with other settings"):
            with synthetic_lt_in_use(root, seed=2, **args):
                pass
        assert drawn == {n: (root / n).read_bytes() for n in FILES}
        # The same settings share the set.
        with synthetic_lt_in_use(root, seed=1, **args) as same:
            assert load_synthetic_lt(same, "train", verify_images=True).num_images == 30
        assert make_synthetic_lt(root, seed=1, **args) == root
    finally:
        holder.communicate("")
    assert holder.returncode == 0
    # Released (the holder exited): the other seed redraws the folder.
    make_synthetic_lt(root, seed=2, **args)
    assert json.loads((root / FILES[0]).read_text())["generator"]["seed"] == 2


def test_a_set_whose_drawer_died_is_drawn_by_the_next(tmp_path, capsys):
    args = dict(num_classes=5, num_train=30, num_test=20, image_size=32)
    root = tmp_path / "s"
    root.mkdir()
    # A process that was drawing (exclusive lock, no set written yet) dies.
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, sys, time\n"
         f"handle = open({str(root / '.synthetic_lt.lock')!r}, 'a')\n"
         "fcntl.flock(handle, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(1)\n"
         "import os\nos._exit(1)\n"],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    make_synthetic_lt(root, **args)  # waits for the lock, then draws
    holder.wait()
    # The wait is said, once.
    assert capsys.readouterr().err == (
        f"Waiting for another process to finish drawing the synthetic set in {root} ...\n")
    assert load_synthetic_lt(root, "train", verify_images=True).num_images == 30


def test_a_complete_set_is_read_where_no_lock_file_can_be_made(tmp_path):
    args = dict(num_classes=5, num_train=30, num_test=20, image_size=32)
    root = make_synthetic_lt(tmp_path / "s", **args)
    # As in a read-only folder: the lock file cannot be opened at all.
    (root / ".synthetic_lt.lock").unlink()
    (root / ".synthetic_lt.lock").mkdir()
    with synthetic_lt_in_use(root, **args) as held:
        assert load_synthetic_lt(held, "test").num_images == 20
    # A set that would have to be drawn there is refused with the system's error.
    with pytest.raises(IsADirectoryError):
        with synthetic_lt_in_use(root, seed=3, **args):
            pass
    assert json.loads((root / FILES[0]).read_text())["generator"]["seed"] == 42

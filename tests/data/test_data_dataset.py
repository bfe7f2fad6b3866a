import numpy as np
import pytest

from kdpvlpa.data import LTDataset


def _dataset(**changes):
    fields = dict(
        name="toy", split="train", root="/data", class_names=["a", "b", "c"],
        image_ids=["i0", "i1", "i2"], image_paths=["/data/0.jpg", "/data/1.jpg", "/data/2.jpg"],
        labels=np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1]]), captions=["x", "y", "z"],
        class_freq=np.array([150, 30, 5]), head=[0], medium=[1], tail=[2],
    )
    fields.update(changes)
    return LTDataset(**fields)


def test_fields_and_subset():
    ds = _dataset()
    assert (ds.num_images, ds.num_classes, len(ds)) == (3, 3, 3)
    assert ds.labels.dtype == np.float32 and ds.class_freq.dtype == np.int64
    sub = ds.subset([2, 0])
    assert sub.image_ids == ["i2", "i0"] and sub.captions == ["z", "x"]
    assert sub.labels.tolist() == [[0, 0, 1], [1, 0, 0]]
    assert sub.class_freq.tolist() == [150, 30, 5] and sub.tail == [2]
    assert ds.subset(np.array([False, True, False])).image_ids == ["i1"]
    assert ds.label_lists() == [[0], [0, 1], [2]]


def test_validation_names_shapes():
    with pytest.raises(ValueError, match=r"\(3, 3\), got \(3, 2\)"):
        _dataset(labels=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="image_ids: 3, image_paths: 2"):
        _dataset(image_paths=["/a.jpg", "/b.jpg"])
    with pytest.raises(ValueError, match="captions: 1"):
        _dataset(captions=["only one"])
    with pytest.raises(ValueError, match="class_freq must have shape"):
        _dataset(class_freq=[1, 2])
    with pytest.raises(ValueError, match="split must be"):
        _dataset(split="val")
    with pytest.raises(ValueError, match="only 0 and 1"):
        _dataset(labels=np.full((3, 3), 0.5))
    with pytest.raises(ValueError, match="tail holds class indices outside"):
        _dataset(tail=[7])
    with pytest.raises(ValueError, match="subset indices"):
        _dataset().subset([3])

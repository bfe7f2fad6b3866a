"""`TrainingBatches`: every example once an epoch, with its own labels,
tokens and view; the same batches from the cache and from the images."""

import numpy as np
from PIL import Image

import kdpvlpa  # noqa: F401  (selects the torch backend before keras)
from kdpvlpa.training import TrainingBatches, load_training_image

N, C, L = 11, 3, 6


def _inputs():
    # Row r is recognisable everywhere: its features hold 10·r + view, its
    # first token is 100 + r, it has 1 + r % 4 real tokens, its label is r % C.
    features = (10 * np.arange(N)[:, None] + np.arange(2)[None, :]).astype("float32")
    features = np.broadcast_to(features[:, :, None, None], (N, 2, 2, 3)).copy()
    lengths = 1 + np.arange(N) % 4
    padding_mask = np.arange(L)[None, :] < lengths[:, None]
    token_ids = np.where(padding_mask, 1, 0).astype("int32")
    token_ids[:, 0] = 100 + np.arange(N)
    labels = np.eye(C, dtype="float32")[np.arange(N) % C]
    return features, token_ids, padding_mask, labels


def _epoch(batches, epoch):
    batches.set_epoch(epoch)
    return [batches[i] for i in range(len(batches))]


def test_each_batch_keeps_its_examples_together_and_an_epoch_sees_each_once():
    features, token_ids, padding_mask, labels = _inputs()
    batches = TrainingBatches(token_ids, padding_mask, features=features, labels=labels,
                              batch_size=4, flip=True, seed=7)
    assert len(batches) == 3  # 11 examples by 4
    orders, views = [], []
    for epoch in (0, 1):
        seen = []
        for x, y in _epoch(batches, epoch):
            value = x["image_features"][:, 0, 0]
            rows, view = (value // 10).astype(int), (value % 10).astype(int)
            assert set(view) <= {0, 1}
            np.testing.assert_array_equal(x["token_ids"][:, 0], 100 + rows)
            np.testing.assert_array_equal(y, labels[rows])
            # Padding columns shared by the whole batch are dropped.
            longest = (1 + rows % 4).max()
            assert x["token_ids"].shape[1] == x["padding_mask"].shape[1] == longest
            np.testing.assert_array_equal(x["padding_mask"], padding_mask[rows, :longest])
            seen.extend(rows)
            views.extend(view)
        assert sorted(seen) == list(range(N))
        orders.append(seen)
    assert orders[0] != orders[1]  # a new order every epoch
    assert 0 < np.mean(views) < 1  # both views are used
    # The same (seed, epoch) gives the same batches: what resuming relies on.
    again = TrainingBatches(token_ids, padding_mask, features=features, labels=labels,
                            batch_size=4, flip=True, seed=7)
    for (a, ya), (b, yb) in zip(_epoch(batches, 1), _epoch(again, 1)):
        np.testing.assert_array_equal(a["image_features"], b["image_features"])
        np.testing.assert_array_equal(ya, yb)


def test_images_get_the_cached_paths_order_and_flips(tmp_path):
    features, token_ids, padding_mask, _ = _inputs()
    rng = np.random.default_rng(0)
    paths = []
    for r in range(N):
        paths.append(tmp_path / f"{r}.png")
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(paths[-1])
    cached = TrainingBatches(token_ids, padding_mask, features=features, batch_size=5,
                             flip=True, seed=3)
    raw = TrainingBatches(token_ids, padding_mask, image_paths=paths, image_size=16,
                          batch_size=5, flip=True, seed=3)
    for ((a,), (b,)) in zip(_epoch(cached, 2), _epoch(raw, 2)):
        value = a["image_features"][:, 0, 0]
        for row, view, image in zip((value // 10).astype(int), value % 10, b["images"]):
            expected = load_training_image(paths[row], 16)
            np.testing.assert_array_equal(image, expected[:, ::-1] if view else expected)

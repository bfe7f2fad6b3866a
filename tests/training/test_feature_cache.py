from pathlib import Path

import numpy as np
import pytest
from keras import ops

from kdpvlpa.training import FeatureCache, TrainingBatches, load_training_image, train_phase
from kdpvlpa.training.feature_cache import encoder_fingerprint

from training_helpers import tiny_model


def _direct(model, paths, flip=False):
    images = np.stack([load_training_image(p, 64) for p in paths])
    if flip:
        images = np.ascontiguousarray(images[:, :, ::-1])
    return ops.convert_to_numpy(model.encode_images(images))


def _filled_cache(tmp_path, dataset, num_images, **kwargs):
    """A complete cache of the first `num_images` images, and its features."""
    model = tiny_model(dataset.class_names)
    paths = dataset.image_paths[:num_images]
    cache = FeatureCache(tmp_path, model, paths, progress=False, **kwargs)
    return model, paths, cache, np.array(cache.load())


def test_cache_holds_encoder_outputs_and_flips(tmp_path, synthetic_train):
    model = tiny_model(synthetic_train.class_names)
    paths = synthetic_train.image_paths[:10]
    features = FeatureCache(tmp_path, model, paths, flips=True, batch_size=4,
                            progress=False).load()
    assert features.shape == (10, 2, 65, 64)
    np.testing.assert_allclose(features[:, 0], _direct(model, paths), atol=1e-5)
    np.testing.assert_allclose(features[:, 1], _direct(model, paths, flip=True), atol=1e-5)


def test_second_load_reads_without_the_encoder(tmp_path, synthetic_train, monkeypatch):
    model = tiny_model(synthetic_train.class_names)
    paths = synthetic_train.image_paths[:6]
    first = np.array(FeatureCache(tmp_path, model, paths, progress=False).load())

    def fail(*args, **kwargs):
        raise AssertionError("the encoder ran although the cache was complete")

    monkeypatch.setattr(model, "encode_images", fail)
    second = np.array(FeatureCache(tmp_path, model, paths, progress=False).load())
    np.testing.assert_array_equal(first, second)


def test_changed_encoder_or_preprocessing_or_image_changes_the_key(tmp_path, synthetic_train):
    model = tiny_model(synthetic_train.class_names)
    paths = synthetic_train.image_paths[:4]
    base = FeatureCache(tmp_path, model, paths, progress=False)
    other_weights = tiny_model(synthetic_train.class_names, seed=1)
    assert encoder_fingerprint(other_weights) != encoder_fingerprint(model)
    other_layer = tiny_model(synthetic_train.class_names, feature_layer=-1)
    assert encoder_fingerprint(other_layer) != encoder_fingerprint(model)
    other_norm = tiny_model(synthetic_train.class_names, image_mean=(0.5, 0.5, 0.5))
    assert encoder_fingerprint(other_norm) != encoder_fingerprint(model)
    other_resize = tiny_model(synthetic_train.class_names, crop_to_aspect_ratio=False)
    assert encoder_fingerprint(other_resize) != encoder_fingerprint(model)
    copy = tmp_path / "copy.png"
    copy.write_bytes(paths[0].read_bytes())
    moved = FeatureCache(tmp_path, model, [copy] + paths[1:], progress=False)
    assert moved.features_path != base.features_path


def test_half_written_cache_is_completed_not_read(tmp_path, synthetic_train):
    _, _, cache, expected = _filled_cache(tmp_path, synthetic_train, 8, batch_size=4)
    # Simulate a run killed after the first chunk: rows 4.. hold garbage and
    # the completion map says they are not done.
    features = np.load(cache.features_path, mmap_mode="r+")
    features[4:] = 1e6
    features.flush()
    done = np.load(cache.done_path)
    done[4:] = False
    np.save(cache.done_path, done)
    assert cache.status() == (4, 8)
    np.testing.assert_allclose(np.array(cache.load()), expected, atol=1e-6)
    assert cache.status() == (8, 8)


def test_damaged_features_file_is_rebuilt_never_served_as_zeros(tmp_path, synthetic_train,
                                                                 monkeypatch):
    from kdpvlpa.training import feature_cache as fc

    _, _, cache, expected = _filled_cache(tmp_path, synthetic_train, 3)
    assert np.abs(expected).max() > 0
    # A features file cut short (a partial copy, a full disk) while the
    # completion map says every row is done: "r+" would extend it with zeros.
    with open(cache.features_path, "r+b") as f:
        f.truncate(cache.features_path.stat().st_size // 2)
    # And a run killed while rebuilding it, after the features file was
    # recreated but before the completion map was reset.
    real_save = fc._atomic_save

    def killed(path, array):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(fc, "_atomic_save", killed)
    with pytest.raises(KeyboardInterrupt):
        cache.load()
    monkeypatch.setattr(fc, "_atomic_save", real_save)
    assert cache.status() == (0, 3)
    np.testing.assert_allclose(np.array(cache.load()), expected, atol=1e-6)
    assert cache.status() == (3, 3)


def test_equal_encoders_share_a_key_whatever_their_layer_names(synthetic_train):
    first = tiny_model(synthetic_train.class_names)
    second = tiny_model(synthetic_train.class_names)
    assert first.image_encoder.name != second.image_encoder.name
    assert encoder_fingerprint(first) == encoder_fingerprint(second)


def test_a_second_process_waits_for_the_one_filling_the_cache(tmp_path, synthetic_train,
                                                             capfd):
    import fcntl
    import threading

    model, paths, cache, expected = _filled_cache(tmp_path, synthetic_train, 4)
    second = FeatureCache(tmp_path, model, paths, progress=False)  # complete: no encoder
    result = {}
    with open(cache.lock_path, "a") as held:  # another process holds the lock
        fcntl.flock(held, fcntl.LOCK_EX)
        reader = threading.Thread(target=lambda: result.setdefault("x", np.array(
            second.load())))
        reader.start()
        reader.join(timeout=1.0)
        assert reader.is_alive() and "x" not in result  # waiting, not reading
        assert "Waiting for another run" in capfd.readouterr().err
        fcntl.flock(held, fcntl.LOCK_UN)
    reader.join(timeout=30)
    np.testing.assert_array_equal(result["x"], expected)


def test_a_nested_load_of_the_same_cache_is_an_error_not_a_deadlock(tmp_path,
                                                                    synthetic_train):
    from kdpvlpa.training import feature_cache as fc

    model = tiny_model(synthetic_train.class_names)
    cache = FeatureCache(tmp_path, model, synthetic_train.image_paths[:2], progress=False)
    with fc._exclusive(cache.lock_path):
        with pytest.raises(RuntimeError, match="already filling the cache"):
            cache.load()
    assert cache.load().shape[0] == 2


def test_training_on_cached_features_gives_the_same_losses(tmp_path, synthetic_train):
    histories = []
    for use_cache in (False, True):
        model = tiny_model(synthetic_train.class_names)
        token_ids, mask = model.tokenize(synthetic_train.captions)
        features = None
        if use_cache:
            features = FeatureCache(tmp_path / "cache", model, synthetic_train.image_paths,
                                    flips=True, progress=False).load()
        batches = TrainingBatches(token_ids, mask, features=features,
                                  image_paths=synthetic_train.image_paths, image_size=64,
                                  batch_size=16, flip=True, seed=5)
        histories.append(train_phase(model, "pretrain", batches, 2, {"learning_rate": 1e-3},
                                     tmp_path / f"ckpt{use_cache}", seed=5, verbose=0))
    for uncached, cached in zip(*histories):
        for key in ("loss", "gcl_loss", "qcl_loss"):
            assert cached[key] == pytest.approx(uncached[key], abs=1e-5)


def test_a_complete_cache_in_a_read_only_folder_is_read(tmp_path, synthetic_train,
                                                        monkeypatch):
    import builtins
    import errno

    import kdpvlpa.training.feature_cache as feature_cache

    model, paths, cache, features = _filled_cache(tmp_path, synthetic_train, 4)

    real_open = builtins.open
    refused = []

    # Every file of the cache folder (the lock, numpy's memory maps) refuses
    # writing, as on a read-only file system (root ignores file modes).
    def read_only_open(file, mode="r", *args, **kwargs):
        if (isinstance(file, (str, Path)) and str(file).startswith(str(tmp_path))
                and any(m in mode for m in "wax+")):
            refused.append(Path(file).name)
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", read_only_open)
    monkeypatch.setattr(feature_cache, "open", read_only_open, raising=False)
    again = FeatureCache(tmp_path, model, paths, progress=False).load()
    monkeypatch.undo()
    np.testing.assert_array_equal(np.array(again), features)
    assert refused == [cache.lock_path.name]  # the lock was tried, nothing else


def test_a_full_disk_is_a_clear_error_before_any_row_is_written(tmp_path, synthetic_train,
                                                                monkeypatch):
    import errno
    import os

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    model = tiny_model(synthetic_train.class_names)
    cache = FeatureCache(tmp_path, model, synthetic_train.image_paths[:4], progress=False)
    with pytest.raises(OSError, match="Not enough disk space for the feature cache"):
        cache.load()
    assert not list(tmp_path.rglob("*.npy"))  # no sparse file left to crash on


def test_a_system_without_fallocate_still_caches(tmp_path, synthetic_train, monkeypatch):
    import os

    # macOS has no os.posix_fallocate; the cache is then written row by row.
    monkeypatch.delattr(os, "posix_fallocate")
    model = tiny_model(synthetic_train.class_names)
    paths = synthetic_train.image_paths[:4]
    features = np.array(FeatureCache(tmp_path, model, paths, progress=False).load())
    expected = model.encode_images(np.stack([load_training_image(p, 64) for p in paths]))
    np.testing.assert_allclose(features[:, 0], np.asarray(expected), atol=1e-6)


def test_images_resized_whole_are_cached_as_the_model_reads_them(tmp_path, synthetic_train):
    # 4:3 images with something only near the left side: the crop loses it,
    # the whole-image resize (LMPT's, DBL's) keeps it, and the cache follows
    # the model's choice.
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):  # the left 8 columns are cropped away
        image = np.full((48, 64, 3), 60 * i + 40, np.uint8)
        image[10:30, 8 * i : 8 * i + 6] = rng.integers(0, 50, 3, dtype=np.uint8) + (200, 0, 0)
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    whole = load_training_image(paths[0], 64, crop_to_aspect_ratio=False)
    cropped = load_training_image(paths[0], 64)
    reference = np.asarray(Image.open(paths[0]).resize((64, 64), Image.BICUBIC))
    np.testing.assert_array_equal(whole, reference)
    red = lambda x: ((x[..., 0] > 200) & (x[..., 1] < 60) & (x[..., 2] < 60)).sum()
    assert red(whole) > 0 and red(cropped) == 0

    model = tiny_model(synthetic_train.class_names, crop_to_aspect_ratio=False)
    features = FeatureCache(tmp_path / "cache", model, paths, progress=False).load()
    images = np.stack([load_training_image(p, 64, crop_to_aspect_ratio=False) for p in paths])
    np.testing.assert_allclose(features[:, 0], ops.convert_to_numpy(model.encode_images(images)),
                               atol=1e-5)
    raw = TrainingBatches(np.ones((3, 4), "int32"), np.ones((3, 4), bool), image_paths=paths,
                          image_size=64, batch_size=3, shuffle=False, crop_to_aspect_ratio=False)
    np.testing.assert_array_equal(raw[0][0]["images"], images)

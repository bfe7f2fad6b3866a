"""The `MeanAveragePrecision` Keras metric inside `fit` and `evaluate`."""

import kdpvlpa  # noqa: F401  (selects the torch backend before keras)
import keras
import numpy as np
import pytest
import torch

from kdpvlpa.metrics import MeanAveragePrecision
from kdpvlpa.metrics import average_precision
from kdpvlpa.metrics import long_tail_map

CLASS_FREQ = [150, 40, 5]  # head, medium, tail


def make_data(seed=0, n=64):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype("float32")
    y = (x[:, :3] + 0.7 * rng.normal(size=(n, 3)) > 0.3).astype("float32")
    y[0] = 1.0
    y[-1] = 1.0
    return x, y


def tiny_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(3, activation="sigmoid")]
    )


def test_update_result_reset():
    metric = MeanAveragePrecision()
    assert float(metric.result()) == 0.0
    y = np.array([[1, 0], [0, 1], [1, 0]], dtype="float32")
    s = np.array([[0.9, 0.2], [0.4, 0.8], [0.4, 0.1]], dtype="float32")
    metric.update_state(y[:2], s[:2])
    metric.update_state(torch.tensor(y[2:]), torch.tensor(s[2:]))
    assert float(metric.result()) == pytest.approx(100 * (5 / 6 + 1) / 2, rel=1e-6)
    metric.reset_state()
    assert float(metric.result()) == 0.0
    metric.update_state(y[:1], s[:1])  # only class 0 has a positive
    assert float(metric.result()) == pytest.approx(100.0)


def test_fit_and_evaluate_report_map_of_the_validation_set():
    x, y = make_data()
    x_train, y_train, x_val, y_val = x[:40], y[:40], x[40:], y[40:]
    model = tiny_model()
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss="binary_crossentropy",
        metrics=[
            MeanAveragePrecision(),
            *[
                MeanAveragePrecision(CLASS_FREQ, group=g)
                for g in ("head", "medium", "tail")
            ],
        ],
        jit_compile=False,
    )
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        batch_size=8,
        epochs=2,
        verbose=0,
    )
    for key in ("map", "val_map", "val_map_head", "val_map_medium", "val_map_tail"):
        assert key in history.history and len(history.history[key]) == 2

    # After training, validation mAP equals long_tail_map on the predictions:
    # state is reset between epochs and between fit and evaluate.
    expected = long_tail_map(y_val, model.predict(x_val, verbose=0), CLASS_FREQ)
    assert history.history["val_map"][-1] == pytest.approx(expected["total"], rel=1e-5)
    assert history.history["val_map_tail"][-1] == pytest.approx(expected["tail"], rel=1e-5)

    # Odd batch sizes: the accumulated state spans all batches.
    results = model.evaluate(x_val, y_val, batch_size=5, return_dict=True, verbose=0)
    assert results["map"] == pytest.approx(expected["total"], rel=1e-5)
    assert results["map_head"] == pytest.approx(expected["head"], rel=1e-5)
    assert results["map_medium"] == pytest.approx(expected["medium"], rel=1e-5)

    # The training-set figure is the AP over everything seen in the epoch, not
    # over the last batch: with a learning rate of 0 every batch sees the same
    # weights, so it is the AP of the training set.
    model.optimizer.learning_rate = 0.0
    history = model.fit(x_train, y_train, batch_size=8, epochs=1, verbose=0)
    expected = long_tail_map(y_train, model.predict(x_train, verbose=0), CLASS_FREQ)
    assert history.history["map"][0] == pytest.approx(expected["total"], rel=1e-5)


@pytest.mark.slow
def test_map_under_jit_compile_equals_the_eager_run():
    # torch.compile leaves the NumPy metric out of its graph (~25 s: compiling);
    # traced, it failed in Inductor's C++ build.
    x, y = make_data()

    def fit(jit_compile):
        model = tiny_model()
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy",
                      metrics=[MeanAveragePrecision(CLASS_FREQ, group="tail")],
                      jit_compile=jit_compile)
        history = model.fit(x[:40], y[:40], validation_data=(x[40:], y[40:]), batch_size=8,
                            epochs=2, verbose=0)
        return history.history, model.predict(x[40:], verbose=0)

    history, scores = fit(True)
    expected = long_tail_map(y[40:], scores, CLASS_FREQ)["tail"]
    assert history["val_map_tail"][-1] == pytest.approx(expected, rel=1e-5)
    eager, _ = fit(False)
    for key in ("map_tail", "val_map_tail"):
        np.testing.assert_allclose(history[key], eager[key], rtol=1e-5)


def test_callbacks_know_that_higher_map_is_better(tmp_path):
    x, y = make_data()
    model = tiny_model()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy",
                  metrics=[MeanAveragePrecision()])
    stopper = keras.callbacks.EarlyStopping(monitor="val_map", patience=5)
    best = keras.callbacks.ModelCheckpoint(tmp_path / "best.keras", monitor="val_map",
                                           save_best_only=True)
    model.fit(x[:40], y[:40], validation_data=(x[40:], y[40:]), batch_size=8, epochs=1,
              verbose=0, callbacks=[stopper, best])
    # No `mode="max"` given: both read the metric's direction.
    assert stopper.monitor_op(2.0, 1.0) and not stopper.monitor_op(1.0, 2.0)
    assert best.monitor_op(2.0, 1.0) and not best.monitor_op(1.0, 2.0)
    assert (tmp_path / "best.keras").exists()


def test_config_round_trip_and_errors():
    metric = MeanAveragePrecision(CLASS_FREQ, group="tail", name="tail_map")
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(metric)
    )
    assert isinstance(restored, MeanAveragePrecision)
    assert restored.get_config() == metric.get_config()
    assert restored.name == "tail_map"

    with pytest.raises(ValueError, match="needs `class_freq`"):
        MeanAveragePrecision(group="tail")
    with pytest.raises(ValueError, match="group"):
        MeanAveragePrecision(CLASS_FREQ, group="rare")
    with pytest.raises(ValueError, match=r"y_true.shape=\(2, 3\), y_pred.shape=\(2, 2\)"):
        MeanAveragePrecision().update_state(np.ones((2, 3)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="3 classes but `class_freq` has 2"):
        MeanAveragePrecision([10, 200]).update_state(np.ones((2, 3)), np.ones((2, 3)))


def test_sample_weight_is_used():
    y = np.array([[1], [0], [1], [0]], dtype="float32")
    s = np.array([[0.9], [0.8], [0.1], [0.2]], dtype="float32")
    w = np.array([1.0, 1.0, 0.0, 1.0])
    metric = MeanAveragePrecision()
    metric.update_state(y, s, sample_weight=w)
    assert float(metric.result()) == pytest.approx(
        100 * average_precision(y, s, sample_weight=w)[0], rel=1e-6
    )

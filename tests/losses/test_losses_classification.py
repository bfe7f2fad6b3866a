"""CLS: binary cross-entropy on logits, and its asymmetric (ASL) option."""

import math

import kdpvlpa  # noqa: F401  (selects the torch backend before keras)
import keras
import numpy as np
import pytest
import torch

from kdpvlpa import losses


def ref_asl(y, x, gamma_pos=0.0, gamma_neg=0.0, clip=0.0):
    total = 0.0
    for i in range(y.shape[0]):
        for c in range(y.shape[1]):
            p = 1 / (1 + math.exp(-x[i, c]))
            if y[i, c]:
                total += -((1 - p) ** gamma_pos) * math.log(p)
            else:
                pm = max(p - clip, 0.0)
                total += -(pm**gamma_neg) * math.log(1 - pm)
    return total / y.size


def test_bce_by_hand():
    # Positive with logit 0: -log σ(0) = log 2. Negative with logit ln 3:
    # p = 3/4, -log(1 - p) = log 4. Mean over the two entries: 1.5 log 2.
    got = losses.classification_loss([[1, 0]], [[0.0, math.log(3)]])
    assert float(got) == pytest.approx(1.5 * math.log(2), abs=1e-6)


def test_bce_matches_keras_and_loops_and_is_stable():
    rng = np.random.default_rng(0)
    y = (rng.random((4, 5)) < 0.4).astype(np.float64)
    x = rng.normal(scale=3, size=(4, 5))
    got = losses.classification_loss(y, torch.tensor(x))
    assert float(got) == pytest.approx(ref_asl(y, x), abs=1e-12)
    keras_bce = keras.losses.BinaryCrossentropy(from_logits=True)(y, x)
    assert float(got) == pytest.approx(float(keras_bce), rel=1e-5)
    huge = losses.classification_loss([[1, 0]], [[-200.0, 200.0]])
    assert float(huge) == pytest.approx(200.0, rel=1e-6)


@pytest.mark.parametrize(
    "options",
    [
        dict(gamma_pos=2.0, gamma_neg=2.0),  # focal
        dict(gamma_pos=0.0, gamma_neg=4.0, clip=0.05),  # ASL defaults
        dict(gamma_pos=1.0, gamma_neg=0.0, clip=0.1),
    ],
)
def test_asymmetric_against_loops(options):
    rng = np.random.default_rng(1)
    y = (rng.random((3, 6)) < 0.5).astype(np.float64)
    x = rng.normal(scale=2, size=(3, 6))
    got = losses.classification_loss(y, torch.tensor(x), **options)
    assert float(got) == pytest.approx(ref_asl(y, x, **options), abs=1e-12)
    loss = losses.ClassificationLoss(**options)
    assert float(loss(y, x)) == pytest.approx(ref_asl(y, x, **options), rel=1e-5)
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert restored.get_config() == loss.get_config()


def test_gradient_reaches_logits():
    x = torch.tensor([[0.5, -1.0]], dtype=torch.float64, requires_grad=True)
    losses.classification_loss([[1, 0]], x, gamma_neg=2.0, clip=0.05).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_class_supports_sample_weight_and_fit():
    y = np.array([[1, 0], [0, 1]], dtype="float32")
    x = np.array([[2.0, -1.0], [0.0, 3.0]], dtype="float32")
    per_image = [ref_asl(y[i : i + 1], x[i : i + 1]) for i in range(2)]
    loss = losses.ClassificationLoss()
    got = loss(y, x, sample_weight=np.array([1.0, 0.0]))
    assert float(got) == pytest.approx(per_image[0] / 2, rel=1e-5)

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile("sgd", loss=losses.ClassificationLoss())
    history = model.fit(
        np.ones((4, 3), "float32"), np.ones((4, 2), "float32"), verbose=0
    )
    assert np.isfinite(history.history["loss"][0])


def test_classification_errors():
    with pytest.raises(ValueError, match=r"labels.shape=\(1, 3\), logits.shape=\(1, 2\)"):
        losses.classification_loss([[1, 0, 1]], [[0.0, 1.0]])
    with pytest.raises(ValueError, match="empty"):
        losses.classification_loss(np.ones((0, 2)), np.ones((0, 2)))
    with pytest.raises(ValueError, match="gamma_neg"):
        losses.ClassificationLoss(gamma_neg=-1.0)
    with pytest.raises(ValueError, match="clip"):
        losses.classification_loss([[1]], [[0.0]], clip=1.0)

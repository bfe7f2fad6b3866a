"""COA (eq. 5) and its expected structure Q_co."""

import math

import kdpvlpa  # noqa: F401  (selects the torch backend before keras)
import keras
import numpy as np
import pytest
import torch

from kdpvlpa import losses


def unit(rng, *shape):
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def t64(x, grad=False):
    return torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=grad)


def ref_co_occurrence_matrix(labels):
    n, c = labels.shape
    q = np.zeros((c, c))
    for a in range(c):
        for b in range(c):
            if a == b:
                q[a, b] = 1.0
                continue
            n_a = sum(labels[i, a] for i in range(n))
            n_b = sum(labels[i, b] for i in range(n))
            n_ab = sum(labels[i, a] * labels[i, b] for i in range(n))
            q[a, b] = n_ab / math.sqrt(n_a * n_b) if n_a and n_b else 0.0
    return q


def ref_coa(q, e, q_co, tau, beta):
    b, k, p = q.shape
    c = e.shape[0]
    total = 0.0
    for i in range(b):
        v = np.zeros((c, p))
        for cc in range(c):
            sims = [float(q[i, kk] @ e[cc]) / tau for kk in range(k)]
            m = max(sims)
            expo = [math.exp(s - m) for s in sims]
            attn = [x / sum(expo) for x in expo]
            vec = sum(attn[kk] * q[i, kk] for kk in range(k))
            v[cc] = vec / np.linalg.norm(vec)
        frob = 0.0
        for a in range(c):
            for bb in range(c):
                frob += (q_co[a, bb] - float(v[a] @ v[bb])) ** 2
        total += frob / c**2
    return beta * total / b


def test_co_occurrence_matrix_by_hand():
    # n_0 = 3, n_1 = 3, n_01 = 2 -> 2/3; class 2 never occurs -> 0 off the
    # diagonal, 1 on it.
    labels = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]])
    expected = [[1, 2 / 3, 0], [2 / 3, 1, 0], [0, 0, 1]]
    got = losses.co_occurrence_matrix(labels)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-7)


def test_co_occurrence_matrix_against_loops():
    rng = np.random.default_rng(0)
    labels = (rng.random((40, 6)) < [0.6, 0.3, 0.2, 0.05, 0.5, 0.0]).astype(int)
    np.testing.assert_allclose(
        losses.co_occurrence_matrix(labels),
        ref_co_occurrence_matrix(labels),
        atol=1e-7,
    )
    np.testing.assert_allclose(
        losses.co_occurrence_matrix(labels.astype(bool)),
        ref_co_occurrence_matrix(labels),
        atol=1e-7,
    )


def test_co_occurrence_matrix_rejects_bad_labels():
    with pytest.raises(ValueError, match=r"\(N, C\).*\(4,\)"):
        losses.co_occurrence_matrix(np.ones(4))
    with pytest.raises(ValueError, match="only 0 and 1"):
        losses.co_occurrence_matrix([[0, 2], [1, 0]])


def test_co_occurrence_loss_by_hand():
    # Queries e1, e2; class embeddings e1, e2; τ = 1.
    # Class 0 attends with softmax([1, 0]) = [σ(1), σ(-1)], so
    # v0 = norm(σ(1), σ(-1)); by symmetry v1 = norm(σ(-1), σ(1)).
    # S = [[1, r], [r, 1]] with r = 2σ(1)σ(-1) / (σ(1)² + σ(-1)²) ≈ 0.648055.
    # Q_co = [[1, 0.5], [0.5, 1]] -> ‖Q − S‖²_F / C² = 2 (0.5 − r)² / 4;
    # β = 2.
    sig = 1 / (1 + math.exp(-1))
    r = 2 * sig * (1 - sig) / (sig**2 + (1 - sig) ** 2)
    expected = 2 * 2 * (0.5 - r) ** 2 / 4
    assert r == pytest.approx(0.648055, abs=1e-6)
    got = losses.co_occurrence_loss(
        t64([[[1.0, 0.0], [0.0, 1.0]]]),
        t64([[1.0, 0.0], [0.0, 1.0]]),
        [[1.0, 0.5], [0.5, 1.0]],
        1.0,
        2.0,
    )
    assert float(got) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_co_occurrence_loss_against_loops(seed):
    rng = np.random.default_rng(seed)
    q, e = unit(rng, 3, 4, 5), unit(rng, 6, 5)
    q_co = ref_co_occurrence_matrix((rng.random((30, 6)) < 0.4).astype(int))
    got = losses.co_occurrence_loss(t64(q), t64(e), t64(q_co), 0.1, 0.5)
    assert float(got) == pytest.approx(ref_coa(q, e, q_co, 0.1, 0.5), abs=1e-10)


def test_co_occurrence_gradients_reach_inputs_and_temperature():
    rng = np.random.default_rng(2)
    q = t64(unit(rng, 2, 4, 5), grad=True)
    e = t64(unit(rng, 3, 5), grad=True)
    tau = keras.Variable(0.07, dtype="float64")
    q_co = losses.co_occurrence_matrix([[1, 1, 0], [0, 1, 1], [1, 0, 0]])
    loss = losses.co_occurrence_loss(q, e, q_co, tau, beta=1.0)
    loss.backward()
    for grad in (q.grad, e.grad, tau.value.grad):
        assert grad is not None and torch.isfinite(grad).all()
        assert grad.abs().sum() > 0


def test_co_occurrence_loss_class():
    rng = np.random.default_rng(3)
    q, e = unit(rng, 2, 4, 5), unit(rng, 3, 5)
    q_co = losses.co_occurrence_matrix([[1, 1, 0], [0, 1, 1], [1, 0, 0]])
    loss = losses.CoOccurrenceLoss(q_co, temperature=0.2, beta=3.0)
    got = loss(None, {"image_queries": q, "class_embeddings": e})
    assert float(got) == pytest.approx(ref_coa(q, e, q_co, 0.2, 3.0), rel=1e-5)
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert isinstance(restored, losses.CoOccurrenceLoss)
    np.testing.assert_array_equal(restored.co_occurrence, loss.co_occurrence)
    assert restored.beta == 3.0 and restored.temperature == 0.2


def test_co_occurrence_loss_shape_errors():
    q, e = np.ones((2, 4, 5)) / 5**0.5, np.ones((3, 5)) / 5**0.5
    with pytest.raises(ValueError, match=r"co_occurrence.shape=\(4, 4\)"):
        losses.co_occurrence_loss(q, e, np.eye(4), 0.1, 1.0)
    with pytest.raises(ValueError, match=r"image_queries_P=5, class_embeddings_P=6"):
        losses.co_occurrence_loss(q, np.ones((3, 6)), np.eye(3), 0.1, 1.0)
    with pytest.raises(ValueError, match=r"empty.*\(0, 4, 5\)"):
        losses.co_occurrence_loss(np.ones((0, 4, 5)), e, np.eye(3), 0.1, 1.0)
    with pytest.raises(ValueError, match="square"):
        losses.CoOccurrenceLoss(np.ones((2, 3)))

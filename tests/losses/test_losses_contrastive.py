"""GCL (eq. 1), QCL (eq. 2), DQR weights and GCL-DQR (eq. 4).

Each loss is checked three ways: against numbers worked by hand on tiny
inputs, against a plain NumPy implementation with explicit loops written
here, and for gradients reaching its inputs and the temperature.
"""

import math

import kdpvlpa  # noqa: F401  (selects the torch backend before keras)
import keras
import numpy as np
import pytest
import torch

from kdpvlpa import losses


def log1pexp(x):
    return math.log1p(math.exp(x))


def unit(rng, *shape):
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def t64(x, grad=False):
    return torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=grad)


# --- independent NumPy references, one loop per index ------------------------


def ref_log_softmax_at(row, index):
    m = max(row)
    return row[index] - (m + math.log(sum(math.exp(v - m) for v in row)))


def ref_symmetric_info_nce(s):
    b = len(s)
    rows = sum(-ref_log_softmax_at(list(s[i]), i) for i in range(b)) / b
    cols = (
        sum(-ref_log_softmax_at([s[j][i] for j in range(b)], i) for i in range(b))
        / b
    )
    return 0.5 * (rows + cols)


def ref_gcl(q, t, tau):
    b, k, _ = q.shape
    s = [[max(float(q[i, kk] @ t[j]) for kk in range(k)) / tau for j in range(b)]
         for i in range(b)]
    return ref_symmetric_info_nce(s)


def ref_weighted(q, t, w, tau):
    b, k, _ = q.shape
    s = [
        [
            sum(w[i, kk] * float(q[i, kk] @ t[j]) for kk in range(k))
            / sum(w[i, kk] for kk in range(k))
            / tau
            for j in range(b)
        ]
        for i in range(b)
    ]
    return ref_symmetric_info_nce(s)


def ref_qcl(q, tokens, mask, tau):
    b, k, _ = q.shape
    pair_losses = []
    for i in range(b):
        real = [l for l in range(tokens.shape[1]) if mask[i, l]]
        if not real:
            continue
        grouped = []
        for l in real:
            a = [float(tokens[i, l] @ q[i, kk]) for kk in range(k)]
            lo, hi = min(a), max(a)
            if hi - lo <= 1e-7:
                a = [1.0] * k
            else:
                a = [(v - lo) / (hi - lo) for v in a]
            a = [0.0 if v < 1.0 / k else v for v in a]
            total = sum(a)
            a = [v / total for v in a]
            g = sum(a[kk] * q[i, kk] for kk in range(k))
            grouped.append(g / np.linalg.norm(g))
        n = len(real)
        s = [[float(tokens[i, real[r]] @ grouped[c]) / tau for c in range(n)]
             for r in range(n)]
        pair_losses.append(ref_symmetric_info_nce(s))
    return sum(pair_losses) / len(pair_losses) if pair_losses else 0.0


def ref_dqr(q, e, y, freq, threshold=20):
    b, k, _ = q.shape
    n_max = max(freq)
    w = np.ones((b, k))
    for i in range(b):
        for c in range(len(freq)):
            if y[i][c] == 1 and freq[c] < threshold:
                sims = [float(q[i, kk] @ e[c]) for kk in range(k)]
                w[i, int(np.argmax(sims))] += math.sqrt(n_max / freq[c])
    return w


# --- hand-worked examples -----------------------------------------------------

# Two images with two queries each, two captions, P = 2.
HAND_QUERIES = [[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [-1.0, 0.0]]]
HAND_TEXT = [[1.0, 0.0], [0.0, 1.0]]


def test_global_contrastive_by_hand():
    # s[i, j] = max_k q_k^i · t_j: s = [[max(1, 0), max(0, 1)],
    # [max(0.6, -1), max(0.8, 0)]] = [[1, 1], [0.6, 0.8]]; τ = 0.5 doubles it:
    # logits [[2, 2], [1.2, 1.6]].
    # rows:    -log softmax([2, 2])[0] = log 2;  -log softmax([1.2, 1.6])[1]
    #          = log(1 + e^-0.4)
    # columns: -log softmax([2, 1.2])[0] = log(1 + e^-0.8);
    #          -log softmax([2, 1.6])[1] = log(1 + e^0.4)
    expected = 0.25 * (
        math.log(2) + log1pexp(-0.4) + log1pexp(-0.8) + log1pexp(0.4)
    )
    got = losses.global_contrastive_loss(t64(HAND_QUERIES), t64(HAND_TEXT), 0.5)
    assert float(got) == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.622570, abs=1e-6)


def test_query_contrastive_by_hand():
    # One pair, queries e1, e2, e3 (K = 3, so entries below 1/3 are dropped).
    # Token 1 = (0.48, 0.36, 0.8): a = [0.48, 0.36, 0.8], min-max over
    # k = [0.12/0.44 = 0.27, 0, 1]; 0.27 < 1/3 -> 0, so g1 = e3.
    # Token 2 = (0, 0.6, 0.8): a = [0, 0.6, 0.8] -> [0, 0.75, 1], all kept,
    # renormalised [0, 3/7, 4/7], g2 = norm(0, 3, 4) = (0, 0.6, 0.8).
    # Token 3 is padding (mask False) and must not matter.
    # t·g: t1·g1 = 0.8, t1·g2 = 0.856, t2·g1 = 0.8, t2·g2 = 1; τ = 0.5:
    # logits [[1.6, 1.712], [1.6, 2.0]].
    # text -> query rows:  log(1 + e^0.112), log(1 + e^-0.4)
    # query -> text cols:  log 2,            log(1 + e^-0.288)
    expected = 0.25 * (
        log1pexp(0.112) + log1pexp(-0.4) + math.log(2) + log1pexp(-0.288)
    )
    queries = np.eye(3)[None]
    tokens = [[[0.48, 0.36, 0.8], [0.0, 0.6, 0.8], [0.3, -0.9, 0.1]]]
    mask = [[True, True, False]]
    got = losses.query_contrastive_loss(
        t64(queries), t64(tokens), torch.tensor(mask), 0.5
    )
    assert float(got) == pytest.approx(expected, abs=1e-12)

    # A second pair with no real token adds nothing: the average is over
    # pairs that have tokens.
    queries2 = np.concatenate([queries, queries])
    tokens2 = np.concatenate([tokens, tokens])
    mask2 = [[True, True, False], [False, False, False]]
    got2 = losses.query_contrastive_loss(
        t64(queries2), t64(tokens2), torch.tensor(mask2), 0.5
    )
    assert float(got2) == pytest.approx(expected, abs=1e-12)


def test_query_contrastive_flat_similarities_are_uniform():
    # The token is orthogonal to both queries: a = [0, 0], max == min. Each
    # query then gets 1/K, g = norm(q1 + q2) = (1, 1)/√2 for both tokens and
    # every logit is equal, so each cross-entropy is log(number of tokens).
    queries = t64([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], grad=True)
    tokens = t64([[[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]], grad=True)
    got = losses.query_contrastive_loss(
        queries, tokens, torch.tensor([[True, True]]), 0.1
    )
    assert got.item() == pytest.approx(math.log(2), abs=1e-12)
    got.backward()
    assert torch.isfinite(queries.grad).all()
    assert torch.isfinite(tokens.grad).all()


def test_query_contrastive_no_real_token_anywhere_is_zero_and_finite():
    queries = t64(unit(np.random.default_rng(0), 2, 3, 4), grad=True)
    tokens = t64(unit(np.random.default_rng(1), 2, 5, 4), grad=True)
    got = losses.query_contrastive_loss(
        queries, tokens, torch.zeros(2, 5, dtype=torch.bool), 0.07
    )
    assert got.item() == 0.0
    got.backward()
    assert torch.isfinite(queries.grad).all() and torch.isfinite(tokens.grad).all()


def test_dqr_weights_by_hand():
    # Class 2 (4 images) is the only tail class; n_max = 100, so the query
    # finding it gains sqrt(100 / 4) = 5.
    # Image 1 queries (1,0), (0,1); sim with e2 = (0.6, 0.8): [0.6, 0.8] -> k* = 1.
    # Image 2 queries (0,1), (1,0); sims [0.8, 0.6] -> k* = 0.
    queries = [[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]]
    classes = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
    labels = [[1, 0, 1], [0, 1, 1]]
    weights = losses.dqr_weights(
        t64(queries), t64(classes), labels, [100, 25, 4]
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(weights), [[1, 6], [6, 1]], atol=1e-12
    )
    # Raising the threshold to 30 makes class 1 (25 images) tail too:
    # image 2's first query (0,1) matches e1 exactly and gains sqrt(100/25) = 2.
    weights = losses.dqr_weights(
        t64(queries), t64(classes), labels, [100, 25, 4], tail_threshold=30
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(weights), [[1, 6], [8, 1]], atol=1e-12
    )
    # Without any tail class present every weight is 1.
    weights = losses.dqr_weights(
        t64(queries), t64(classes), [[1, 1, 0], [0, 1, 0]], [100, 25, 4]
    )
    np.testing.assert_allclose(keras.ops.convert_to_numpy(weights), 1.0)


def test_dqr_weights_example_from_spec():
    # METHOD.md: "a query that finds a tail class with 4 samples when the
    # largest class has 775 weighs about 15". Class 0 (4 images, tail) has
    # embedding (0, 1), found by query 1; class 1 (775 images) is head.
    weights = losses.dqr_weights(
        t64([[[1.0, 0.0], [0.0, 1.0]]]),
        t64([[0.0, 1.0], [1.0, 0.0]]),
        [[1, 1]],
        [4, 775],
    )
    w = keras.ops.convert_to_numpy(weights)
    assert w[0, 1] == pytest.approx(1 + math.sqrt(775 / 4))
    assert 14.5 < w[0, 1] < 15.5 and w[0, 0] == 1.0


def test_weighted_contrastive_by_hand():
    # Queries as in the DQR example, W = [[1, 6], [6, 1]], captions e1, e2.
    # Image 1: sims with t1 [1, 0] -> (1·1 + 6·0)/7 = 1/7; with t2 [0, 1] -> 6/7.
    # Image 2: sims with t1 [0, 1] -> 1/7;                with t2 [1, 0] -> 6/7.
    # τ = 1/7: logits [[1, 6], [1, 6]].
    # rows: log(1 + e^5), log(1 + e^-5); columns: log 2, log 2.
    expected = 0.5 * (0.5 * (log1pexp(5) + log1pexp(-5)) + math.log(2))
    queries = [[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]]
    got = losses.weighted_contrastive_loss(
        t64(queries), t64(HAND_TEXT), t64([[1, 6], [6, 1]]), 1 / 7
    )
    assert float(got) == pytest.approx(expected, abs=1e-12)


def test_weighted_with_unit_weights_is_mean_over_queries():
    # W = 1 gives s = mean_k: image 1 [0.5, 0.5], image 2 [-0.2, 0.4]; τ = 1.
    # rows: log 2, log(1 + e^-0.6); cols: log(1 + e^-0.7), log(1 + e^0.1).
    expected = 0.25 * (
        math.log(2) + log1pexp(-0.6) + log1pexp(-0.7) + log1pexp(0.1)
    )
    got = losses.weighted_contrastive_loss(
        t64(HAND_QUERIES), t64(HAND_TEXT), np.ones((2, 2)), 1.0
    )
    assert float(got) == pytest.approx(expected, abs=1e-12)


# --- random inputs against the loop references --------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_against_numpy_references(seed):
    rng = np.random.default_rng(seed)
    b, k, p, length, c = 3, 4, 5, 6, 5
    q = unit(rng, b, k, p)
    t = unit(rng, b, p)
    tokens = unit(rng, b, length, p)
    mask = rng.random((b, length)) < 0.7
    mask[0, :] = False  # a pair without real tokens
    mask[1, :] = True
    e = unit(rng, c, p)
    y = (rng.random((b, c)) < 0.5).astype(int)
    y[:, 4] = 1
    freq = [300, 50, 19, 7, 2]
    tau = 0.2

    got = losses.global_contrastive_loss(t64(q), t64(t), tau)
    assert float(got) == pytest.approx(ref_gcl(q, t, tau), abs=1e-10)

    got = losses.query_contrastive_loss(t64(q), t64(tokens), mask, tau)
    assert float(got) == pytest.approx(ref_qcl(q, tokens, mask, tau), abs=1e-10)

    w = losses.dqr_weights(t64(q), t64(e), y, freq)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(w), ref_dqr(q, e, y, freq), atol=1e-12
    )

    w = ref_dqr(q, e, y, freq)
    got = losses.weighted_contrastive_loss(t64(q), t64(t), t64(w), tau)
    assert float(got) == pytest.approx(ref_weighted(q, t, w, tau), abs=1e-10)


def test_float32_inputs_match_float64():
    rng = np.random.default_rng(3)
    q, t = unit(rng, 4, 3, 8), unit(rng, 4, 8)
    got = losses.global_contrastive_loss(
        torch.tensor(q, dtype=torch.float32), torch.tensor(t, dtype=torch.float32),
        0.07,
    )
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(ref_gcl(q, t, 0.07), rel=1e-5)


# --- gradients ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["variable", "tensor"])
def test_gradients_reach_features_and_temperature(kind):
    rng = np.random.default_rng(4)
    q = t64(unit(rng, 3, 4, 5), grad=True)
    t = t64(unit(rng, 3, 5), grad=True)
    tokens = t64(unit(rng, 3, 6, 5), grad=True)
    mask = torch.tensor(rng.random((3, 6)) < 0.8)
    if kind == "variable":
        tau = keras.Variable(0.07, dtype="float64")
        tau_tensor = tau.value
    else:
        tau = tau_tensor = torch.tensor(0.07, dtype=torch.float64, requires_grad=True)
    e = t64(unit(rng, 4, 5))
    w = losses.dqr_weights(q, e, [[1, 0, 0, 1]] * 3, [200, 40, 10, 3])
    assert not w.requires_grad
    total = (
        losses.global_contrastive_loss(q, t, tau)
        + losses.query_contrastive_loss(q, tokens, mask, tau)
        + losses.weighted_contrastive_loss(q, t, w, tau)
    )
    total.backward()
    for grad in (q.grad, t.grad, tokens.grad, tau_tensor.grad):
        assert grad is not None
        assert torch.isfinite(grad).all()
        assert grad.abs().sum() > 0


# --- Loss classes -------------------------------------------------------------


def test_loss_classes_match_functions_and_round_trip():
    rng = np.random.default_rng(5)
    q = unit(rng, 3, 4, 5).astype("float32")
    t = unit(rng, 3, 5).astype("float32")
    tokens = unit(rng, 3, 6, 5).astype("float32")
    mask = rng.random((3, 6)) < 0.8
    e = unit(rng, 4, 5).astype("float32")
    y = np.array([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 1]], dtype="float32")
    freq = [200, 40, 10, 3]

    cases = [
        (
            losses.GlobalContrastiveLoss(temperature=0.1),
            None,
            {"image_queries": q, "text_cls": t},
            lambda tau: losses.global_contrastive_loss(q, t, tau),
        ),
        (
            losses.QueryContrastiveLoss(temperature=0.1),
            None,
            {"image_queries": q, "text_tokens": tokens, "token_mask": mask},
            lambda tau: losses.query_contrastive_loss(q, tokens, mask, tau),
        ),
        (
            losses.WeightedContrastiveLoss(temperature=0.1, class_freq=freq),
            y,
            {"image_queries": q, "text_cls": t, "class_embeddings": e},
            lambda tau: losses.weighted_contrastive_loss(
                q, t, losses.dqr_weights(q, e, y, freq), tau
            ),
        ),
    ]
    for loss, y_true, y_pred, expected in cases:
        assert float(loss(y_true, y_pred)) == pytest.approx(float(expected(0.1)), rel=1e-6)
        # A temperature in y_pred (the model's learnable τ) overrides the
        # constructor's.
        y_pred_tau = dict(y_pred, temperature=keras.Variable(0.3))
        got = keras.ops.convert_to_numpy(loss(y_true, y_pred_tau))
        assert float(got) == pytest.approx(float(expected(0.3)), rel=1e-6)
        assert abs(float(expected(0.3)) - float(expected(0.1))) > 1e-3
        restored = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(loss)
        )
        assert type(restored) is type(loss)
        assert restored.get_config() == loss.get_config()


def test_weighted_loss_class_accepts_ready_weights():
    rng = np.random.default_rng(6)
    q, t = unit(rng, 2, 3, 4), unit(rng, 2, 4)
    w = np.array([[1.0, 2.0, 1.0], [1.0, 1.0, 5.0]])
    loss = losses.WeightedContrastiveLoss(temperature=0.2)
    got = loss(None, {"image_queries": q, "text_cls": t, "weights": w})
    assert float(got) == pytest.approx(ref_weighted(q, t, w, 0.2), rel=1e-5)
    with pytest.raises(ValueError, match="class_embeddings"):
        loss(None, {"image_queries": q, "text_cls": t})


def test_loss_class_reports_missing_keys():
    with pytest.raises(ValueError, match=r"missing the keys \['text_cls'\]"):
        losses.GlobalContrastiveLoss()(None, {"image_queries": np.ones((2, 3, 4))})


def test_batch_level_loss_classes_refuse_sample_weight():
    # Keras would scale the one batch value by the weights' mean, silently.
    rng = np.random.default_rng(3)
    y_pred = {"image_queries": unit(rng, 4, 3, 5), "text_cls": unit(rng, 4, 5)}
    for loss in (losses.GlobalContrastiveLoss(), losses.CoOccurrenceLoss(np.eye(2))):
        with pytest.raises(ValueError, match="takes no `sample_weight`"):
            loss(None, y_pred, sample_weight=np.array([1.0, 0.0, 0.0, 0.0]))
    assert float(losses.GlobalContrastiveLoss()(None, y_pred)) > 0


# --- bad inputs ---------------------------------------------------------------


def test_shape_errors_name_the_shapes():
    q = np.ones((2, 3, 4)) / 2
    with pytest.raises(ValueError, match=r"image_queries_B=2, text_cls_B=3"):
        losses.global_contrastive_loss(q, np.ones((3, 4)), 0.1)
    with pytest.raises(ValueError, match=r"\(B, K, P\).*\(2, 4\)"):
        losses.global_contrastive_loss(np.ones((2, 4)), np.ones((2, 4)), 0.1)
    with pytest.raises(ValueError, match=r"image_queries_P=4, text_cls_P=5"):
        losses.global_contrastive_loss(q, np.ones((2, 5)), 0.1)
    with pytest.raises(ValueError, match=r"empty.*\(0, 3, 4\)"):
        losses.global_contrastive_loss(np.ones((0, 3, 4)), np.ones((0, 4)), 0.1)
    with pytest.raises(ValueError, match=r"empty"):
        losses.query_contrastive_loss(
            np.ones((0, 3, 4)), np.ones((0, 5, 4)), np.ones((0, 5), bool), 0.1
        )
    with pytest.raises(ValueError, match=r"text_tokens_L=5, token_mask_L=6"):
        losses.query_contrastive_loss(q, np.ones((2, 5, 4)), np.ones((2, 6), bool), 0.1)
    with pytest.raises(ValueError, match=r"labels_C=4"):
        losses.dqr_weights(q, np.ones((3, 4)), np.ones((2, 4)), [5, 50, 500])
    with pytest.raises(ValueError, match=r"image_queries_B=2, labels_B=5"):
        losses.dqr_weights(q, np.ones((3, 4)), np.ones((5, 3)), [5, 50, 500])
    with pytest.raises(ValueError, match=r"weights.shape=\(2, 4\)"):
        losses.weighted_contrastive_loss(q, np.ones((2, 4)), np.ones((2, 4)), 0.1)
    with pytest.raises(ValueError, match="temperature"):
        losses.global_contrastive_loss(q, np.ones((2, 4)), 0.0)
    with pytest.raises(ValueError, match="temperature"):
        losses.global_contrastive_loss(q, np.ones((2, 4)), np.ones(2))


def test_loss_class_passes_gradient_to_learnable_temperature():
    rng = np.random.default_rng(7)
    tau = keras.Variable(0.1)
    q = torch.tensor(unit(rng, 3, 4, 5), dtype=torch.float32, requires_grad=True)
    t = torch.tensor(unit(rng, 3, 5), dtype=torch.float32)
    loss = losses.GlobalContrastiveLoss()(
        None, {"image_queries": q, "text_cls": t, "temperature": tau}
    )
    loss.backward()
    assert tau.value.grad is not None and torch.isfinite(tau.value.grad)
    assert q.grad.abs().sum() > 0

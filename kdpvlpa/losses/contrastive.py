"""Image–text contrastive losses of DP-VLPA: GCL (eq. 1), QCL (eq. 2), GCL-DQR (eq. 4).

Every loss is a pure function on `keras.ops` (differentiable, backend-agnostic,
runs on torch tensors under the Keras torch backend) plus a
`keras.losses.Loss` class wrapping it. Features are expected to be
L2-normalised already, as the model's projection heads return them.

Reference:
    DP-VLPA (AAAI 2026), "Phase 1: knowledge injection" and "Phase 2: adaptive
    fine-tuning"; the spec is the project's METHOD.md.
"""

import keras
from keras import ops

from kdpvlpa.losses._utils import TargetFreeLoss
from kdpvlpa.losses._utils import as_float_tensors
from kdpvlpa.losses._utils import check_batch
from kdpvlpa.losses._utils import check_equal
from kdpvlpa.losses._utils import check_rank
from kdpvlpa.losses._utils import clamp_min
from kdpvlpa.losses._utils import l2_normalize
from kdpvlpa.losses._utils import symmetric_info_nce
from kdpvlpa.losses._utils import take_inputs
from kdpvlpa.losses._utils import temperature_tensor

# Large but finite: -inf would turn a fully masked row of a padded pair into
# NaN, and NaN survives a multiplication by zero in both passes.
_MASK_VALUE = -1e9


def _check_queries_and_text(image_queries, text_cls):
    q_shape = check_rank(image_queries, 3, "image_queries", "(B, K, P)")
    t_shape = check_rank(text_cls, 2, "text_cls", "(B, P)")
    check_batch(q_shape[0], image_queries=q_shape, text_cls=t_shape)
    check_equal(
        "The batch sizes of `image_queries` and `text_cls`",
        image_queries_B=q_shape[0],
        text_cls_B=t_shape[0],
    )
    check_equal(
        "The feature widths P of `image_queries` and `text_cls`",
        image_queries_P=q_shape[2],
        text_cls_P=t_shape[1],
    )
    if q_shape[1] == 0:
        raise ValueError(
            f"`image_queries` needs at least one query (K >= 1). "
            f"Received: image_queries.shape={q_shape}"
        )
    return q_shape, t_shape


def global_contrastive_loss(image_queries, text_cls, temperature):
    """Global contrastive loss (GCL, eq. 1): max over queries, symmetric InfoNCE.

    `s[i, j] = max_k q̂_k^i · t̂_j`; the loss is
    ½·(CE(s/τ, rows → diagonal) + CE(sᵀ/τ, rows → diagonal)), each cross-entropy
    averaged over the batch.

    Args:
        image_queries: float tensor (B, K, P). L2-normalised query features.
        text_cls: float tensor (B, P). L2-normalised text `[CLS]` features;
            `text_cls[i]` is the caption of image i.
        temperature: positive float, 0-d tensor or Keras Variable. τ.

    Returns:
        A scalar tensor.

    Example:

    ```python
    import kdpvlpa, keras
    q = keras.ops.normalize(keras.random.normal((4, 32, 256)), axis=-1)
    t = keras.ops.normalize(keras.random.normal((4, 256)), axis=-1)
    loss = kdpvlpa.losses.global_contrastive_loss(q, t, temperature=0.07)
    ```

    Reference:
        DP-VLPA (AAAI 2026), eq. 1.
    """
    image_queries, text_cls = as_float_tensors(
        image_queries=image_queries, text_cls=text_cls
    )
    _check_queries_and_text(image_queries, text_cls)
    tau = temperature_tensor(temperature)
    similarity = ops.einsum("ikp,jp->ijk", image_queries, text_cls)
    logits = ops.max(similarity, axis=-1) / tau
    return symmetric_info_nce(logits)


def _sparc_weights(alignment, num_queries):
    """SPARC alignment weights from raw token–query similarities (..., L, K)."""
    a_min = ops.min(alignment, axis=-1, keepdims=True)
    a_max = ops.max(alignment, axis=-1, keepdims=True)
    spread = a_max - a_min
    # All K similarities equal (spread 0): min-max is undefined; treat every
    # query as equally aligned, which after renormalising gives 1/K each. The
    # denominator is made safe before dividing so no inf reaches the backward
    # pass of `where`.
    flat = spread <= keras.config.epsilon()
    safe_spread = ops.where(flat, ops.ones_like(spread), spread)
    scaled = ops.where(
        flat, ops.ones_like(alignment), (alignment - a_min) / safe_spread
    )
    scaled = ops.where(
        scaled < 1.0 / num_queries, ops.zeros_like(scaled), scaled
    )
    # After min-max the largest entry of every row is 1 >= 1/K, so the row sum
    # is at least 1: the division is safe.
    return scaled / ops.sum(scaled, axis=-1, keepdims=True)


def query_contrastive_loss(image_queries, text_tokens, token_mask, temperature):
    """Query contrastive loss (QCL, eq. 2): SPARC-style token–query alignment.

    For each pair i, `a[l, k] = t̂_l · q̂_k` is min-max normalised over k,
    entries below 1/K are set to 0 and each row renormalised to sum 1. The
    text-guided query is `g_l = norm(Σ_k a[l, k] q̂_k)`. Within the pair, a
    symmetric InfoNCE contrasts {t̂_l} with {g_l} over the real tokens only
    (positive of t̂_l is g_l, negatives the other g of the same pair, and the
    other way round); it is averaged over tokens, then over pairs.

    Vectorised over the batch with masks. A pair without real tokens
    contributes nothing; if no pair has a real token the loss is 0. When all
    K similarities of a token are equal, min-max is undefined and every query
    gets weight 1/K.

    Args:
        image_queries: float tensor (B, K, P). L2-normalised query features.
        text_tokens: float tensor (B, L, P). L2-normalised, projected text token
            features. Masked positions may hold anything finite.
        token_mask: bool (or 0/1) tensor (B, L). True for real tokens. The
            caller excludes padding, `[CLS]` and `[SEP]` here.
        temperature: positive float, 0-d tensor or Keras Variable. τ.

    Returns:
        A scalar tensor.

    Example:

    ```python
    import kdpvlpa, keras
    q = keras.ops.normalize(keras.random.normal((4, 32, 256)), axis=-1)
    t = keras.ops.normalize(keras.random.normal((4, 12, 256)), axis=-1)
    mask = keras.ops.arange(12)[None, :] < keras.ops.array([[5], [12], [1], [0]])
    loss = kdpvlpa.losses.query_contrastive_loss(q, t, mask, 0.07)
    ```

    Reference:
        DP-VLPA (AAAI 2026), eq. 2; SPARC, Bica et al., "Improving fine-grained
        understanding in image-text pre-training", ICML 2024.
    """
    image_queries, text_tokens = as_float_tensors(
        image_queries=image_queries, text_tokens=text_tokens
    )
    token_mask = ops.convert_to_tensor(token_mask)
    q_shape = check_rank(image_queries, 3, "image_queries", "(B, K, P)")
    t_shape = check_rank(text_tokens, 3, "text_tokens", "(B, L, P)")
    m_shape = check_rank(token_mask, 2, "token_mask", "(B, L)")
    check_batch(
        q_shape[0],
        image_queries=q_shape,
        text_tokens=t_shape,
        token_mask=m_shape,
    )
    check_equal(
        "The batch sizes of `image_queries`, `text_tokens` and `token_mask`",
        image_queries_B=q_shape[0],
        text_tokens_B=t_shape[0],
        token_mask_B=m_shape[0],
    )
    check_equal(
        "The feature widths P of `image_queries` and `text_tokens`",
        image_queries_P=q_shape[2],
        text_tokens_P=t_shape[2],
    )
    check_equal(
        "The token lengths L of `text_tokens` and `token_mask`",
        text_tokens_L=t_shape[1],
        token_mask_L=m_shape[1],
    )
    num_queries = q_shape[1]
    if num_queries == 0:
        raise ValueError(
            f"`image_queries` needs at least one query (K >= 1). "
            f"Received: image_queries.shape={q_shape}"
        )
    tau = temperature_tensor(temperature)
    mask = ops.cast(token_mask, "bool")
    dtype = image_queries.dtype

    alignment = ops.einsum("blp,bkp->blk", text_tokens, image_queries)
    weights = _sparc_weights(alignment, num_queries)
    grouped = l2_normalize(
        ops.einsum("blk,bkp->blp", weights, image_queries)
    )

    # logits[b, l, m] = t̂_l · g_m / τ: rows are text → query, columns the
    # other direction.
    logits = ops.einsum("blp,bmp->blm", text_tokens, grouped) / tau
    column_mask = mask[:, None, :]
    row_mask = mask[:, :, None]
    fill = ops.cast(_MASK_VALUE, dtype)
    text_to_query = ops.where(column_mask, logits, fill)
    query_to_text = ops.where(row_mask, logits, fill)
    text_to_query = ops.diagonal(
        ops.log_softmax(text_to_query, axis=2), axis1=1, axis2=2
    )
    query_to_text = ops.diagonal(
        ops.log_softmax(query_to_text, axis=1), axis1=1, axis2=2
    )
    per_token = -0.5 * (text_to_query + query_to_text)
    per_token = ops.where(mask, per_token, ops.zeros_like(per_token))

    num_tokens = ops.sum(ops.cast(mask, dtype), axis=1)
    has_tokens = num_tokens > 0
    per_pair = ops.sum(per_token, axis=1) / clamp_min(num_tokens, 1.0)
    per_pair = ops.where(has_tokens, per_pair, ops.zeros_like(per_pair))
    num_pairs = ops.sum(ops.cast(has_tokens, dtype))
    return ops.sum(per_pair) / clamp_min(num_pairs, 1.0)


def dqr_weights(
    image_queries, class_embeddings, labels, class_freq, tail_threshold=20
):
    """Dynamic query re-weighting (DQR) weights of eq. 4, without gradient.

    For image i and each present tail class c (label 1 and training count
    `n_c < tail_threshold`), the query most similar to the class embedding,
    `k*(c) = argmax_k sim(q̂_k^i, ê_c)`, gains `sqrt(n_max / n_c)`:
    `W[i, k] = 1 + Σ_{c ∈ y_i ∩ T, k*(c) = k} sqrt(n_max / n_c)`. An image
    without tail classes gets all ones. A class with count 0 is a tail class
    counted as if it had one sample (it cannot occur in the training labels
    the counts come from, but this keeps the weight finite if it does).

    Args:
        image_queries: float tensor (B, K, P). L2-normalised query features.
        class_embeddings: float tensor (C, P). L2-normalised class embeddings.
        labels: 0/1 tensor (B, C). Multi-hot targets of the batch.
        class_freq: array-like (C,). Training-set image count of each class.
        tail_threshold: int. Classes with fewer training images are tail
            classes. Defaults to 20 (the paper's split).

    Returns:
        A float tensor (B, K), wrapped in `keras.ops.stop_gradient`.

    Example:

    ```python
    import kdpvlpa, keras
    q = keras.ops.normalize(keras.random.normal((2, 4, 8)), axis=-1)
    e = keras.ops.normalize(keras.random.normal((3, 8)), axis=-1)
    w = kdpvlpa.losses.dqr_weights(
        q, e, labels=[[1, 0, 1], [0, 1, 0]], class_freq=[775, 50, 4]
    )
    ```

    Reference:
        DP-VLPA (AAAI 2026), eq. 4.
    """
    image_queries, class_embeddings, labels, class_freq = as_float_tensors(
        image_queries=image_queries,
        class_embeddings=class_embeddings,
        labels=labels,
        class_freq=class_freq,
    )
    q_shape = check_rank(image_queries, 3, "image_queries", "(B, K, P)")
    e_shape = check_rank(class_embeddings, 2, "class_embeddings", "(C, P)")
    y_shape = check_rank(labels, 2, "labels", "(B, C)")
    f_shape = check_rank(class_freq, 1, "class_freq", "(C,)")
    check_batch(
        q_shape[0], image_queries=q_shape, labels=y_shape
    )
    check_equal(
        "The batch sizes of `image_queries` and `labels`",
        image_queries_B=q_shape[0],
        labels_B=y_shape[0],
    )
    check_equal(
        "The number of classes C of `class_embeddings`, `labels` and "
        "`class_freq`",
        class_embeddings_C=e_shape[0],
        labels_C=y_shape[1],
        class_freq_C=f_shape[0],
    )
    check_equal(
        "The feature widths P of `image_queries` and `class_embeddings`",
        image_queries_P=q_shape[2],
        class_embeddings_P=e_shape[1],
    )
    if e_shape[0] == 0:
        raise ValueError(
            f"At least one class is needed. Received: "
            f"class_embeddings.shape={e_shape}"
        )
    num_queries = q_shape[1]
    image_queries = ops.stop_gradient(image_queries)
    class_embeddings = ops.stop_gradient(class_embeddings)

    similarity = ops.einsum("bkp,cp->bck", image_queries, class_embeddings)
    best_query = ops.one_hot(
        ops.argmax(similarity, axis=-1), num_queries, dtype=similarity.dtype
    )
    n_max = ops.max(class_freq)
    boost = ops.sqrt(n_max / clamp_min(class_freq, 1.0))
    boost = ops.where(class_freq < tail_threshold, boost, ops.zeros_like(boost))
    weights = 1.0 + ops.einsum("bc,bck->bk", labels * boost, best_query)
    return ops.stop_gradient(weights)


def weighted_contrastive_loss(image_queries, text_cls, weights, temperature):
    """GCL with query re-weighting (GCL-DQR, eq. 4): weighted mean over queries.

    `ŝ[i, j] = Σ_k W[i, k] q̂_k^i · t̂_j / Σ_k W[i, k]`, then the symmetric
    InfoNCE of eq. 1 on ŝ/τ. With all weights equal this is the plain mean
    over queries (not the max of `global_contrastive_loss`).

    Args:
        image_queries: float tensor (B, K, P). L2-normalised query features.
        text_cls: float tensor (B, P). L2-normalised caption `[CLS]` features.
        weights: float tensor (B, K). Non-negative query weights, each row with
            a positive sum, usually from `dqr_weights`.
        temperature: positive float, 0-d tensor or Keras Variable. τ.

    Returns:
        A scalar tensor.

    Example:

    ```python
    import kdpvlpa, keras
    q = keras.ops.normalize(keras.random.normal((2, 4, 8)), axis=-1)
    t = keras.ops.normalize(keras.random.normal((2, 8)), axis=-1)
    e = keras.ops.normalize(keras.random.normal((3, 8)), axis=-1)
    w = kdpvlpa.losses.dqr_weights(q, e, [[1, 0, 1], [0, 1, 0]], [775, 50, 4])
    loss = kdpvlpa.losses.weighted_contrastive_loss(q, t, w, 0.07)
    ```

    Reference:
        DP-VLPA (AAAI 2026), eq. 4.
    """
    image_queries, text_cls, weights = as_float_tensors(
        image_queries=image_queries, text_cls=text_cls, weights=weights
    )
    q_shape, _ = _check_queries_and_text(image_queries, text_cls)
    w_shape = check_rank(weights, 2, "weights", "(B, K)")
    if w_shape != q_shape[:2]:
        raise ValueError(
            f"`weights` must have shape (B, K) = {q_shape[:2]} to match "
            f"`image_queries`. Received: weights.shape={w_shape}, "
            f"image_queries.shape={q_shape}"
        )
    tau = temperature_tensor(temperature)
    similarity = ops.einsum("ikp,jp->ijk", image_queries, text_cls)
    total = clamp_min(
        ops.sum(weights, axis=1, keepdims=True), keras.config.epsilon()
    )
    pooled = ops.einsum("ijk,ik->ij", similarity, weights) / total
    return symmetric_info_nce(pooled / tau)


@keras.saving.register_keras_serializable(package="kdpvlpa")
class GlobalContrastiveLoss(TargetFreeLoss):
    """Global contrastive loss (GCL, eq. 1) as a `keras.losses.Loss`.

    Args:
        temperature: float. τ used unless `y_pred` carries a `"temperature"`
            (such as the model's learnable τ). Defaults to 0.07.
        name: str. Name of the loss.
        reduction: Keras reduction; the loss is already a scalar.
        dtype: dtype of the computation.

    Call arguments:
        y_true: ignored (contrastive targets are the batch's own pairing);
            pass `None`.
        y_pred: dict with `"image_queries"` (B, K, P), `"text_cls"` (B, P)
            and optionally `"temperature"`.

    Example:

    ```python
    import kdpvlpa, keras
    q = keras.ops.normalize(keras.random.normal((4, 32, 256)), axis=-1)
    t = keras.ops.normalize(keras.random.normal((4, 256)), axis=-1)
    loss = kdpvlpa.losses.GlobalContrastiveLoss(temperature=0.07)
    value = loss(None, {"image_queries": q, "text_cls": t})
    ```

    Reference:
        DP-VLPA (AAAI 2026), eq. 1.
    """

    def __init__(
        self,
        temperature=0.07,
        name="global_contrastive_loss",
        reduction="sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        temperature_tensor(temperature)
        self.temperature = temperature

    def call(self, y_true, y_pred):
        queries, text, tau = take_inputs(
            y_pred, ("image_queries", "text_cls"), ("temperature",)
        )
        return global_contrastive_loss(
            queries, text, self.temperature if tau is None else tau
        )

    def get_config(self):
        config = super().get_config()
        config.update({"temperature": self.temperature})
        return config


@keras.saving.register_keras_serializable(package="kdpvlpa")
class QueryContrastiveLoss(TargetFreeLoss):
    """Query contrastive loss (QCL, eq. 2, SPARC weighting) as a `keras.losses.Loss`.

    Args:
        temperature: float. τ used unless `y_pred` carries a `"temperature"`.
            Defaults to 0.07.
        name: str. Name of the loss.
        reduction: Keras reduction; the loss is already a scalar.
        dtype: dtype of the computation.

    Call arguments:
        y_true: ignored; pass `None`.
        y_pred: dict with `"image_queries"` (B, K, P), `"text_tokens"`
            (B, L, P), `"token_mask"` (B, L) and optionally `"temperature"`.

    Example:

    ```python
    import kdpvlpa, keras
    q = keras.ops.normalize(keras.random.normal((2, 32, 256)), axis=-1)
    t = keras.ops.normalize(keras.random.normal((2, 12, 256)), axis=-1)
    mask = keras.ops.ones((2, 12), dtype="bool")
    loss = kdpvlpa.losses.QueryContrastiveLoss()
    value = loss(
        None, {"image_queries": q, "text_tokens": t, "token_mask": mask}
    )
    ```

    Reference:
        DP-VLPA (AAAI 2026), eq. 2; SPARC (Bica et al., ICML 2024).
    """

    def __init__(
        self,
        temperature=0.07,
        name="query_contrastive_loss",
        reduction="sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        temperature_tensor(temperature)
        self.temperature = temperature

    def call(self, y_true, y_pred):
        queries, tokens, mask, tau = take_inputs(
            y_pred,
            ("image_queries", "text_tokens", "token_mask"),
            ("temperature",),
        )
        return query_contrastive_loss(
            queries, tokens, mask, self.temperature if tau is None else tau
        )

    def get_config(self):
        config = super().get_config()
        config.update({"temperature": self.temperature})
        return config


@keras.saving.register_keras_serializable(package="kdpvlpa")
class WeightedContrastiveLoss(TargetFreeLoss):
    """GCL with dynamic query re-weighting (GCL-DQR, eq. 4) as a `keras.losses.Loss`.

    The weights come either ready-made in `y_pred["weights"]`, or are computed
    with `dqr_weights` from `y_pred["class_embeddings"]`, the labels in
    `y_true` and the `class_freq` given here.

    Args:
        temperature: float. τ used unless `y_pred` carries a `"temperature"`.
            Defaults to 0.07.
        class_freq: list of int (C,) or None. Training-set image count per
            class; needed only when `y_pred` has no `"weights"`.
        tail_threshold: int. Tail classes have fewer training images than
            this. Defaults to 20.
        name: str. Name of the loss.
        reduction: Keras reduction; the loss is already a scalar.
        dtype: dtype of the computation.

    Call arguments:
        y_true: (B, C) multi-hot labels, or `None` when `y_pred` has
            `"weights"`.
        y_pred: dict with `"image_queries"` (B, K, P), `"text_cls"` (B, P) and
            either `"weights"` (B, K) or `"class_embeddings"` (C, P);
            optionally `"temperature"`.

    Example:

    ```python
    import kdpvlpa, keras
    q = keras.ops.normalize(keras.random.normal((2, 4, 8)), axis=-1)
    t = keras.ops.normalize(keras.random.normal((2, 8)), axis=-1)
    e = keras.ops.normalize(keras.random.normal((3, 8)), axis=-1)
    loss = kdpvlpa.losses.WeightedContrastiveLoss(class_freq=[775, 50, 4])
    value = loss(
        [[1, 0, 1], [0, 1, 0]],
        {"image_queries": q, "text_cls": t, "class_embeddings": e},
    )
    ```

    Reference:
        DP-VLPA (AAAI 2026), eq. 4.
    """

    def __init__(
        self,
        temperature=0.07,
        class_freq=None,
        tail_threshold=20,
        name="weighted_contrastive_loss",
        reduction="sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        temperature_tensor(temperature)
        self.temperature = temperature
        if class_freq is not None:
            class_freq = [int(n) for n in ops.convert_to_numpy(class_freq)]
        self.class_freq = class_freq
        self.tail_threshold = tail_threshold

    def call(self, y_true, y_pred):
        queries, text, weights, embeddings, tau = take_inputs(
            y_pred,
            ("image_queries", "text_cls"),
            ("weights", "class_embeddings", "temperature"),
        )
        y_true = self.targets(y_true)
        if weights is None:
            if embeddings is None or y_true is None or self.class_freq is None:
                raise ValueError(
                    "Without `y_pred['weights']`, WeightedContrastiveLoss needs "
                    "`y_pred['class_embeddings']`, labels in `y_true` and "
                    "`class_freq` in the constructor. Received: "
                    f"class_embeddings={'set' if embeddings is not None else None}, "
                    f"y_true={'set' if y_true is not None else None}, "
                    f"class_freq={self.class_freq}"
                )
            weights = dqr_weights(
                queries,
                embeddings,
                y_true,
                self.class_freq,
                tail_threshold=self.tail_threshold,
            )
        return weighted_contrastive_loss(
            queries, text, weights, self.temperature if tau is None else tau
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "temperature": self.temperature,
                "class_freq": self.class_freq,
                "tail_threshold": self.tail_threshold,
            }
        )
        return config

"""Co-occurrence alignment (COA, eq. 5) of DP-VLPA and its label statistics.

Reference:
    DP-VLPA (AAAI 2026), "Phase 2: adaptive fine-tuning", eq. 5; the spec is
    the project's METHOD.md.
"""

import keras
import numpy as np
from keras import ops

from kdpvlpa.losses._utils import TargetFreeLoss
from kdpvlpa.losses._utils import as_float_tensors
from kdpvlpa.losses._utils import check_batch
from kdpvlpa.losses._utils import check_equal
from kdpvlpa.losses._utils import check_rank
from kdpvlpa.losses._utils import l2_normalize
from kdpvlpa.losses._utils import mean
from kdpvlpa.losses._utils import take_inputs
from kdpvlpa.losses._utils import temperature_tensor


def co_occurrence_matrix(labels):
    """Expected label structure `Q_co` of eq. 5 from training labels.

    `Q_co[c, c'] = n_cc' / sqrt(n_c · n_c')` where `n_cc'` counts the images
    labelled with both c and c' and `n_c` those labelled with c; the diagonal
    is 1. A class that never occurs (`n_c = 0`) has no co-occurrence
    statistics: its row and column are 0 except for 1 on the diagonal, the
    value a class perfectly distinct from all others would have.

    This runs once on the training set, in NumPy, before training.

    Args:
        labels: array-like (N, C) of 0/1 (or bool). Multi-hot training labels.

    Returns:
        A float32 NumPy array (C, C), symmetric, entries in [0, 1].

    Example:

    ```python
    import kdpvlpa
    q_co = kdpvlpa.losses.co_occurrence_matrix([[1, 1, 0], [1, 0, 0]])
    # [[1, 0.707, 0], [0.707, 1, 0], [0, 0, 1]]
    ```

    Reference:
        DP-VLPA (AAAI 2026), eq. 5.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(
            f"`labels` must have shape (N, C). Received: labels.shape="
            f"{labels.shape}"
        )
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise ValueError(
            "`labels` must hold only 0 and 1. Received values: "
            f"{np.unique(labels)[:10].tolist()}"
        )
    # float64 counts are exact for any realistic N (< 2**53).
    y = labels.astype(np.float64)
    counts = y.T @ y
    per_class = np.diag(counts).copy()
    norm = np.sqrt(np.outer(per_class, per_class))
    q_co = np.divide(counts, norm, out=np.zeros_like(counts), where=norm > 0)
    np.fill_diagonal(q_co, 1.0)
    return q_co.astype(np.float32)


def co_occurrence_loss(
    image_queries, class_embeddings, co_occurrence, temperature, beta
):
    """Co-occurrence alignment loss (COA, eq. 5).

    Per image, class-attended features
    `v_c = norm(Σ_k softmax_k(sim(q̂_k, ê_c)/τ) q̂_k)` are stacked into
    V_i (C × P); `S_i = V_i V_iᵀ` is compared to the expected structure:
    `L = β · mean_i ‖Q_co − S_i‖²_F / C²`.

    Args:
        image_queries: float tensor (B, K, P). L2-normalised query features.
        class_embeddings: float tensor (C, P). L2-normalised class embeddings.
        co_occurrence: float array or tensor (C, C). `Q_co`, from
            `co_occurrence_matrix` on the training labels.
        temperature: positive float, 0-d tensor or Keras Variable. τ of the
            softmax over queries.
        beta: float or scalar tensor. Weight β of the term.

    Returns:
        A scalar tensor.

    Example:

    ```python
    import kdpvlpa, keras
    q = keras.ops.normalize(keras.random.normal((2, 4, 8)), axis=-1)
    e = keras.ops.normalize(keras.random.normal((3, 8)), axis=-1)
    q_co = kdpvlpa.losses.co_occurrence_matrix([[1, 1, 0], [1, 0, 1]])
    loss = kdpvlpa.losses.co_occurrence_loss(q, e, q_co, 0.07, beta=1.0)
    ```

    Reference:
        DP-VLPA (AAAI 2026), eq. 5.
    """
    image_queries, class_embeddings, co_occurrence = as_float_tensors(
        image_queries=image_queries,
        class_embeddings=class_embeddings,
        co_occurrence=co_occurrence,
    )
    q_shape = check_rank(image_queries, 3, "image_queries", "(B, K, P)")
    e_shape = check_rank(class_embeddings, 2, "class_embeddings", "(C, P)")
    c_shape = check_rank(co_occurrence, 2, "co_occurrence", "(C, C)")
    check_batch(q_shape[0], image_queries=q_shape)
    if q_shape[1] == 0 or e_shape[0] == 0:
        raise ValueError(
            "COA needs at least one query and one class. Received: "
            f"image_queries.shape={q_shape}, class_embeddings.shape={e_shape}"
        )
    check_equal(
        "The feature widths P of `image_queries` and `class_embeddings`",
        image_queries_P=q_shape[2],
        class_embeddings_P=e_shape[1],
    )
    if c_shape != (e_shape[0], e_shape[0]):
        raise ValueError(
            f"`co_occurrence` must have shape (C, C) = "
            f"{(e_shape[0], e_shape[0])} to match `class_embeddings`. "
            f"Received: co_occurrence.shape={c_shape}, "
            f"class_embeddings.shape={e_shape}"
        )
    tau = temperature_tensor(temperature)

    similarity = ops.einsum("bkp,cp->bck", image_queries, class_embeddings)
    attention = ops.softmax(similarity / tau, axis=-1)
    attended = l2_normalize(
        ops.einsum("bck,bkp->bcp", attention, image_queries)
    )
    structure = ops.einsum("bcp,bdp->bcd", attended, attended)
    # mean over (B, C, C) is mean_i of ‖·‖²_F / C².
    return beta * mean(ops.square(co_occurrence[None] - structure))


@keras.saving.register_keras_serializable(package="kdpvlpa")
class CoOccurrenceLoss(TargetFreeLoss):
    """Co-occurrence alignment loss (COA, eq. 5) as a `keras.losses.Loss`.

    Args:
        co_occurrence: array-like (C, C). `Q_co`, from `co_occurrence_matrix`.
        temperature: float. τ used unless `y_pred` carries a `"temperature"`.
            Defaults to 0.07.
        beta: float. Weight β. Defaults to 1.0 (the paper gives no value; the
            recipes choose it).
        name: str. Name of the loss.
        reduction: Keras reduction; the loss is already a scalar.
        dtype: dtype of the computation.

    Call arguments:
        y_true: ignored; pass `None`.
        y_pred: dict with `"image_queries"` (B, K, P), `"class_embeddings"`
            (C, P) and optionally `"temperature"`.

    Example:

    ```python
    import kdpvlpa, keras
    q_co = kdpvlpa.losses.co_occurrence_matrix([[1, 1, 0], [1, 0, 1]])
    loss = kdpvlpa.losses.CoOccurrenceLoss(q_co, beta=1.0)
    q = keras.ops.normalize(keras.random.normal((2, 4, 8)), axis=-1)
    e = keras.ops.normalize(keras.random.normal((3, 8)), axis=-1)
    value = loss(None, {"image_queries": q, "class_embeddings": e})
    ```

    Reference:
        DP-VLPA (AAAI 2026), eq. 5.
    """

    def __init__(
        self,
        co_occurrence,
        temperature=0.07,
        beta=1.0,
        name="co_occurrence_loss",
        reduction="sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        co_occurrence = np.asarray(
            ops.convert_to_numpy(co_occurrence), dtype=np.float32
        )
        if co_occurrence.ndim != 2 or (
            co_occurrence.shape[0] != co_occurrence.shape[1]
        ):
            raise ValueError(
                f"`co_occurrence` must be a square (C, C) matrix. Received "
                f"shape {co_occurrence.shape}"
            )
        temperature_tensor(temperature)
        self.co_occurrence = co_occurrence
        self.temperature = temperature
        self.beta = beta

    def call(self, y_true, y_pred):
        queries, embeddings, tau = take_inputs(
            y_pred, ("image_queries", "class_embeddings"), ("temperature",)
        )
        return co_occurrence_loss(
            queries,
            embeddings,
            self.co_occurrence,
            self.temperature if tau is None else tau,
            self.beta,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "co_occurrence": self.co_occurrence.tolist(),
                "temperature": self.temperature,
                "beta": self.beta,
            }
        )
        return config

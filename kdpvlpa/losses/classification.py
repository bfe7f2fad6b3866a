"""Multi-label classification loss (CLS) of DP-VLPA, with an asymmetric option.

Reference:
    DP-VLPA (AAAI 2026), "Phase 2: adaptive fine-tuning", L_CLS of eq. 6; the
    asymmetric variant follows Ridnik et al., "Asymmetric Loss For Multi-Label
    Classification", ICCV 2021.
"""

import keras
from keras import ops

from kdpvlpa.losses._utils import as_float_tensors
from kdpvlpa.losses._utils import check_rank
from kdpvlpa.losses._utils import clamp_min
from kdpvlpa.losses._utils import mean


def _check_options(gamma_pos, gamma_neg, clip):
    for name, value in (
        ("gamma_pos", gamma_pos),
        ("gamma_neg", gamma_neg),
        ("clip", clip),
    ):
        if not value >= 0:
            raise ValueError(
                f"`{name}` must be >= 0. Received: {name}={value!r}"
            )
    if not clip < 1:
        raise ValueError(f"`clip` must be < 1. Received: clip={clip!r}")


def _per_entry_loss(labels, logits, gamma_pos, gamma_neg, clip):
    # log σ(x) and log(1 − σ(x)) from log_sigmoid stay finite for any logit,
    # unlike log(sigmoid(x)).
    log_p = ops.log_sigmoid(logits)
    log_not_p = ops.log_sigmoid(-logits)
    if clip > 0 or gamma_neg > 0 or gamma_pos > 0:
        p = ops.sigmoid(logits)
    if clip > 0:
        # Probability shifting of ASL: easy negatives (p < clip) cost nothing.
        p_neg = clamp_min(p - clip, 0.0)
        log_not_p = ops.log(clamp_min(1.0 - p_neg, keras.config.epsilon()))
    else:
        p_neg = p if gamma_neg > 0 else None
    positive = log_p
    negative = log_not_p
    if gamma_pos > 0:
        positive = positive * ops.power(1.0 - p, gamma_pos)
    if gamma_neg > 0:
        negative = negative * ops.power(p_neg, gamma_neg)
    return -(labels * positive + (1.0 - labels) * negative)


def _prepare(labels, logits):
    labels, logits = as_float_tensors(labels=labels, logits=logits)
    y_shape = check_rank(labels, 2, "labels", "(B, C)")
    x_shape = check_rank(logits, 2, "logits", "(B, C)")
    if y_shape != x_shape:
        raise ValueError(
            f"`labels` and `logits` must have the same shape (B, C). "
            f"Received: labels.shape={y_shape}, logits.shape={x_shape}"
        )
    if y_shape[0] == 0:
        raise ValueError(
            f"The batch is empty (B=0). Received: labels.shape={y_shape}, "
            f"logits.shape={x_shape}"
        )
    return labels, logits


def classification_loss(labels, logits, gamma_pos=0.0, gamma_neg=0.0, clip=0.0):
    """Multi-label binary cross-entropy on logits, averaged over classes and images.

    With the defaults this is plain binary cross-entropy (the paper's L_CLS).
    Positive `gamma_pos`/`gamma_neg`/`clip` give the asymmetric loss (ASL):
    positives weighted by `(1 − p)^gamma_pos`, negatives by
    `p_m^gamma_neg` with `p_m = max(p − clip, 0)` and `log(1 − p_m)`;
    `gamma_pos = gamma_neg = γ`, `clip = 0` is the focal loss.

    Args:
        labels: 0/1 tensor (B, C). Multi-hot targets.
        logits: float tensor (B, C). Unnormalised scores (before sigmoid).
        gamma_pos: float >= 0. Focusing exponent on positives. Defaults to 0.
        gamma_neg: float >= 0. Focusing exponent on negatives. Defaults to 0.
        clip: float in [0, 1). Probability margin on negatives. Defaults to 0.

    Returns:
        A scalar tensor.

    Example:

    ```python
    import kdpvlpa
    loss = kdpvlpa.losses.classification_loss([[1, 0]], [[2.0, -1.0]])
    ```

    Reference:
        DP-VLPA (AAAI 2026), eq. 6 (L_CLS); ASL, Ridnik et al., ICCV 2021.
    """
    _check_options(gamma_pos, gamma_neg, clip)
    labels, logits = _prepare(labels, logits)
    return mean(_per_entry_loss(labels, logits, gamma_pos, gamma_neg, clip))


@keras.saving.register_keras_serializable(package="kdpvlpa")
class ClassificationLoss(keras.losses.Loss):
    """Multi-label classification loss (binary cross-entropy or ASL) on logits.

    Returns per-image losses (mean over classes) to Keras, so `sample_weight`
    and the reduction behave as for `keras.losses.BinaryCrossentropy`.

    Args:
        gamma_pos: float >= 0. Focusing exponent on positives. Defaults to 0.
        gamma_neg: float >= 0. Focusing exponent on negatives. Defaults to 0.
        clip: float in [0, 1). Probability margin on negatives. Defaults to 0.
        name: str. Name of the loss.
        reduction: Keras reduction over images.
        dtype: dtype of the computation.

    Call arguments:
        y_true: 0/1 tensor (B, C).
        y_pred: float tensor (B, C) of logits.

    Example:

    ```python
    import kdpvlpa
    loss = kdpvlpa.losses.ClassificationLoss()
    value = loss([[1, 0]], [[2.0, -1.0]])
    ```

    Reference:
        DP-VLPA (AAAI 2026), eq. 6 (L_CLS); ASL, Ridnik et al., ICCV 2021.
    """

    def __init__(
        self,
        gamma_pos=0.0,
        gamma_neg=0.0,
        clip=0.0,
        name="classification_loss",
        reduction="sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        _check_options(gamma_pos, gamma_neg, clip)
        self.gamma_pos = gamma_pos
        self.gamma_neg = gamma_neg
        self.clip = clip

    def call(self, y_true, y_pred):
        labels, logits = _prepare(y_true, y_pred)
        return mean(
            _per_entry_loss(
                labels, logits, self.gamma_pos, self.gamma_neg, self.clip
            ),
            axis=-1,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "gamma_pos": self.gamma_pos,
                "gamma_neg": self.gamma_neg,
                "clip": self.clip,
            }
        )
        return config

"""Input checks and small numerical helpers shared by the losses.

Shapes are static on the torch backend, so every check here is a cheap Python
comparison: nothing forces a device synchronisation.
"""

import numbers

import keras
from keras import ops

def static_shape(x):
    """The shape of `x` as a tuple of Python ints (None where unknown)."""
    return tuple(None if d is None else int(d) for d in ops.shape(x))


def as_float_tensors(**named):
    """Converts the named inputs to tensors of one common floating dtype.

    Returns them in the order given: float64 if any input is float64, else
    float32. Half precision is promoted because exp/logsumexp overflow in it
    at the logit scales a temperature of 0.01 produces; integer and boolean
    inputs (labels, counts) take the float dtype.
    """
    tensors = {name: ops.convert_to_tensor(x) for name, x in named.items()}
    dtypes = {
        keras.backend.standardize_dtype(t.dtype) for t in tensors.values()
    }
    # Promotion is spelled out because `keras.backend.result_type` maps
    # float64 to floatx, which would silently drop precision.
    dtype = "float64" if "float64" in dtypes else "float32"
    return [ops.cast(t, dtype) for t in tensors.values()]


def check_rank(x, rank, name, layout):
    """Raises `ValueError` unless `x` has `rank` axes; returns its shape."""
    shape = static_shape(x)
    if len(shape) != rank:
        raise ValueError(
            f"`{name}` must have shape {layout} ({rank} axes). "
            f"Received: {name}.shape={shape}"
        )
    return shape


def check_batch(batch_size, **shapes):
    """Raises `ValueError` for an empty batch (`batch_size == 0`)."""
    if batch_size == 0:
        received = ", ".join(f"{k}.shape={v}" for k, v in shapes.items())
        raise ValueError(
            f"The batch is empty (B=0); a contrastive loss needs at least "
            f"one image. Received: {received}"
        )


def check_equal(what, **dims):
    """Raises `ValueError` unless all the given sizes agree."""
    values = {v for v in dims.values() if v is not None}
    if len(values) > 1:
        received = ", ".join(f"{k}={v}" for k, v in dims.items())
        raise ValueError(f"{what} must agree. Received: {received}")


def temperature_tensor(temperature):
    """Validates a temperature and returns it ready to divide by.

    A Python number must be positive. A tensor or Keras Variable must hold a
    single value; its sign is not checked because that would force a
    device-to-host copy every step (the model clamps its learnable τ).
    """
    if isinstance(temperature, bool):
        raise ValueError(
            f"`temperature` must be a positive number or a scalar tensor. "
            f"Received: temperature={temperature!r}"
        )
    if isinstance(temperature, numbers.Real):
        if not temperature > 0:
            raise ValueError(
                f"`temperature` must be positive. Received: "
                f"temperature={temperature!r}"
            )
        return float(temperature)
    shape = static_shape(temperature)
    size = 1
    for d in shape:
        size *= d
    if size != 1:
        raise ValueError(
            f"`temperature` must be a scalar (one value). Received a tensor "
            f"of shape {shape}"
        )
    return ops.reshape(temperature, ())


def clamp_min(x, value):
    """`max(x, value)` in the dtype of `x`.

    `keras.ops.maximum` on torch promotes through Keras's `result_type`,
    which turns float64 into float32; `where` keeps the dtype of `x`.
    """
    return ops.where(x > value, x, ops.full_like(x, value))


def mean(x, axis=None):
    """Mean in the dtype of `x`.

    `keras.ops.mean` on torch computes float64 inputs in float32; a sum
    divided by the static count keeps float64 exact.
    """
    shape = static_shape(x)
    axes = range(len(shape)) if axis is None else [axis]
    count = 1
    for a in axes:
        count *= shape[a]
    return ops.sum(x, axis=axis) / count


def l2_normalize(x, axis=-1, epsilon=1e-12):
    """L2 normalisation that maps a zero vector to zero instead of NaN."""
    squared = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return x * ops.rsqrt(clamp_min(squared, epsilon))


def symmetric_info_nce(logits):
    """Symmetric InfoNCE of a square (B, B) logit matrix, positives on the diagonal.

    ½·(CE(rows → diagonal) + CE(columns → diagonal)), each averaged over B.
    """
    row = ops.diagonal(ops.log_softmax(logits, axis=1))
    col = ops.diagonal(ops.log_softmax(logits, axis=0))
    return -0.5 * (mean(row) + mean(col))


def take_inputs(y_pred, required, optional=()):
    """Reads named inputs from a Loss's `y_pred` dict with a clear error."""
    if not isinstance(y_pred, dict):
        raise ValueError(
            f"`y_pred` must be a dict with keys {list(required)} "
            f"(optional: {list(optional)}). Received: {type(y_pred).__name__}"
        )
    missing = [k for k in required if k not in y_pred]
    if missing:
        raise ValueError(
            f"`y_pred` is missing the keys {missing}. It needs "
            f"{list(required)} (optional: {list(optional)}). Received keys: "
            f"{sorted(y_pred)}"
        )
    return [y_pred[k] for k in required] + [y_pred.get(k) for k in optional]


class TargetFreeLoss(keras.losses.Loss):
    """A `keras.losses.Loss` whose `y_true` may be `None`.

    Contrastive losses take their targets from the batch's own pairing, so
    there is nothing to pass as `y_true`. `keras.losses.Loss.__call__`
    converts `y_true` to a tensor and fails on `None`; an empty dict passes
    through its conversion untouched and is turned back into `None` here.

    Each is one value for the whole batch, so `sample_weight` is refused. Call
    them on a model's output dict (in a custom `compute_loss`, say), not
    through `compile(loss=...)`, which looks for a target per output.
    """

    def __call__(self, y_true=None, y_pred=None, sample_weight=None):
        if sample_weight is not None:
            # Keras would scale the batch's one value by the weights' mean.
            raise ValueError(
                f"{type(self).__name__} is one value for the whole batch (each "
                "image's terms depend on the others), so it takes no "
                "`sample_weight`."
            )
        return super().__call__(
            {} if y_true is None else y_true, y_pred, sample_weight
        )

    @staticmethod
    def targets(y_true):
        """`y_true` as given by the caller (`None` when none was given)."""
        if isinstance(y_true, dict) and not y_true:
            return None
        return y_true

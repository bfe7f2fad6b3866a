"""A Keras metric reporting mAP (overall or one long-tail group) during `fit`."""

import keras
import numpy as np
import torch
from keras import ops

from kdpvlpa.metrics.average_precision import GROUPS
from kdpvlpa.metrics.average_precision import HEAD_THRESHOLD
from kdpvlpa.metrics.average_precision import TAIL_THRESHOLD
from kdpvlpa.metrics.average_precision import average_precision
from kdpvlpa.metrics.average_precision import class_groups


class _Buffers:
    """Plain holder for the accumulated arrays.

    Kept outside Keras's attribute tracking: AP needs every score of the
    epoch, a variable-size state that Keras variables cannot hold.
    """

    def __init__(self):
        self.labels = []
        self.scores = []
        self.weights = []
        self.version = 0
        self.cached = None


@keras.saving.register_keras_serializable(package="kdpvlpa")
class MeanAveragePrecision(keras.metrics.Metric):
    """Mean average precision (percent) over the batches seen since the last reset.

    Labels and scores are accumulated in host memory (NumPy) during an epoch
    or an `evaluate` run and AP is computed per class exactly as
    `kdpvlpa.metrics.average_precision` (sklearn's definition). Classes without
    a positive are left out of the mean. With `class_freq`, `group` selects
    the head / medium / tail classes (training frequency ≥ 100 / 20–99 / < 20);
    add one metric per group to see all four numbers in the `fit` logs.

    Keras asks every metric for its result after every batch, so this costs one
    AP computation over everything seen so far per batch; results are cached
    until the next update. `update_state` and `result` work on NumPy and run
    eagerly: under `jit_compile=True`, torch.compile leaves them out of its
    graph (a graph break) and compiles the rest of the step.

    Before any update the result is 0.0 (as for Keras's built-in metrics);
    when no selected class has a positive it is NaN.

    Args:
        class_freq: array-like (C,) or None. Training-set image count of each
            class; needed when `group` is not `"total"`.
        group: str. One of `"total"`, `"head"`, `"medium"`, `"tail"`.
            Defaults to `"total"`.
        head_threshold: int. Smallest head-class count. Defaults to 100.
        tail_threshold: int. Smallest medium-class count. Defaults to 20.
        name: str. Name in the logs; defaults to `"map"` or `"map_<group>"`.
        dtype: dtype of the result.

    Call arguments (`update_state`):
        y_true: (B, C) 0/1 labels.
        y_pred: (B, C) per-class scores (sigmoid outputs or logits).
        sample_weight: (B,) or None. Image weights.

    Example:

    ```python
    import kdpvlpa, keras
    model.compile(
        optimizer="adam",
        loss="binary_crossentropy",
        metrics=[
            kdpvlpa.metrics.MeanAveragePrecision(),
            kdpvlpa.metrics.MeanAveragePrecision(class_freq, group="tail"),
        ],
    )
    model.fit(x, y, validation_data=(x_val, y_val))  # logs val_map, val_map_tail
    ```

    Reference:
        DP-VLPA (AAAI 2026), Table 1.
    """

    def __init__(
        self,
        class_freq=None,
        group="total",
        head_threshold=HEAD_THRESHOLD,
        tail_threshold=TAIL_THRESHOLD,
        name=None,
        dtype=None,
    ):
        if group not in ("total",) + GROUPS:
            raise ValueError(
                f"`group` must be one of 'total', 'head', 'medium', 'tail'. "
                f"Received: group={group!r}"
            )
        if group != "total" and class_freq is None:
            raise ValueError(
                f"`group={group!r}` needs `class_freq` (training image count "
                f"per class). Received: class_freq=None"
            )
        if name is None:
            name = "map" if group == "total" else f"map_{group}"
        super().__init__(name=name, dtype=dtype)
        # Higher is better: EarlyStopping and ModelCheckpoint read this.
        self._direction = "up"
        if class_freq is not None:
            class_freq = [int(n) for n in np.asarray(class_freq).tolist()]
            # Validates the counts and thresholds now rather than at the end
            # of the first epoch.
            class_groups(class_freq, head_threshold, tail_threshold)
        self.class_freq = class_freq
        self.group = group
        self.head_threshold = head_threshold
        self.tail_threshold = tail_threshold
        self._buffers = _Buffers()

    # Kept out of torch.compile: traced, the NumPy code went to Inductor,
    # whose generated C++ failed to build.
    @torch.compiler.disable
    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = np.asarray(ops.convert_to_numpy(y_true), dtype=np.float64)
        scores = np.asarray(ops.convert_to_numpy(y_pred), dtype=np.float64)
        if labels.ndim != 2 or labels.shape != scores.shape:
            raise ValueError(
                f"`y_true` and `y_pred` must both have shape (B, C). "
                f"Received: y_true.shape={labels.shape}, "
                f"y_pred.shape={scores.shape}"
            )
        if self.class_freq is not None and labels.shape[1] != len(
            self.class_freq
        ):
            raise ValueError(
                f"The labels have {labels.shape[1]} classes but `class_freq` "
                f"has {len(self.class_freq)}. Received: "
                f"y_true.shape={labels.shape}"
            )
        buffers = self._buffers
        if buffers.labels and labels.shape[1] != buffers.labels[0].shape[1]:
            raise ValueError(
                f"Every batch must have the same number of classes. Received "
                f"{labels.shape[1]} after {buffers.labels[0].shape[1]}"
            )
        if sample_weight is None:
            weights = np.ones(labels.shape[0])
        else:
            weights = np.asarray(
                ops.convert_to_numpy(sample_weight), dtype=np.float64
            ).reshape(-1)
            if weights.shape[0] != labels.shape[0]:
                raise ValueError(
                    f"`sample_weight` must hold one weight per image "
                    f"({labels.shape[0]}). Received shape "
                    f"{np.shape(ops.convert_to_numpy(sample_weight))}"
                )
        buffers.labels.append(labels)
        buffers.scores.append(scores)
        buffers.weights.append(weights)
        buffers.version += 1

    @torch.compiler.disable
    def result(self):
        buffers = self._buffers
        if buffers.cached is not None and buffers.cached[0] == buffers.version:
            return ops.convert_to_tensor(buffers.cached[1], dtype=self.dtype)
        value = self._compute()
        buffers.cached = (buffers.version, value)
        return ops.convert_to_tensor(value, dtype=self.dtype)

    def _compute(self):
        buffers = self._buffers
        if not buffers.labels:
            return 0.0
        labels = np.concatenate(buffers.labels)
        if labels.shape[0] == 0:
            return 0.0
        scores = np.concatenate(buffers.scores)
        weights = np.concatenate(buffers.weights)
        ap = average_precision(
            labels,
            scores,
            sample_weight=None if np.all(weights == 1.0) else weights,
        )
        if self.group != "total":
            ap = ap[
                class_groups(
                    self.class_freq, self.head_threshold, self.tail_threshold
                )[self.group]
            ]
        ap = ap[~np.isnan(ap)]
        if ap.size == 0:
            return float("nan")
        return float(100.0 * ap.mean())

    def reset_state(self):
        self._buffers = _Buffers()

    def get_config(self):
        return {
            "class_freq": self.class_freq,
            "group": self.group,
            "head_threshold": self.head_threshold,
            "tail_threshold": self.tail_threshold,
            "name": self.name,
            "dtype": self.dtype,
        }

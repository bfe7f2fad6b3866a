"""Per-class average precision and long-tail mAP, vectorised in NumPy.

AP here is exactly `sklearn.metrics.average_precision_score` on each column
(the step-wise precision–recall sum with one threshold per distinct score),
computed for all classes at once. Evaluation follows LMPT and DBL, so the
numbers compare with Table 1 of the paper.

Reference:
    DP-VLPA (AAAI 2026), Table 1 and "Evaluation" in the project's METHOD.md.
"""

import warnings

import numpy as np

HEAD_THRESHOLD = 100
TAIL_THRESHOLD = 20
GROUPS = ("head", "medium", "tail")


def _as_matrix(x, name, dtype):
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(
            f"`{name}` must have shape (N, C). Received: {name}.shape={x.shape}"
        )
    return x if dtype is None else x.astype(dtype, copy=False)


def _check_inputs(y_true, scores, sample_weight):
    y_true = _as_matrix(y_true, "y_true", None)
    scores = _as_matrix(scores, "scores", np.float64)
    if y_true.shape != scores.shape:
        raise ValueError(
            f"`y_true` and `scores` must have the same shape (N, C). "
            f"Received: y_true.shape={y_true.shape}, "
            f"scores.shape={scores.shape}"
        )
    if y_true.shape[0] == 0:
        raise ValueError(
            f"Average precision needs at least one image. Received: "
            f"y_true.shape={y_true.shape}"
        )
    binary = (y_true == 0) | (y_true == 1)
    if not binary.all():
        bad = np.unique(y_true[~binary])[:5]
        raise ValueError(
            f"`y_true` must hold only 0 and 1. Received other values, such as "
            f"{bad.tolist()}"
        )
    if not np.isfinite(scores).all():
        raise ValueError(
            f"`scores` must be finite. Received "
            f"{int((~np.isfinite(scores)).sum())} NaN or infinite entries"
        )
    if sample_weight is not None:
        sample_weight = np.asarray(sample_weight, dtype=np.float64)
        if sample_weight.shape != (y_true.shape[0],):
            raise ValueError(
                f"`sample_weight` must have shape (N,) = ({y_true.shape[0]},). "
                f"Received: sample_weight.shape={sample_weight.shape}"
            )
        if not (np.isfinite(sample_weight).all() and (sample_weight >= 0).all()):
            raise ValueError(
                "`sample_weight` must be finite and non-negative."
            )
    return y_true, scores, sample_weight


def average_precision(
    y_true, scores, sample_weight=None, no_positive_value=float("nan")
):
    """Per-class average precision, equal to sklearn's `average_precision_score`.

    For each class c, `AP_c = Σ_n (R_n − R_{n−1}) P_n` over the distinct
    scores of column c taken as thresholds in decreasing order, with
    precision P_n and recall R_n of "score ≥ threshold": tied scores enter
    together, exactly as `sklearn.metrics.average_precision_score(y_true[:, c],
    scores[:, c])` (agreement to ~1e-15). All classes are computed at once with
    one column-wise sort and cumulative sums.

    A class with no positive image has no defined AP. It gets
    `no_positive_value`, NaN by default, so that means over classes can leave
    it out (`long_tail_map` and `mean_average_precision` do, with a
    warning). sklearn instead warns and returns 0.0 for such a class (scikit-
    learn 1.9); pass `no_positive_value=0.0` to reproduce that.

    Args:
        y_true: array-like (N, C) of 0/1 or bool. Ground-truth labels.
        scores: array-like (N, C) of finite floats. Any per-class scores whose
            order ranks images (sigmoid outputs or logits).
        sample_weight: array-like (N,) or None. Non-negative image weights,
            as sklearn's `sample_weight`.
        no_positive_value: float. AP given to a class without positives.

    Returns:
        A float64 NumPy array (C,) of AP values in [0, 1].

    Example:

    ```python
    import numpy as np
    import kdpvlpa
    ap = kdpvlpa.metrics.average_precision(
        np.array([[1, 0], [0, 1], [1, 0]]),
        np.array([[0.9, 0.2], [0.4, 0.2], [0.4, 0.1]]),
    )
    # array([0.8333..., 0.5]): in class 1 the positive ties with a negative
    # at 0.2, so both enter at one threshold with precision 1/2.
    ```

    Reference:
        DP-VLPA (AAAI 2026), "Evaluation"; scikit-learn
        `average_precision_score`.
    """
    y_true, scores, sample_weight = _check_inputs(y_true, scores, sample_weight)
    num_images, num_classes = y_true.shape

    # Classes on rows: sorting along the contiguous axis is several times
    # faster than along axis 0. The sort need not be stable because tied
    # scores are resolved as one threshold below.
    scores = np.ascontiguousarray(scores.T)
    order = np.argsort(-scores, axis=1)
    sorted_scores = np.take_along_axis(scores, order, axis=1)
    # int8 labels make the transpose and the gather cheap; the counts are
    # accumulated in float64 like sklearn's.
    positives = np.take_along_axis(
        np.ascontiguousarray(y_true.T, dtype=np.int8), order, axis=1
    )
    if sample_weight is not None:
        weights = sample_weight[order]
        positives = positives * weights
        predicted = np.cumsum(weights, axis=1)
    true_pos = np.cumsum(positives, axis=1, dtype=np.float64)

    # One threshold per distinct score: only the last row of each block of
    # tied scores is a point of the precision–recall curve.
    block_end = np.empty(scores.shape, dtype=bool)
    np.not_equal(sorted_scores[:, 1:], sorted_scores[:, :-1], out=block_end[:, :-1])
    block_end[:, -1] = True
    cls, rank = np.nonzero(block_end)
    tp_end = true_pos[cls, rank]
    if sample_weight is None:
        predicted_end = rank + 1.0
    else:
        predicted_end = predicted[cls, rank]

    # Recall gained since the previous threshold of the same class, times the
    # precision at this threshold: sklearn's step-wise sum.
    gained = np.empty_like(tp_end)
    gained[0] = tp_end[0]
    gained[1:] = tp_end[1:] - tp_end[:-1]
    first = np.empty(cls.shape, dtype=bool)
    first[0] = True
    np.not_equal(cls[1:], cls[:-1], out=first[1:])
    gained[first] = tp_end[first]
    precision = np.divide(
        tp_end,
        predicted_end,
        out=np.zeros_like(tp_end),
        where=predicted_end > 0,
    )
    summed = np.bincount(cls, weights=gained * precision, minlength=num_classes)
    total_positive = true_pos[:, -1]
    has_positive = total_positive > 0
    ap = np.full(num_classes, no_positive_value, dtype=np.float64)
    ap[has_positive] = summed[has_positive] / total_positive[has_positive]
    return ap


def _nanmean_percent(values, what):
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return float("nan")
    missing = np.isnan(values)
    if missing.all():
        warnings.warn(
            f"{what}: every class lacks positives in `y_true`; the mean is "
            f"NaN.",
            stacklevel=3,
        )
        return float("nan")
    return float(100.0 * np.mean(values[~missing]))


def mean_average_precision(y_true, scores, sample_weight=None):
    """Mean AP over classes, in percent (0–100), like Table 1 of the paper.

    Classes without a positive image in `y_true` are left out of the mean,
    with a warning.

    Args:
        y_true: array-like (N, C) of 0/1. Ground-truth labels.
        scores: array-like (N, C) of finite floats. Per-class scores.
        sample_weight: array-like (N,) or None. Image weights.

    Returns:
        A Python float in [0, 100] (NaN if no class has a positive).

    Example:

    ```python
    import numpy as np
    import kdpvlpa
    kdpvlpa.metrics.mean_average_precision(
        np.array([[1, 0], [0, 1]]), np.array([[0.9, 0.2], [0.1, 0.8]])
    )  # 100.0
    ```

    Reference:
        DP-VLPA (AAAI 2026), Table 1.
    """
    ap = average_precision(y_true, scores, sample_weight=sample_weight)
    _warn_missing(ap)
    return _nanmean_percent(ap, "mean_average_precision")


def _warn_missing(ap):
    missing = np.flatnonzero(np.isnan(ap))
    if missing.size:
        warnings.warn(
            f"{missing.size} class(es) have no positive image in `y_true` "
            f"(indices {missing[:10].tolist()}"
            f"{', ...' if missing.size > 10 else ''}); their AP is undefined "
            f"and they are left out of the means.",
            stacklevel=3,
        )


def class_groups(
    class_freq, head_threshold=HEAD_THRESHOLD, tail_threshold=TAIL_THRESHOLD
):
    """Splits classes into head / medium / tail by training frequency.

    Head: `n_c >= head_threshold` (100); medium: `tail_threshold <= n_c <
    head_threshold` (20–99); tail: `n_c < tail_threshold` (< 20), the split of
    LMPT, DBL and the paper's Table 1.

    Args:
        class_freq: array-like (C,) of non-negative counts. Number of training
            images of each class.
        head_threshold: int. Smallest head-class count. Defaults to 100.
        tail_threshold: int. Smallest medium-class count. Defaults to 20.

    Returns:
        A dict `{"head": idx, "medium": idx, "tail": idx}` of sorted int64
        index arrays that together cover `range(C)`.

    Example:

    ```python
    import kdpvlpa
    kdpvlpa.metrics.class_groups([100, 99, 20, 19])
    # {"head": array([0]), "medium": array([1, 2]), "tail": array([3])}
    ```

    Reference:
        DP-VLPA (AAAI 2026), Table 1.
    """
    freq = np.asarray(class_freq)
    if freq.ndim != 1:
        raise ValueError(
            f"`class_freq` must have shape (C,). Received: "
            f"class_freq.shape={freq.shape}"
        )
    if freq.size and not (np.isfinite(freq).all() and (freq >= 0).all()):
        raise ValueError(
            "`class_freq` must hold non-negative counts. Received: "
            f"{freq.tolist()[:10]}"
        )
    if not tail_threshold <= head_threshold:
        raise ValueError(
            f"`tail_threshold` must not exceed `head_threshold`. Received: "
            f"tail_threshold={tail_threshold}, head_threshold={head_threshold}"
        )
    return {
        "head": np.flatnonzero(freq >= head_threshold),
        "medium": np.flatnonzero(
            (freq >= tail_threshold) & (freq < head_threshold)
        ),
        "tail": np.flatnonzero(freq < tail_threshold),
    }


def long_tail_map(
    y_true,
    scores,
    class_freq,
    head_threshold=HEAD_THRESHOLD,
    tail_threshold=TAIL_THRESHOLD,
):
    """mAP over all classes and over head / medium / tail classes, in percent.

    Values are percentages in [0, 100], as in the paper's Table 1 (e.g.
    90.72), not fractions. Groups follow `class_groups` (training frequency
    ≥ 100 / 20–99 / < 20). A class with no positive test image is left out of
    every mean, with a warning; a group with no class (or none with
    positives) is NaN.

    Args:
        y_true: array-like (N, C) of 0/1. Test labels; images without any label
            stay in.
        scores: array-like (N, C) of finite floats. Per-class scores (sigmoid
            outputs, not a softmax over classes).
        class_freq: array-like (C,). Training-set image count of each class.
        head_threshold: int. Smallest head-class count. Defaults to 100.
        tail_threshold: int. Smallest medium-class count. Defaults to 20.

    Returns:
        A dict with exactly the keys `"total"`, `"head"`, `"medium"`,
        `"tail"`, each a Python float (percent).

    Example:

    ```python
    import numpy as np
    import kdpvlpa
    result = kdpvlpa.metrics.long_tail_map(
        np.array([[1, 0, 1], [0, 1, 0]]),
        np.array([[0.9, 0.2, 0.7], [0.1, 0.8, 0.3]]),
        class_freq=[500, 40, 3],
    )
    # {"total": 100.0, "head": 100.0, "medium": 100.0, "tail": 100.0}
    ```

    Reference:
        DP-VLPA (AAAI 2026), Table 1.
    """
    ap = average_precision(y_true, scores)
    groups = class_groups(class_freq, head_threshold, tail_threshold)
    if len(np.asarray(class_freq)) != ap.shape[0]:
        raise ValueError(
            f"`class_freq` must have one count per class (C={ap.shape[0]}). "
            f"Received: len(class_freq)={len(np.asarray(class_freq))}"
        )
    _warn_missing(ap)
    result = {"total": _nanmean_percent(ap, "long_tail_map total")}
    for group in GROUPS:
        with warnings.catch_warnings():
            # An empty or all-NaN group is reported as NaN; the per-class
            # warning above already names the classes.
            warnings.simplefilter("ignore")
            result[group] = _nanmean_percent(ap[groups[group]], group)
    return result

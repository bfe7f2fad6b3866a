"""Evaluation of DP-VLPA: per-class AP, overall and head/medium/tail mAP."""

from kdpvlpa.metrics.average_precision import average_precision
from kdpvlpa.metrics.average_precision import class_groups
from kdpvlpa.metrics.average_precision import long_tail_map
from kdpvlpa.metrics.average_precision import mean_average_precision

# The metric class lives in `mean_average_precision_metric.py`, not
# `mean_average_precision.py`: a submodule of that name would replace the
# function `mean_average_precision` as an attribute of this package.
from kdpvlpa.metrics.mean_average_precision_metric import MeanAveragePrecision

__all__ = [
    "MeanAveragePrecision",
    "average_precision",
    "class_groups",
    "long_tail_map",
    "mean_average_precision",
]

"""Losses of DP-VLPA: GCL, QCL, GCL-DQR, COA and the classification loss.

Each loss is a pure function on `keras.ops` plus a `keras.losses.Loss` class.
"""

from kdpvlpa.losses.classification import ClassificationLoss
from kdpvlpa.losses.classification import classification_loss
from kdpvlpa.losses.co_occurrence import CoOccurrenceLoss
from kdpvlpa.losses.co_occurrence import co_occurrence_loss
from kdpvlpa.losses.co_occurrence import co_occurrence_matrix
from kdpvlpa.losses.contrastive import GlobalContrastiveLoss
from kdpvlpa.losses.contrastive import QueryContrastiveLoss
from kdpvlpa.losses.contrastive import WeightedContrastiveLoss
from kdpvlpa.losses.contrastive import dqr_weights
from kdpvlpa.losses.contrastive import global_contrastive_loss
from kdpvlpa.losses.contrastive import query_contrastive_loss
from kdpvlpa.losses.contrastive import weighted_contrastive_loss

__all__ = [
    "ClassificationLoss",
    "CoOccurrenceLoss",
    "GlobalContrastiveLoss",
    "QueryContrastiveLoss",
    "WeightedContrastiveLoss",
    "classification_loss",
    "co_occurrence_loss",
    "co_occurrence_matrix",
    "dqr_weights",
    "global_contrastive_loss",
    "query_contrastive_loss",
    "weighted_contrastive_loss",
]

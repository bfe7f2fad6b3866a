"""Training: the frozen-feature cache, batches, optimizer, phases, pipeline.

The names below are imported lazily: `kdpvlpa.training.pipeline` (what
`kdpvlpa fit` imports) must not pull in keras / torch before the data check,
so that missing data is reported at once.
"""

import importlib

_EXPORTS = {
    "EpochSeed": "kdpvlpa.training.batches",
    "TrainingBatches": "kdpvlpa.training.batches",
    "FeatureCache": "kdpvlpa.training.feature_cache",
    "load_training_image": "kdpvlpa.training.feature_cache",
    "make_optimizer": "kdpvlpa.training.trainer",
    "train_phase": "kdpvlpa.training.trainer",
}

__all__ = ["EpochSeed", "FeatureCache", "TrainingBatches", "load_training_image",
           "make_optimizer", "train_phase"]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'kdpvlpa.training' has no attribute {name!r}")

"""Training: the frozen-feature cache, batches, optimizer, phases, pipeline."""

from kdpvlpa.training.batches import EpochSeed, TrainingBatches
from kdpvlpa.training.feature_cache import FeatureCache, load_training_image
from kdpvlpa.training.trainer import make_optimizer, train_phase

__all__ = ["EpochSeed", "FeatureCache", "TrainingBatches", "load_training_image",
           "make_optimizer", "train_phase"]

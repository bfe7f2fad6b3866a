import keras
import numpy as np

import kdpvlpa  # noqa: F401
from kdpvlpa.models import DPVLPA


def tiny_model(class_names, seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    return DPVLPA.from_presets(
        "tiny_random_vit", "tiny_random_bert", class_names, num_query_tokens=4,
        projection_dim=16, sequence_length=24, **kwargs,
    )


def weights_of(model):
    return [np.asarray(w.numpy()).copy() for w in model.weights]

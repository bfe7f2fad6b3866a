"""kdpvlpa: DP-VLPA long-tailed multi-label image recognition in Keras 3.

Importing this package selects the Keras ``torch`` backend (when
``KERAS_BACKEND`` is unset). Sub-packages are imported lazily, so
``import kdpvlpa`` is cheap and ``kdpvlpa.data`` works without Keras.
"""

import importlib

from kdpvlpa.backend import ensure_torch_backend

ensure_torch_backend()

__version__ = "0.1.0"

_SUBMODULES = ("data", "layers", "losses", "metrics", "models", "training")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"kdpvlpa.{name}")
    raise AttributeError(f"module 'kdpvlpa' has no attribute {name!r}")

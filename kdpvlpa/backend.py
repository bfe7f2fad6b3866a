"""Keras backend selection.

kdpvlpa runs on Keras 3 with the PyTorch backend. Importing `kdpvlpa` selects
that backend when `KERAS_BACKEND` is unset, and refuses to run on any other.
This module imports nothing heavy so that `llm_gen` and the CLI stay fast.
"""

import os
import sys


class BackendError(ImportError):
    """Raised when Keras was configured for a backend other than torch."""


def ensure_torch_backend():
    requested = os.environ.get("KERAS_BACKEND")
    if requested is None:
        os.environ["KERAS_BACKEND"] = "torch"
    elif requested != "torch":
        raise BackendError(
            "kdpvlpa needs the Keras 'torch' backend, but KERAS_BACKEND is set "
            f"to {requested!r}. Unset it or set KERAS_BACKEND=torch before "
            "importing kdpvlpa."
        )
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "backend"):
        active = keras.backend.backend()
        if active != "torch":
            raise BackendError(
                "kdpvlpa needs the Keras 'torch' backend, but Keras was already "
                f"imported with the {active!r} backend. Import kdpvlpa before "
                "keras, or set KERAS_BACKEND=torch."
            )

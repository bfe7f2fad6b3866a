"""Keras backend selection.

kdpvlpa runs on Keras 3 with the PyTorch backend. Importing `kdpvlpa` selects
that backend when `KERAS_BACKEND` is unset, and refuses to run on any other.
This module imports nothing heavy so that `llm_gen` and the CLI stay fast.
"""

import os
import sys


class BackendError(ImportError):
    """Raised when Keras was configured for a backend other than torch."""


class MissingDependencyError(ImportError):
    """Raised when a package kdpvlpa needs is not installed; says how to
    install it."""


def import_keras_hub():
    """`keras_hub`, or an error that gives the install command.

    keras-hub is not among kdpvlpa's dependencies: its wheel requires
    tensorflow-text, which would pull in TensorFlow, so it is installed with
    `--no-deps` (README, "Why the install looks like this").
    """
    try:
        import keras_hub
    except ImportError as error:
        raise MissingDependencyError(
            f"kdpvlpa needs keras-hub ({error}). Install it without its "
            "dependencies, which would pull in TensorFlow: "
            "`pip install --no-deps keras-hub==0.32.0`."
        ) from None
    return keras_hub


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

"""Reading Hugging Face checkpoint folders without transformers.

A folder saved with `save_pretrained` holds `config.json` and the weights as
`model.safetensors`, `pytorch_model.bin`, or shards listed in an
`*.index.json`. These helpers read them into NumPy arrays so converters can
map them onto Keras weights by name.
"""

import json
from pathlib import Path

import numpy as np

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def is_hf_folder(path):
    path = Path(path)
    if not (path / "config.json").is_file():
        return False
    config = read_hf_config(path)
    return isinstance(config, dict) and ("model_type" in config or "architectures" in config)


def has_hf_weights(path):
    """Whether a folder holds weights in one of `save_pretrained`'s files."""
    return any((Path(path) / name).is_file() for name in _WEIGHT_FILES + _INDEX_FILES)


def read_hf_config(path):
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"No config.json in checkpoint folder {path}.")
    try:
        return json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{config_file} is not valid JSON: {error}") from None


def _load_file(file):
    if file.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return load_file(str(file))
    import torch

    return tensors_to_numpy(torch.load(str(file), map_location="cpu", weights_only=True))


def tensors_to_numpy(state):
    """The tensors of a PyTorch state dict as `{name: np.ndarray}`, floating
    ones in float32 (checkpoints in float16 or bfloat16, which NumPy lacks);
    entries that are not tensors (a training checkpoint's epoch) are left out."""
    import torch

    return {name: (value.float() if value.is_floating_point() else value).numpy()
            for name, value in state.items() if isinstance(value, torch.Tensor)}


def read_hf_weights(path):
    """Returns all tensors of a checkpoint folder as `{name: np.ndarray}`."""
    path = Path(path)
    for name in _WEIGHT_FILES:
        if (path / name).is_file():
            return _load_file(path / name)
    for name in _INDEX_FILES:
        if (path / name).is_file():
            index = json.loads((path / name).read_text())
            weights = {}
            for shard in sorted(set(index["weight_map"].values())):
                weights.update(_load_file(path / shard))
            return weights
    raise FileNotFoundError(
        f"No weights in checkpoint folder {path}: expected one of "
        f"{', '.join(_WEIGHT_FILES + _INDEX_FILES)}."
    )


class MissingTensorError(ValueError, KeyError):
    """A checkpoint lacks a tensor the model needs (a `ValueError`: bad input)."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


class WeightReader:
    """Looks up checkpoint tensors by name, under an optional prefix.

    Tracks which tensors were used so a converter can report what it left
    out, and raises a clear error naming a tensor the checkpoint lacks.
    """

    def __init__(self, weights, prefix="", source=""):
        self.weights = {k: np.asarray(v) for k, v in weights.items()}
        self.prefix = prefix
        self.source = source
        self.used = set()

    def has(self, name):
        return self.prefix + name in self.weights

    def get(self, name):
        key = self.prefix + name
        if key not in self.weights:
            raise MissingTensorError(
                f"Checkpoint {self.source} has no tensor '{key}'."
            )
        self.used.add(key)
        return self.weights[key].astype("float32")

    def unused(self):
        return sorted(
            k for k in self.weights if k.startswith(self.prefix) and k not in self.used
        )


def find_prefix(weights, marker):
    """The prefix before the first key that contains `marker`, e.g. 'bert.'."""
    for key in sorted(weights):
        idx = key.find(marker)
        if idx >= 0:
            return key[:idx]
    return None

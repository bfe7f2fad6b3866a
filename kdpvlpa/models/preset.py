"""kdpvlpa preset folders: a model's config, weights and tokenizer on disk.

A preset folder holds `kdpvlpa_preset.json` (the class and its `get_config`),
`model.weights.h5` and, for text models, the WordPiece `vocab.txt`. It is
what `save_to_preset` writes and what every `from_preset` accepts, next to
Hugging Face and keras-hub folders.
"""

import json
from pathlib import Path

import keras

PRESET_FILE = "kdpvlpa_preset.json"
WEIGHTS_FILE = "model.weights.h5"


def is_kdpvlpa_preset(path):
    return (Path(path) / PRESET_FILE).is_file()


def save_model_preset(model, preset_dir, extra=None):
    preset_dir = Path(preset_dir)
    preset_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "class_name": type(model).__name__,
        "config": model.get_config(),
        "keras_version": keras.__version__,
    }
    if extra:
        record.update(extra)
    model.save_weights(str(preset_dir / WEIGHTS_FILE))
    # Write the description last: a folder without it is not a preset, so an
    # interrupted save is never mistaken for a complete one.
    (preset_dir / PRESET_FILE).write_text(json.dumps(record, indent=2))


def load_model_preset(cls, preset_dir, **overrides):
    preset_dir = Path(preset_dir)
    record = json.loads((preset_dir / PRESET_FILE).read_text())
    if record["class_name"] != cls.__name__:
        raise ValueError(
            f"Preset {preset_dir} holds a {record['class_name']}, not a "
            f"{cls.__name__}."
        )
    config = dict(record["config"])
    config.update(overrides)
    model = cls.from_config(config)
    model.load_weights(str(preset_dir / WEIGHTS_FILE))
    return model, record

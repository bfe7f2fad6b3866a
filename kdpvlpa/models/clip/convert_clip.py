"""Loading CLIP image towers from Hugging Face and keras-hub checkpoints.

keras-hub has no converter for Hugging Face CLIP folders, so this maps
`vision_model.*` tensors onto keras-hub's layer names.
"""

import json
from pathlib import Path

import numpy as np

from kdpvlpa.models.preset import is_kdpvlpa_preset, load_model_preset
from kdpvlpa.utils.hf_checkpoint import WeightReader, find_prefix, read_hf_config, read_hf_weights

# Small randomly initialised encoders that need no file: for the offline demo
# and the tests. The encoder is frozen, so its random features are fixed.
NAMED_CONFIGS = {
    "tiny_random_vit": dict(
        patch_size=8, hidden_dim=64, num_layers=2, num_heads=4,
        intermediate_dim=128, image_size=64,
    ),
}


def clip_config_from_hf(config, source):
    model_type = config.get("model_type")
    if model_type == "clip":
        config = config["vision_config"]
    elif model_type != "clip_vision_model":
        raise ValueError(
            f"{source} holds a {model_type!r} model; expected a Hugging Face "
            "CLIPModel ('clip') or CLIPVisionModel ('clip_vision_model')."
        )
    act = config.get("hidden_act", "quick_gelu")
    if act not in ("quick_gelu", "gelu"):
        raise ValueError(f"{source}: unsupported activation {act!r}.")
    return dict(
        patch_size=config.get("patch_size", 32),
        hidden_dim=config.get("hidden_size", 768),
        num_layers=config.get("num_hidden_layers", 12),
        num_heads=config.get("num_attention_heads", 12),
        intermediate_dim=config.get("intermediate_size", 3072),
        intermediate_activation=act,
        image_size=config.get("image_size", 224),
    )


def _layer_norm(layer, reader, name):
    layer.gamma.assign(reader.get(f"{name}.weight"))
    layer.beta.assign(reader.get(f"{name}.bias"))


def load_hf_clip_weights(model, weights, source=""):
    """Copies `vision_model.*` tensors of a HF CLIP checkpoint into `model`."""
    prefix = find_prefix(weights, "embeddings.patch_embedding.weight")
    if prefix is None:
        raise ValueError(f"{source} has no CLIP vision tower weights.")
    reader = WeightReader(weights, prefix, source)
    enc = model.encoder
    hidden, heads = model.hidden_dim, model.num_heads
    head_dim = hidden // heads

    enc.embedding.class_embedding.assign(reader.get("embeddings.class_embedding"))
    # (out, in, kh, kw) -> (kh, kw, in, out)
    enc.embedding.patch_embedding.kernel.assign(
        np.transpose(reader.get("embeddings.patch_embedding.weight"), (2, 3, 1, 0)))
    enc.embedding.position_embedding.embeddings.assign(
        reader.get("embeddings.position_embedding.weight"))
    _layer_norm(enc.pre_layer_norm, reader, "pre_layrnorm")
    _layer_norm(enc.layer_norm, reader, "post_layernorm")
    for i, block in enumerate(enc.encoder_layers):
        p = f"encoder.layers.{i}."
        att = block.attention
        for dense, name in ((att._query_dense, "q_proj"), (att._key_dense, "k_proj"),
                            (att._value_dense, "v_proj")):
            w = reader.get(f"{p}self_attn.{name}.weight")
            dense.kernel.assign(w.T.reshape(hidden, heads, head_dim))
            dense.bias.assign(reader.get(f"{p}self_attn.{name}.bias").reshape(heads, head_dim))
        w = reader.get(f"{p}self_attn.out_proj.weight")
        att._output_dense.kernel.assign(w.T.reshape(heads, head_dim, hidden))
        att._output_dense.bias.assign(reader.get(f"{p}self_attn.out_proj.bias"))
        _layer_norm(block.layer_norm_1, reader, f"{p}layer_norm1")
        _layer_norm(block.layer_norm_2, reader, f"{p}layer_norm2")
        block.dense_1.kernel.assign(reader.get(f"{p}mlp.fc1.weight").T)
        block.dense_1.bias.assign(reader.get(f"{p}mlp.fc1.bias"))
        block.dense_2.kernel.assign(reader.get(f"{p}mlp.fc2.weight").T)
        block.dense_2.bias.assign(reader.get(f"{p}mlp.fc2.bias"))
    return reader


def _is_keras_hub_preset(path):
    return (path / "metadata.json").is_file() and (path / "config.json").is_file() and \
        "registered_name" in json.loads((path / "config.json").read_text())


def _from_keras_hub(preset, **kwargs):
    from kdpvlpa.backend import import_keras_hub

    keras_hub = import_keras_hub()

    try:
        hub = keras_hub.models.Backbone.from_preset(str(preset))
    except Exception as error:  # keras-hub raises many kinds for a bad preset
        raise ValueError(
            f"Could not load the keras-hub preset folder {preset!r}: {error}."
        ) from None
    vision = getattr(hub, "vision_encoder", hub)
    from kdpvlpa.models.clip.clip_vision_encoder import CLIPVisionEncoder

    model = CLIPVisionEncoder(
        patch_size=vision.patch_size,
        hidden_dim=vision.hidden_dim,
        num_layers=vision.num_layers,
        num_heads=vision.num_heads,
        intermediate_dim=vision.intermediate_dim,
        intermediate_activation=vision.intermediate_activation,
        image_size=vision.image_shape[0],
        **kwargs,
    )
    model.encoder.set_weights(vision.get_weights())
    return model


def load_clip_vision_preset(preset, **kwargs):
    from kdpvlpa.models.clip.clip_vision_encoder import CLIPVisionEncoder

    # None keeps the preset's value (e.g. `feature_layer=None`).
    kwargs = {k: v for k, v in kwargs.items() if v is not None}

    if str(preset) in NAMED_CONFIGS:
        config = dict(NAMED_CONFIGS[str(preset)])
        config.update(kwargs)
        return CLIPVisionEncoder(**config)
    path = Path(preset).expanduser()
    if not path.is_dir():
        # kdpvlpa never downloads: a bare keras-hub name (which keras-hub
        # would fetch from Kaggle) is refused like a missing folder.
        raise FileNotFoundError(
            f"CLIP checkpoint folder {preset!r} does not exist. Give a local "
            "Hugging Face CLIPModel/CLIPVisionModel folder (e.g. "
            "openai/clip-vit-base-patch16 saved with save_pretrained), a local "
            "keras-hub CLIP preset folder (`save_to_preset`), or "
            "'tiny_random_vit'. Nothing is downloaded."
        )
    if is_kdpvlpa_preset(path):
        model, _ = load_model_preset(CLIPVisionEncoder, path, **kwargs)
        return model
    if _is_keras_hub_preset(path):
        return _from_keras_hub(path, **kwargs)
    config = read_hf_config(path)
    args = clip_config_from_hf(config, str(path))
    args.update(kwargs)
    model = CLIPVisionEncoder(**args)
    load_hf_clip_weights(model, read_hf_weights(path), str(path))
    return model

"""Loading CLIP image towers from Hugging Face, OpenAI, open_clip and keras-hub checkpoints.

keras-hub has no converter for Hugging Face CLIP folders, so this maps
`vision_model.*` tensors onto keras-hub's layer names. OpenAI's own release
files (`clip.load`'s TorchScript `ViT-B-16.pt`) and open_clip checkpoints
name the same tensors differently (`visual.transformer.resblocks.*`, one
fused query/key/value projection); they are renamed to Hugging Face's names
first, as transformers' own CLIP conversion script does.
"""

import json
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np

from kdpvlpa.models.preset import is_kdpvlpa_preset, load_model_preset
from kdpvlpa.utils.hf_checkpoint import (
    WeightReader,
    find_prefix,
    has_hf_weights,
    is_hf_folder,
    read_hf_config,
    read_hf_weights,
    tensors_to_numpy,
)

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


def _build_from_hf(config, weights, source, kwargs):
    """The encoder a Hugging Face CLIP config describes, holding `weights`
    (Hugging Face names); `kwargs` override the config."""
    from kdpvlpa.models.clip.clip_vision_encoder import CLIPVisionEncoder

    args = clip_config_from_hf(config, source)
    args.update(kwargs)
    model = CLIPVisionEncoder(**args)
    load_hf_clip_weights(model, weights, source)
    return model


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


# open_clip's files in a Hugging Face Hub folder (`open_clip_config.json` beside them).
_OPEN_CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_BLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)")
_BLOCK_NAMES = {
    "ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
}
_TOP_NAMES = {
    "class_embedding": "embeddings.class_embedding",
    "conv1.weight": "embeddings.patch_embedding.weight",
    "positional_embedding": "embeddings.position_embedding.weight",
    "ln_pre.weight": "pre_layrnorm.weight", "ln_pre.bias": "pre_layrnorm.bias",
    "ln_post.weight": "post_layernorm.weight", "ln_post.bias": "post_layernorm.bias",
}


def _is_torchscript_archive(file):
    # `torch.jit.save` archives hold compiled code and a constants table;
    # `torch.save` archives hold neither.
    if not zipfile.is_zipfile(file):
        return False
    with zipfile.ZipFile(file) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def _as_numpy(state, source):
    arrays = tensors_to_numpy(state)  # OpenAI's files are float16
    if not arrays:
        raise ValueError(f"{source} holds no tensors.")
    return arrays


def read_clip_checkpoint_file(file):
    """Reads an OpenAI CLIP or open_clip checkpoint file.

    Args:
        file: path-like. OpenAI's TorchScript release file (`ViT-B-16.pt`,
            what `clip.load` downloads), or an open_clip checkpoint: a state
            dict saved with `torch.save` (`open_clip_pytorch_model.bin`, a
            training checkpoint whose `"state_dict"` holds it, `module.`
            prefixes included) or `open_clip_model.safetensors`.

    Returns:
        `(weights, torchscript)`: `{name: np.ndarray}` in float32 for
        floating tensors, and whether the file was a TorchScript archive.
    """
    import torch

    file = Path(file)
    source = str(file)
    torchscript = False
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return _as_numpy(load_file(source), source), False
        torchscript = _is_torchscript_archive(file)
        if torchscript:
            # OpenAI's release format. TorchScript archives run no Python pickle
            # code, but, as with any checkpoint, load only files you trust.
            state = torch.jit.load(source, map_location="cpu").state_dict()
            return _as_numpy(state, source), True
        state = torch.load(source, map_location="cpu", weights_only=True)
    except (OSError, ValueError):
        raise
    except Exception as error:  # torch and safetensors raise many kinds for a bad file
        kind = "TorchScript archive" if torchscript else "checkpoint"
        raise ValueError(f"Could not read {source} as a {kind}: {error}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # an open_clip training checkpoint
    if not isinstance(state, dict):
        raise ValueError(f"{source} holds a {type(state).__name__}, not a state dict.")
    return _as_numpy(state, source), False


# The image tower's tensors that every OpenAI/open_clip ViT has (per block:
# `_BLOCK_TENSORS`); a checkpoint without one is a variant this loader does
# not know (open_clip's `no_ln_pre`, for one).
_TOWER_TENSORS = ("class_embedding", "conv1.weight", "positional_embedding", "ln_pre.weight",
                  "ln_pre.bias", "ln_post.weight", "ln_post.bias")
_BLOCK_TENSORS = tuple(f"{m}.{k}" for m in ("ln_1", "attn.out_proj", "ln_2", "mlp.c_fc",
                                            "mlp.c_proj") for k in ("weight", "bias")) + (
    "attn.in_proj_weight", "attn.in_proj_bias")
# Widths whose heads are 64 wide in every OpenAI and open_clip model (ViT-B,
# ViT-L); open_clip's larger towers use other head widths (ViT-H 80, ViT-g 88).
_HEAD_WIDTH_64 = (768, 1024)


def clip_weights_from_open_clip(weights, source, intermediate_activation, head_width=None,
                                num_heads=None):
    """Renames an OpenAI/open_clip image tower to Hugging Face's names.

    Args:
        weights: `{name: array}` of an OpenAI CLIP or open_clip model (or of
            its image tower alone). Tensors outside the image tower and its
            output projection `proj`, which the Q-Former does not use, are
            left out.
        source: str. The checkpoint's name, for error messages.
        intermediate_activation: str. `"quick_gelu"` (OpenAI's weights) or
            `"gelu"`; the file does not say which.
        head_width: int or None. Width of one attention head (64 in every
            OpenAI model; open_clip's `vision_cfg.head_width`). None: 64 for
            ViT-B and ViT-L widths (768, 1024), else `num_heads` is needed.
        num_heads: int or None. The number of heads, if known; it wins over
            `head_width`.

    Returns:
        `(hf_weights, hf_config)` for `load_hf_clip_weights` and
        `clip_config_from_hf`.
    """
    prefix = find_prefix(weights, "class_embedding")
    if prefix is None or prefix + "transformer.resblocks.0.attn.in_proj_weight" not in weights:
        kind = "a ResNet image tower" if find_prefix(weights, "layer1.0.conv1") else "no ViT image tower"
        raise ValueError(
            f"{source} has {kind} in OpenAI/open_clip layout (`visual.class_embedding`, "
            "`visual.transformer.resblocks.*`); CLIPVisionEncoder loads CLIP ViTs."
        )
    blocks = sorted({int(m.group(1)) for k in weights if k.startswith(prefix)
                     for m in [_BLOCK.fullmatch(k[len(prefix):])] if m})
    required = list(_TOWER_TENSORS) + [f"transformer.resblocks.{i}.{name}"
                                       for i in range(blocks[-1] + 1) for name in _BLOCK_TENSORS]
    missing = [prefix + name for name in required if prefix + name not in weights]
    if missing:
        hint = (" (an open_clip model built with no_ln_pre)"
                if prefix + "ln_pre.weight" in missing else "")
        raise ValueError(
            f"{source} lacks {len(missing)} image-tower tensors of a CLIP ViT, e.g. "
            f"{', '.join(missing[:3])}{hint}; this loader reads OpenAI's ViT layout."
        )
    converted, unknown = {}, []
    for key, value in weights.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        block = _BLOCK.fullmatch(name)
        if name in _TOP_NAMES:
            converted[_TOP_NAMES[name]] = value
        elif name == "proj":
            continue  # the image-text projection head
        elif block is None:
            unknown.append(key)
        else:
            index, rest = block.groups()
            layer = f"encoder.layers.{index}."
            module, _, kind = rest.rpartition(".")
            if module == "attn" and kind in ("in_proj_weight", "in_proj_bias"):
                # One (3 * width, ...) tensor: query, key and value, in that order.
                for part, chunk in zip(("q_proj", "k_proj", "v_proj"), np.split(value, 3)):
                    converted[f"{layer}self_attn.{part}.{kind[len('in_proj_'):]}"] = chunk
            elif module in _BLOCK_NAMES and kind in ("weight", "bias"):
                converted[f"{layer}{_BLOCK_NAMES[module]}.{kind}"] = value
            else:
                unknown.append(key)
    if unknown:
        shown = ", ".join(sorted(unknown)[:5])
        raise ValueError(
            f"{source} has {len(unknown)} image-tower tensors CLIPVisionEncoder has no "
            f"place for ({shown}): a CLIP variant with layers OpenAI's ViT does not have "
            "(LayerScale, attention pooling, extra norms), which this loader does not support."
        )
    width, _, patch, _ = converted["embeddings.patch_embedding.weight"].shape
    positions = converted["embeddings.position_embedding.weight"].shape[0]
    grid = int(round((positions - 1) ** 0.5))
    if grid * grid + 1 != positions:
        raise ValueError(f"{source}: {positions} position embeddings are not 1 + a square grid.")
    if num_heads is None:
        if head_width is None:
            if width not in _HEAD_WIDTH_64:
                raise ValueError(
                    f"{source} is a state dict of width {width}, whose number of attention "
                    "heads it does not say (open_clip's ViT-H has heads 80 wide, ViT-g 88): "
                    "pass num_heads, or give the open_clip folder with its "
                    "open_clip_config.json."
                )
            head_width = 64
        if width % head_width:
            raise ValueError(
                f"{source}: width {width} is not a multiple of the head width {head_width}.")
        num_heads = width // head_width
    config = {
        "model_type": "clip_vision_model",
        "hidden_size": width,
        "patch_size": patch,
        "image_size": grid * patch,
        "num_hidden_layers": blocks[-1] + 1,
        "num_attention_heads": num_heads,
        "intermediate_size": converted["encoder.layers.0.mlp.fc1.weight"].shape[0],
        "hidden_act": intermediate_activation,
    }
    return converted, config


# open_clip config options that change the image tower's numbers without
# changing its tensors' names, which CLIPVisionEncoder does not implement.
_UNSUPPORTED_VISION_CFG = ("act_kwargs", "norm_kwargs", "no_ln_pre", "ls_init_value",
                           "attentional_pool", "timm_model_name", "hf_model_name")


def _open_clip_folder_settings(path):
    """`(head_width, quick_gelu)` from an open_clip Hub folder's config."""
    from kdpvlpa.models.dp_vlpa.dp_vlpa_image_preprocessor import CLIP_MEAN, CLIP_STD

    config_file = path / "open_clip_config.json"
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{config_file} is not valid JSON: {error}") from None
    model_cfg = config.get("model_cfg") if isinstance(config, dict) else None
    if not isinstance(model_cfg, dict):
        raise ValueError(f"{config_file} is not an open_clip config: it has no 'model_cfg' object.")
    vision_cfg = model_cfg.get("vision_cfg") or {}
    if not isinstance(vision_cfg, dict):
        raise ValueError(f"{config_file}: model_cfg.vision_cfg is not an object.")
    unsupported = [k for k in _UNSUPPORTED_VISION_CFG if vision_cfg.get(k)]
    if unsupported:
        raise ValueError(
            f"{config_file} sets vision_cfg {', '.join(unsupported)}: an image tower "
            "CLIPVisionEncoder, which follows OpenAI's ViT, does not implement."
        )
    preprocess = config.get("preprocess_cfg") or {}
    for key, clip in (("mean", CLIP_MEAN), ("std", CLIP_STD)):
        value = preprocess.get(key) if isinstance(preprocess, dict) else None
        if value is not None and not np.allclose(value, clip):
            warnings.warn(
                f"{config_file} normalises images with {key} {value}, not CLIP's "
                f"{list(clip)}: pass image_mean and image_std to DPVLPA to match it.",
                stacklevel=3,
            )
    return vision_cfg.get("head_width", 64), bool(model_cfg.get("quick_gelu", False))


def _load_open_clip(path, kwargs):
    """Builds the encoder from an OpenAI/open_clip file or open_clip folder."""
    source = str(path)
    activation = kwargs.pop("intermediate_activation", None)
    num_heads = kwargs.pop("num_heads", None)
    if path.is_dir():
        head_width, quick_gelu = _open_clip_folder_settings(path)
        if activation is None:
            activation = "quick_gelu" if quick_gelu else "gelu"
        files = [path / name for name in _OPEN_CLIP_WEIGHT_FILES if (path / name).is_file()]
        if not files:
            raise FileNotFoundError(
                f"{source} has open_clip_config.json but none of "
                f"{', '.join(_OPEN_CLIP_WEIGHT_FILES)}."
            )
        weights, _ = read_clip_checkpoint_file(files[0])
    else:
        weights, torchscript = read_clip_checkpoint_file(path)
        if find_prefix(weights, "embeddings.patch_embedding.weight") is not None:
            raise ValueError(
                f"{source} holds Hugging Face CLIP weights: give the folder that holds "
                "it with its config.json."
            )
        # OpenAI's release files: every model has QuickGELU and heads 64 wide.
        head_width = 64 if torchscript else None
        if activation is None:
            if not torchscript:
                raise ValueError(
                    f"{source} is a state dict, which does not say the image tower's "
                    "activation: pass intermediate_activation='quick_gelu' (OpenAI's "
                    "weights) or 'gelu' (most open_clip weights trained by others), or "
                    "give the open_clip folder with its open_clip_config.json."
                )
            activation = "quick_gelu"
    hf_weights, hf_config = clip_weights_from_open_clip(weights, source, activation,
                                                        head_width, num_heads)
    return _build_from_hf(hf_config, hf_weights, source, kwargs)


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
    # A Hub folder of LAION's models holds both kinds of weights: Hugging
    # Face's are read when they are there.
    if path.is_file() or (path / "open_clip_config.json").is_file() and not (
            is_hf_folder(path) and has_hf_weights(path)):
        return _load_open_clip(path, kwargs)
    if not path.is_dir():
        # kdpvlpa never downloads: a bare keras-hub name (which keras-hub
        # would fetch from Kaggle) is refused like a missing folder.
        raise FileNotFoundError(
            f"CLIP checkpoint {preset!r} does not exist. Give a local "
            "Hugging Face CLIPModel/CLIPVisionModel folder (e.g. "
            "openai/clip-vit-base-patch16 saved with save_pretrained), OpenAI's "
            "ViT-B-16.pt, an open_clip checkpoint file or folder, a local "
            "keras-hub CLIP preset folder (`save_to_preset`), or "
            "'tiny_random_vit'. Nothing is downloaded."
        )
    if is_kdpvlpa_preset(path):
        model, _ = load_model_preset(CLIPVisionEncoder, path, **kwargs)
        return model
    if _is_keras_hub_preset(path):
        return _from_keras_hub(path, **kwargs)
    return _build_from_hf(read_hf_config(path), read_hf_weights(path), str(path), kwargs)

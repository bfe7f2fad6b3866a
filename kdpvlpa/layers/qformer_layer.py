import keras

from kdpvlpa.layers.qformer_attention import QFormerAttention
from kdpvlpa.layers.qformer_feed_forward import QFormerFeedForward


@keras.saving.register_keras_serializable(package="kdpvlpa")
class QFormerLayer(keras.layers.Layer):
    """One Q-Former layer (BLIP-2), for the two unimodal passes of DP-VLPA.

    Queries and text share the self-attention weights. Queries then attend to
    the image tokens (when `has_cross_attention`) and go through their own
    feed-forward copy (`feed_forward_query`); text goes through BERT's
    feed-forward (`feed_forward`). Queries never see text and text never sees
    queries, so the two streams are computed independently.

    Args:
        hidden_dim: int. Width of the hidden states.
        num_heads: int. Attention heads.
        intermediate_dim: int. Feed-forward inner width.
        has_cross_attention: bool. Whether queries attend to image tokens here.
        image_dim: int. Width of the image tokens (cross-attention keys).
        dropout: float. Hidden-state dropout.
        layer_norm_epsilon: float.

    Call arguments:
        query_states: `(batch, num_queries, hidden_dim)` or None.
        text_states: `(batch, length, hidden_dim)` or None.
        image_features: `(batch, num_image_tokens, image_dim)`, needed with
            `query_states` when `has_cross_attention`.
        padding_mask: `(batch, length)` boolean mask of the text.
        training: bool.
        packing: optional `kdpvlpa.layers.TokenPacking` of `padding_mask`;
            `text_states` is then `(N, hidden_dim)`, the real tokens only.
        image_scale, image_shift: optional `(image_dim,)` LayerNorm scale and
            shift of normalised `image_features` (see `QFormerAttention`).

    Returns:
        A `(query_states, text_states)` tuple; an entry is None when its input
        was None.
    """

    def __init__(
        self,
        hidden_dim,
        num_heads,
        intermediate_dim,
        has_cross_attention=False,
        image_dim=None,
        dropout=0.0,
        layer_norm_epsilon=1e-12,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if has_cross_attention and not image_dim:
            raise ValueError(
                "A cross-attention layer needs `image_dim`. Received: "
                f"image_dim={image_dim}"
            )
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.has_cross_attention = has_cross_attention
        self.image_dim = image_dim
        self.dropout = dropout
        self.layer_norm_epsilon = layer_norm_epsilon

        common = dict(
            dropout=dropout,
            layer_norm_epsilon=layer_norm_epsilon,
            dtype=self.dtype_policy,
        )
        self.self_attention = QFormerAttention(
            hidden_dim, num_heads, name="self_attention", **common
        )
        if has_cross_attention:
            self.cross_attention = QFormerAttention(
                hidden_dim,
                num_heads,
                context_dim=image_dim,
                name="cross_attention",
                **common,
            )
        self.feed_forward = QFormerFeedForward(
            hidden_dim, intermediate_dim, name="feed_forward", **common
        )
        self.feed_forward_query = QFormerFeedForward(
            hidden_dim, intermediate_dim, name="feed_forward_query", **common
        )

    def build(self, input_shape=None):
        shape = (None, None, self.hidden_dim)
        self.self_attention.build(shape)
        if self.has_cross_attention:
            self.cross_attention.build(shape, (None, None, self.image_dim))
        self.feed_forward.build(shape)
        self.feed_forward_query.build(shape)
        self.built = True

    def call(
        self,
        query_states=None,
        text_states=None,
        image_features=None,
        padding_mask=None,
        training=None,
        packing=None,
        image_scale=None,
        image_shift=None,
    ):
        if query_states is not None:
            query_states = self.self_attention(query_states, training=training)
            if self.has_cross_attention:
                query_states = self.cross_attention(
                    query_states, context=image_features,
                    context_scale=image_scale, context_shift=image_shift,
                    training=training,
                )
            query_states = self.feed_forward_query(
                query_states, training=training
            )
        if text_states is not None:
            text_states = self.self_attention(
                text_states, padding_mask=padding_mask, packing=packing,
                training=training,
            )
            text_states = self.feed_forward(text_states, training=training)
        return query_states, text_states

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "has_cross_attention": self.has_cross_attention,
                "image_dim": self.image_dim,
                "dropout": self.dropout,
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        return config

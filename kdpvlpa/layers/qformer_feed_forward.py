import keras
from keras import ops

from kdpvlpa.layers.qformer_attention import bert_kernel_initializer


@keras.saving.register_keras_serializable(package="kdpvlpa")
class QFormerFeedForward(keras.layers.Layer):
    """BERT feed-forward block: `LayerNorm(x + dropout(W_2 · gelu(W_1 · x)))`.

    The GELU is the exact (erf) form that BERT and BLIP-2 use.

    Args:
        hidden_dim: int. Width of the input and output.
        intermediate_dim: int. Width of the inner layer.
        dropout: float. Dropout before the residual.
        layer_norm_epsilon: float. Epsilon of the output LayerNorm.
    """

    def __init__(
        self,
        hidden_dim,
        intermediate_dim,
        dropout=0.0,
        layer_norm_epsilon=1e-12,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.intermediate_dense = keras.layers.Dense(
            intermediate_dim, name="intermediate_dense", dtype=self.dtype_policy,
            kernel_initializer=bert_kernel_initializer(),
        )
        self.output_dense = keras.layers.Dense(
            hidden_dim, name="output_dense", dtype=self.dtype_policy,
            kernel_initializer=bert_kernel_initializer(),
        )
        self.output_dropout = keras.layers.Dropout(
            dropout, name="output_dropout", dtype=self.dtype_policy
        )
        self.output_layer_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon,
            name="output_layer_norm",
            dtype=self.dtype_policy,
        )

    def build(self, input_shape):
        self.intermediate_dense.build(input_shape)
        self.output_dense.build(
            list(input_shape[:-1]) + [self.intermediate_dim]
        )
        self.output_layer_norm.build(input_shape)
        self.built = True

    def call(self, x, training=None):
        h = ops.gelu(self.intermediate_dense(x), approximate=False)
        h = self.output_dropout(self.output_dense(h), training=training)
        return self.output_layer_norm(ops.add(x, h))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "intermediate_dim": self.intermediate_dim,
                "dropout": self.dropout,
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        return config

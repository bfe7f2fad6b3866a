import keras
from keras import ops


def bert_kernel_initializer():
    return keras.initializers.TruncatedNormal(stddev=0.02)


def _attention_in_float32(query):
    """Whether half-precision attention should run in float32 here.

    PyTorch's CPU flash-attention kernel computes its backward pass about 7x
    slower in bfloat16 than in float32 (672 ms against 95 ms in a MiniLM
    Q-Former train step at batch 32, torch 2.13), which made mixed-precision
    training on CPU no faster than float32. Its forward pass, and CUDA's
    kernels, are fast in bfloat16. So only training on CPU casts.
    """
    import torch

    return (query.dtype in (torch.bfloat16, torch.float16) and query.device.type == "cpu"
            and torch.is_grad_enabled())


@keras.saving.register_keras_serializable(package="kdpvlpa")
class QFormerAttention(keras.layers.Layer):
    """Multi-head attention block of the Q-Former, BERT style (post-norm).

    Computes `LayerNorm(x + dropout(W_o · attention(x, context)))`. The query,
    key and value projections are fused into one kernel (`qkv` for
    self-attention, `query` plus a fused `kv` for cross-attention) so that each
    block costs one or two matrix products instead of three; attention runs
    through `keras.ops.dot_product_attention`, which the torch backend maps to
    the fused `scaled_dot_product_attention` kernel.

    Args:
        hidden_dim: int. Width of the hidden states (and of the output).
        num_heads: int. Number of attention heads; must divide `hidden_dim`.
        context_dim: int or None. Width of the context for cross-attention.
            `None` makes this a self-attention block.
        dropout: float. Dropout on the attention output before the residual.
        layer_norm_epsilon: float. Epsilon of the output LayerNorm.

    Call arguments:
        hidden_states: `(batch, length, hidden_dim)` tensor.
        context: `(batch, context_length, context_dim)` tensor, cross-attention
            only.
        padding_mask: optional `(batch, key_length)` boolean tensor; `True`
            marks keys that may be attended to.
        training: bool.
        packing: optional `kdpvlpa.layers.TokenPacking` of `padding_mask`
            (self-attention only). `hidden_states` is then the `(N,
            hidden_dim)` matrix of the batch's real tokens, and so is the
            output: the projections skip the padding.
        context_scale, context_shift: optional `(context_dim,)` tensors, the
            scale γ and shift β of a LayerNorm whose normalised output
            `context` is (cross-attention only). The keys and values are then
            those of `γ·context + β`, computed as `context · (γ·W) + (β·W + b)`:
            the same values, but when `context` is a constant (frozen image
            tokens) the backward pass needs no gradient for it, and skips the
            largest matrix product of the block.
    """

    def __init__(
        self,
        hidden_dim,
        num_heads,
        context_dim=None,
        dropout=0.0,
        layer_norm_epsilon=1e-12,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if hidden_dim % num_heads != 0:
            raise ValueError(
                "`hidden_dim` must be divisible by `num_heads`. Received: "
                f"hidden_dim={hidden_dim}, num_heads={num_heads}"
            )
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.head_dim = hidden_dim // num_heads
        self.context_dim = context_dim
        self.dropout = dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.is_cross_attention = context_dim is not None

        # BERT's initialisation (N(0, 0.02), zero bias), as BLIP-2 uses for the
        # blocks a checkpoint does not provide (the cross-attention).
        dense = dict(dtype=self.dtype_policy, kernel_initializer=bert_kernel_initializer())
        if self.is_cross_attention:
            self.query = keras.layers.Dense(hidden_dim, name="query", **dense)
            self.kv = keras.layers.Dense(2 * hidden_dim, name="kv", **dense)
        else:
            self.qkv = keras.layers.Dense(3 * hidden_dim, name="qkv", **dense)
        self.output_dense = keras.layers.Dense(hidden_dim, name="output_dense", **dense)
        self.output_dropout = keras.layers.Dropout(
            dropout, name="output_dropout", dtype=self.dtype_policy
        )
        self.output_layer_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon,
            name="output_layer_norm",
            dtype=self.dtype_policy,
        )

    def build(self, hidden_states_shape, context_shape=None):
        if self.is_cross_attention:
            self.query.build(hidden_states_shape)
            context_shape = list(hidden_states_shape[:-1]) + [self.context_dim]
            self.kv.build(context_shape)
        else:
            self.qkv.build(hidden_states_shape)
        self.output_dense.build(
            list(hidden_states_shape[:-1]) + [self.hidden_dim]
        )
        self.output_layer_norm.build(hidden_states_shape)
        self.built = True

    def _split_heads(self, x, num):
        # (batch, length, num * hidden) -> num tensors (batch, length, heads, dim)
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        x = ops.reshape(x, (batch, length, num, self.num_heads, self.head_dim))
        if num == 1:
            return [x[:, :, 0]]
        # One unstack, not `num` slices: its gradient is one stack, where each
        # slice's would fill a full-size zero tensor.
        return ops.unstack(x, axis=2)

    def _context_kv(self, context, scale, shift):
        if scale is None:
            return self.kv(context)
        if getattr(self.kv, "quantization_mode", None):
            # A quantized kernel cannot be folded: normalise first.
            return self.kv(ops.add(ops.multiply(context, scale), shift))
        kernel = ops.cast(self.kv.kernel, self.compute_dtype)
        bias = ops.cast(self.kv.bias, self.compute_dtype)
        scale = ops.cast(scale, self.compute_dtype)
        shift = ops.cast(shift, self.compute_dtype)
        folded_kernel = ops.multiply(ops.expand_dims(scale, -1), kernel)
        folded_bias = ops.add(ops.matmul(shift, kernel), bias)
        return ops.add(ops.matmul(context, folded_kernel), folded_bias)

    def call(self, hidden_states, context=None, padding_mask=None, training=None,
             packing=None, context_scale=None, context_shift=None):
        if packing is not None:
            if self.is_cross_attention:
                raise ValueError("`packing` applies to self-attention blocks only.")
            if padding_mask is None:
                raise ValueError(
                    "`packing` needs the `padding_mask` it was built from: the "
                    "attention must not see the padded positions."
                )
        if (context_scale is None) != (context_shift is None):
            raise ValueError(
                "Pass `context_scale` and `context_shift` together (the scale "
                "and shift of the context's LayerNorm), or neither."
            )
        if self.is_cross_attention:
            if context is None:
                raise ValueError(
                    f"Layer '{self.name}' is a cross-attention block and needs "
                    "a `context` tensor."
                )
            (query,) = self._split_heads(self.query(hidden_states), 1)
            key, value = self._split_heads(
                self._context_kv(context, context_scale, context_shift), 2
            )
        elif packing is not None:
            query, key, value = self._split_heads(packing.pad(self.qkv(hidden_states)), 3)
        else:
            query, key, value = self._split_heads(self.qkv(hidden_states), 3)
        mask = None
        if padding_mask is not None:
            # (batch, key_length) -> (batch, 1, 1, key_length), broadcast over
            # heads and query positions.
            mask = ops.cast(padding_mask, "bool")[:, None, None, :]
        if _attention_in_float32(query):
            attended = ops.cast(ops.dot_product_attention(
                ops.cast(query, "float32"), ops.cast(key, "float32"),
                ops.cast(value, "float32"), mask=mask), query.dtype)
        else:
            attended = ops.dot_product_attention(query, key, value, mask=mask)
        batch, length = ops.shape(attended)[0], ops.shape(attended)[1]
        attended = ops.reshape(attended, (batch, length, self.hidden_dim))
        if packing is not None:
            attended = packing.pack(attended)
        attended = self.output_dropout(
            self.output_dense(attended), training=training
        )
        return self.output_layer_norm(ops.add(hidden_states, attended))

    def compute_output_shape(self, hidden_states_shape, context_shape=None):
        return tuple(hidden_states_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "context_dim": self.context_dim,
                "dropout": self.dropout,
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        return config

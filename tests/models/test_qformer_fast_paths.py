import numpy as np
import torch

import kdpvlpa  # noqa: F401
from kdpvlpa.layers import TokenPacking
from kdpvlpa.models import QFormerBackbone


def _backbone():
    import keras

    keras.utils.set_random_seed(0)
    return QFormerBackbone(vocabulary_size=50, num_layers=3, num_heads=2, hidden_dim=16,
                           intermediate_dim=32, image_dim=8, num_query_tokens=4, dropout=0.0)


def _inputs():
    lengths = np.array([3, 7, 1, 5])
    rng = np.random.default_rng(0)
    token_ids = rng.integers(5, 50, size=(4, 7)).astype("int32")
    mask = np.arange(7)[None, :] < lengths[:, None]
    token_ids[~mask] = 0
    return token_ids, mask


def test_packing_round_trip_by_hand():
    mask = np.array([[True, True, False], [True, False, False]])
    packing = TokenPacking.from_mask(torch.from_numpy(mask))
    x = torch.arange(6, dtype=torch.float32).reshape(2, 3, 1) + 1  # 1..6
    packed = packing.pack(x)
    np.testing.assert_array_equal(packed.numpy().ravel(), [1, 2, 4])
    # Padding holds copies of the previous real token (masked as keys).
    np.testing.assert_array_equal(packing.pad(packed).numpy().ravel(), [1, 2, 2, 4, 4, 4])
    np.testing.assert_array_equal(packing.unpack(packed).numpy().ravel(), [1, 2, 0, 4, 0, 0])
    assert TokenPacking.from_mask(torch.ones(2, 3, dtype=torch.bool)) is None
    assert TokenPacking.from_mask(None) is None


def _text_loss(backbone, token_ids, mask, monkeypatch=None):
    out = backbone.encode_text(token_ids, torch.from_numpy(mask), training=True)
    weights = torch.linspace(-1, 1, out.shape[-1])
    loss = (out[torch.from_numpy(mask)] * weights).sin().sum()
    backbone.zero_grad()
    loss.backward()
    grads = {w.path: w.value.grad.clone() for w in backbone.trainable_weights
             if w.value.grad is not None}
    return out.detach().numpy(), grads


def test_packed_text_path_equals_padded_one_with_gradients(monkeypatch):
    backbone = _backbone()
    token_ids, mask = _inputs()
    packed_out, packed_grads = _text_loss(backbone, token_ids, mask)
    monkeypatch.setattr(TokenPacking, "from_mask", classmethod(lambda cls, m: None))
    padded_out, padded_grads = _text_loss(backbone, token_ids, mask)
    np.testing.assert_allclose(packed_out[mask], padded_out[mask], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(packed_out[~mask], 0.0)
    assert packed_grads.keys() == padded_grads.keys() and len(packed_grads) > 10
    for name, grad in padded_grads.items():
        np.testing.assert_allclose(packed_grads[name].numpy(), grad.numpy(), atol=1e-5,
                                   rtol=1e-4, err_msg=name)


def test_folded_image_norm_equals_normalising_first_with_gradients():
    import keras

    backbone = _backbone()
    norm = keras.layers.LayerNormalization(epsilon=1e-5)
    norm.build((None, None, 8))
    rng = np.random.default_rng(1)
    norm.gamma.assign(rng.normal(1.0, 0.3, size=8).astype("float32"))
    norm.beta.assign(rng.normal(0.0, 0.3, size=8).astype("float32"))
    features = torch.from_numpy(rng.normal(size=(2, 6, 8)).astype("float32"))
    normalized = keras.ops.layer_normalization(features, epsilon=1e-5)

    def run(folded):
        if folded:
            out = backbone.encode_queries(normalized, image_scale=norm.gamma,
                                          image_shift=norm.beta)
        else:
            out = backbone.encode_queries(norm(features))
        for w in backbone.trainable_weights + norm.trainable_weights:
            w.value.grad = None
        (out * torch.linspace(-1, 1, out.shape[-1])).sin().sum().backward()
        grads = {w.path: w.value.grad.clone()
                 for w in backbone.trainable_weights + norm.trainable_weights
                 if w.value.grad is not None}
        return out.detach().numpy(), grads

    folded_out, folded_grads = run(True)
    plain_out, plain_grads = run(False)
    np.testing.assert_allclose(folded_out, plain_out, atol=1e-5, rtol=0)
    assert folded_grads.keys() == plain_grads.keys()
    assert {norm.gamma.path, norm.beta.path} <= folded_grads.keys()
    for name, grad in plain_grads.items():
        np.testing.assert_allclose(folded_grads[name].numpy(), grad.numpy(), atol=1e-5,
                                   rtol=1e-4, err_msg=name)


def test_packing_edge_cases_and_misuse():
    import pytest

    from kdpvlpa.layers import QFormerAttention

    backbone = _backbone()
    token_ids, _ = _inputs()
    # No real token at all: nothing to pack; the padded path runs.
    assert TokenPacking.from_mask(np.zeros((2, 3), bool)) is None
    out = backbone.encode_text(token_ids, np.zeros(token_ids.shape, bool))
    assert out.shape == (4, 7, 16) and np.isfinite(out.detach().numpy()).all()
    # NumPy masks and lists pack too, so padded outputs are zeros.
    mask = [[True, True, False], [True, False, False]]
    assert TokenPacking.from_mask(mask).num_tokens == 3
    out = backbone.encode_text(np.array([[5, 6, 0], [7, 0, 0]], "int32"), mask)
    np.testing.assert_array_equal(out.detach().numpy()[~np.array(mask)], 0.0)

    attention = QFormerAttention(16, 2)
    packing = TokenPacking.from_mask(mask)
    with pytest.raises(ValueError, match="padding_mask"):
        attention(torch.zeros(3, 16), packing=packing)
    cross = QFormerAttention(16, 2, context_dim=8)
    with pytest.raises(ValueError, match="together"):
        cross(torch.zeros(2, 4, 16), context=torch.zeros(2, 5, 8),
              context_scale=torch.ones(8))


def test_half_precision_attention_is_computed_in_float32_when_training_on_cpu(monkeypatch):
    # PyTorch's CPU flash-attention backward is slow in bfloat16, so training
    # on CPU runs the attention kernel in float32; inference keeps bfloat16.
    from kdpvlpa.layers import QFormerAttention
    from kdpvlpa.layers.qformer_attention import _attention_in_float32

    x = torch.randn(2, 5, 16)
    assert _attention_in_float32(x.bfloat16()) and _attention_in_float32(x.half())
    assert not _attention_in_float32(x)
    assert not _attention_in_float32(torch.empty(2, 5, 16, dtype=torch.bfloat16, device="meta"))
    with torch.no_grad():
        assert not _attention_in_float32(x.bfloat16())

    torch.manual_seed(0)
    full = QFormerAttention(16, 2)
    mixed = QFormerAttention(16, 2, dtype="mixed_bfloat16")
    hidden = np.random.default_rng(0).normal(size=(2, 5, 16)).astype("float32")
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)
    full(hidden, padding_mask=mask)
    mixed(hidden, padding_mask=mask)
    mixed.set_weights(full.get_weights())
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention

    def recording(query, *args, **kwargs):
        calls.append(query.dtype)
        return original(query, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    out = mixed(hidden, padding_mask=mask, training=True)
    with torch.no_grad():
        mixed(hidden, padding_mask=mask)
    monkeypatch.undo()
    assert calls == [torch.float32, torch.bfloat16]
    assert out.dtype == torch.bfloat16
    np.testing.assert_allclose(out.float().detach().numpy(),
                               full(hidden, padding_mask=mask).detach().numpy(), atol=0.05)
    out.float().sum().backward()
    grads = [w.value.grad for w in mixed.trainable_weights]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)

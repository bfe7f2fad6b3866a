import keras
import numpy as np
import pytest
import torch

from kdpvlpa.training import make_optimizer
from kdpvlpa.training.optimizers import AdamW


def _run(optimizer, steps=6, seed=0):
    """Applies `steps` updates with fixed random gradients; returns the values."""
    rng = np.random.default_rng(seed)
    variables = [
        keras.Variable(rng.normal(size=(5, 3)).astype("float32"), name="kernel"),
        keras.Variable(rng.normal(size=(3,)).astype("float32"), name="bias"),
        keras.Variable(rng.normal(size=(4, 2, 2)).astype("float32"), name="embeddings"),
    ]
    grads = [[rng.normal(size=v.shape).astype("float32") for v in variables] for _ in range(steps)]
    for step_grads in grads:
        optimizer.apply([keras.ops.convert_to_tensor(g) for g in step_grads], variables)
    return [keras.ops.convert_to_numpy(v) for v in variables]


@pytest.mark.parametrize("exclude", [False, True])
def test_fused_adamw_equals_keras_adamw(exclude):
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, decay_steps=10, warmup_target=0.05, warmup_steps=3
    )
    kwargs = dict(learning_rate=schedule, weight_decay=0.1, beta_1=0.8, beta_2=0.95,
                  epsilon=1e-3)
    ours, reference = AdamW(**kwargs), keras.optimizers.AdamW(**kwargs)
    assert type(reference) is not AdamW
    if exclude:
        for optimizer in (ours, reference):
            optimizer.exclude_from_weight_decay(var_names=["bias"])
    for got, want in zip(_run(ours), _run(reference)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_fused_adamw_excludes_variables_from_decay():
    # With zero gradients, Adam's step is zero: only the decay moves a weight.
    optimizer = make_optimizer(10, learning_rate=0.1, weight_decay=0.5, warmup_steps=0)
    kernel = keras.Variable(np.ones((2, 2), "float32"), name="kernel")
    bias = keras.Variable(np.ones((2,), "float32"), name="bias")
    optimizer.apply([keras.ops.zeros((2, 2)), keras.ops.zeros((2,))], [kernel, bias])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(kernel), 1 - 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bias), 1.0)


def test_fused_adamw_handles_strided_variables_and_gradients():
    # The fused kernel ignores strides: a transposed gradient for a plain
    # variable, or a plain gradient for a variable stored transposed, must
    # still update the right elements.
    rng = np.random.default_rng(0)
    start = rng.normal(size=(3, 5)).astype("float32")
    grads = [rng.normal(size=(5, 3)).astype("float32") for _ in range(4)]

    def run(optimizer):
        plain = keras.Variable(np.ascontiguousarray(start.T))
        transposed = keras.Variable(start.T)
        assert plain.value.is_contiguous() and not transposed.value.is_contiguous()
        for g in grads:
            strided = torch.from_numpy(np.ascontiguousarray(g.T)).T
            assert not strided.is_contiguous()
            optimizer.apply([strided, torch.from_numpy(g)], [plain, transposed])
        return [keras.ops.convert_to_numpy(v) for v in (plain, transposed)]

    kwargs = dict(learning_rate=0.05, weight_decay=0.1)
    for got, want in zip(run(AdamW(**kwargs)), run(keras.optimizers.AdamW(**kwargs))):
        # A wrong element order would be off by ~0.1 (the step size).
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_make_optimizer_trains_under_jit_compile():
    # torch.compile refuses the fused kernel's in-place update; under
    # `jit_compile=True` the optimizer takes Keras' update (~25 s: compiling).
    def fit(jit_compile):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        model.compile(optimizer=make_optimizer(8, warmup_steps=0), loss="mse",
                      jit_compile=jit_compile)
        x = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
        model.fit(x, 2 * x[:, :4], batch_size=8, epochs=2, verbose=0)
        return [keras.ops.convert_to_numpy(w) for w in model.weights]

    for got, want in zip(fit(True), fit(False)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

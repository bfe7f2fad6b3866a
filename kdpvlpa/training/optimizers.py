"""AdamW with an in-place update for the PyTorch backend.

Keras' torch AdamW updates all variables with `torch._foreach_*` ops that
allocate a full-size temporary for every intermediate (`g*g`, `sqrt(v)`,
`sqrt(v)+ε`, `α·m`, their quotient): on CPU, for a BERT-base Q-Former, that
is ~5 extra passes over 700 MB per step and was half of the whole train step
(see `benchmarks/qformer_train_step.py`). This subclass computes the same
update (Keras' formula, ε added to `sqrt(v)`) tensor by tensor with in-place
`lerp_`, `addcmul_` and `addcdiv_`, allocating one small temporary at a time.
"""

import keras
import torch


@keras.saving.register_keras_serializable(package="kdpvlpa")
class AdamW(keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` with an allocation-light torch update step.

    Same arguments, same serialization and the same update as Keras' AdamW
    (decoupled weight decay applied first, then the Adam step
    `v ← v − α·m / (sqrt(v) + ε)`, `α = lr·sqrt(1 − β₂ᵗ) / (1 − β₁ᵗ)`).
    `amsgrad=True` falls back to Keras' implementation.
    """

    # `keras.optimizers.AdamW` is the backend-neutral class here (Keras swaps
    # in its torch class only for the exact class, not for subclasses), so
    # the hook to override is the collective `_backend_update_step`.
    def _backend_update_step(self, grads, variables, learning_rate):
        if self.amsgrad or keras.backend.backend() != "torch":
            return super()._backend_update_step(grads, variables, learning_rate)
        step = float(self.iterations.numpy()) + 1.0
        lr = float(keras.ops.convert_to_numpy(learning_rate))
        alpha = lr * (1.0 - self.beta_2**step) ** 0.5 / (1.0 - self.beta_1**step)
        one_minus_b1 = 1.0 - self.beta_1
        one_minus_b2 = 1.0 - self.beta_2
        with torch.no_grad():
            for keras_variable, grad in zip(variables, grads):
                index = self._get_variable_index(keras_variable)
                m = self._momentums[index].value
                v = self._velocities[index].value
                var = keras_variable.value
                grad = grad.to(m.dtype)
                m.lerp_(grad, one_minus_b1)
                v.mul_(self.beta_2).addcmul_(grad, grad, value=one_minus_b2)
                denom = v.sqrt().add_(self.epsilon)
                var.addcdiv_(m.to(var.dtype), denom.to(var.dtype), value=-alpha)

"""AdamW with a fused update for the PyTorch backend.

Keras' torch AdamW applies weight decay as `v.assign(v - v * wd * lr)` and
then updates all variables with `torch._foreach_*` ops that allocate a
full-size temporary for every intermediate (`g*g`, `sqrt(v)`, `sqrt(v)+ε`,
`α·m`, their quotient). On CPU, for a BERT-base Q-Former (a 30,522-row word
embedding among ~180 M parameters), those passes over memory were half of the
whole train step (see `benchmarks/qformer_train_step.py`).

This subclass computes the same update (Keras' formula: decoupled weight
decay first, then `v ← v − α·m / (sqrt(v) + ε)`) with PyTorch's fused AdamW
kernel, `torch._fused_adamw_`: one vectorised, multi-threaded pass per tensor
that reads the parameter, its gradient and both moments once and allocates
nothing. PyTorch's kernel adds ε after the bias correction of `sqrt(v)`;
passing it `ε / sqrt(1 − β₂ᵗ)` makes the two formulas identical.
"""

import math

import keras
import torch


@keras.saving.register_keras_serializable(package="kdpvlpa")
class AdamW(keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` with a fused, allocation-free torch update.

    Same arguments, same serialization and the same update as Keras' AdamW
    (decoupled weight decay `v ← v − lr·wd·v` first, honouring
    `exclude_from_weight_decay`, then the Adam step
    `v ← v − α·m / (sqrt(v) + ε)`, `α = lr·sqrt(1 − β₂ᵗ) / (1 − β₁ᵗ)`).
    `amsgrad=True`, other backends and gradient accumulation fall back to
    Keras' implementation.
    """

    def _fused(self):
        return (
            keras.backend.backend() == "torch"
            and hasattr(torch, "_fused_adamw_")
            and not self.amsgrad
            and not self.gradient_accumulation_steps
        )

    def _apply_weight_decay(self, variables):
        # The fused kernel applies the decay itself, in the same order.
        if not self._fused():
            super()._apply_weight_decay(variables)

    # `keras.optimizers.AdamW` is the backend-neutral class here (Keras swaps
    # in its torch class only for the exact class, not for subclasses), so
    # the hook to override is the collective `_backend_update_step`.
    def _backend_update_step(self, grads, variables, learning_rate):
        if not self._fused():
            return super()._backend_update_step(grads, variables, learning_rate)
        step = float(self.iterations.numpy()) + 1.0
        lr = float(keras.ops.convert_to_numpy(learning_rate))
        weight_decay = float(self.weight_decay or 0.0)
        epsilon = self.epsilon / math.sqrt(1.0 - self.beta_2**step)
        # One kernel call per (device, dtype, decayed or not) group.
        groups = {}
        for keras_variable, grad in zip(variables, grads):
            index = self._get_variable_index(keras_variable)
            var = keras_variable.value
            decay = weight_decay if self._use_weight_decay(keras_variable) else 0.0
            group = groups.setdefault((var.device, var.dtype, decay), ([], [], [], []))
            group[0].append(var)
            group[1].append(grad.to(var.dtype))
            group[2].append(self._momentums[index].value)
            group[3].append(self._velocities[index].value)
        with torch.no_grad():
            for (device, _, decay), (params, param_grads, ms, vs) in groups.items():
                steps = [torch.tensor(step, dtype=torch.float32, device=device)] * len(params)
                torch._fused_adamw_(
                    params, param_grads, ms, vs, [], steps,
                    lr=lr, beta1=self.beta_1, beta2=self.beta_2,
                    weight_decay=decay, eps=epsilon, amsgrad=False, maximize=False,
                )

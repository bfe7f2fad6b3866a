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

# Devices with a fused AdamW kernel in every torch this package supports.
_FUSED_DEVICES = ("cpu", "cuda")


@keras.saving.register_keras_serializable(package="kdpvlpa")
class AdamW(keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` with a fused, allocation-free torch update.

    Same arguments, same serialization and the same update as Keras' AdamW
    (decoupled weight decay `v ← v − lr·wd·v` first, honouring
    `exclude_from_weight_decay`, then the Adam step
    `v ← v − α·m / (sqrt(v) + ε)`, `α = lr·sqrt(1 − β₂ᵗ) / (1 − β₁ᵗ)`).
    For float32 variables the results equal Keras' to rounding; for
    lower-precision variables the kernel computes in float32 internally, so
    they are a little more accurate than Keras'. `amsgrad=True`, other
    backends, gradient accumulation, devices without the kernel and
    `jit_compile=True` use Keras' implementation.
    """

    def _fused(self):
        return (
            keras.backend.backend() == "torch"
            and hasattr(torch, "_fused_adamw_")
            and not self.amsgrad
            and not self.gradient_accumulation_steps
            # Inside `compile(jit_compile=True)` (torch.compile), the kernel's
            # in-place update of graph tensors is refused; Keras' update
            # compiles.
            and not torch.compiler.is_compiling()
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
        groups, unfused = {}, ([], [])
        for keras_variable, grad in zip(variables, grads):
            var = keras_variable.value
            if var.device.type not in _FUSED_DEVICES:
                unfused[0].append(grad)
                unfused[1].append(keras_variable)
                continue
            index = self._get_variable_index(keras_variable)
            decay = weight_decay if self._use_weight_decay(keras_variable) else 0.0
            group = groups.setdefault((var.device, var.dtype, decay), ([], [], [], [], []))
            # The kernel walks raw memory and ignores strides: every tensor
            # it gets must be contiguous (the moments always are).
            contiguous = var if var.is_contiguous() else var.contiguous()
            group[0].append(contiguous)
            group[1].append(grad.to(var.dtype).contiguous())
            group[2].append(self._momentums[index].value)
            group[3].append(self._velocities[index].value)
            group[4].append((var, contiguous))
        with torch.no_grad():
            for (device, _, decay), (params, param_grads, ms, vs, pairs) in groups.items():
                steps = [torch.tensor(step, dtype=torch.float32, device=device)] * len(params)
                torch._fused_adamw_(
                    params, param_grads, ms, vs, [], steps,
                    lr=lr, beta1=self.beta_1, beta2=self.beta_2,
                    weight_decay=decay, eps=epsilon, amsgrad=False, maximize=False,
                )
                for var, contiguous in pairs:
                    if contiguous is not var:
                        var.copy_(contiguous)
        if unfused[1]:
            super()._apply_weight_decay(unfused[1])
            super()._backend_update_step(unfused[0], unfused[1], learning_rate)

"""Running one training phase with `fit`: optimizer, checkpoints, resume."""

import errno
import json
import math
import shutil
from pathlib import Path

import keras
import numpy as np

from kdpvlpa.training.batches import EpochSeed
from kdpvlpa.training.optimizers import AdamW
from kdpvlpa.utils.files import atomic_write

# AdamW does not decay biases, LayerNorm parameters or the scalars (τ, logit
# scale and bias), as LAVIS (which exempts every parameter of fewer than two
# dimensions), nor the learned queries, which LAVIS does decay: they are
# embeddings, not weights of a layer.
NO_WEIGHT_DECAY = ["bias", "gamma", "beta", "temperature", "logit_scale", "logit_bias",
                   "query_tokens"]


def warmup_steps_for(total_steps, warmup_steps, warmup_fraction):
    """Linear warm-up length: `min(warmup_steps, warmup_fraction · total)`."""
    return int(min(warmup_steps, int(warmup_fraction * total_steps)))


def make_optimizer(total_steps, learning_rate=1e-4, weight_decay=0.05, warmup_steps=2000,
                   warmup_fraction=0.1, beta_1=0.9, beta_2=0.999):
    """AdamW with linear warm-up then cosine decay to zero (the paper's schedule).

    Args:
        total_steps: int. Optimizer steps of the whole phase.
        learning_rate: float. Peak learning rate.
        weight_decay: float. Decoupled weight decay.
        warmup_steps: int. Warm-up cap in steps.
        warmup_fraction: float. Warm-up cap as a fraction of `total_steps`.

    Biases, LayerNorm parameters, τ, the logit scale and bias, and the
    learned queries are not decayed (`NO_WEIGHT_DECAY`; LAVIS decays the
    queries).

    The learning rate is a schedule, so callbacks that set it
    (`ReduceLROnPlateau`, `LearningRateScheduler`) cannot be used with this
    optimizer; `kdpvlpa.training.optimizers.AdamW` with a float learning
    rate can.
    """
    if total_steps < 1:
        raise ValueError(f"`total_steps` must be at least 1. Received: {total_steps}")
    if learning_rate <= 0:
        raise ValueError(f"`learning_rate` must be positive. Received: {learning_rate}")
    warmup = warmup_steps_for(total_steps, warmup_steps, warmup_fraction)
    if warmup > 0:
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0,
            decay_steps=max(total_steps - warmup, 1),
            warmup_target=learning_rate,
            warmup_steps=warmup,
        )
    else:
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=learning_rate, decay_steps=total_steps
        )
    optimizer = AdamW(
        learning_rate=schedule, weight_decay=weight_decay, beta_1=beta_1, beta_2=beta_2
    )
    optimizer.exclude_from_weight_decay(var_names=NO_WEIGHT_DECAY)
    return optimizer


def _write_json_atomic(path, obj):
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2)))


def _check_free_space(folder, model):
    """A full disk crashes HDF5 inside `save_weights` (a segmentation fault,
    not an exception); refuse before writing when the checkpoint cannot fit."""
    variables = list(model.weights)
    if model.optimizer is not None:
        variables += list(model.optimizer.variables)
    needed = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)
    free = shutil.disk_usage(folder).free
    # Metadata and a margin: HDF5 adds a little per dataset.
    needed = needed * 1.05 + 16 * 2**20
    if free < needed:
        raise OSError(
            errno.ENOSPC,
            f"Not enough disk space for a checkpoint in {folder}: it needs about "
            f"{math.ceil(needed / 2**20)} MiB, {free / 2**20:.0f} MiB are free. The last "
            "checkpoint is intact; free some space and rerun to resume.",
        )


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves model and optimizer state after every epoch, atomically.

    The weights go to a temporary file that replaces the checkpoint only when
    complete, and `state.json` names the last finished epoch, so a run killed
    at any moment leaves the previous checkpoint intact.
    """

    def __init__(self, folder):
        super().__init__()
        self.folder = Path(folder)

    def on_epoch_end(self, epoch, logs=None):
        if self.model.stop_training:
            # `fit` was stopped inside this epoch: keep the last whole epoch.
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        _check_free_space(self.folder, self.model)
        atomic_write(self.folder / "last.weights.h5",
                     lambda tmp: self.model.save_weights(str(tmp)))
        history = []
        state_file = self.folder / "state.json"
        if state_file.exists():
            history = json.loads(state_file.read_text()).get("history", [])
        history = [h for h in history if h["epoch"] < epoch + 1]
        history.append({"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}})
        _write_json_atomic(state_file, {"epochs_done": epoch + 1, "complete": False,
                                        "history": history})


def phase_state(folder):
    state_file = Path(folder) / "state.json"
    if not state_file.exists():
        return None
    return json.loads(state_file.read_text())


def train_phase(model, phase, batches, epochs, optimizer_args, checkpoint_dir, seed=42,
                compile_args=None, callbacks=(), validation_data=None, verbose=1):
    """Trains one phase with `fit`, resuming from its last finished epoch.

    Args:
        model: `DPVLPA`.
        phase: "pretrain" or "finetune".
        batches: `TrainingBatches`.
        epochs: int.
        optimizer_args: dict for `make_optimizer` (without `total_steps`).
        checkpoint_dir: folder of this phase's checkpoints.
        seed: int. Seeds data order and dropout per epoch.
        compile_args: extra `DPVLPA.compile` arguments (loss weights, ...).

    Returns:
        The list of per-epoch logs (resumed epochs included).
    """
    if epochs < 0:
        raise ValueError(f"`epochs` must be >= 0. Received: {epochs}")
    checkpoint_dir = Path(checkpoint_dir)
    state = phase_state(checkpoint_dir)
    if state and state.get("complete"):
        model.load_weights(str(checkpoint_dir / "last.weights.h5"))
        if verbose:
            print(f"The {phase} phase is already complete ({state.get('epochs_done')} "
                  "epochs): its last checkpoint is loaded.")
        return state["history"]
    optimizer = make_optimizer(total_steps=max(epochs * len(batches), 1), **optimizer_args)
    model.compile(optimizer=optimizer, phase=phase, **(compile_args or {}))
    initial_epoch = 0
    if state and (checkpoint_dir / "last.weights.h5").exists():
        optimizer.build(model.trainable_variables)
        model.load_weights(str(checkpoint_dir / "last.weights.h5"))
        # The weights file (optimizer state included) is written before
        # state.json, so a run killed between the two leaves weights one epoch
        # ahead of state.json: the optimizer's step count is what says how
        # many epochs the weights hold.
        steps = int(keras.ops.convert_to_numpy(optimizer.iterations))
        if steps % len(batches):
            raise ValueError(
                f"The checkpoint in {checkpoint_dir} holds {steps} optimizer steps, not a "
                f"whole number of epochs of {len(batches)} steps, so it does not match "
                "this phase's data and batch size. Delete the folder to start this phase "
                "over."
            )
        initial_epoch = steps // len(batches)
        if verbose:
            print(f"Resuming {phase} after epoch {initial_epoch} of {epochs}.")
    if initial_epoch < epochs:
        model.fit(
            batches,
            epochs=epochs,
            initial_epoch=initial_epoch,
            callbacks=[EpochSeed(batches, seed), EpochCheckpoint(checkpoint_dir), *callbacks],
            validation_data=validation_data,
            verbose=verbose,
        )
    state = phase_state(checkpoint_dir) or {"history": []}
    # The last whole epoch checkpointed, or the weights' own count when they
    # were one epoch ahead of state.json.
    state["epochs_done"] = max(int(state.get("epochs_done", 0)), initial_epoch)
    if not (checkpoint_dir / "last.weights.h5").exists():
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(checkpoint_dir / "last.weights.h5",
                     lambda tmp: model.save_weights(str(tmp)))
    state["complete"] = True
    _write_json_atomic(checkpoint_dir / "state.json", state)
    model.invalidate_class_embeddings()
    return state["history"]

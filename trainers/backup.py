"""Step-exact backups: a crash loses at most the steps since the last one.

Keras 3's BackupAndRestore restores weights and optimiser but restarts the interrupted epoch
from its first batch (repeating batches), and it is not multi-worker aware. Here every worker
backs up into its own directory every N steps; a restart loads the backup and the trainer
skips exactly the batches already trained on, so the resumed run sees the same data in the
same order as an uninterrupted one.

Layout of a backup directory:
    step-<N>.weights.h5   model weights and optimiser state (AdamW moments, iterations)
    step-<N>.rng.npz      the random-generator states (dropout masks), which weight files omit
    backup.json           {"step": N, "weights": ..., "rng": ...}, written last
A crash while writing leaves the previous pair intact: backup.json only ever names a complete
weights file (both are written under temporary names and renamed into place).
"""

import json
import math
import os

import keras
import numpy as np

_STATE = "backup.json"


def _rng_states(model):
    """The variables of `model` that are not weights: its layers' SeedGenerator states. Without
    them a resumed run would draw other dropout masks than the uninterrupted one."""
    weight_ids = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weight_ids]


def read_step(directory):
    """The step of the backup in `directory`, or 0 when there is none."""
    path = os.path.join(directory, _STATE)
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return int(json.load(f)["step"])


def restore(model, directory):
    """Loads the backup into `model` (weights and optimiser state); returns its step (0: none)."""
    path = os.path.join(directory, _STATE)
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        state = json.load(f)
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.load_weights(os.path.join(directory, state["weights"]))
    with np.load(os.path.join(directory, state["rng"])) as saved:
        variables = _rng_states(model)
        if len(saved.files) != len(variables):
            raise ValueError(f"The backup in {directory} holds {len(saved.files)} random states, the model {len(variables)}.")
        for index, variable in enumerate(variables):
            variable.assign(saved[f"state_{index}"])
    return int(state["step"])


def save(model, directory, step):
    os.makedirs(directory, exist_ok=True)
    name = f"step-{step}.weights.h5"
    temporary = os.path.join(directory, f"partial-{name}")
    model.save_weights(temporary, overwrite=True)
    os.replace(temporary, os.path.join(directory, name))
    rng_name = f"step-{step}.rng.npz"
    rng_temporary = os.path.join(directory, f"partial-{rng_name}")
    with open(rng_temporary, "wb") as f:
        np.savez(f, **{f"state_{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(_rng_states(model))})
    os.replace(rng_temporary, os.path.join(directory, rng_name))
    state_tmp = os.path.join(directory, _STATE + ".tmp")
    with open(state_tmp, "w") as f:
        json.dump({"step": step, "weights": name, "rng": rng_name}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(state_tmp, os.path.join(directory, _STATE))
    for other in os.listdir(directory):
        if other.startswith(("step-", "partial-")) and other not in (name, rng_name):
            os.remove(os.path.join(directory, other))


class StepBackup(keras.callbacks.Callback):
    """Backs the model up every `every_steps` steps and at each epoch end.

    Args:
        directory: this worker's backup directory.
        every_steps: steps between backups.
        initial_step: the global step training (re)starts from.
    """

    def __init__(self, directory, every_steps, initial_step=0):
        super().__init__()
        self.directory = directory
        self.every_steps = every_steps
        self.step = initial_step
        self.saved_step = initial_step

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.every_steps and self.step % self.every_steps == 0:
            self._save(logs)

    def on_epoch_end(self, epoch, logs=None):
        self._save(logs)

    def _save(self, logs):
        # Never back up weights that produced a NaN loss: a restart would resume into them.
        finite = math.isfinite((logs or {}).get("loss", 0.0))
        if finite and self.step != self.saved_step:
            save(self.model, self.directory, self.step)
            self.saved_step = self.step

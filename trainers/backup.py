"""Step-exact backups: a crash loses at most the steps since the last one.

Keras 3's BackupAndRestore restores weights and optimiser but restarts the interrupted epoch
from its first batch (repeating batches), and it is not multi-worker aware. Here every worker
backs up into its own directory every N steps; a restart loads the backup and the trainer
skips exactly the batches already trained on, so the resumed run sees the same data in the
same order as an uninterrupted one.

Layout of a backup directory:
    step-<N>.npz   model weights, optimiser state (AdamW moments, iterations) and the
                   random-generator states (dropout masks), as .npy members of a zip
    backup.json    {"format": 2, "step": N, "backups": [newest, previous]}: each entry names
                   its file with its size and SHA-256; written last

Faults it is built for:
- A crash while writing: files are written under `partial-` names and renamed into place, and
  backup.json (replaced atomically) only ever names complete files. Leftover partial files are
  deleted by the next save or restore.
- A damaged backup (truncated, bit rot, NaN weights from an older version): the two newest
  are kept; `restore` checks size, checksum, array count, shapes and finiteness before
  assigning anything, and falls back to the older one with a warning.
- A full disk: the free space is checked before writing, and a failed write removes its
  partial file and raises `BackupWriteError` (one line) with the previous backup intact.
  The arrays are written by this module with plain Python file writes rather than through
  HDF5: an HDF5 file whose write failed with ENOSPC crashes the interpreter (SIGSEGV) when
  h5py closes it.
- Non-finite weights are never written: `save` refuses them.

Backups written before format 2 (`step-<N>.weights.h5` + `step-<N>.rng.npz`) still restore.
"""

import datetime
import hashlib
import json
import os
import shutil
import sys
import zipfile

import keras
import numpy as np

from trainers.errors import BackupWriteError, RunSetupError

_STATE = "backup.json"
_PARTIAL = "partial-"
FORMAT = 2
KEEP = 2  # the newest backup and the one before it, the fallback if the newest is damaged
_GROUPS = ("model", "optimizer", "rng")


class _Unusable(Exception):
    """A backup entry failed verification; the message says why."""


def _rng_states(model):
    """The variables of `model` that are not weights: its layers' SeedGenerator states. Without
    them a resumed run would draw other dropout masks than the uninterrupted one."""
    weight_ids = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weight_ids]


def _state_variables(model):
    """{group: [variables]} of everything a backup holds, in a fixed order."""
    optimizer = list(model.optimizer.variables) if model.optimizer is not None else []
    return {"model": list(model.weights), "optimizer": optimizer, "rng": _rng_states(model)}


def _member(group, index):
    return f"{group}_{index:05d}"


def _is_float(array):
    return np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.complexfloating)


def _itemsize(variable):
    try:
        return np.dtype(keras.backend.standardize_dtype(variable.dtype)).itemsize
    except TypeError:  # a dtype numpy does not know by name (bfloat16): at most 8 bytes
        return 8


def _megabytes(count):
    return f"{count / 2**20:.1f} MB"


# -- the index file -------------------------------------------------------------------------


def _read_state(directory):
    """The parsed backup.json of `directory`, None when there is none.

    A damaged index is a setup error (exit 2): it names the file and the way out, rather than
    guessing which weights file to trust."""
    path = os.path.join(directory, _STATE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as error:
        problem = f"unreadable ({error.strerror or error})"
    else:
        try:
            state = json.loads(text)
        except ValueError as error:
            state, problem = None, f"not valid JSON ({error})"
        if not text.strip():
            problem = "empty"
        elif state is not None and (not isinstance(state, dict) or not isinstance(state.get("step"), int)):
            problem = 'not a backup index (no integer "step")'
        elif state is not None:
            return state
    raise RunSetupError(
        f"{path} is {problem}. Delete the directory {directory} to restart this worker from step 0, or restore "
        "the file from a copy."
    )


def _entries(state):
    """The backups an index names, newest first (a format-1 index names one)."""
    if "backups" in state:
        return list(state["backups"])
    return [{"step": state["step"], "weights": state["weights"], "rng": state["rng"]}]


def _entry_files(entry):
    return [entry["file"]] if "file" in entry else [entry["weights"], entry["rng"]]


def _write_json_atomically(path, value):
    temporary = path + ".tmp"
    try:
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump(value, f, indent=1, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _remove_partials(directory):
    """Deletes what an interrupted save left behind (it may be what keeps the disk full)."""
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            if name.startswith(_PARTIAL) or name == _STATE + ".tmp":
                _remove(os.path.join(directory, name))


def _digest(path):
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


# -- reading --------------------------------------------------------------------------------


def read_step(directory):
    """The step of the newest backup in `directory`, or 0 when there is none."""
    state = _read_state(directory)
    return int(state["step"]) if state else 0


def restore(model, directory):
    """Loads the newest usable backup into `model`; returns its step (0: none).

    Each candidate is verified completely (size, checksum, array count and shapes, finite
    values) before anything is assigned, so a damaged newest backup leaves the model untouched
    for the older one. Falling back prints a warning to stderr naming what was wrong.
    """
    state = _read_state(directory)
    if state is None:
        return 0
    _remove_partials(directory)
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    problems = []
    for entry in _entries(state):
        try:
            _load(model, directory, entry)
        except _Unusable as problem:
            problems.append(f"the backup of step {entry.get('step')} is unusable ({problem})")
            continue
        except (KeyError, TypeError) as error:
            problems.append(f"the entry of step {entry.get('step')} in {_STATE} is malformed ({error!r})")
            continue
        if problems:
            print(
                f"Warning: {'; '.join(problems)}. Resuming from the older backup of step {entry['step']} in "
                f"{directory}; the steps after it are trained again.", file=sys.stderr,
            )
        return int(entry["step"])
    raise RunSetupError(
        f"No usable backup in {directory}: {'; '.join(problems)}. Delete that directory to restart this "
        "worker from step 0."
    )


def _load(model, directory, entry):
    if "file" not in entry:
        return _load_format_1(model, directory, entry)
    path = os.path.join(directory, entry["file"])
    if not os.path.isfile(path):
        raise _Unusable(f"{path} is missing")
    size = os.path.getsize(path)
    if size != entry["bytes"]:
        raise _Unusable(f"{path} has {size} bytes, {entry['bytes']} were written: truncated or overwritten")
    if _digest(path) != entry["sha256"]:
        raise _Unusable(f"{path} does not match its SHA-256 checksum: the file is corrupt")
    groups = _state_variables(model)
    values = {}
    try:
        with np.load(path, allow_pickle=False) as saved:
            names = set(saved.files)
            for group, variables in groups.items():
                count = sum(1 for name in names if name.startswith(group + "_"))
                if count != len(variables):
                    raise _Unusable(
                        f"{path} holds {count} {group} arrays, the model has {len(variables)}: it was written by "
                        "a model of another shape"
                    )
                for index, variable in enumerate(variables):
                    array = saved[_member(group, index)]
                    if tuple(array.shape) != tuple(variable.shape):
                        raise _Unusable(f"{path}: {variable.path} has shape {array.shape}, the model {variable.shape}")
                    if _is_float(array) and not np.isfinite(array).all():
                        raise _Unusable(f"{path}: {variable.path} holds NaN or infinite values")
                    values[id(variable)] = array
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise _Unusable(f"{path} cannot be read: {error}") from None
    for variables in groups.values():
        for variable in variables:
            variable.assign(values[id(variable)])


def _load_format_1(model, directory, entry):
    """A backup of the earlier layout: Keras' .weights.h5 and a separate .rng.npz."""
    weights = os.path.join(directory, entry["weights"])
    try:
        model.load_weights(weights)
        with np.load(os.path.join(directory, entry["rng"])) as saved:
            variables = _rng_states(model)
            if len(saved.files) != len(variables):
                raise _Unusable(f"it holds {len(saved.files)} random states, the model {len(variables)}")
            for index, variable in enumerate(variables):
                variable.assign(saved[f"state_{index}"])
    except _Unusable:
        raise
    except Exception as error:  # h5py raises OSError, RuntimeError or KeyError on damaged files
        raise _Unusable(f"{weights} cannot be read: {error}") from None
    for variable in model.weights:
        if not np.isfinite(keras.ops.convert_to_numpy(variable)).all():
            raise _Unusable(f"{weights}: {variable.path} holds NaN or infinite values")


# -- writing --------------------------------------------------------------------------------


def save(model, directory, step, keep=KEEP):
    """Writes the backup of `step` and keeps the `keep` newest ones.

    Raises:
        BackupWriteError: the disk is full or the write failed; partial files are removed and
            the previous backups are untouched.
        ValueError: a weight or optimizer variable is not finite (nothing is written).
    """
    try:
        os.makedirs(directory, exist_ok=True)
        _remove_partials(directory)
    except OSError as error:
        raise BackupWriteError(f"Cannot write backups to {directory}: {error.strerror or error}.") from None
    previous = _read_state(directory)
    entries = _entries(previous) if previous else []
    intact = (
        f"The backup of step {entries[0]['step']} is intact: rerun the same command to resume from it"
        if entries else "No earlier backup exists: a rerun starts from step 0"
    )
    groups = _state_variables(model)
    payload = sum(int(np.prod(v.shape)) * _itemsize(v) for variables in groups.values() for v in variables)
    needed = payload + 1024 * sum(len(v) for v in groups.values()) + (64 << 10)  # + npy and zip headers
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise BackupWriteError(
            f"Not enough disk space for the step-{step} backup in {directory}: it needs about {_megabytes(needed)}, "
            f"{_megabytes(free)} are free. {intact} once space is freed."
        )

    name = f"step-{step}.npz"
    path = os.path.join(directory, name)
    temporary = os.path.join(directory, _PARTIAL + name)
    old_files = {f for entry in entries for f in _entry_files(entry)}
    try:
        _write_arrays(temporary, groups)
        entry = {"step": int(step), "file": name, "bytes": os.path.getsize(temporary), "sha256": _digest(temporary),
                 "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        os.replace(temporary, path)
        # Only older backups stay as fallbacks: after resuming from an older one (the newest was
        # damaged), the damaged one must not linger as the "previous" of a newer step.
        kept = [entry] + [e for e in entries if e["step"] < step][: keep - 1]
        _write_json_atomically(os.path.join(directory, _STATE), {"format": FORMAT, "step": int(step), "backups": kept})
    except OSError as error:
        _remove(temporary)
        if name not in old_files:
            _remove(path)
        advice = "free some space on that disk" if error.errno == 28 else "check the disk"
        raise BackupWriteError(
            f"Could not write the step-{step} backup {path}: {error.strerror or error}. {intact} once you "
            f"{advice}."
        ) from None
    except BaseException:
        _remove(temporary)
        raise
    referenced = {f for e in kept for f in _entry_files(e)}
    for other in os.listdir(directory):
        if other.startswith(("step-", _PARTIAL)) and other not in referenced:
            _remove(os.path.join(directory, other))


def _write_arrays(path, groups):
    """Streams every variable as one .npy member of an uncompressed zip (what np.load reads as
    .npz), one array in memory at a time, then fsyncs: the index may only name durable files."""
    with open(path, "wb") as f:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for group, variables in groups.items():
                for index, variable in enumerate(variables):
                    array = np.asarray(keras.ops.convert_to_numpy(variable))
                    if _is_float(array) and not np.isfinite(array).all():
                        raise ValueError(
                            f"Refusing to back up {variable.path}: it holds NaN or infinite values. The previous "
                            "backup is kept."
                        )
                    with archive.open(_member(group, index) + ".npy", "w", force_zip64=True) as member:
                        np.lib.format.write_array(member, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


class StepBackup(keras.callbacks.Callback):
    """Backs the model up every `every_steps` steps and at each epoch end.

    Args:
        directory: this worker's backup directory.
        every_steps: steps between backups (0: only at epoch ends).
        initial_step: the global step training (re)starts from.
        guard: a `StopOnNaN`; when given, its `check_weights()` must pass before each backup.
    """

    def __init__(self, directory, every_steps, initial_step=0, guard=None):
        super().__init__()
        self.directory = directory
        self.every_steps = every_steps
        self.step = initial_step
        self.saved_step = initial_step
        self.guard = guard

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.every_steps and self.step % self.every_steps == 0:
            self._save(logs)

    def on_epoch_end(self, epoch, logs=None):
        self._save(logs)

    def _save(self, logs):
        if self.step == self.saved_step:
            return
        # Never back up weights that produced a NaN loss, nor weights that an update made
        # non-finite (the loss of that step was computed before the update, so it looks fine):
        # a restart would resume into them.
        loss = (logs or {}).get("loss", 0.0)
        if not np.isfinite(float(keras.ops.convert_to_numpy(loss))):
            return
        if self.guard is not None and not self.guard.check_weights():
            return
        save(self.model, self.directory, self.step)
        self.saved_step = self.step

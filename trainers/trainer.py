"""The Trainer: a recipe run end to end under a tf.distribute strategy.

What it adds to `model.fit`: the strategy (model, optimiser and metrics built in its scope),
XLA on by default, mixed precision by flag, a run directory (config, tokenizer, checkpoints,
per-worker backups, TensorBoard), step-exact resume, and chief-only writes.

Run directory:
    runs/<name>/config.json        the full resolved recipe config (written once data and model are built)
    runs/<name>/config_history.jsonl  optimisation settings changed on resume: step, time, from -> to
    runs/<name>/tokenizer/         the vocabulary every checkpoint and export uses
    runs/<name>/checkpoints/last/  after every epoch (model.keras, tokenizer/, config.json, metrics.json)
    runs/<name>/checkpoints/best/  the best validation loss so far
    runs/<name>/backup/worker-<i>/ step backups (the two newest), one directory per worker
    runs/<name>/tb/                TensorBoard (train/, validation/)

Causal LMs (tasks whose `tokens_per_byte_of` gives a ratio: gpt-clm) also log `val_bits_per_byte`,
val_loss / ln 2 x the validation split's tokens per byte (counted once at the start), which
compares across tokenizers: on the console, in the history, the checkpoints' metrics.json and
TensorBoard.

Checkpoints and backups only ever hold finite weights: a NaN or infinite loss, or weights made
non-finite by an update, stop the run with `TrainingDiverged` naming the step and the backup a
rerun resumes from.

What it prints (with `verbose` >= 1): a status line on stderr when each slow phase starts and one
with its duration when it ends (preparing data, building the model, the first training step,
each validation pass, each checkpoint save; `trainers.progress`), and the progress: Keras'
progress bar on a terminal, one line per `log_every` steps and one per epoch otherwise
(`TrainOptions.progress`). TensorFlow's native log noise is filtered out while it trains
(`trainers.quiet.live_filtered_stderr`); real errors pass.
"""

import dataclasses
import datetime
import json
import math
import os
import shutil
import sys
import tempfile
import warnings

import keras

from trainers import backup as backup_lib
from trainers.callbacks import PhaseLines, ProgressLines, StopOnNaN, TensorBoardSummaries, ValidationBitsPerByte
from trainers.distributed_data import distribute
from trainers.errors import CheckpointWriteError, RunSetupError, TrainingDiverged
from trainers.progress import PROGRESS_MODES, phase, resolve_progress
from trainers.quiet import live_filtered_stderr
from trainers.strategy import get_strategy, is_chief, per_replica_batch_size

MIXED_PRECISION_POLICIES = ("", "mixed_bfloat16", "mixed_float16")

# Config fields a resumed run may change: they steer the optimiser, not the shape of the model,
# its optimiser state or the data stream, so the backup still fits. The usual reason is a run that
# diverged: lower the learning rate and rerun. Each change is appended to config_history.jsonl.
RESUMABLE_FIELDS = ("learning_rate", "decay", "warmup_steps", "total_steps", "clipnorm", "weight_decay")
CONFIG_HISTORY = "config_history.jsonl"


@dataclasses.dataclass
class TrainOptions:
    """How to run (as opposed to what to train, which is the recipe's config)."""

    epochs: int = 1
    steps_per_epoch: int = 0  # 0: the recipe's steps_per_epoch, else one full pass over the data
    validation_steps: int = 0  # 0: the recipe's validation_steps, else the whole validation split
    strategy: str = "auto"
    jit_compile: bool = True  # XLA where it works (see resolve_jit_compile); Keras' "auto" is off on CPU
    mixed_precision: str = ""  # "", "mixed_bfloat16" or "mixed_float16" (with loss scaling)
    log_every: int = 10  # TensorBoard scalars (and progress lines) every N steps
    backup_every: int = 50  # step backups every N steps (a crash loses at most N steps); 0: epoch ends only
    write_graph: bool = False  # the model graph in TensorBoard (tb/graph), off by default
    verbose: int = 1  # 0: silent; 1: status lines and `progress`; 2: status lines and Keras' line per epoch
    progress: str = "auto"  # at verbose 1: "bar" (Keras'), "lines" (one per log_every steps), "auto": bar on a terminal


@dataclasses.dataclass
class TrainResult:
    model: object
    run_dir: str
    history: dict
    final_step: int
    resumed_from_step: int


def resolve_jit_compile(requested, strategy):
    """Whether to compile with XLA: as requested, except where XLA cannot run.

    TensorFlow's XLA has no CPU implementation of collectives ("Collectives are not yet
    implemented for CPU devices when compiling with XLA", b/194942685), so a strategy with
    several replicas on a CPU-only machine trains without XLA. (Keras' own "auto" is stricter:
    it turns XLA off on every CPU and under every strategy.)
    """
    import tensorflow as tf

    if not requested:
        return False
    on_cpu_only = not tf.config.list_logical_devices("GPU") and not tf.config.list_logical_devices("TPU")
    if on_cpu_only and strategy.num_replicas_in_sync > 1:
        print(
            f"XLA is off: {strategy.num_replicas_in_sync} replicas on CPU need collectives, which XLA does not "
            "compile on CPU.", file=sys.stderr,
        )
        return False
    return True


def _is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _worker_index(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    task_id = getattr(resolver, "task_id", None)
    return int(task_id or 0)


def _replace_directory(write, target):
    """Calls `write(tmp_dir)`, then swaps tmp_dir into `target`: readers never see half a checkpoint."""
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    temporary = target + ".partial"
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        write(temporary)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)  # a half-written copy must not hold the disk full
        raise
    old = target + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(target):
        os.rename(target, old)
    os.rename(temporary, target)
    shutil.rmtree(old, ignore_errors=True)


class RecipeCheckpoint(keras.callbacks.Callback):
    """After every epoch: `last/` (always) and `best/` (when `monitor` improves), as recipe checkpoints."""

    def __init__(self, recipe, directory, monitor="val_loss", guard=None, verbose=False):
        super().__init__()
        self.recipe = recipe
        self.directory = directory
        self.monitor = monitor
        self.guard = guard  # a StopOnNaN: its check_weights() must pass before a checkpoint is written
        self.verbose = verbose  # status lines around each save
        self.best = self._saved_best()

    def _saved_best(self):
        path = os.path.join(self.directory, "best", "metrics.json")
        if not os.path.exists(path):
            return None
        try:
            with open(path) as f:
                value = json.load(f).get(self.monitor)
        except (OSError, ValueError, AttributeError) as error:
            raise RunSetupError(
                f"{path} is not a readable metrics file ({error}). Delete {os.path.dirname(path)} (the best "
                "checkpoint is then chosen again from the next epochs) or restore the file."
            ) from None
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

    def _save(self, name, logs):
        def write(directory):
            self.recipe.save(self.model, directory)
            with open(os.path.join(directory, "metrics.json"), "w") as f:
                json.dump(strict_json_metrics(logs), f, indent=2, allow_nan=False)

        target = os.path.join(self.directory, name)
        try:
            with phase(f"saving {os.path.basename(self.directory)}/{name}", enabled=self.verbose):
                _replace_directory(write, target)
        except OSError as error:
            raise CheckpointWriteError(
                f"Could not write the checkpoint {target}: {error.strerror or error}. The previous checkpoint and the "
                "step backups are intact: free some space (or fix the disk) and rerun the same command to resume."
            ) from None

    def on_epoch_end(self, epoch, logs=None):
        if not math.isfinite((logs or {}).get("loss", 0.0)):
            return  # Keras still ends the epoch after StopOnNaN: keep the last good checkpoint
        if self.guard is not None and not self.guard.check_weights():
            return  # the last update of the epoch made the weights non-finite: keep the last good one
        self._save("last", logs)
        value = (logs or {}).get(self.monitor)
        if value is not None and math.isfinite(value) and (self.best is None or value < self.best):
            self.best = float(value)
            self._save("best", logs)


def strict_json_metrics(logs):
    """`logs` as floats, with None (JSON null) for NaN and infinities, which strict JSON has no
    literal for (Python's json would write NaN / Infinity, which other parsers reject)."""
    metrics = {}
    for key, value in (logs or {}).items():
        value = float(value)
        metrics[key] = value if math.isfinite(value) else None
    return metrics


class Trainer:
    """Trains `recipe` into `run_dir`; re-running the same command resumes where it stopped.

    Nothing is written into `run_dir` until the data has loaded and the model is built, so a
    command that fails early (bad data, bad config) can be corrected and rerun. A resumed run may
    change the optimisation fields (`RESUMABLE_FIELDS`, recorded in config_history.jsonl); any
    other difference from the run's config.json is refused.

    Raises (from `train`):
        RunSetupError: the run directory or the data must be fixed first (`zoo` exits 2).
        TrainingDiverged: the loss or the weights became NaN or infinite; nothing after the last
            good backup was saved (`zoo` exits 1).
        BackupWriteError: a backup could not be written (disk full); the previous one is intact.

    Args:
        recipe: a recipe instance (`recipes.get(...)`).
        run_dir: the run directory (created if needed).
        data: the data source; defaults to the recipe's `data`.
        options: `TrainOptions`.
        strategy: an existing tf.distribute strategy; by default `get_strategy(options.strategy)`.
            A multi-worker strategy must be created before any other TensorFlow op runs.
        callbacks: extra Keras callbacks, run after the trainer's own.
    """

    def __init__(self, recipe, run_dir, data=None, options=None, strategy=None, callbacks=()):
        self.recipe = recipe
        self.run_dir = run_dir
        self.data = data or recipe.config.data
        self.options = options or TrainOptions()
        self.strategy = strategy
        self.extra_callbacks = list(callbacks)
        if self.options.mixed_precision not in MIXED_PRECISION_POLICIES:
            raise ValueError(
                f"Unknown mixed precision policy {self.options.mixed_precision!r}; expected one of "
                f"{', '.join(p or repr(p) for p in MIXED_PRECISION_POLICIES)}."
            )
        for name, minimum in (("epochs", 1), ("steps_per_epoch", 0), ("validation_steps", 0), ("log_every", 1),
                              ("backup_every", 0)):
            value = getattr(self.options, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"TrainOptions.{name} must be an integer >= {minimum}, got {value!r}.")
        if self.options.progress not in PROGRESS_MODES:
            raise ValueError(
                f"TrainOptions.progress must be one of {', '.join(PROGRESS_MODES)}, got {self.options.progress!r}."
            )

    def path(self, *parts):
        return os.path.join(self.run_dir, *parts)

    def train(self):
        strategy = self.strategy or get_strategy(self.options.strategy)
        previous_policy = keras.config.dtype_policy()
        if self.options.mixed_precision:
            keras.config.set_dtype_policy(self.options.mixed_precision)
        try:
            with live_filtered_stderr():  # TensorFlow's native notes ("oneDNN supports DT_INT64 ...") dropped
                return self._train(strategy)
        finally:
            keras.config.set_dtype_policy(previous_policy)

    # -- the run directory ---------------------------------------------------------------

    def _check_run_dir(self):
        """Creates the run directory if needed (returns True then); a clear error if it cannot be written."""
        path = self.run_dir
        existed = os.path.isdir(path)
        if os.path.exists(path) and not existed:
            raise RunSetupError(f"The run directory {path} is a file, not a directory: choose another --run-dir.")
        try:
            os.makedirs(path, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):  # the mode bits can say writable on a read-only mount
                pass
        except OSError as error:
            blocker = os.path.dirname(os.path.abspath(path))
            while blocker != os.path.dirname(blocker) and not os.path.exists(blocker):
                blocker = os.path.dirname(blocker)
            where = f" ({blocker} is a file)" if os.path.isfile(blocker) else ""
            raise RunSetupError(
                f"Cannot write the run directory {path}: {error.strerror or error}{where}. Choose another --run-dir, "
                "or make it writable."
            ) from None
        return not existed

    def _read_config(self):
        """The run's saved config.json as a dict, None for a new run."""
        path = self.path("config.json")
        if not os.path.exists(path):
            return None
        try:
            with open(path) as f:
                saved = json.load(f)
        except (OSError, ValueError) as error:
            saved, problem = None, f"not readable JSON ({error})"
        if saved is not None and not isinstance(saved, dict):
            problem = "not a JSON object of config fields"
        elif saved is not None:
            return saved
        raise RunSetupError(
            f"{path} is {problem}. Restore it, or delete {self.run_dir} (or choose another --run-dir) to start a "
            "new run."
        )

    def _config_changes(self, saved):
        """{field: (saved, now)} of the resumable fields that differ; refuses any other difference."""
        if saved is None:
            return {}
        config = self.recipe.config_dict()
        defaults = {f.name: f.default for f in dataclasses.fields(self.recipe.config)}
        changed = sorted(
            k for k in set(saved) | set(config)
            if saved.get(k) != config.get(k)
            # A field added to the recipe after the run started, at its default: the run's value.
            and not (k not in saved and k in defaults and config.get(k) == defaults[k])
        )
        fixed = [k for k in changed if k not in RESUMABLE_FIELDS]
        if fixed:
            details = ", ".join(f"{k}: {saved.get(k)!r} -> {config.get(k)!r}" for k in fixed)
            raise RunSetupError(
                f"{self.run_dir} holds a run with another config ({details}). Only {', '.join(RESUMABLE_FIELDS)} "
                "may change when resuming: rerun with the run's other settings (see its config.json), or choose "
                "another --run-dir."
            )
        return {k: (saved.get(k), config.get(k)) for k in changed}

    def _write_config(self):
        temporary = self.path("config.json.tmp")
        with open(temporary, "w") as f:
            json.dump(self.recipe.config_dict(), f, indent=2, allow_nan=False)
        os.replace(temporary, self.path("config.json"))  # never half a config.json: it marks a complete run

    def _record_config_changes(self, changes, step, chief):
        """Appends the changes to config_history.jsonl, rewrites config.json, and says so."""
        details = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items())
        history = self.path(CONFIG_HISTORY)
        if chief:
            entry = {
                "step": step,
                "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "changed": {k: {"from": old, "to": new} for k, (old, new) in changes.items()},
            }
            with open(history, "a") as f:
                f.write(json.dumps(entry, allow_nan=False) + "\n")
            self._write_config()
        print(f"Resuming {self.run_dir} at step {step} with changed settings: {details} (recorded in {history}).",
              file=sys.stderr)

    def _prepare_tokenizer(self, resuming):
        from zoo.data.tokenizer import load_tokenizer, status_lines

        directory = self.path("tokenizer")
        if resuming and os.path.isdir(directory):
            self.recipe.tokenizer = load_tokenizer(directory)
            return
        try:
            with status_lines(self.options.verbose > 0):  # the tokenizer's own lines: silent at verbose 0 too
                self.recipe.get_tokenizer(self.data)
        except ValueError:
            if any(text.strip() for text in self.recipe.tokenizer_training_texts(self.data)):
                raise
            raise RunSetupError(
                f"{self.data}: its training split holds no text to learn from (no files, or only empty ones): "
                "add documents or choose another --data."
            ) from None

    def _commit_run_dir(self, resuming):
        """A new run's tokenizer and config.json, written only once data and model are known good.
        config.json goes last: a directory that has it is a complete run."""
        from zoo.data.tokenizer import save_tokenizer

        if resuming and os.path.isdir(self.path("tokenizer")):
            return
        try:
            _replace_directory(lambda tmp: save_tokenizer(self.recipe.tokenizer, tmp), self.path("tokenizer"))
            self._write_config()
        except OSError as error:
            raise RunSetupError(
                f"Cannot write the run directory {self.run_dir}: {error.strerror or error}. Free some space (or fix "
                "its permissions) and rerun, or choose another --run-dir."
            ) from None

    # -- data ----------------------------------------------------------------------------

    def _dataset(self, split, repeat=False):
        from zoo.data.errors import NotEnoughDataError

        try:
            (dataset,) = self.recipe.datasets(
                self.data, batch_size=self.recipe.config.batch_size, splits=(split,), repeat=repeat
            )
        except NotEnoughDataError as error:
            raise RunSetupError(
                f"{self.data}: its {split} split is empty ({error}). Sources are split 90/5/5 by file (language "
                "models) or 80/10/10 within each class (classification): add data (at least about 20 files, or 10 "
                "examples per class)."
            ) from None
        return dataset

    def _steps(self):
        config = self.recipe.config
        steps_per_epoch = self.options.steps_per_epoch or getattr(config, "steps_per_epoch", 0)
        if not steps_per_epoch:  # one full pass: count the batches of a single pass once
            one_pass = self._dataset("train")
            steps_per_epoch = int(one_pass.reduce(0, lambda count, _: count + 1))
            if steps_per_epoch == 0:
                raise RunSetupError(
                    f"{self.data}: the training split holds less than one batch of {config.batch_size}: add data, "
                    "or lower --batch-size."
                )
        validation_steps = self.options.validation_steps or getattr(config, "validation_steps", 0) or None
        return steps_per_epoch, validation_steps

    def _check_validation(self, validation):
        for _ in validation.take(1):
            return
        raise RunSetupError(
            f"{self.data}: the validation split gives no batch of {self.recipe.config.batch_size}: add data, or "
            "lower --batch-size (or --seq-len)."
        )

    def _check_labels(self):
        # A classifier with one class reaches "accuracy 1.0" while learning nothing.
        label_names = getattr(self.recipe, "label_names", None)
        if label_names is not None and len(label_names) < 2:
            raise RunSetupError(
                f"{self.data}: the data has {len(label_names)} class ({', '.join(map(str, label_names))}); "
                "a classifier needs at least two. Check the label column, or add examples of the other classes."
            )

    # -- training ------------------------------------------------------------------------

    def _progress_mode(self):
        """`bar`, `lines`, or None (verbose 0 or 2: no display of this choice)."""
        return resolve_progress(self.options.progress) if self.options.verbose == 1 else None

    def _callbacks(self, chief, worker, initial_step, tokens_per_batch, examples_per_batch, tokens_per_byte=None,
                   total_steps=None, jit_compile=False):
        backup_dir = self.path("backup", f"worker-{worker}")
        guard = StopOnNaN(checkpoint_dir=self.path("checkpoints", "last"))
        verbose = self.options.verbose > 0
        mode = self._progress_mode()
        callbacks = []
        if verbose:
            first_step = f"first training step (tracing{' and XLA compilation' if jit_compile else ''})"
            # Keras' bar on a terminal leaves its line open while validation runs: start below it.
            callbacks.append(PhaseLines(first_step, new_line=mode == "bar" and _is_terminal(sys.stdout)))
        # Before the callbacks that read the epoch logs: it adds val_bits_per_byte to them.
        if tokens_per_byte:
            callbacks.append(ValidationBitsPerByte(tokens_per_byte))
        if mode == "lines":  # its epoch line comes before the checkpoints' status lines
            callbacks.append(ProgressLines(self.options.log_every, total_steps=total_steps, epochs=self.options.epochs,
                                           tokens_per_batch=tokens_per_batch, examples_per_batch=examples_per_batch))
        if chief:
            hparams = {k: v for k, v in self.recipe.config_dict().items() if isinstance(v, (int, float, str, bool))}
            hparams.update(strategy=self.options.strategy, mixed_precision=self.options.mixed_precision or "float32",
                           jit_compile=self.options.jit_compile)
            sampler = getattr(self.recipe, "tensorboard_samples", None)
            callbacks.append(
                TensorBoardSummaries(
                    self.path("tb"), log_every=self.options.log_every, tokens_per_batch=tokens_per_batch,
                    examples_per_batch=examples_per_batch, hparams=hparams, text_samples=sampler,
                    trial_id=os.path.basename(os.path.normpath(os.path.abspath(self.run_dir))),
                )
            )
            if self.options.write_graph:
                callbacks.append(keras.callbacks.TensorBoard(self.path("tb", "graph"), write_graph=True, update_freq="epoch"))
            callbacks.append(RecipeCheckpoint(self.recipe, self.path("checkpoints"), guard=guard, verbose=verbose))
        callbacks.append(guard)
        callbacks.append(backup_lib.StepBackup(backup_dir, self.options.backup_every, initial_step=initial_step,
                                               guard=guard))
        return callbacks + self.extra_callbacks, guard

    def _diverged(self, guard, backup_dir, resumed_from):
        last = backup_lib.read_step(backup_dir)
        rate = self.recipe.config.learning_rate
        resume = f"resume from the backup of step {last}" if last else "start again from step 0"
        if last and last == resumed_from:
            # Finite is not the same as healthy: the updates before a divergence can leave huge
            # (finite) weights that diverge again whatever the new learning rate.
            resume += (f" (this run diverged before its first new backup: if the backup of step {last} diverges "
                       "again, it is already too far off; start over with another --run-dir)")
        return TrainingDiverged(
            f"Training diverged at global step {guard.stopped_at_step}: {guard.reason}. Nothing after step {last} "
            f"was saved. Lower the learning rate (now {rate:g}), e.g. --set learning_rate={rate / 10:g}, and rerun "
            f"the same command to {resume}.",
            step=guard.stopped_at_step, last_good_step=last,
        )

    def _train(self, strategy):
        options = self.options
        chief = is_chief(strategy)
        worker = _worker_index(strategy)
        backup_dir = self.path("backup", f"worker-{worker}")
        created = self._check_run_dir()
        verbose = options.verbose > 0
        try:
            saved_config = self._read_config()
            resuming = saved_config is not None
            changes = self._config_changes(saved_config)
            config = self.recipe.config
            per_replica_batch_size(config.batch_size, strategy)  # a clear error if it does not divide
            with phase("preparing data", enabled=verbose):
                self._prepare_tokenizer(resuming)
                # tf.data shuffles combine their seed with TensorFlow's global seed at the time the
                # pipeline is built; fixing it first makes the data order the same wherever and whenever
                # the pipeline is built (in this process, or inside a worker's dataset function).
                keras.utils.set_random_seed(config.seed)
                train = self._dataset("train", repeat=True)
                validation = self._dataset("validation")
                self._check_labels()
                steps_per_epoch, validation_steps = self._steps()
                total_steps = options.epochs * steps_per_epoch
                if validation_steps:
                    validation = validation.take(validation_steps)
                self._check_validation(validation)
                validation = distribute(strategy, lambda: validation, config.batch_size)
                # Causal LMs: the validation split's tokens per byte, for val_bits_per_byte (stdlib: 1-5 s on 2 cores).
                tokens_per_byte = self.recipe.tokens_per_byte_of(self.data, "validation")

            with phase("building the model", enabled=verbose):
                with strategy.scope():
                    jit_compile = resolve_jit_compile(options.jit_compile, strategy)
                    model = self.recipe.build_model(total_steps=total_steps, jit_compile=jit_compile)
                    model.optimizer.build(model.trainable_variables)
                step = backup_lib.restore(model, backup_dir)
        except BaseException:
            if created and chief:  # no trace of a run that never started: the corrected command must not be refused
                shutil.rmtree(self.run_dir, ignore_errors=True)
            raise
        resumed_from = step
        if step and options.verbose:
            print(f"Resuming {self.run_dir} from step {step} (epoch {step // steps_per_epoch + 1}).", file=sys.stderr)
        if step >= total_steps:
            if options.verbose:
                print(f"{self.run_dir} already finished its {total_steps} steps.", file=sys.stderr)
            return TrainResult(model, self.run_dir, {}, step, resumed_from)
        if chief:
            self._commit_run_dir(resuming)
        if changes:
            self._record_config_changes(changes, step, chief)

        tokens_per_batch = config.batch_size * config.sequence_length
        callbacks, guard = self._callbacks(chief, worker, step, tokens_per_batch, config.batch_size, tokens_per_byte,
                                           total_steps=total_steps, jit_compile=jit_compile)
        # Keras' progress bar only in `bar` mode; `lines` mode prints through ProgressLines instead.
        fit_verbose = 0 if self._progress_mode() == "lines" else options.verbose
        history = {}

        def fit(first_epoch, last_epoch, steps):
            # The stream is deterministic (seeded shuffles), so skipping `step` global batches puts
            # a resumed run exactly where the interrupted one stopped.
            stream = distribute(strategy, lambda: train.skip(step), config.batch_size)
            with warnings.catch_warnings():
                # Keras warns when the (finite) validation set ends; the training stream never does.
                warnings.filterwarnings("ignore", message="Your input ran out of data")
                result = model.fit(
                    stream, initial_epoch=first_epoch, epochs=last_epoch, steps_per_epoch=steps,
                    validation_data=validation, callbacks=callbacks, verbose=fit_verbose, shuffle=False,
                )
            for key, values in result.history.items():
                history.setdefault(key, []).extend(values)
            if guard.stopped_at_step is not None:
                raise self._diverged(guard, backup_dir, resumed_from)

        epoch, offset = divmod(step, steps_per_epoch)
        if offset:  # finish the interrupted epoch first
            fit(epoch, epoch + 1, steps_per_epoch - offset)
            epoch, step = epoch + 1, (epoch + 1) * steps_per_epoch
        if epoch < options.epochs and not model.stop_training:
            fit(epoch, options.epochs, steps_per_epoch)
        final_step = backup_lib.read_step(backup_dir)
        return TrainResult(model, self.run_dir, history, final_step, resumed_from)


def load_run(run_dir):
    """`(model, recipe)` of a run's best (else last) checkpoint.

    The recipe is rebuilt from the checkpoint's config.json and given the checkpoint's
    tokenizer and (classifiers) label names, so it tokenizes new data as the model was trained.
    """
    import recipes
    from recipes.base import load_checkpoint

    model, tokenizer, config = load_checkpoint(run_dir)
    config = dict(config)
    name, preset = config.pop("recipe"), config.pop("preset")
    recipe = recipes.get(name, preset=preset, **config)
    recipe.tokenizer = tokenizer
    labels_path = os.path.join(os.path.dirname(_checkpoint_file(run_dir)), "labels.json")
    if os.path.exists(labels_path):
        with open(labels_path) as f:
            recipe.label_names = json.load(f)
    return model, recipe


def evaluate_run(run_dir, data=None, split="test", steps=0, verbose=0, loaded=None):
    """Metrics of a run's best (else last) checkpoint on a split of `data` (default: the run's own).

    `loaded`: the `(model, recipe)` of `load_run(run_dir)` when the caller has it already.
    A causal LM's metrics also hold `bits_per_byte` (`zoo.evaluation.bits_per_byte`, with the
    task's `tokens_per_byte_of`).
    """
    model, recipe = loaded or load_run(run_dir)
    (dataset,) = recipe.datasets(data, splits=(split,))
    if steps:
        dataset = dataset.take(steps)
    recipe.compile_model(model)
    metrics = model.evaluate(dataset, return_dict=True, verbose=verbose)
    tokens_per_byte = recipe.tokens_per_byte_of(data, split)  # causal LMs: a figure that compares across tokenizers
    if tokens_per_byte is not None:
        from zoo.evaluation import bits_per_byte

        metrics["bits_per_byte"] = bits_per_byte(metrics["loss"], tokens_per_byte)
    return metrics


def _checkpoint_file(path):
    for candidate in (path, os.path.join(path, "checkpoints", "best"), os.path.join(path, "checkpoints", "last")):
        if os.path.exists(os.path.join(candidate, "model.keras")):
            return os.path.join(candidate, "model.keras")
    return path

"""The Trainer: a recipe run end to end under a tf.distribute strategy.

What it adds to `model.fit`: the strategy (model, optimiser and metrics built in its scope),
XLA on by default, mixed precision by flag, a run directory (config, tokenizer, checkpoints,
per-worker backups, TensorBoard), step-exact resume, and chief-only writes.

Run directory:
    runs/<name>/config.json        the full resolved recipe config
    runs/<name>/tokenizer/         the vocabulary every checkpoint and export uses
    runs/<name>/checkpoints/last/  after every epoch (model.keras, tokenizer/, config.json)
    runs/<name>/checkpoints/best/  the best validation loss so far
    runs/<name>/backup/worker-<i>/ step backups, one directory per worker
    runs/<name>/tb/                TensorBoard (train/, validation/)
"""

import dataclasses
import json
import math
import os
import shutil
import sys
import warnings

import keras

from trainers import backup as backup_lib
from trainers.callbacks import StopOnNaN, TensorBoardSummaries
from trainers.distributed_data import distribute
from trainers.strategy import get_strategy, is_chief, per_replica_batch_size

MIXED_PRECISION_POLICIES = ("", "mixed_bfloat16", "mixed_float16")


@dataclasses.dataclass
class TrainOptions:
    """How to run (as opposed to what to train, which is the recipe's config)."""

    epochs: int = 1
    steps_per_epoch: int = 0  # 0: the recipe's steps_per_epoch, else one full pass over the data
    validation_steps: int = 0  # 0: the recipe's validation_steps, else the whole validation split
    strategy: str = "auto"
    jit_compile: bool = True  # XLA where it works (see resolve_jit_compile); Keras' "auto" is off on CPU
    mixed_precision: str = ""  # "", "mixed_bfloat16" or "mixed_float16" (with loss scaling)
    log_every: int = 10  # TensorBoard scalars every N steps
    backup_every: int = 50  # step backups every N steps (a crash loses at most N steps)
    write_graph: bool = False  # the model graph in TensorBoard (tb/graph), off by default
    verbose: int = 1


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
    write(temporary)
    old = target + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(target):
        os.rename(target, old)
    os.rename(temporary, target)
    shutil.rmtree(old, ignore_errors=True)


class RecipeCheckpoint(keras.callbacks.Callback):
    """After every epoch: `last/` (always) and `best/` (when `monitor` improves), as recipe checkpoints."""

    def __init__(self, recipe, directory, monitor="val_loss"):
        super().__init__()
        self.recipe = recipe
        self.directory = directory
        self.monitor = monitor
        self.best = self._saved_best()

    def _saved_best(self):
        path = os.path.join(self.directory, "best", "metrics.json")
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f).get(self.monitor)
        return None

    def _save(self, name, logs):
        def write(directory):
            self.recipe.save(self.model, directory)
            with open(os.path.join(directory, "metrics.json"), "w") as f:
                json.dump({k: float(v) for k, v in (logs or {}).items()}, f, indent=2)

        _replace_directory(write, os.path.join(self.directory, name))

    def on_epoch_end(self, epoch, logs=None):
        if not math.isfinite((logs or {}).get("loss", 0.0)):
            return  # Keras still ends the epoch after StopOnNaN: keep the last good checkpoint
        self._save("last", logs)
        value = (logs or {}).get(self.monitor)
        if value is not None and (self.best is None or value < self.best):
            self.best = float(value)
            self._save("best", logs)


class Trainer:
    """Trains `recipe` into `run_dir`; re-running the same command resumes where it stopped.

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

    def path(self, *parts):
        return os.path.join(self.run_dir, *parts)

    def train(self):
        strategy = self.strategy or get_strategy(self.options.strategy)
        previous_policy = keras.config.dtype_policy()
        if self.options.mixed_precision:
            keras.config.set_dtype_policy(self.options.mixed_precision)
        try:
            return self._train(strategy)
        finally:
            keras.config.set_dtype_policy(previous_policy)

    # -- the run directory ---------------------------------------------------------------

    def _write_config(self, chief):
        path = self.path("config.json")
        config = self.recipe.config_dict()
        if os.path.exists(path):
            with open(path) as f:
                saved = json.load(f)
            changed = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
            if changed:
                details = ", ".join(f"{k}: {saved.get(k)!r} -> {config.get(k)!r}" for k in changed)
                raise ValueError(
                    f"{self.run_dir} holds a run with another config ({details}). Resume it with the same "
                    "settings, or choose another --run-dir."
                )
        elif chief:
            os.makedirs(self.run_dir, exist_ok=True)
            with open(path, "w") as f:
                json.dump(config, f, indent=2)

    def _prepare_tokenizer(self, chief):
        from zoo.data.tokenizer import load_tokenizer, save_tokenizer

        directory = self.path("tokenizer")
        if os.path.isdir(directory):
            self.recipe.tokenizer = load_tokenizer(directory)
            return
        tokenizer = self.recipe.get_tokenizer(self.data)
        if chief:
            _replace_directory(lambda tmp: save_tokenizer(tokenizer, tmp), directory)

    # -- training ------------------------------------------------------------------------

    def _steps(self):
        config = self.recipe.config
        steps_per_epoch = self.options.steps_per_epoch or getattr(config, "steps_per_epoch", 0)
        if not steps_per_epoch:  # one full pass: count the batches of a single pass once
            (one_pass,) = self.recipe.datasets(self.data, batch_size=config.batch_size, splits=("train",))
            steps_per_epoch = int(one_pass.reduce(0, lambda count, _: count + 1))
            if steps_per_epoch == 0:
                raise ValueError(f"The training data of {self.data!r} holds less than one batch.")
        validation_steps = self.options.validation_steps or getattr(config, "validation_steps", 0) or None
        return steps_per_epoch, validation_steps

    def _callbacks(self, chief, worker, initial_step, tokens_per_batch, examples_per_batch):
        backup_dir = self.path("backup", f"worker-{worker}")
        callbacks = []
        if chief:
            hparams = {k: v for k, v in self.recipe.config_dict().items() if isinstance(v, (int, float, str, bool))}
            hparams.update(strategy=self.options.strategy, mixed_precision=self.options.mixed_precision or "float32",
                           jit_compile=self.options.jit_compile)
            sampler = getattr(self.recipe, "tensorboard_samples", None)
            callbacks.append(
                TensorBoardSummaries(
                    self.path("tb"), log_every=self.options.log_every, tokens_per_batch=tokens_per_batch,
                    examples_per_batch=examples_per_batch, hparams=hparams, text_samples=sampler,
                )
            )
            if self.options.write_graph:
                callbacks.append(keras.callbacks.TensorBoard(self.path("tb", "graph"), write_graph=True, update_freq="epoch"))
            callbacks.append(RecipeCheckpoint(self.recipe, self.path("checkpoints")))
        callbacks.append(StopOnNaN(checkpoint_dir=self.path("checkpoints", "last")))
        callbacks.append(backup_lib.StepBackup(backup_dir, self.options.backup_every, initial_step=initial_step))
        return callbacks + self.extra_callbacks

    def _train(self, strategy):
        options = self.options
        chief = is_chief(strategy)
        worker = _worker_index(strategy)
        self._write_config(chief)
        self._prepare_tokenizer(chief)

        config = self.recipe.config
        per_replica_batch_size(config.batch_size, strategy)  # a clear error if it does not divide
        # tf.data shuffles combine their seed with TensorFlow's global seed at the time the
        # pipeline is built; fixing it first makes the data order the same wherever and whenever
        # the pipeline is built (in this process, or inside a worker's dataset function).
        keras.utils.set_random_seed(config.seed)
        (train,) = self.recipe.datasets(self.data, batch_size=config.batch_size, splits=("train",), repeat=True)
        (validation,) = self.recipe.datasets(self.data, batch_size=config.batch_size, splits=("validation",))
        steps_per_epoch, validation_steps = self._steps()
        total_steps = options.epochs * steps_per_epoch
        if validation_steps:
            validation = validation.take(validation_steps)
        validation = distribute(strategy, lambda: validation, config.batch_size)

        with strategy.scope():
            jit_compile = resolve_jit_compile(options.jit_compile, strategy)
            model = self.recipe.build_model(total_steps=total_steps, jit_compile=jit_compile)
            model.optimizer.build(model.trainable_variables)
        step = backup_lib.restore(model, self.path("backup", f"worker-{worker}"))
        resumed_from = step
        if step and options.verbose:
            print(f"Resuming {self.run_dir} from step {step} (epoch {step // steps_per_epoch + 1}).", file=sys.stderr)
        if step >= total_steps:
            if options.verbose:
                print(f"{self.run_dir} already finished its {total_steps} steps.", file=sys.stderr)
            return TrainResult(model, self.run_dir, {}, step, resumed_from)

        tokens_per_batch = config.batch_size * config.sequence_length
        callbacks = self._callbacks(chief, worker, step, tokens_per_batch, config.batch_size)
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
                    validation_data=validation, callbacks=callbacks, verbose=options.verbose, shuffle=False,
                )
            for key, values in result.history.items():
                history.setdefault(key, []).extend(values)

        epoch, offset = divmod(step, steps_per_epoch)
        if offset:  # finish the interrupted epoch first
            fit(epoch, epoch + 1, steps_per_epoch - offset)
            epoch, step = epoch + 1, (epoch + 1) * steps_per_epoch
        if epoch < options.epochs and not model.stop_training:
            fit(epoch, options.epochs, steps_per_epoch)
        final_step = backup_lib.read_step(self.path("backup", f"worker-{worker}"))
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
    """
    model, recipe = loaded or load_run(run_dir)
    (dataset,) = recipe.datasets(data, splits=(split,))
    if steps:
        dataset = dataset.take(steps)
    recipe.compile_model(model)
    return model.evaluate(dataset, return_dict=True, verbose=verbose)


def _checkpoint_file(path):
    for candidate in (path, os.path.join(path, "checkpoints", "best"), os.path.join(path, "checkpoints", "last")):
        if os.path.exists(os.path.join(candidate, "model.keras")):
            return os.path.join(candidate, "model.keras")
    return path

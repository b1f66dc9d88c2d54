"""Monitoring callbacks of the trainer: TensorBoard summaries on the global step, and a NaN stop.

`TensorBoardSummaries` writes what Keras' own `keras.callbacks.TensorBoard` does not: scalars on
the *global* step (`optimizer.iterations`, so a resumed run continues the same x-axis), the
learning rate of a schedule, tokens/examples per second, the run's hyperparameters for the
HParams dashboard, and text samples from the model. `StopOnNaN` is `keras.callbacks.TerminateOnNaN`
with a message that says where training diverged and which checkpoint is still good.

Event layout (the same as Keras' TensorBoard callback, so both can share a `log_dir`):

    <log_dir>/             hparams session (the HParams dashboard's "run"), best_<metric>
    <log_dir>/train/       loss, <metrics>, learning_rate, tokens_per_sec, examples_per_sec
                           every `log_every` steps; epoch_<name> at epoch ends; samples (text)
    <log_dir>/validation/  loss, <metrics> at epoch ends (the `val_` prefix dropped)
"""

import logging
import math
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from tensorboard.plugins.hparams import api as hp

logger = logging.getLogger(__name__)


def global_step(model):
    """The number of optimizer updates so far: the x-axis every summary here shares."""
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def current_learning_rate(optimizer):
    """The optimizer's learning rate now, as a float; a schedule is evaluated at `iterations`.

    Keras 3's `optimizer.learning_rate` already returns the current value (a variable, or the
    schedule's tensor at the current iteration); a `LossScaleOptimizer` forwards to its inner one.
    """
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def _is_number(value):
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


def _code_block(text):
    """`text` as a fenced Markdown code block, so TensorBoard's Text dashboard keeps it verbatim."""
    longest_run, run = 0, 0
    for character in text:
        run = run + 1 if character == "`" else 0
        longest_run = max(longest_run, run)
    fence = "`" * max(3, longest_run + 1)
    return f"{fence}\n{text}\n{fence}"


class TensorBoardSummaries(keras.callbacks.Callback):
    """TensorBoard scalars, hyperparameters and text samples, all on the global step.

    Every `log_every` optimizer steps the train writer gets each numeric value of the batch logs
    under its own name (`loss`, `accuracy`: Keras' running means over the epoch so far), plus
    `learning_rate` and, when the batch sizes are given, `tokens_per_sec` and `examples_per_sec`.
    The step is `model.optimizer.iterations` after the update, so the first write of a fresh run is
    at step `log_every` and a run resumed from a backup continues where it stopped.

    `learning_rate` is `optimizer.learning_rate` read after the update, i.e. the schedule at the
    current `iterations` (the rate of the next update), the same convention as
    `keras.callbacks.TensorBoard`.

    Throughput is wall-clock (`time.perf_counter`) over the steps since the previous write. The
    first batch of each `fit` call (graph tracing, XLA compilation) and the time between epochs
    (validation, checkpoints) are never counted: the clock restarts after the first batch and at
    every epoch start, so the first write of a run may have no throughput yet. The measured value
    is also put into the batch `logs` as `logs["tokens_per_sec"]` (and `examples_per_sec`), so
    callbacks after this one see it.

    Wiring for the Keras progress bar: `model.fit` builds a `CallbackList` that *appends* its
    `ProgbarLogger` after the callbacks it is given, and hands one shared logs dict to them in list
    order; the progress bar therefore shows `tokens_per_sec` as long as no `ProgbarLogger` is placed
    *before* this callback in `callbacks=`. Nothing else is needed (the progress bar displays every
    key as given, without averaging).

    At each epoch end: the `val_*` values go to the validation writer without the prefix (`loss`,
    `accuracy`), the training values to the train writer as `epoch_<name>`, and, every
    `text_every_epochs` epochs, the strings from `text_samples(model)` to the train writer as one
    text summary `samples` (a 1-D string tensor, each sample a fenced Markdown code block so code
    keeps its indentation). A sampler that raises or returns something else than a list of strings
    logs a warning and training goes on: monitoring never ends a run.

    Hyperparameters go to the HParams dashboard as a session in `<log_dir>` itself (not in
    `train/`): the dashboard takes every scalar in the runs *under* a session's directory as its
    metrics, so `train/loss` and `validation/loss` become columns (point `tensorboard --logdir` at
    a parent of `log_dir`, e.g. `runs`, as with Keras' own callbacks). No experiment config
    (`hp.hparams_config`) is written, because TensorBoard uses the first one it finds for *all*
    runs under `--logdir`, which hides the hyperparameters of runs of other recipes. Instead
    `best_<metric_for_hparams>` (the best value so far of that epoch-log key, lower is better
    unless the name mentions accuracy/auc/precision/recall/f1) is written in `<log_dir>` at each
    epoch end, a headline column to sort runs by.

    Only the chief of a multi-worker run should hold this callback.

    Args:
        log_dir: the TensorBoard directory of this run (`train/` and `validation/` go under it).
        log_every: optimizer steps between training writes.
        tokens_per_batch: tokens in one global batch (batch size x sequence length), or None.
        examples_per_batch: examples in one global batch, or None.
        hparams: a flat dict of str -> int/float/str/bool, written once for the HParams dashboard.
        metric_for_hparams: the epoch-log key whose best value is written as `best_<key>`; None
            to skip.
        text_samples: a callable `fn(model) -> list[str]`, or None.
        text_every_epochs: epochs between text samples.

    Example:

    ```python
    model.fit(x, y, validation_split=0.2, epochs=2, callbacks=[
        TensorBoardSummaries("runs/demo/tb", log_every=10, examples_per_batch=32,
                             hparams={"learning_rate": 1e-3, "num_layers": 2}),
    ])
    ```
    """

    def __init__(
        self,
        log_dir,
        log_every=10,
        tokens_per_batch=None,
        examples_per_batch=None,
        hparams=None,
        metric_for_hparams="val_loss",
        text_samples=None,
        text_every_epochs=1,
    ):
        super().__init__()
        if int(log_every) < 1:
            raise ValueError(f"log_every must be a positive number of steps, got {log_every!r}.")
        if int(text_every_epochs) < 1:
            raise ValueError(f"text_every_epochs must be a positive number of epochs, got {text_every_epochs!r}.")
        if text_samples is not None and not callable(text_samples):
            raise TypeError(f"text_samples must be a callable fn(model) -> list[str], got {text_samples!r}.")
        for name, value in (hparams or {}).items():
            if not isinstance(name, str) or not isinstance(value, (bool, int, float, str)):
                raise TypeError(
                    f"hparams must map str to int/float/str/bool; {name!r}: {value!r} is not. "
                    "Flatten nested configs or convert the value to a string."
                )
        self.log_dir = log_dir
        self.log_every = int(log_every)
        self.tokens_per_batch = tokens_per_batch
        self.examples_per_batch = examples_per_batch
        self.hparams = dict(hparams) if hparams else None
        self.metric_for_hparams = metric_for_hparams
        self.text_samples = text_samples
        self.text_every_epochs = int(text_every_epochs)
        self._writers = {}
        self._hparams_written = False
        self._best = None
        self._last_logged_step = None
        self._clock = None  # (perf_counter, global step) the next throughput is measured from
        self._first_batch_done = False

    # -- writers ------------------------------------------------------------------------------

    def _writer(self, name):
        if name not in self._writers:
            path = self.log_dir if name == "session" else os.path.join(self.log_dir, name)
            self._writers[name] = tf.summary.create_file_writer(path)
        return self._writers[name]

    def _scalars(self, writer_name, values, step):
        with self._writer(writer_name).as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, value)

    # -- training -----------------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        # `fit` may be called several times with the same instance (the trainer finishes an
        # interrupted epoch, then runs the rest): writers are (re)opened here, closed at the end.
        self._writer("train")
        self._writer("validation")
        step = global_step(self.model)
        self._last_logged_step = step
        self._clock = None
        self._first_batch_done = False
        if self.hparams and not self._hparams_written:
            with self._writer("session").as_default(step=step):
                hp.hparams(self.hparams)
            self._hparams_written = True

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_batch_done:
            self._clock = (time.perf_counter(), global_step(self.model))

    def on_train_batch_end(self, batch, logs=None):
        logs = logs if logs is not None else {}
        step = global_step(self.model)
        now = time.perf_counter()
        if not self._first_batch_done:
            # The first batch of a `fit` call includes tracing and compilation: start the clock after it.
            self._first_batch_done = True
            self._clock = (now, step)
        # `//` instead of `%`: with steps_per_execution > 1 the step moves in jumps.
        if step // self.log_every == self._last_logged_step // self.log_every:
            return
        self._last_logged_step = step

        values = {name: value for name, value in logs.items() if _is_number(value)}
        values["learning_rate"] = current_learning_rate(self.model.optimizer)
        start_time, start_step = self._clock
        if step > start_step and now > start_time:
            steps_per_sec = (step - start_step) / (now - start_time)
            for name, per_batch in (("tokens_per_sec", self.tokens_per_batch),
                                    ("examples_per_sec", self.examples_per_batch)):
                if per_batch:
                    values[name] = logs[name] = steps_per_sec * per_batch
        self._scalars("train", values, step)
        self._clock = (time.perf_counter(), step)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        step = global_step(self.model)
        train, validation = {}, {}
        for name, value in logs.items():
            if not _is_number(value):
                continue
            if name.startswith("val_"):
                validation[name[len("val_"):]] = value
            else:
                train[f"epoch_{name}"] = value
        self._scalars("train", train, step)
        self._scalars("validation", validation, step)
        self._write_best(logs, step)
        if self.text_samples is not None and (epoch + 1) % self.text_every_epochs == 0:
            self._write_samples(epoch, step)
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.flush()
            writer.close()
        self._writers = {}

    # -- epoch-end extras ---------------------------------------------------------------------

    def _write_best(self, logs, step):
        value = logs.get(self.metric_for_hparams) if self.metric_for_hparams else None
        if not _is_number(value) or math.isnan(value):
            return
        name = self.metric_for_hparams.lower()
        higher_is_better = any(word in name for word in ("acc", "auc", "precision", "recall", "f1"))
        if self._best is None or (value > self._best if higher_is_better else value < self._best):
            self._best = float(value)
        self._scalars("session", {f"best_{self.metric_for_hparams}": self._best}, step)

    def _write_samples(self, epoch, step):
        try:
            samples = self.text_samples(self.model)
            if isinstance(samples, str) or not all(isinstance(s, str) for s in samples):
                raise TypeError(f"expected a list of strings, got {samples!r:.200}")
            samples = list(samples)
        except Exception as error:  # a broken sampler must not end (or un-checkpoint) a long run
            logger.warning("text_samples failed at epoch %d (step %d), no samples written: %s",
                           epoch + 1, step, error)
            return
        if not samples:
            return
        with self._writer("train").as_default(step=step):
            tf.summary.text("samples", tf.constant([_code_block(s) for s in samples]))


def non_finite_variables(model):
    """Paths of the model's weights and optimizer variables that hold a NaN or an infinity.

    Reduced on the device, one boolean per variable comes back to the host. The loss of a step
    is computed before that step's update, so a finite loss does not prove the updated weights
    finite: this is the check to make before saving them.
    """
    variables = list(model.weights)
    if model.optimizer is not None:
        variables += list(model.optimizer.variables)
    bad = []
    for variable in variables:
        if "float" not in str(variable.dtype):
            continue
        if not bool(keras.ops.convert_to_numpy(keras.ops.all(keras.ops.isfinite(variable)))):
            bad.append(variable.path)
    return bad


class StopOnNaN(keras.callbacks.Callback):
    """Stops training at the first NaN or infinite loss or weights, saying where and what is still good.

    Like `keras.callbacks.TerminateOnNaN`, but the message (to stderr, and to the `logging` module
    when logging is configured) names the global step (`optimizer.iterations` after the bad update),
    the epoch and batch, and the last good checkpoint: `checkpoint_dir` if it exists, otherwise it
    says that none has been saved yet. `stopped_at_step` records the step (None while healthy) and
    `reason` what was found.

    The loss only shows a bad update one step late (the loss of step N is computed before update
    N), and not at all after the last step. So callbacks that save weights call `check_weights()`
    first: it checks every weight and optimizer variable, and stops training (with the same kind of
    message) when one is not finite. It returns False then, and at every later call of this `fit`.

    Keras still runs validation and calls `on_epoch_end` after `stop_training` is set mid-epoch,
    with the diverged weights. Callbacks that save weights there (epoch checkpoints, backups) must
    check for it and skip, e.g. `if not stop_on_nan.check_weights()` or
    `not math.isfinite(logs["loss"])`, or they overwrite the good checkpoint this message points to.

    Args:
        checkpoint_dir: the directory holding the latest good checkpoint, or None.
    """

    def __init__(self, checkpoint_dir=None):
        super().__init__()
        self.checkpoint_dir = checkpoint_dir
        self.stopped_at_step = None
        self.reason = None
        self._epoch = 0

    def on_train_begin(self, logs=None):
        self.stopped_at_step = None
        self.reason = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or self.stopped_at_step is not None:
            return
        loss = float(keras.ops.convert_to_numpy(loss))
        if math.isfinite(loss):
            return
        self._stop(f"the loss is {loss}", f"epoch {self._epoch + 1}, batch {batch}")

    def check_weights(self):
        """True when every weight and optimizer variable is finite; otherwise stops training."""
        if self.stopped_at_step is not None:
            return False
        bad = non_finite_variables(self.model)
        if not bad:
            return True
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        self._stop(f"the weights are not finite ({bad[0]}{more})", f"epoch {self._epoch + 1}")
        return False

    def _stop(self, what, where):
        step = global_step(self.model)
        self.stopped_at_step = step
        self.reason = what
        self.model.stop_training = True
        if self.checkpoint_dir and os.path.isdir(self.checkpoint_dir) and os.listdir(self.checkpoint_dir):
            checkpoint = f"the last good checkpoint is {self.checkpoint_dir}"
        elif self.checkpoint_dir:
            checkpoint = f"no checkpoint has been saved yet (none in {self.checkpoint_dir})"
        else:
            checkpoint = "no checkpoint has been saved yet (no checkpoint directory was given)"
        message = (
            f"Stopping: {what} at global step {step} ({where}); "
            f"{checkpoint}. Lower the learning rate or check the data of that batch before resuming."
        )
        print(message, file=sys.stderr)
        if logger.hasHandlers():  # otherwise logging's last-resort handler would print it twice
            logger.error(message)

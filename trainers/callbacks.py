"""Monitoring callbacks of the trainer: TensorBoard summaries, progress lines, status lines, a NaN stop.

`TensorBoardSummaries` writes what Keras' own `keras.callbacks.TensorBoard` does not: scalars on
the *global* step (`optimizer.iterations`, so a resumed run continues the same x-axis), losses as
means over each logging interval, the learning rate of a schedule, the gradient norm and the
clipping rate, tokens/examples per second, the run's hyperparameters for the HParams dashboard,
and text samples from the model. `ProgressLines` prints one line per logging interval and one per
epoch, the progress display for a file or a pipe. `PhaseLines` prints status lines around the
slow phases inside `fit` (the first step, validation). `StopOnNaN` is
`keras.callbacks.TerminateOnNaN` with a message that says where training diverged and which
checkpoint is still good. `ValidationBitsPerByte` adds a causal LM's `val_bits_per_byte` to the
epoch logs the callbacks after it read.

Event layout (runs as in Keras' TensorBoard callback; tags grouped by the prefix before `/`,
which TensorBoard uses to group its cards):

    <log_dir>/             hparams session (trial named after the run directory),
                           eval/best_<metric> (the HParams dashboard's headline column)
    <log_dir>/train/       every `log_every` steps: train/loss (and every train/<name>_loss) as
                           the mean over the interval, train/<metric> as Keras reports it,
                           train/learning_rate, train/grad_norm, train/clip_rate,
                           system/tokens_per_sec, system/examples_per_sec;
                           at epoch ends train/epoch_<name>; text: samples, warnings
    <log_dir>/validation/  eval/loss, eval/<metric> at epoch ends (the `val_` prefix dropped),
                           and eval/bits_per_byte when a `ValidationBitsPerByte` comes first
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

from trainers.progress import Phase, format_elapsed

logger = logging.getLogger(__name__)

THROUGHPUTS = ("tokens_per_sec", "examples_per_sec")


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


def _is_loss(name):
    """A batch-log key that Keras fills from a loss tracker (a `keras.metrics.Mean` of batch losses)."""
    return name == "loss" or name.endswith("_loss")


def _scalar(variable):
    return float(keras.ops.convert_to_numpy(variable))


def learning_rate_schedule_config(optimizer):
    """The config dict of the optimizer's learning-rate schedule (e.g. `total_steps`,
    `warmup_steps`), or {} for a constant rate. Public API only: the optimizer's `get_config()`
    serializes its schedule; a `LossScaleOptimizer` is looked through to its `inner_optimizer`."""
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    try:
        learning_rate = optimizer.get_config().get("learning_rate")
    except Exception:  # a custom optimizer without a serializable config: no schedule info
        return {}
    config = learning_rate.get("config") if isinstance(learning_rate, dict) else None
    return config if isinstance(config, dict) else {}


def _code_block(text):
    """`text` as a fenced Markdown code block, so TensorBoard's Text dashboard keeps it verbatim."""
    longest_run, run = 0, 0
    for character in text:
        run = run + 1 if character == "`" else 0
        longest_run = max(longest_run, run)
    fence = "`" * max(3, longest_run + 1)
    return f"{fence}\n{text}\n{fence}"


def _trial_name(log_dir):
    """The run directory's name for a TensorBoard directory `runs/<name>/tb` (else the directory's own name)."""
    path = os.path.normpath(os.path.abspath(log_dir))
    name = os.path.basename(path)
    return os.path.basename(os.path.dirname(path)) if name == "tb" else name


class _Intervals:
    """What happened since the previous write, every `log_every` optimizer steps: the interval
    means of the losses and the step rate. Shared by `TensorBoardSummaries` and `ProgressLines`.

    Losses: if `m_k` is Keras' running mean after the k-th batch since it last reset its metrics
    (each epoch start of a `fit` call), batches j+1..k sum to `k*m_k - j*m_j`; an interval that
    spans an epoch end adds the old epoch's tail to the new epoch's head (see
    `TensorBoardSummaries`). Step rate: wall clock over the steps since the previous write, the
    first batch of each `fit` call and the time between epochs left out.
    """

    def __init__(self, log_every):
        self.log_every = log_every
        self._last_step = None
        self._clock = None  # (perf_counter, global step) the next step rate is measured from
        self._first_batch_done = False
        # The batch count within the epoch and the running means at the previous write, the latest
        # batch's, and the sums carried over from epochs that ended since then ({key: (sum, batches)}).
        self._mark = (0, {})
        self._latest = None
        self._carry = {}
        self._carry_step = None

    def begin_fit(self, step):
        self._last_step = step
        self._clock = None
        self._first_batch_done = False
        self._mark, self._latest = (0, {}), None
        if self._carry_step != step:  # not the continuation of the previous fit of the same instance
            self._carry, self._carry_step = {}, None

    def begin_epoch(self, step):
        self.end_epoch(step)
        if self._first_batch_done:
            self._clock = (time.perf_counter(), step)

    def end_epoch(self, step):
        """Carries the losses of the ended epoch's batches since the previous write into the next
        write (Keras resets its running means at every epoch start)."""
        if self._latest is not None:
            (j, marked), (k, means) = self._mark, self._latest
            for name, mean in means.items():
                total, count = self._carry.get(name, (0.0, 0))
                self._carry[name] = (total + k * mean - j * marked.get(name, 0.0), count + k - j)
            self._carry_step = step
        self._mark, self._latest = (0, {}), None

    def batch_end(self, batch, logs, step):
        """Records the batch; returns `(losses, steps_per_sec)` when `step` crossed a multiple of
        `log_every` (`steps_per_sec` None until the clock has run), else None."""
        now = time.perf_counter()
        if not self._first_batch_done:
            # The first batch of a `fit` call includes tracing and compilation: start the clock after it.
            self._first_batch_done = True
            self._clock = (now, step)
        k = batch + 1  # batches since Keras reset its metrics (`batch` counts from the epoch start)
        means = {name: float(value) for name, value in logs.items() if _is_loss(name) and _is_number(value)}
        self._latest = (k, means)
        # `//` instead of `%`: with steps_per_execution > 1 the step moves in jumps.
        if step // self.log_every == self._last_step // self.log_every:
            return None
        self._last_step = step
        losses = {}
        j, marked = self._mark
        for name, mean in means.items():
            total, count = self._carry.get(name, (0.0, 0))
            total, count = total + k * mean - j * marked.get(name, 0.0), count + k - j
            losses[name] = total / count if count else mean
        self._mark, self._carry, self._carry_step = (k, means), {}, None
        start_time, start_step = self._clock
        steps_per_sec = (step - start_step) / (now - start_time) if step > start_step and now > start_time else None
        return losses, steps_per_sec

    def restart_clock(self, step):
        """After a write: the next interval's clock starts now, without the time the write took."""
        self._clock = (time.perf_counter(), step)


class _GradientStatistics:
    """Interval means of the optimizer's gradient statistics, from the differences of its running
    sums (`gradient_norm_sum`, `clipped_steps`, `zoo.optimization.AdamW`) against `iterations`.

    An optimizer without them (any other Keras optimizer) gives {}. A `LossScaleOptimizer` is looked
    through to its inner one. `clip_rate` only when the optimizer clips (`global_clipnorm` > 0).
    """

    def __init__(self):
        self.optimizer = None
        self.clips = False
        self._mark = None

    @staticmethod
    def _source(optimizer):
        for candidate in (optimizer, getattr(optimizer, "inner_optimizer", None)):
            if all(hasattr(candidate, name) for name in ("gradient_norm_sum", "clipped_steps")):
                return candidate
        return None

    def begin(self, optimizer):
        self.optimizer = self._source(optimizer)
        if self.optimizer is None:
            return
        try:
            config = self.optimizer.get_config()
        except Exception:  # a config that does not serialize: no clip norm known
            config = {}
        limit = config.get("global_clipnorm") or config.get("clipnorm")
        self.clips = _is_number(limit) and limit > 0
        self._mark = self._read()

    def _read(self):
        optimizer = self.optimizer
        steps = int(keras.ops.convert_to_numpy(optimizer.iterations))
        if optimizer.gradient_norm_sum is None or optimizer.clipped_steps is None:  # not built yet: all zero
            return 0.0, 0.0, steps
        return _scalar(optimizer.gradient_norm_sum), _scalar(optimizer.clipped_steps), steps

    def interval(self):
        """{'grad_norm': mean norm, 'clip_rate': share of clipped steps} since the previous call."""
        if self.optimizer is None:
            return {}
        (norms, clipped, steps), now = self._mark, self._read()
        self._mark = now
        if now[2] <= steps:
            return {}
        values = {"grad_norm": (now[0] - norms) / (now[2] - steps)}
        if self.clips:
            values["clip_rate"] = (now[1] - clipped) / (now[2] - steps)
        return values


class TensorBoardSummaries(keras.callbacks.Callback):
    """TensorBoard scalars, hyperparameters and text samples, all on the global step.

    Tags are grouped by prefix, which TensorBoard uses to group its cards: `train/` (losses,
    metrics, learning rate, gradient norm, clipping rate), `eval/` (validation), `system/`
    (throughput). Every `log_every` optimizer steps the train writer gets each numeric value of
    the batch logs as `train/<name>`, plus `train/learning_rate`, `train/grad_norm` and
    `train/clip_rate` (when the optimizer records them) and, when the batch sizes are given,
    `system/tokens_per_sec` and `system/examples_per_sec`. The step is
    `model.optimizer.iterations` after the update, so the first write of a fresh run is at step
    `log_every` and a run resumed from a backup continues where it stopped.

    The losses (`train/loss` and every `train/<name>_loss`, e.g. a multi-output model's per-output
    losses) are *interval* means: the mean of the per-batch losses of the batches trained since
    the previous write (normally the last `log_every` steps; for the first write of a `fit` call,
    the batches since that call began), not Keras' running mean since the epoch began, which jumps
    at every epoch start and hides recent progress late in an epoch. They are recovered exactly
    from the running means: if `m_k` is the running mean after the k-th batch since Keras last
    reset its metrics (the start of each epoch of a `fit` call, so also the mid-epoch start of a
    resumed run), batches j+1..k sum to `k*m_k - j*m_j`; an interval that spans an epoch end adds
    the old epoch's tail (up to its last batch) to the new epoch's head. Keras weights each batch's
    loss by its number of examples, so this is the example-weighted mean, equal to the plain mean
    of the batch losses whenever the batches have one size (the trainer's training streams drop
    the remainder). Rounding: the running means are float32, so the error grows with the batch
    index (about 1e-7 x k/(k-j) of the loss, 1e-4 relative at k = 10000, j = k - 10).

    The other metrics (`accuracy`, `mae`, `perplexity`, macro F1, ...) are written as Keras
    reports them: the running value over the epoch so far. They are not converted because most are
    not means of per-batch values (perplexity is the exponential of a token mean, macro F1 comes from
    the epoch's confusion matrix) and the means among them are weighted by a per-batch count the logs
    do not carry (a masked LM's accuracy counts the masked tokens of each batch), so the same
    subtraction would be wrong. Their epoch-level value is exact (`train/epoch_<name>`, below).

    Gradient statistics, when the optimizer keeps them (`zoo.optimization.AdamW`: running sums
    `gradient_norm_sum` and `clipped_steps`, updated at every applied update): `train/grad_norm`
    is the mean global norm of the gradient before clipping over the interval's updates, and
    `train/clip_rate` the share of those updates whose norm exceeded `global_clipnorm` (written
    only when the optimizer clips). Both are differences of the running sums divided by the
    difference of `iterations`, so they are exact interval means and survive a resume (the sums
    are optimizer state, saved in the backups).

    The schedule's real length: when the optimizer's learning-rate schedule has `total_steps`
    (and `warmup_steps`) in its config (`zoo.optimization.WarmupDecay`), those values replace the
    hparams' `total_steps` / `warmup_steps`, which may hold a recipe's config default while the
    trainer built the schedule from epochs x steps per epoch. When `warmup_steps >= total_steps`
    the learning rate never reaches its peak: one line on stderr at the start of training, a
    `warnings` text summary in the train writer, and the hparam `schedule_warning` say so.

    `train/learning_rate` is `optimizer.learning_rate` read after the update, i.e. the schedule at
    the current `iterations` (the rate of the next update), the same convention as
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

    At each epoch end: the `val_*` values go to the validation writer as `eval/<name>` (`val_`
    dropped: `eval/loss`, `eval/accuracy`), the training values to the train writer as
    `train/epoch_<name>`, and, every `text_every_epochs` epochs, the strings from
    `text_samples(model)` to the train writer as one text summary `samples` (a 1-D string tensor,
    each sample a fenced Markdown code block so code keeps its indentation). A sampler that raises
    or returns something else than a list of strings logs a warning and training goes on:
    monitoring never ends a run.

    Hyperparameters go to the HParams dashboard as a session in `<log_dir>` itself (not in
    `train/`): the dashboard takes every scalar in the runs *under* a session's directory as its
    metrics, so `train/loss` and `eval/loss` become columns (point `tensorboard --logdir` at a
    parent of `log_dir`, e.g. `runs`, as with Keras' own callbacks). The trial is named
    `trial_id`, by default the run directory's name (`runs/<name>/tb` -> `<name>`), not a hash of
    the values. No experiment config (`hp.hparams_config`) is written, because TensorBoard uses
    the first one it finds for *all* runs under `--logdir`, which hides the hyperparameters of runs
    of other recipes. Instead the best value so far of `metric_for_hparams` (lower is better unless
    the name mentions accuracy/auc/precision/recall/f1) is written in `<log_dir>`, a headline
    column to sort runs by: `eval/best_<name>` for a validation key (`val_loss` ->
    `eval/best_loss`), else `train/best_<name>`. It is written at each epoch end and, from the
    first one on, at every training write too, so its chart is a line (a step function) rather
    than one point per epoch, which a one-epoch run would reduce to a single dot.

    Only the chief of a multi-worker run should hold this callback.

    Args:
        log_dir: the TensorBoard directory of this run (`train/` and `validation/` go under it).
        log_every: optimizer steps between training writes.
        tokens_per_batch: tokens in one global batch (batch size x sequence length), or None.
        examples_per_batch: examples in one global batch, or None.
        hparams: a flat dict of str -> int/float/str/bool, written once for the HParams dashboard.
        metric_for_hparams: the epoch-log key whose best value is written (see above); None to skip.
        text_samples: a callable `fn(model) -> list[str]`, or None.
        text_every_epochs: epochs between text samples.
        trial_id: the HParams trial's name; by default the run directory's name.

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
        trial_id=None,
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
        self.trial_id = trial_id or _trial_name(log_dir)
        self._writers = {}
        self._hparams_written = False
        self._best = None
        self._intervals = _Intervals(self.log_every)
        self._gradients = _GradientStatistics()
        self._schedule_checked = False

    @property
    def best_tag(self):
        """The tag of the best `metric_for_hparams` value (`val_loss` -> `eval/best_loss`), or None."""
        name = self.metric_for_hparams
        if not name:
            return None
        return f"eval/best_{name[len('val_'):]}" if name.startswith("val_") else f"train/best_{name}"

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
        self._intervals.begin_fit(step)
        self._gradients.begin(self.model.optimizer)
        warning = self._check_schedule(step)
        if self.hparams and not self._hparams_written:
            if warning:
                self.hparams["schedule_warning"] = warning
            with self._writer("session").as_default(step=step):
                hp.hparams(self.hparams, trial_id=self.trial_id)
            self._hparams_written = True

    def _check_schedule(self, step):
        """Puts the schedule's real `total_steps`/`warmup_steps` into the hparams; warns once when
        the warmup does not end before the schedule does. Returns the warning, or None."""
        if self._schedule_checked:
            return None
        self._schedule_checked = True
        schedule = learning_rate_schedule_config(self.model.optimizer)
        total, warmup = schedule.get("total_steps"), schedule.get("warmup_steps")
        if self.hparams is not None:
            for name, value in (("total_steps", total), ("warmup_steps", warmup)):
                if _is_number(value):
                    self.hparams[name] = value
        if not (_is_number(total) and _is_number(warmup) and warmup >= total):
            return None
        warning = (f"warmup_steps={warmup:g} >= the schedule's total_steps={total:g}: the learning rate never "
                   "reaches its peak; lower warmup_steps (or train longer).")
        print(f"Warning: {warning}", file=sys.stderr)
        with self._writer("train").as_default(step=step):
            tf.summary.text("warnings", tf.constant(warning))
        return warning

    def on_epoch_begin(self, epoch, logs=None):
        self._intervals.begin_epoch(global_step(self.model))

    def on_train_batch_end(self, batch, logs=None):
        logs = logs if logs is not None else {}
        step = global_step(self.model)
        interval = self._intervals.batch_end(batch, logs, step)
        if interval is None:
            return
        losses, steps_per_sec = interval
        # The losses first: in the event file and in TensorBoard's tag list of the run.
        values = {f"train/{name}": value for name, value in losses.items()}
        for name, value in logs.items():
            if _is_number(value) and name not in losses and name not in THROUGHPUTS:
                values[f"train/{name}"] = value
        values["train/learning_rate"] = current_learning_rate(self.model.optimizer)
        values.update({f"train/{name}": value for name, value in self._gradients.interval().items()})
        if steps_per_sec is not None:
            for name, per_batch in zip(THROUGHPUTS, (self.tokens_per_batch, self.examples_per_batch)):
                if per_batch:
                    values[f"system/{name}"] = logs[name] = steps_per_sec * per_batch
        self._scalars("train", values, step)
        if self._best is not None:
            self._scalars("session", {self.best_tag: self._best}, step)
        self._intervals.restart_clock(step)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        step = global_step(self.model)
        self._intervals.end_epoch(step)
        train, validation = {}, {}
        for name, value in logs.items():
            if not _is_number(value):
                continue
            if name.startswith("val_"):
                validation[f"eval/{name[len('val_'):]}"] = value
            else:
                train[f"train/epoch_{name}"] = value
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
        self._scalars("session", {self.best_tag: self._best}, step)

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


def _format_value(name, value):
    if name in THROUGHPUTS:
        return f"{value:.0f}"
    if name == "learning_rate" or (value != 0 and not 1e-3 <= abs(value) < 1e6):
        return f"{value:.3e}"
    return f"{value:.4f}"


def _join(fields):
    return " - ".join(f"{name}: {_format_value(name, value)}" for name, value in fields)


class ProgressLines(keras.callbacks.Callback):
    """One line per `log_every` optimizer steps and one per epoch: progress for a file or a pipe.

    Keras' progress bar redraws its line in place after every batch, which a terminal shows as one
    line but a file keeps in full (hundreds of kilobytes for a few minutes of training). This
    callback writes complete lines instead, like `verbose=2` but also within the epoch (use it
    with `fit(..., verbose=0)`):

        step 20/800 - loss: 5.1234 - learning_rate: 3.000e-04 - grad_norm: 1.2345 - tokens_per_sec: 13514 - elapsed: 0:12
        epoch 1/1 - step 800/800 - accuracy: 0.2690 - loss: 4.7986 - val_loss: 4.8697 - ... - elapsed: 4:07

    Interval lines: the global step (of `total_steps` when given), every loss as its mean over
    the interval (as `TensorBoardSummaries` writes it), the learning rate, the mean gradient norm
    and clipping rate when the optimizer keeps them, tokens (else examples) per second over the
    interval, and the wall time since this callback's first `fit` began. Epoch lines: every numeric
    value of the epoch logs (training means and validation values) in the order Keras gives them.

    Args:
        log_every: optimizer steps between lines.
        total_steps: the run's total number of steps, shown as `step N/total`; None to leave out.
        epochs: the run's number of epochs, shown as `epoch N/epochs`; None: `fit`'s `epochs`
            (which is less for a fit that only finishes an interrupted epoch).
        tokens_per_batch: tokens in one global batch, or None.
        examples_per_batch: examples in one global batch, or None.
        stream: where the lines go; default `sys.stdout` at the time of writing.
    """

    def __init__(self, log_every=10, total_steps=None, epochs=None, tokens_per_batch=None, examples_per_batch=None,
                 stream=None):
        super().__init__()
        if int(log_every) < 1:
            raise ValueError(f"log_every must be a positive number of steps, got {log_every!r}.")
        self.log_every = int(log_every)
        self.total_steps = total_steps
        self.epochs = epochs
        self.tokens_per_batch = tokens_per_batch
        self.examples_per_batch = examples_per_batch
        self.stream = stream
        self._intervals = _Intervals(self.log_every)
        self._gradients = _GradientStatistics()
        self._start = None

    def _print(self, text):
        stream = self.stream or sys.stdout
        stream.write(text + "\n")
        stream.flush()

    def _step(self, step):
        return f"step {step}/{self.total_steps}" if self.total_steps else f"step {step}"

    def _elapsed(self):
        return f"elapsed: {format_elapsed(time.perf_counter() - self._start)}"

    def on_train_begin(self, logs=None):
        if self._start is None:
            self._start = time.perf_counter()
        self._intervals.begin_fit(global_step(self.model))
        self._gradients.begin(self.model.optimizer)

    def on_epoch_begin(self, epoch, logs=None):
        self._intervals.begin_epoch(global_step(self.model))

    def on_train_batch_end(self, batch, logs=None):
        step = global_step(self.model)
        interval = self._intervals.batch_end(batch, logs or {}, step)
        if interval is None:
            return
        losses, steps_per_sec = interval
        fields = list(losses.items())
        fields.append(("learning_rate", current_learning_rate(self.model.optimizer)))
        fields += list(self._gradients.interval().items())
        if steps_per_sec is not None:
            name, per_batch = ("tokens_per_sec", self.tokens_per_batch) if self.tokens_per_batch else (
                "examples_per_sec", self.examples_per_batch)
            if per_batch:
                fields.append((name, steps_per_sec * per_batch))
        self._print(f"{self._step(step)} - {_join(fields)} - {self._elapsed()}")
        self._intervals.restart_clock(step)

    def on_epoch_end(self, epoch, logs=None):
        step = global_step(self.model)
        self._intervals.end_epoch(step)
        epochs = self.epochs or (self.params or {}).get("epochs")
        fields = [(name, float(value)) for name, value in (logs or {}).items() if _is_number(value)]
        head = f"epoch {epoch + 1}/{epochs}" if epochs else f"epoch {epoch + 1}"
        self._print(f"{head} - {self._step(step)} - {_join(fields)} - {self._elapsed()}")


class PhaseLines(keras.callbacks.Callback):
    """Status lines (`trainers.progress`) for the slow phases inside `fit`: the first training
    step of the first `fit` call (from `fit`'s start to the end of the first batch: the input
    pipeline's start, graph tracing and, with XLA, compilation) and every validation pass.

    Args:
        first_step: the first step's phase name.
        new_line: start each validation status on a new line (Keras' progress bar on a terminal
            leaves its line unfinished until the epoch ends).
    """

    def __init__(self, first_step="first training step (tracing and compiling)", new_line=False):
        super().__init__()
        self.first_step = Phase(first_step)
        self.validation = Phase("validation")
        self.new_line = new_line
        self._first_step_done = False

    def on_train_begin(self, logs=None):
        if not self._first_step_done:
            self.first_step.start()

    def on_train_batch_end(self, batch, logs=None):
        if self.first_step.running:
            self.first_step.done()
            self._first_step_done = True

    def on_train_end(self, logs=None):
        if self.first_step.running:  # a fit that ran no batch
            self.first_step.failed()

    def on_test_begin(self, logs=None):
        self.validation.start(new_line=self.new_line)

    def on_test_end(self, logs=None):
        if self.validation.running:
            self.validation.done()


class ValidationBitsPerByte(keras.callbacks.Callback):
    """Adds `val_bits_per_byte` to a causal LM's epoch logs: `val_loss / ln 2 x tokens_per_byte`.

    `tokens_per_byte` is the validation split's ratio, computed once before training
    (`recipes.gpt_clm.GPTCausalLMRecipe.tokens_per_byte`; see `zoo.evaluation.bits_per_byte` for
    the definition and its approximations). The value is written into the `logs` dict itself,
    which Keras' `CallbackList` hands, the same dict, to every callback in list order, then to
    its `History` and progress bar (appended last): put this callback first and the console line,
    `History`, `TensorBoardSummaries` (`validation/bits_per_byte`) and checkpoint metrics all see
    it. It adds a key and changes no other: `val_loss`, which picks the best checkpoint, stays as
    it was (bits per byte are val_loss times a constant, so they would pick the same epoch).
    Epochs without a finite `val_loss` get no value.
    """

    def __init__(self, tokens_per_byte):
        super().__init__()
        if not (_is_number(tokens_per_byte) and math.isfinite(tokens_per_byte) and tokens_per_byte > 0):
            raise ValueError(f"tokens_per_byte must be a finite number > 0, got {tokens_per_byte!r}.")
        self.tokens_per_byte = float(tokens_per_byte)

    def on_epoch_end(self, epoch, logs=None):
        from zoo.evaluation import bits_per_byte

        loss = (logs or {}).get("val_loss")
        if logs is not None and _is_number(loss) and math.isfinite(loss):
            logs["val_bits_per_byte"] = bits_per_byte(loss, self.tokens_per_byte)


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

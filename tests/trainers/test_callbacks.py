"""The trainer's monitoring callbacks, checked by reading the event files back with TensorBoard's
own readers (EventAccumulator, and the HParams plugin's backend for what its dashboard shows)."""

import logging
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard import context as tb_context
from tensorboard.backend.event_processing import data_provider as tb_data_provider
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.backend.event_processing import plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import backend_context as hparams_backend
from tensorboard.plugins.hparams import metadata as hparams_metadata

from trainers.callbacks import PhaseLines, ProgressLines, StopOnNaN, TensorBoardSummaries, ValidationBitsPerByte

BATCH_SIZE = 8
STEPS_PER_EPOCH = 6
SEQUENCE_LENGTH = 16
TOKENS_PER_BATCH = BATCH_SIZE * SEQUENCE_LENGTH
HPARAMS = {"num_layers": 1, "dropout": 0.1, "optimizer": "sgd", "tied_embeddings": True}


def _schedule():
    return keras.optimizers.schedules.PolynomialDecay(0.05, decay_steps=40, end_learning_rate=0.005)


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(_schedule()), loss="mse", metrics=["mae"])
    return model


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(BATCH_SIZE * STEPS_PER_EPOCH, 4)).astype("float32")
    y = (x.sum(axis=1, keepdims=True) + 0.1 * rng.normal(size=(len(x), 1))).astype("float32")
    return x, y


def _read(directory):
    """{tag: [(step, numpy value), ...]} by step, from the event files directly in `directory`.

    Sorted by step as TensorBoard plots them: a second `fit` opens a second event file, and
    files created within the same second are not read in creation order."""
    accumulator = event_accumulator.EventAccumulator(directory, size_guidance={event_accumulator.TENSORS: 0})
    accumulator.Reload()
    return {
        tag: sorted(
            ((event.step, tf.make_ndarray(event.tensor_proto)) for event in accumulator.Tensors(tag)), key=lambda e: e[0]
        )
        for tag in accumulator.Tags()[event_accumulator.TENSORS]
    }


def _steps(events, tag):
    return [step for step, _ in events[tag]]


def _values(events, tag):
    return [float(value) for _, value in events[tag]]


class Recorder(keras.callbacks.Callback):
    """A callback placed after the one under test: what later callbacks (the progress bar) see."""

    def __init__(self):
        super().__init__()
        self.batch_logs = []

    def on_train_batch_end(self, batch, logs=None):
        self.batch_logs.append((int(self.model.optimizer.iterations), dict(logs)))


class BatchLosses(keras.callbacks.Callback):
    """Each batch's own loss, computed independently of Keras' metrics: the mean squared error of
    the model on that batch with the weights before its update ({global step: loss})."""

    def __init__(self, x, y, batch_size, first_batch=0):
        super().__init__()
        self.x, self.y, self.batch_size, self.first_batch = x, y, batch_size, first_batch
        self.losses = {}

    def on_train_batch_begin(self, batch, logs=None):
        start = (self.first_batch + batch) * self.batch_size
        x, y = self.x[start:start + self.batch_size], self.y[start:start + self.batch_size]
        prediction = keras.ops.convert_to_numpy(self.model(x, training=False)).astype("float64")
        self.losses[int(self.model.optimizer.iterations) + 1] = float(np.mean((prediction - y) ** 2))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Three epochs of six steps, summaries every two steps, text samples every second epoch."""
    log_dir = str(tmp_path_factory.mktemp("runs") / "demo")  # as in `tensorboard --logdir runs`
    calls = []

    def sampler(model):
        calls.append(int(model.optimizer.iterations))
        return [f"def __init__(self):\n    step = {calls[-1]}", "``` a fence inside ```"]

    model = _model()
    x, y = _data()
    recorder = Recorder()
    batch_losses = BatchLosses(x, y, BATCH_SIZE)
    callback = TensorBoardSummaries(
        log_dir, log_every=2, tokens_per_batch=TOKENS_PER_BATCH, examples_per_batch=BATCH_SIZE,
        hparams=HPARAMS, text_samples=sampler, text_every_epochs=2,
    )
    history = model.fit(x, y, batch_size=BATCH_SIZE, epochs=3, shuffle=False, validation_data=_data(seed=1),
                        callbacks=[batch_losses, callback, recorder], verbose=0)
    return {
        "log_dir": log_dir, "history": history.history, "recorder": recorder, "sampler_calls": calls,
        "batch_losses": batch_losses,
        "train": _read(os.path.join(log_dir, "train")),
        "validation": _read(os.path.join(log_dir, "validation")),
        "session": _read(log_dir),
    }


def test_training_scalars_every_log_every_steps_on_the_global_step(run):
    train = run["train"]
    expected_steps = list(range(2, 3 * STEPS_PER_EPOCH + 1, 2))
    for tag in ("train/loss", "train/mae", "train/learning_rate", "system/tokens_per_sec", "system/examples_per_sec"):
        assert _steps(train, tag) == expected_steps, tag
    # Grouped by prefix (TensorBoard's card groups): nothing ungrouped but the text summaries.
    assert {tag.split("/")[0] for tag in train if "/" in tag} == {"train", "system"}
    assert {tag for tag in train if "/" not in tag} == {"samples"}
    # The written loss is the mean of the batch losses since the previous write, not Keras' running
    # epoch mean; the other metrics are what Keras put in the batch logs at that step.
    batch_losses = run["batch_losses"].losses
    expected = [np.mean([batch_losses[s] for s in (step - 1, step)]) for step in expected_steps]
    np.testing.assert_allclose(_values(train, "train/loss"), expected, rtol=1e-5)
    logged = {step: logs for step, logs in run["recorder"].batch_logs}
    assert not np.allclose(_values(train, "train/loss"), [logged[s]["loss"] for s in expected_steps], rtol=1e-3)
    np.testing.assert_allclose(_values(train, "train/mae"), [logged[s]["mae"] for s in expected_steps], rtol=1e-6)
    # SGD keeps no gradient statistics: no gradient tags rather than made-up ones.
    assert "train/grad_norm" not in train and "train/clip_rate" not in train


def test_learning_rate_follows_the_schedule(run):
    schedule = _schedule()
    expected = [float(schedule(step)) for step in _steps(run["train"], "train/learning_rate")]
    np.testing.assert_allclose(_values(run["train"], "train/learning_rate"), expected, rtol=1e-6)
    assert expected[0] > expected[-1]  # the schedule really decays over the logged steps


def test_throughput_is_positive_and_consistent_with_the_batch_sizes(run):
    tokens = np.array(_values(run["train"], "system/tokens_per_sec"))
    examples = np.array(_values(run["train"], "system/examples_per_sec"))
    assert np.all(np.isfinite(tokens)) and np.all(tokens > 0)
    np.testing.assert_allclose(tokens / examples, SEQUENCE_LENGTH, rtol=1e-6)


def test_throughput_reaches_later_callbacks_through_the_batch_logs(run):
    written = dict(zip(_steps(run["train"], "system/tokens_per_sec"), _values(run["train"], "system/tokens_per_sec")))
    seen = {step: logs["tokens_per_sec"] for step, logs in run["recorder"].batch_logs if "tokens_per_sec" in logs}
    assert sorted(seen) == sorted(written)
    for step, value in seen.items():
        assert value == pytest.approx(written[step], rel=1e-6)


def test_progress_bar_shows_tokens_per_sec(tmp_path, capsys):
    model = _model()
    x, y = _data()
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=1, verbose=1,
              callbacks=[TensorBoardSummaries(str(tmp_path), log_every=2, tokens_per_batch=TOKENS_PER_BATCH)])
    assert "tokens_per_sec:" in capsys.readouterr().out


def test_epoch_values_in_train_and_validation_writers(run):
    history, train, validation = run["history"], run["train"], run["validation"]
    epoch_ends = [STEPS_PER_EPOCH * (epoch + 1) for epoch in range(3)]
    assert set(validation) == {"eval/loss", "eval/mae"}
    assert _steps(validation, "eval/loss") == epoch_ends
    assert _steps(validation, "eval/mae") == epoch_ends
    np.testing.assert_allclose(_values(validation, "eval/loss"), history["val_loss"], rtol=1e-6)
    np.testing.assert_allclose(_values(validation, "eval/mae"), history["val_mae"], rtol=1e-6)
    assert _steps(train, "train/epoch_loss") == epoch_ends
    np.testing.assert_allclose(_values(train, "train/epoch_loss"), history["loss"], rtol=1e-6)
    assert not [tag for tag in train if "val" in tag]


def test_hparams_session_start_info_holds_the_hparams(run):
    (step, _), = run["session"][hparams_metadata.SESSION_START_INFO_TAG]
    accumulator = event_accumulator.EventAccumulator(run["log_dir"])
    accumulator.Reload()
    content = accumulator.SummaryMetadata(hparams_metadata.SESSION_START_INFO_TAG).plugin_data.content
    start_info = hparams_metadata.parse_session_start_info_plugin_data(content)
    values = {name: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
              for name, value in start_info.hparams.items()}
    assert values == {"num_layers": 1.0, "dropout": pytest.approx(0.1), "optimizer": "sgd", "tied_embeddings": True}
    assert start_info.group_name == "demo"  # the trial is named after the run directory, not a hash


@pytest.mark.parametrize("log_dir, name", [("runs/gpt-clm-tiny/tb", "gpt-clm-tiny"), ("runs/demo", "demo"),
                                           ("runs/demo/tb/", "demo")])
def test_the_trial_is_named_after_the_run_directory(tmp_path, log_dir, name):
    assert TensorBoardSummaries(log_dir).trial_id == name
    assert TensorBoardSummaries(log_dir, trial_id="sweep-3").trial_id == "sweep-3"


def test_hparams_dashboard_lists_the_hparams_and_the_validation_loss(run):
    """What the HParams dashboard computes from the log dir: the session's metrics include
    validation/loss, which they would not if the session lived in train/."""
    tensorboard_logdir = os.path.dirname(run["log_dir"])
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(tensorboard_logdir)
    multiplexer.Reload()
    provider = tb_data_provider.MultiplexerDataProvider(multiplexer, tensorboard_logdir)
    backend = hparams_backend.Context(base_plugin.TBContext(data_provider=provider, logdir=tensorboard_logdir))
    ctx = tb_context.RequestContext()
    experiment = backend.experiment_from_metadata(
        ctx, "", True, backend.hparams_metadata(ctx, ""), backend.hparams_from_data_provider(ctx, "", None)
    )
    assert {info.name for info in experiment.hparam_infos} == set(HPARAMS)
    metrics = {(info.name.group, info.name.tag) for info in experiment.metric_infos}
    assert {("validation", "eval/loss"), ("train", "train/loss"), ("train", "train/learning_rate"),
            ("", "eval/best_loss")} <= metrics


def test_best_metric_for_hparams_is_a_running_minimum_drawn_as_a_line(run):
    """Written at every epoch end and, from the first on, at every training write: a step
    function, so even a one-epoch run has more than a single point once it logs again."""
    events = run["session"]["eval/best_loss"]
    best = np.minimum.accumulate(run["history"]["val_loss"])
    epoch_ends = [STEPS_PER_EPOCH * (epoch + 1) for epoch in range(3)]
    # The last value written at each epoch end is the best so far.
    last_at = {step: float(value) for step, value in events}
    assert [last_at[step] for step in epoch_ends] == pytest.approx(best.tolist(), rel=1e-6)
    # Between epoch ends, every training write repeats the best known then.
    between = [(step, float(value)) for step, value in events if step not in epoch_ends]
    assert [step for step, _ in between] == [8, 10, 14, 16]
    assert [value for _, value in between] == pytest.approx([best[0], best[0], best[1], best[1]], rel=1e-6)
    assert TensorBoardSummaries("x", metric_for_hparams="val_accuracy").best_tag == "eval/best_accuracy"
    assert TensorBoardSummaries("x", metric_for_hparams="loss").best_tag == "train/best_loss"


def test_text_samples_every_text_every_epochs(run):
    samples = run["train"]["samples"]
    assert [step for step, _ in samples] == [2 * STEPS_PER_EPOCH]
    assert run["sampler_calls"] == [2 * STEPS_PER_EPOCH]
    written = [text.decode("utf-8") for text in samples[0][1].tolist()]
    # Each sample is a fenced Markdown code block (longer fence than any backtick run inside).
    assert written == [
        "```\ndef __init__(self):\n    step = 12\n```",
        "````\n``` a fence inside ```\n````",
    ]


def test_a_failing_sampler_warns_and_training_goes_on(tmp_path, caplog):
    def broken(model):
        raise RuntimeError("sampler exploded")

    model = _model()
    x, y = _data()
    callback = TensorBoardSummaries(str(tmp_path), log_every=2, text_samples=broken)
    with caplog.at_level(logging.WARNING, logger="trainers.callbacks"):
        history = model.fit(x, y, batch_size=BATCH_SIZE, epochs=2, verbose=0, callbacks=[callback])
    assert len(history.history["loss"]) == 2
    assert "sampler exploded" in caplog.text and "epoch 1" in caplog.text
    assert "samples" not in _read(str(tmp_path / "train"))


def test_a_second_fit_with_the_same_callback_continues_the_global_step(tmp_path):
    """The trainer calls fit twice with the same instances (finish the interrupted epoch, then the rest)."""
    model = _model()
    x, y = _data()
    callback = TensorBoardSummaries(str(tmp_path), log_every=2)
    for _ in range(2):
        model.fit(x, y, batch_size=BATCH_SIZE, epochs=1, validation_data=(x, y), verbose=0, callbacks=[callback])
    train, validation = _read(str(tmp_path / "train")), _read(str(tmp_path / "validation"))
    assert _steps(train, "train/loss") == [2, 4, 6, 8, 10, 12]
    assert _steps(validation, "eval/loss") == [6, 12]


def test_a_resumed_run_continues_the_x_axis(tmp_path):
    """A fresh process restores the optimizer's iterations from a backup: steps go on from there."""
    model = _model()
    x, y = _data()
    model.optimizer.build(model.trainable_variables)
    model.optimizer.iterations.assign(101)
    callback = TensorBoardSummaries(str(tmp_path), log_every=2, tokens_per_batch=TOKENS_PER_BATCH)
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=1, validation_data=(x, y), verbose=0, callbacks=[callback])
    train, validation = _read(str(tmp_path / "train")), _read(str(tmp_path / "validation"))
    assert _steps(train, "train/loss") == [102, 104, 106]
    assert _steps(validation, "eval/loss") == [107]
    np.testing.assert_allclose(_values(train, "train/learning_rate"), [float(_schedule()(s)) for s in (102, 104, 106)],
                               rtol=1e-6)


def test_log_every_counts_steps_when_steps_per_execution_jumps(tmp_path):
    model = _model()
    model.compile(keras.optimizers.SGD(_schedule()), loss="mse", steps_per_execution=3)
    x, y = _data()
    callback = TensorBoardSummaries(str(tmp_path), log_every=2)
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=2, verbose=0, callbacks=[callback])
    # Batches end at steps 3, 6, 9, 12: each one crosses a multiple of 2.
    assert _steps(_read(str(tmp_path / "train")), "train/loss") == [3, 6, 9, 12]


def test_interval_loss_spans_epoch_ends_and_a_second_fit(tmp_path):
    """log_every=4 with 6 steps per epoch: the writes at steps 8 and 16 cover batches of two epochs.
    Then the trainer's resume pattern: a first fit finishes an interrupted epoch (3 batches from the
    middle of the data), a second fit with the same instance runs on; the interval that spans the
    two fits (steps 17..20 here) still averages exactly its own batches."""
    model = _model()
    x, y = _data()
    batch_losses = BatchLosses(x, y, BATCH_SIZE)
    callback = TensorBoardSummaries(str(tmp_path), log_every=4)
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=3, shuffle=False, verbose=0, callbacks=[batch_losses, callback])
    # As the trainer resumes: the interrupted epoch from its batch 3 of 6 (steps 19..21), then the rest.
    half = BATCH_SIZE * 3
    tail = BatchLosses(x[half:], y[half:], BATCH_SIZE)
    model.fit(x[half:], y[half:], batch_size=BATCH_SIZE, initial_epoch=3, epochs=4, shuffle=False, verbose=0,
              callbacks=[tail, callback])
    rest = BatchLosses(x, y, BATCH_SIZE)
    model.fit(x, y, batch_size=BATCH_SIZE, initial_epoch=4, epochs=5, shuffle=False, verbose=0,
              callbacks=[rest, callback])
    losses = {**batch_losses.losses, **tail.losses, **rest.losses}
    assert sorted(losses) == list(range(1, 19)) + list(range(19, 28))
    train = _read(str(tmp_path / "train"))
    steps = _steps(train, "train/loss")
    assert steps == [4, 8, 12, 16, 20, 24]
    # Steps 17 and 18 (end of the first fit) are carried into the write at 20 with 19 and 20.
    previous = {4: 0, 8: 4, 12: 8, 16: 12, 20: 16, 24: 20}
    expected = [np.mean([losses[s] for s in range(previous[step] + 1, step + 1)]) for step in steps]
    np.testing.assert_allclose(_values(train, "train/loss"), expected, rtol=1e-5)
    # The epoch-level loss stays Keras' epoch mean.
    assert len(_values(train, "train/epoch_loss")) == 5


def test_hparams_hold_the_schedules_real_length_and_warn_when_warmup_is_too_long(tmp_path, capsys):
    from zoo.optimization import make_optimizer

    model = _model()
    model.compile(make_optimizer(1e-2, total_steps=2 * STEPS_PER_EPOCH, warmup_steps=100), loss="mse")
    x, y = _data()
    hparams = {"total_steps": 2000, "warmup_steps": 100, "num_layers": 1}  # a recipe config's defaults
    callback = TensorBoardSummaries(str(tmp_path), log_every=2, hparams=hparams)
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=2, verbose=0, callbacks=[callback])
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "never reaches its peak" in line]
    assert len(warnings) == 1 and "warmup_steps=100" in warnings[0] and "total_steps=12" in warnings[0]
    accumulator = event_accumulator.EventAccumulator(str(tmp_path))
    accumulator.Reload()
    content = accumulator.SummaryMetadata(hparams_metadata.SESSION_START_INFO_TAG).plugin_data.content
    start_info = hparams_metadata.parse_session_start_info_plugin_data(content)
    values = {name: getattr(value, value.WhichOneof("kind")) for name, value in start_info.hparams.items()}
    assert values["total_steps"] == 12 and values["warmup_steps"] == 100
    assert "never reaches its peak" in values["schedule_warning"]
    (_, text), = _read(str(tmp_path / "train"))["warnings"]
    assert "never reaches its peak" in text.item().decode("utf-8")


def test_no_schedule_warning_when_the_warmup_ends_in_time(tmp_path, capsys):
    from zoo.optimization import make_optimizer

    model = _model()
    model.compile(make_optimizer(1e-2, total_steps=STEPS_PER_EPOCH, warmup_steps=2), loss="mse")
    x, y = _data()
    callback = TensorBoardSummaries(str(tmp_path), log_every=2, hparams={"total_steps": 2000})
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=1, verbose=0, callbacks=[callback])
    assert "never reaches its peak" not in capsys.readouterr().err
    assert callback.hparams == {"total_steps": STEPS_PER_EPOCH, "warmup_steps": 2}
    assert "warnings" not in _read(str(tmp_path / "train"))


def test_rejects_nested_hparams(tmp_path):
    with pytest.raises(TypeError, match="'model'"):
        TensorBoardSummaries(str(tmp_path), hparams={"model": {"num_layers": 2}})


def _nan_at_third_batch():
    x, y = _data()
    y = y.copy()
    y[2 * BATCH_SIZE] = np.nan  # the third batch of the first epoch (no shuffling)
    return x, y


@pytest.mark.parametrize("saved", [True, False])
def test_stop_on_nan_names_the_step_and_the_checkpoint(tmp_path, capsys, saved):
    checkpoint_dir = tmp_path / "checkpoints" / "last"
    if saved:
        checkpoint_dir.mkdir(parents=True)
        (checkpoint_dir / "model.keras").write_bytes(b"")
    model = _model()
    x, y = _nan_at_third_batch()
    recorder = Recorder()
    stop = StopOnNaN(checkpoint_dir=str(checkpoint_dir))
    history = model.fit(x, y, batch_size=BATCH_SIZE, epochs=3, shuffle=False, verbose=0, callbacks=[stop, recorder])
    assert model.stop_training
    assert stop.stopped_at_step == 3 == int(model.optimizer.iterations)
    assert [step for step, _ in recorder.batch_logs] == [1, 2, 3]  # stopped right after the bad batch
    assert len(history.history["loss"]) == 1 and math.isnan(history.history["loss"][0])
    message = capsys.readouterr().err
    assert "global step 3" in message and "epoch 1, batch 2" in message
    assert str(checkpoint_dir) in message
    assert ("last good checkpoint is" in message) == saved
    assert ("no checkpoint has been saved yet" in message) == (not saved)


def test_stop_on_nan_logs_when_logging_is_configured(caplog, capsys):
    model = _model()
    x, y = _nan_at_third_batch()
    with caplog.at_level(logging.ERROR, logger="trainers.callbacks"):
        model.fit(x, y, batch_size=BATCH_SIZE, epochs=1, shuffle=False, verbose=0, callbacks=[StopOnNaN()])
    assert "global step 3" in caplog.text and "no checkpoint directory was given" in caplog.text
    assert "global step 3" in capsys.readouterr().err


def test_stop_on_nan_leaves_healthy_training_alone(capsys):
    model = _model()
    x, y = _data()
    stop = StopOnNaN()
    history = model.fit(x, y, batch_size=BATCH_SIZE, epochs=2, verbose=0, callbacks=[stop])
    assert stop.stopped_at_step is None and len(history.history["loss"]) == 2
    assert "Stopping" not in capsys.readouterr().err


class EpochRecorder(keras.callbacks.Callback):
    """Placed after the callback under test: the epoch logs later callbacks see."""

    def __init__(self):
        super().__init__()
        self.epoch_logs = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_logs.append(dict(logs))


def test_validation_bits_per_byte_reaches_the_later_callbacks_and_the_history(tmp_path, capsys):
    model = _model()
    x, y = _data()
    recorder = EpochRecorder()
    callbacks = [ValidationBitsPerByte(0.25), TensorBoardSummaries(str(tmp_path), log_every=2), recorder]
    history = model.fit(x, y, batch_size=BATCH_SIZE, epochs=2, shuffle=False, validation_data=_data(seed=1),
                        callbacks=callbacks, verbose=2).history
    expected = [loss / math.log(2) * 0.25 for loss in history["val_loss"]]
    np.testing.assert_allclose(history["val_bits_per_byte"], expected, rtol=1e-12)
    assert [logs["val_bits_per_byte"] for logs in recorder.epoch_logs] == history["val_bits_per_byte"]
    assert "bits_per_byte" not in history and "val_bits_per_byte:" in capsys.readouterr().out  # the console line
    validation = _read(str(tmp_path / "validation"))
    np.testing.assert_allclose(_values(validation, "eval/bits_per_byte"), expected, rtol=1e-6)
    for bad in (0, -1.0, float("nan"), None):
        with pytest.raises(ValueError, match="tokens_per_byte"):
            ValidationBitsPerByte(bad)


class BatchGradientNorms(keras.callbacks.Callback):
    """Each update's global gradient norm before clipping, computed independently with a
    GradientTape on the batch and the weights before the update ({global step: norm})."""

    def __init__(self, x, y, batch_size):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size
        self.norms = {}

    def on_train_batch_begin(self, batch, logs=None):
        start = batch * self.batch_size
        x, y = self.x[start:start + self.batch_size], self.y[start:start + self.batch_size]
        with tf.GradientTape() as tape:
            loss = keras.losses.MeanSquaredError()(y, self.model(x, training=True))
        gradients = tape.gradient(loss, self.model.trainable_variables)
        norm = np.sqrt(sum(float(np.sum(np.square(g.numpy().astype("float64")))) for g in gradients))
        self.norms[int(self.model.optimizer.iterations) + 1] = norm


def test_gradient_norm_and_clipping_rate_are_interval_means(tmp_path):
    """train/grad_norm is the mean pre-clipping norm of the interval's updates and train/clip_rate
    the share of them above the clip norm, from the optimizer's running sums (zoo AdamW)."""
    from zoo.optimization import make_optimizer

    model = _model()
    x, y = _data()
    norms = BatchGradientNorms(x, y, BATCH_SIZE)
    # Two epochs without clipping give the norms; the clip norm is then set between them.
    model.compile(make_optimizer(1e-3, total_steps=4 * STEPS_PER_EPOCH, warmup_steps=0, clipnorm=None), loss="mse")
    assert hasattr(model.optimizer, "gradient_norm_sum"), "zoo AdamW keeps gradient statistics"
    probe = keras.models.clone_model(model)
    probe.set_weights(model.get_weights())
    probe.compile(make_optimizer(1e-3, total_steps=4 * STEPS_PER_EPOCH, warmup_steps=0, clipnorm=None), loss="mse")
    probe.fit(x, y, batch_size=BATCH_SIZE, epochs=1, shuffle=False, verbose=0, callbacks=[norms])
    clip = float(np.median(list(norms.norms.values())))

    model.compile(make_optimizer(1e-3, total_steps=4 * STEPS_PER_EPOCH, warmup_steps=0, clipnorm=clip), loss="mse")
    norms_clipped = BatchGradientNorms(x, y, BATCH_SIZE)
    callback = TensorBoardSummaries(str(tmp_path), log_every=3)
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=2, shuffle=False, verbose=0, callbacks=[norms_clipped, callback])
    train = _read(str(tmp_path / "train"))
    assert _steps(train, "train/grad_norm") == _steps(train, "train/clip_rate") == [3, 6, 9, 12]
    measured = norms_clipped.norms
    expected_norm = [np.mean([measured[s] for s in range(step - 2, step + 1)]) for step in (3, 6, 9, 12)]
    expected_rate = [np.mean([measured[s] > clip for s in range(step - 2, step + 1)]) for step in (3, 6, 9, 12)]
    np.testing.assert_allclose(_values(train, "train/grad_norm"), expected_norm, rtol=1e-4)
    np.testing.assert_allclose(_values(train, "train/clip_rate"), expected_rate, atol=1e-6)
    assert 0 < np.mean(expected_rate) < 1  # the clip norm splits the steps: the rate is really measured


def test_no_clipping_rate_without_a_clip_norm(tmp_path):
    from zoo.optimization import make_optimizer

    model = _model()
    model.compile(make_optimizer(1e-3, total_steps=STEPS_PER_EPOCH, warmup_steps=0, clipnorm=None), loss="mse")
    x, y = _data()
    callback = TensorBoardSummaries(str(tmp_path), log_every=2)
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=1, verbose=0, callbacks=[callback])
    train = _read(str(tmp_path / "train"))
    assert _steps(train, "train/grad_norm") == [2, 4, 6] and "train/clip_rate" not in train
    assert all(value > 0 for value in _values(train, "train/grad_norm"))


def _parse_line(line):
    """`step 4/18 - loss: 1.2 - ...` -> ('step 4/18', {'loss': 1.2, ...}, elapsed text)."""
    head, *fields = line.split(" - ")
    values = dict(field.split(": ", 1) for field in fields if not field.startswith(("step ", "epoch ")))
    elapsed = values.pop("elapsed")
    return head, {name: float(value) for name, value in values.items()}, elapsed


def test_progress_lines_one_per_interval_and_one_per_epoch():
    import io

    model = _model()
    x, y = _data()
    batch_losses = BatchLosses(x, y, BATCH_SIZE)
    stream = io.StringIO()
    lines = ProgressLines(log_every=4, total_steps=3 * STEPS_PER_EPOCH, tokens_per_batch=TOKENS_PER_BATCH,
                          stream=stream)
    history = model.fit(x, y, batch_size=BATCH_SIZE, epochs=3, shuffle=False, validation_data=_data(seed=1),
                        verbose=0, callbacks=[batch_losses, lines]).history
    output = stream.getvalue().splitlines()
    interval = [_parse_line(line) for line in output if line.startswith("step ")]
    epochs = [_parse_line(line) for line in output if line.startswith("epoch ")]
    assert len(output) == len(interval) + len(epochs)  # nothing else, and no progress-bar redraws
    assert "\r" not in stream.getvalue() and "\b" not in stream.getvalue()
    # Steps 4, 8, 12, 16 of 18, each with the interval mean of the loss (as TensorBoard gets it).
    assert [head for head, _, _ in interval] == ["step 4/18", "step 8/18", "step 12/18", "step 16/18"]
    losses = batch_losses.losses
    expected = [np.mean([losses[s] for s in range(step - 3, step + 1)]) for step in (4, 8, 12, 16)]
    np.testing.assert_allclose([values["loss"] for _, values, _ in interval], expected, rtol=1e-3)
    schedule = _schedule()
    np.testing.assert_allclose([values["learning_rate"] for _, values, _ in interval],
                               [float(schedule(step)) for step in (4, 8, 12, 16)], rtol=1e-3)
    assert all(values["tokens_per_sec"] > 0 for _, values, _ in interval)
    # One line per epoch with the training means and the validation values.
    assert [head for head, _, _ in epochs] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    np.testing.assert_allclose([values["val_loss"] for _, values, _ in epochs], history["val_loss"], rtol=1e-3)
    np.testing.assert_allclose([values["loss"] for _, values, _ in epochs], history["loss"], rtol=1e-3)
    assert all(elapsed.count(":") == 1 for _, _, elapsed in interval + epochs)


def test_phase_lines_for_the_first_step_and_each_validation(capsys):
    model = _model()
    x, y = _data()
    phases = PhaseLines("first training step (tracing)")
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=2, validation_data=_data(seed=1), verbose=0, callbacks=[phases])
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=1, validation_data=_data(seed=1), verbose=0, callbacks=[phases])
    err = capsys.readouterr().err.splitlines()
    assert err[:2] == ["[zoo] first training step (tracing) ...", err[1]]
    assert err[1].startswith("[zoo] first training step (tracing) ... done in ") and err[1].endswith(" s")
    # Once: the second fit of the same instance reuses the traced step.
    assert sum("first training step" in line for line in err) == 2
    starts = [line for line in err if line == "[zoo] validation ..."]
    ends = [line for line in err if line.startswith("[zoo] validation ... done in ")]
    assert len(starts) == len(ends) == 3  # one pass per epoch
    assert phases.validation.seconds is not None and phases.first_step.seconds > 0


def test_progress_lines_number_epochs_of_the_run_when_a_fit_finishes_an_interrupted_one():
    import io

    model = _model()
    x, y = _data()
    stream = io.StringIO()
    lines = ProgressLines(log_every=100, total_steps=3 * STEPS_PER_EPOCH, epochs=3, stream=stream)
    # As the trainer resumes: a fit that finishes epoch 2 only, then one for the rest.
    model.fit(x, y, batch_size=BATCH_SIZE, initial_epoch=1, epochs=2, verbose=0, callbacks=[lines])
    model.fit(x, y, batch_size=BATCH_SIZE, initial_epoch=2, epochs=3, verbose=0, callbacks=[lines])
    heads = [line.split(" - ")[:2] for line in stream.getvalue().splitlines()]
    assert heads == [["epoch 2/3", "step 6/18"], ["epoch 3/3", "step 12/18"]]

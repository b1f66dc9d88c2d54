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

from trainers.callbacks import StopOnNaN, TensorBoardSummaries

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
    callback = TensorBoardSummaries(
        log_dir, log_every=2, tokens_per_batch=TOKENS_PER_BATCH, examples_per_batch=BATCH_SIZE,
        hparams=HPARAMS, text_samples=sampler, text_every_epochs=2,
    )
    history = model.fit(x, y, batch_size=BATCH_SIZE, epochs=3, shuffle=False, validation_data=_data(seed=1),
                        callbacks=[callback, recorder], verbose=0)
    return {
        "log_dir": log_dir, "history": history.history, "recorder": recorder, "sampler_calls": calls,
        "train": _read(os.path.join(log_dir, "train")),
        "validation": _read(os.path.join(log_dir, "validation")),
        "session": _read(log_dir),
    }


def test_training_scalars_every_log_every_steps_on_the_global_step(run):
    train = run["train"]
    expected_steps = list(range(2, 3 * STEPS_PER_EPOCH + 1, 2))
    for tag in ("loss", "mae", "learning_rate", "tokens_per_sec", "examples_per_sec"):
        assert _steps(train, tag) == expected_steps, tag
    # The written loss is what Keras put in the batch logs at that step (its running epoch mean).
    logged = {step: logs["loss"] for step, logs in run["recorder"].batch_logs}
    np.testing.assert_allclose(_values(train, "loss"), [logged[s] for s in expected_steps], rtol=1e-6)


def test_learning_rate_follows_the_schedule(run):
    schedule = _schedule()
    expected = [float(schedule(step)) for step in _steps(run["train"], "learning_rate")]
    np.testing.assert_allclose(_values(run["train"], "learning_rate"), expected, rtol=1e-6)
    assert expected[0] > expected[-1]  # the schedule really decays over the logged steps


def test_throughput_is_positive_and_consistent_with_the_batch_sizes(run):
    tokens = np.array(_values(run["train"], "tokens_per_sec"))
    examples = np.array(_values(run["train"], "examples_per_sec"))
    assert np.all(np.isfinite(tokens)) and np.all(tokens > 0)
    np.testing.assert_allclose(tokens / examples, SEQUENCE_LENGTH, rtol=1e-6)


def test_throughput_reaches_later_callbacks_through_the_batch_logs(run):
    written = dict(zip(_steps(run["train"], "tokens_per_sec"), _values(run["train"], "tokens_per_sec")))
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
    assert _steps(validation, "loss") == epoch_ends
    assert _steps(validation, "mae") == epoch_ends
    assert "val_loss" not in validation
    np.testing.assert_allclose(_values(validation, "loss"), history["val_loss"], rtol=1e-6)
    np.testing.assert_allclose(_values(validation, "mae"), history["val_mae"], rtol=1e-6)
    assert _steps(train, "epoch_loss") == epoch_ends
    np.testing.assert_allclose(_values(train, "epoch_loss"), history["loss"], rtol=1e-6)
    assert "epoch_val_loss" not in train


def test_hparams_session_start_info_holds_the_hparams(run):
    (step, _), = run["session"][hparams_metadata.SESSION_START_INFO_TAG]
    accumulator = event_accumulator.EventAccumulator(run["log_dir"])
    accumulator.Reload()
    content = accumulator.SummaryMetadata(hparams_metadata.SESSION_START_INFO_TAG).plugin_data.content
    start_info = hparams_metadata.parse_session_start_info_plugin_data(content)
    values = {name: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
              for name, value in start_info.hparams.items()}
    assert values == {"num_layers": 1.0, "dropout": pytest.approx(0.1), "optimizer": "sgd", "tied_embeddings": True}


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
    assert {("validation", "loss"), ("train", "loss"), ("train", "learning_rate"), ("", "best_val_loss")} <= metrics


def test_best_metric_for_hparams_is_the_running_minimum(run):
    best = _values(run["session"], "best_val_loss")
    assert best == pytest.approx(np.minimum.accumulate(run["history"]["val_loss"]).tolist(), rel=1e-6)


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
    assert _steps(train, "loss") == [2, 4, 6, 8, 10, 12]
    assert _steps(validation, "loss") == [6, 12]


def test_a_resumed_run_continues_the_x_axis(tmp_path):
    """A fresh process restores the optimizer's iterations from a backup: steps go on from there."""
    model = _model()
    x, y = _data()
    model.optimizer.build(model.trainable_variables)
    model.optimizer.iterations.assign(101)
    callback = TensorBoardSummaries(str(tmp_path), log_every=2, tokens_per_batch=TOKENS_PER_BATCH)
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=1, validation_data=(x, y), verbose=0, callbacks=[callback])
    train, validation = _read(str(tmp_path / "train")), _read(str(tmp_path / "validation"))
    assert _steps(train, "loss") == [102, 104, 106]
    assert _steps(validation, "loss") == [107]
    np.testing.assert_allclose(_values(train, "learning_rate"), [float(_schedule()(s)) for s in (102, 104, 106)],
                               rtol=1e-6)


def test_log_every_counts_steps_when_steps_per_execution_jumps(tmp_path):
    model = _model()
    model.compile(keras.optimizers.SGD(_schedule()), loss="mse", steps_per_execution=3)
    x, y = _data()
    callback = TensorBoardSummaries(str(tmp_path), log_every=2)
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=2, verbose=0, callbacks=[callback])
    # Batches end at steps 3, 6, 9, 12: each one crosses a multiple of 2.
    assert _steps(_read(str(tmp_path / "train")), "loss") == [3, 6, 9, 12]


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

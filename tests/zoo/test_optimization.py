import keras
import numpy as np

from zoo.optimization import make_optimizer


def test_gradient_accumulation_updates_every_n_steps_with_the_mean_gradient():
    def model_and_data(accumulation):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)])
        optimizer = make_optimizer(0.1, total_steps=100, weight_decay=0.0, clipnorm=0.0,
                                   gradient_accumulation_steps=accumulation, decay="constant")
        model.compile(optimizer=optimizer, loss="mse")
        return model

    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    y = np.ones((8, 1), "float32")
    accumulating = model_and_data(2)
    start = accumulating.get_weights()[0].copy()
    accumulating.train_on_batch(x[:4], y[:4])
    np.testing.assert_array_equal(accumulating.get_weights()[0], start)  # first micro-batch: no update
    accumulating.train_on_batch(x[4:], y[4:])
    assert not np.allclose(accumulating.get_weights()[0], start)
    # Two accumulated half batches make the same update as one full batch.
    whole = model_and_data(1)
    whole.train_on_batch(x, y)
    np.testing.assert_allclose(accumulating.get_weights()[0], whole.get_weights()[0], atol=1e-6)


# -- clipping and gradient statistics ---------------------------------------------------------

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from zoo.optimization import AdamW  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]


def toy_batches(steps=4, batch=8):
    """Batches whose targets grow step by step, so the gradient norms differ a lot (about 0.5 to 40)."""
    rng = np.random.default_rng(1)
    return [
        (rng.normal(size=(batch, 3)).astype("float32"), np.full((batch, 1), 4.0**step, "float32") - 0.5)
        for step in range(steps)
    ]


def toy_model(clipnorm, accumulation=1, jit_compile=False, learning_rate=0.01):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(1)])
    optimizer = make_optimizer(learning_rate, total_steps=100, weight_decay=0.0, clipnorm=clipnorm,
                               gradient_accumulation_steps=accumulation, decay="constant")
    model.compile(optimizer=optimizer, loss="mse", jit_compile=jit_compile)
    return model


def tape_norm(model, x, y):
    with tf.GradientTape() as tape:
        loss = keras.losses.MeanSquaredError()(y, model(x, training=True))
    gradients = tape.gradient(loss, model.trainable_variables)
    return float(tf.linalg.global_norm(gradients))


@pytest.mark.parametrize("jit_compile", [False, True])
def test_gradient_statistics_match_the_norms_of_the_tape(jit_compile):
    model = toy_model(clipnorm=3.0, jit_compile=jit_compile)
    norms = []
    for x, y in toy_batches():
        norms.append(tape_norm(model, x, y))  # at the weights this step starts from
        model.train_on_batch(x, y)
    optimizer = model.optimizer
    assert min(norms) < 3.0 < max(norms)  # the data makes some steps clip and some not
    assert float(optimizer.gradient_norm_sum) / len(norms) == pytest.approx(np.mean(norms), rel=1e-5)
    assert float(optimizer.last_gradient_norm) == pytest.approx(norms[-1], rel=1e-5)
    assert float(optimizer.clipped_steps) == sum(norm > 3.0 for norm in norms)
    assert int(optimizer.iterations) == len(norms)


def test_the_norm_of_an_embedding_gradient_counts_repeated_rows_once():
    # An embedding lookup's gradient is IndexedSlices with one slice per occurrence; the norm is
    # that of the dense gradient (the slices of a repeated id summed first), not of the slices.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,), dtype="int32"), keras.layers.Embedding(5, 3), keras.layers.Flatten(),
                              keras.layers.Dense(1)])
    model.compile(make_optimizer(0.01, 100, weight_decay=0.0, clipnorm=0.0, decay="constant"), loss="mse")
    x, y = np.array([[1, 1, 1, 2]] * 8, "int32"), np.full((8, 1), 3.0, "float32")
    with tf.GradientTape() as tape:
        loss = keras.losses.MeanSquaredError()(y, model(x))
    gradients = tape.gradient(loss, model.trainable_variables)
    assert isinstance(gradients[0], tf.IndexedSlices)
    dense = float(tf.linalg.global_norm([tf.convert_to_tensor(g) for g in gradients]))
    of_slices = float(tf.linalg.global_norm(gradients))
    assert abs(dense - of_slices) > 0.05 * dense  # the two differ here
    model.train_on_batch(x, y)
    assert float(model.optimizer.last_gradient_norm) == pytest.approx(dense, rel=1e-5)


def test_clipping_scales_the_update_to_the_clip_norm():
    # SGD-like check through Adam's first step is awkward; compare against Keras' own clipping
    # on one device, where per-replica and summed clipping coincide.
    x, y = toy_batches()[3]
    ours = toy_model(clipnorm=0.5)
    ours.train_on_batch(x, y)
    keras.utils.set_random_seed(0)
    reference = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(1)])
    reference.compile(keras.optimizers.AdamW(0.01, weight_decay=0.0, global_clipnorm=0.5), loss="mse")
    reference.train_on_batch(x, y)
    for a, b in zip(ours.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-7)
    assert float(ours.optimizer.clipped_steps) == 1.0


def test_accumulation_clips_the_mean_gradient_and_counts_updates():
    x, y = toy_batches()[2]
    whole = toy_model(clipnorm=1.0)
    whole.train_on_batch(x, y)
    accumulating = toy_model(clipnorm=1.0, accumulation=2)
    accumulating.train_on_batch(x[:4], y[:4])
    assert float(accumulating.optimizer.gradient_norm_sum) == 0.0  # no update yet: no statistics
    accumulating.train_on_batch(x[4:], y[4:])
    for a, b in zip(accumulating.get_weights(), whole.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert float(accumulating.optimizer.gradient_norm_sum) == pytest.approx(float(whole.optimizer.gradient_norm_sum), rel=1e-5)
    assert float(accumulating.optimizer.clipped_steps) == 1.0
    assert int(accumulating.optimizer.iterations) == 1


def test_mixed_precision_statistics_are_unscaled():
    x, y = toy_batches()[1]
    reference = toy_model(clipnorm=0.0)
    expected = tape_norm(reference, x, y)
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = toy_model(clipnorm=0.0)
    finally:
        keras.config.set_dtype_policy("float32")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    inner = model.optimizer.inner_optimizer
    for _ in range(12):  # float16 gradients overflow at the first loss scales: those steps are skipped
        model.train_on_batch(x, y)
        if int(inner.iterations) == 1:
            break
    assert int(inner.iterations) == 1 and float(model.optimizer.dynamic_scale) < 2.0**15
    assert float(inner.last_gradient_norm) == pytest.approx(expected, rel=1e-2)  # not 32768 times it


def test_state_and_config_round_trip(tmp_path):
    model = toy_model(clipnorm=3.0, accumulation=2)
    for x, y in toy_batches():
        model.train_on_batch(x, y)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, AdamW)
    assert loaded.optimizer.max_gradient_norm == 3.0 and loaded.optimizer.accumulation_steps == 2
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    assert float(loaded.optimizer.gradient_norm_sum) > 0
    # The config keys are Keras' own, so configs saved before this class clipped itself load the same.
    config = model.optimizer.get_config()
    assert config["global_clipnorm"] == 3.0 and config["gradient_accumulation_steps"] == 2
    assert AdamW.from_config(config).max_gradient_norm == 3.0


def test_state_saved_without_statistics_still_loads():
    model = toy_model(clipnorm=1.0)
    for x, y in toy_batches(2):
        model.train_on_batch(x, y)
    optimizer = model.optimizer
    values = [keras.ops.convert_to_numpy(v).copy() for v in optimizer.variables]
    older = {str(i): value for i, value in enumerate(values[: -len(AdamW.STATISTICS)])}  # the state before them
    fresh = toy_model(clipnorm=1.0)
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.optimizer.load_own_variables(older)
    for variable, value in zip(fresh.optimizer.variables[: len(older)], values):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), value)
    assert float(fresh.optimizer.gradient_norm_sum) == 0.0


def test_bad_settings_fail_clearly():
    with pytest.raises(ValueError, match="global_clipnorm must be >= 0"):
        AdamW(global_clipnorm=-1.0)
    with pytest.raises(ValueError, match="gradient_accumulation_steps must be an integer >= 2"):
        AdamW(gradient_accumulation_steps=1)


_MIRRORED_SCRIPT = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import numpy as np
sys.path.insert(0, {root!r})
from tests.zoo.test_optimization import toy_batches, toy_model, tape_norm

def value(variable):
    return float(keras.ops.convert_to_numpy(variable))

def run(strategy):
    with strategy.scope():
        model = toy_model(clipnorm=3.0)
    norms = []
    for x, y in toy_batches():
        norms.append(tape_norm(model, x, y))
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(len(x))
        model.fit(data, verbose=0)
    optimizer = model.optimizer
    return {{"weights": [w.tolist() for w in model.get_weights()], "norms": norms,
             "norm_sum": value(optimizer.gradient_norm_sum), "clipped": value(optimizer.clipped_steps),
             "last": value(optimizer.last_gradient_norm), "replicas": strategy.num_replicas_in_sync}}

print(json.dumps({{"single": run(tf.distribute.get_strategy()),
                   "mirrored": run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))}}))
"""


@pytest.mark.slow
def test_mirrored_clipping_and_statistics_equal_one_device():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    completed = subprocess.run([sys.executable, "-c", _MIRRORED_SCRIPT.format(root=str(REPO_ROOT))], env=env,
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    single, mirrored = result["single"], result["mirrored"]
    assert mirrored["replicas"] == 2
    assert 0 < single["clipped"] < len(single["norms"])  # clipping was active at some steps only
    for a, b in zip(mirrored["weights"], single["weights"]):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for key in ("norm_sum", "clipped", "last"):
        assert mirrored[key] == pytest.approx(single[key], rel=1e-5), key
    assert mirrored["norm_sum"] == pytest.approx(sum(mirrored["norms"]), rel=1e-5)

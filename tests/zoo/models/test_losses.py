"""`SparseCrossEntropy` gives Keras' `SparseCategoricalCrossentropy(from_logits=True)` values and
gradients: per token, reduced, weighted, under XLA, with logits far apart (the exact fallback),
and in a model's `fit`."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from zoo.models.losses import SparseCrossEntropy, compiled_with_xla, scale_for_replicas, unscale_for_replicas

VOCAB = 37


def numpy_cross_entropy(logits, labels):
    logits = logits.astype("float64")
    shifted = logits - logits.max(-1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -np.take_along_axis(log_probabilities, labels[..., None], -1)[..., 0]


def numpy_gradient(logits, labels, upstream):
    logits = logits.astype("float64")
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    probabilities -= np.eye(logits.shape[-1])[labels]
    return probabilities * upstream[..., None]


def data(seed=0, scale=3.0, shape=(4, 6)):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=shape + (VOCAB,)) * scale).astype("float32")
    labels = rng.integers(0, VOCAB, shape).astype("int32")
    weights = (rng.random(shape) > 0.3).astype("float32") * rng.uniform(0.5, 2.0, shape).astype("float32")
    return logits, labels, weights


def loss_and_gradient(loss_fn, logits, labels, weights, jit_compile=False):
    @tf.function(jit_compile=jit_compile)
    def run(logits):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            loss = loss_fn(labels, logits, sample_weight=weights)
        return loss, tape.gradient(loss, logits)

    with compiled_with_xla(jit_compile):  # traced here, as a model's step declares it
        loss, gradient = run(tf.constant(logits))
    return float(loss), gradient.numpy()


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("scale", [3.0, 100.0])  # 100: some probabilities at the label underflow
def test_matches_keras_loss_and_gradient(jit_compile, scale):
    logits, labels, weights = data(scale=scale)
    ours = loss_and_gradient(SparseCrossEntropy(), logits, labels, weights, jit_compile)
    keras_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    reference = loss_and_gradient(keras_loss, logits, labels, weights, jit_compile)
    np.testing.assert_allclose(ours[0], reference[0], rtol=1e-6)
    np.testing.assert_allclose(ours[1], reference[1], atol=1e-7)
    # And both against float64 numpy: mean over the batch of the weighted token losses.
    tokens = numpy_cross_entropy(logits, labels)
    np.testing.assert_allclose(ours[0], (tokens * weights).sum() / weights.size, rtol=1e-5)
    np.testing.assert_allclose(ours[1], numpy_gradient(logits, labels, weights / weights.size), atol=1e-6)


def test_per_token_values_and_label_shapes():
    logits, labels, _ = data(shape=(3, 5))
    loss = SparseCrossEntropy(reduction=None)
    expected = numpy_cross_entropy(logits, labels)
    np.testing.assert_allclose(loss(labels, logits), expected, rtol=1e-5)
    np.testing.assert_allclose(loss(labels[..., None], logits), expected, rtol=1e-5)  # [..., 1] labels
    np.testing.assert_allclose(loss(labels[0], logits[0]), expected[0], rtol=1e-5)  # 2-D logits


def test_large_gaps_keep_exact_values():
    # The label's probability is exp(-200): -log of the softmax would be inf, the fallback gives 200.
    logits = np.zeros((2, VOCAB), "float32")
    logits[:, 0] = 200.0
    labels = np.array([1, 0], "int32")
    np.testing.assert_allclose(SparseCrossEntropy(reduction=None)(labels, logits), [200.0, 0.0], atol=1e-4)


def test_reduced_precision_logits():
    logits, labels, weights = data()
    ours = SparseCrossEntropy()(labels, tf.cast(logits, "bfloat16"), sample_weight=weights)
    reference = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
        labels, tf.cast(logits, "bfloat16"), sample_weight=weights
    )
    assert ours.dtype == reference.dtype == tf.float32
    np.testing.assert_allclose(float(ours), float(reference), rtol=1e-6)


def test_other_settings_use_keras_computation():
    logits, labels, _ = data()
    probabilities = tf.nn.softmax(logits)
    expected = keras.losses.SparseCategoricalCrossentropy()(labels, probabilities)
    np.testing.assert_allclose(float(SparseCrossEntropy(from_logits=False)(labels, probabilities)), float(expected), rtol=1e-6)
    ignore = SparseCrossEntropy(ignore_class=0, reduction=None)(labels, logits).numpy()
    assert (ignore[labels == 0] == 0).all() and (ignore[labels != 0] > 0).all()


def test_serialises_and_trains_a_model():
    loss = keras.losses.deserialize(keras.losses.serialize(SparseCrossEntropy(name="lm_loss")))
    assert isinstance(loss, SparseCrossEntropy) and loss.name == "lm_loss"
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = np.argmax(x[:, :4], -1).astype("int32")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    model.compile(keras.optimizers.Adam(0.05), loss=loss, jit_compile=False)
    history = model.fit(x, y, epochs=20, batch_size=16, verbose=0).history["loss"]
    assert history[-1] < 0.5 * history[0]


@pytest.mark.parametrize("jit_compile", [False, True])
def test_softmax_form_without_xla_keras_form_under_xla(jit_compile):
    logits, labels, _ = data()
    function = tf.function(lambda z: SparseCrossEntropy()(labels, z), jit_compile=jit_compile)
    with compiled_with_xla(jit_compile):
        graph = function.get_concrete_function(tf.TensorSpec(logits.shape, tf.float32)).graph
    op_types = {op.type for op in graph.get_operations()}
    # Without XLA: a softmax, and TensorFlow's fused kernel only inside the rare-case branch.
    assert ("Softmax" in op_types) != jit_compile
    assert ("SparseSoftmaxCrossEntropyWithLogits" in op_types) == jit_compile


def test_the_xla_declaration_is_scoped():
    logits, labels, _ = data()
    loss = SparseCrossEntropy(reduction=None)
    trace = lambda: {op.type for op in tf.function(lambda z: loss(labels, z)).get_concrete_function(
        tf.TensorSpec(logits.shape, tf.float32)).graph.get_operations()}
    with compiled_with_xla(True):
        with compiled_with_xla(False):
            assert "Softmax" in trace()
        assert "Softmax" not in trace()
    assert "Softmax" in trace()  # undeclared: the softmax form, right under XLA too


_REPLICAS_SCRIPT = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, {root!r})
from zoo.models.losses import scale_for_replicas, unscale_for_replicas
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
step = tf.function(lambda: (scale_for_replicas(tf.constant(6.0)), unscale_for_replicas(tf.constant(6.0))))
scaled, unscaled = strategy.run(step)
print(json.dumps([[float(v) for v in strategy.experimental_local_results(t)] for t in (scaled, unscaled)]))
"""


@pytest.mark.slow
def test_replica_scaling_divides_by_the_replicas_in_sync():
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    assert float(scale_for_replicas(tf.constant(6.0))) == 6.0 == float(unscale_for_replicas(tf.constant(6.0)))
    root = str(Path(__file__).resolve().parents[3])
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    completed = subprocess.run([sys.executable, "-c", _REPLICAS_SCRIPT.format(root=root)], env=env, cwd=root,
                               capture_output=True, text=True, timeout=180)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert json.loads(completed.stdout.strip().splitlines()[-1]) == [[3.0, 3.0], [12.0, 12.0]]

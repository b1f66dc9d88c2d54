"""Perplexity in `fit` and `evaluate`: exp of the weighted mean token cross-entropy, from the loss's own
per-token values (no second softmax over the logits), on one device and under MirroredStrategy."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from zoo.models import CausalLM, Decoder, Encoder, MaskedLM, Perplexity, SparseCrossEntropy

VOCAB = 50
REPO_ROOT = Path(__file__).resolve().parents[3]


def numpy_perplexity(logits, labels, weights):
    log_probabilities = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probabilities, labels[..., None], -1)[..., 0]
    return float(np.exp((nll * weights).sum() / weights.sum()))


def causal_lm_data(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, (8, 16)).astype("int32")
    labels = rng.integers(0, VOCAB, (8, 16)).astype("int32")
    weights = (rng.random((8, 16)) > 0.3).astype("float32") * rng.uniform(0.5, 2.0, (8, 16)).astype("float32")
    return ids, labels, weights


def compiled_causal_lm(weighted=True):
    keras.utils.set_random_seed(0)
    model = CausalLM(Decoder(VOCAB, 16, num_layers=1, hidden_dim=16, num_heads=2, intermediate_dim=32))
    perplexity = {"weighted_metrics" if weighted else "metrics": [Perplexity()]}
    model.compile("sgd", loss=SparseCrossEntropy(), **perplexity)
    return model


def fail_if_recomputed(monkeypatch, model):
    """From now on, a Perplexity that computes its own cross-entropy fails (the compiled loss
    keeps the function it was built with); the next fit/evaluate trace their step again."""

    def recomputed(*args, **kwargs):
        raise AssertionError("Perplexity recomputed the cross-entropy")

    monkeypatch.setattr(keras.losses, "sparse_categorical_crossentropy", recomputed)
    model.make_train_function(force=True)
    model.make_test_function(force=True)


def test_evaluate_and_fit_report_exp_of_weighted_cross_entropy_without_recomputing_it(monkeypatch):
    ids, labels, weights = causal_lm_data()
    model = compiled_causal_lm()
    model.evaluate(ids[:3], labels[:3], verbose=0)  # builds the model and its metrics
    fail_if_recomputed(monkeypatch, model)
    # Batches of 3, 3 and 2 rows: the metric accumulates over the whole epoch.
    result = model.evaluate(ids, labels, sample_weight=weights, batch_size=3, verbose=0, return_dict=True)
    expected = numpy_perplexity(keras.ops.convert_to_numpy(model(ids)), labels, weights)
    assert result["perplexity"] == pytest.approx(expected, rel=1e-5)
    # Training: the logged perplexity is that of the logits of each step (before its update).
    history = model.fit(ids, labels, sample_weight=weights, batch_size=8, epochs=1, shuffle=False, verbose=0).history
    assert history["perplexity"][0] == pytest.approx(expected, rel=1e-5)


def test_unweighted_perplexity_counts_every_token(monkeypatch):
    ids, labels, weights = causal_lm_data(1)
    model = compiled_causal_lm(weighted=False)  # as the gpt-clm recipe compiles it
    model.evaluate(ids[:3], labels[:3], verbose=0)
    fail_if_recomputed(monkeypatch, model)
    result = model.evaluate(ids, labels, sample_weight=weights, batch_size=4, verbose=0, return_dict=True)
    expected = numpy_perplexity(keras.ops.convert_to_numpy(model(ids)), labels, np.ones_like(weights))
    assert result["perplexity"] == pytest.approx(expected, rel=1e-5)


def test_masked_lm_perplexity_over_the_masked_tokens(monkeypatch):
    rng = np.random.default_rng(2)
    keras.utils.set_random_seed(0)
    model = MaskedLM(Encoder(VOCAB, 16, num_layers=1, hidden_dim=16, num_heads=2, intermediate_dim=32, dropout=0.0))
    model.compile("sgd", loss=SparseCrossEntropy(), weighted_metrics=[Perplexity()])
    x = {
        "token_ids": rng.integers(5, VOCAB, (6, 16)).astype("int32"),
        "padding_mask": np.ones((6, 16), bool),
        "mask_positions": rng.integers(1, 15, (6, 4)).astype("int32"),
    }
    labels = rng.integers(5, VOCAB, (6, 4)).astype("int32")
    weights = np.ones((6, 4), "float32")
    weights[:, 3] = 0.0  # padding prediction slots, as the pipeline makes them
    model.evaluate(x, labels, sample_weight=weights, verbose=0)
    fail_if_recomputed(monkeypatch, model)
    result = model.evaluate(x, labels, sample_weight=weights, batch_size=4, verbose=0, return_dict=True)
    expected = numpy_perplexity(keras.ops.convert_to_numpy(model(x)), labels, weights)
    assert result["perplexity"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("loss", [
    SparseCrossEntropy(ignore_class=0),  # its per-token values are not every token's cross-entropy
    keras.losses.SparseCategoricalCrossentropy(from_logits=True),  # not ours: nothing is recorded
])
def test_other_losses_leave_perplexity_computing_its_own(loss, monkeypatch):
    ids, labels, weights = causal_lm_data(3)
    model = compiled_causal_lm()
    model.compile("sgd", loss=loss, weighted_metrics=[Perplexity()])
    computed = []
    original = keras.losses.sparse_categorical_crossentropy

    def counting(*args, **kwargs):
        computed.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(keras.losses, "sparse_categorical_crossentropy", counting)
    result = model.evaluate(ids, labels, sample_weight=weights, batch_size=3, verbose=0, return_dict=True)
    assert computed, "Perplexity should have computed the cross-entropy itself"
    expected = numpy_perplexity(keras.ops.convert_to_numpy(model(ids)), labels, weights)
    assert result["perplexity"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_the_loss_traces_the_form_of_the_models_jit_compile(jit_compile):
    # The model opens compiled_with_xla(jit_compile) around its steps: the softmax-and-scatter
    # form without XLA (TensorFlow's fused kernel only inside its rare-case branch), Keras'
    # formula (the fused kernel itself) under XLA.
    import tensorflow as tf

    ids, labels, _ = causal_lm_data(4)
    model = compiled_causal_lm()
    model.compile("sgd", loss=SparseCrossEntropy(), weighted_metrics=[Perplexity()], jit_compile=jit_compile)
    model.evaluate(ids[:4], labels[:4], verbose=0)  # builds the model and its metrics
    step = tf.function(lambda x, y: model.test_step((x, y)))
    graph = step.get_concrete_function(tf.TensorSpec((4, 16), tf.int32), tf.TensorSpec((4, 16), tf.int32)).graph
    assert ("SparseSoftmaxCrossEntropyWithLogits" in {op.type for op in graph.get_operations()}) == jit_compile


# -- MirroredStrategy: each replica's metric gets its own replica's losses ----------------------

_MIRRORED_SCRIPT = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import numpy as np
sys.path.insert(0, {tests!r})
from test_perplexity import causal_lm_data, compiled_causal_lm, numpy_perplexity
ids, labels, weights = causal_lm_data()
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    model = compiled_causal_lm()
data = tf.data.Dataset.from_tensor_slices((ids, labels, weights)).batch(4)
model.evaluate(data.take(1), verbose=0)  # builds the model and its metrics
def recomputed(*args, **kwargs):
    raise AssertionError("Perplexity recomputed the cross-entropy")
keras.losses.sparse_categorical_crossentropy = recomputed
model.make_test_function(force=True)
result = model.evaluate(data, verbose=0, return_dict=True)
print(json.dumps({{"perplexity": result["perplexity"], "replicas": strategy.num_replicas_in_sync,
                   "expected": numpy_perplexity(keras.ops.convert_to_numpy(model(ids)), labels, weights)}}))
"""


@pytest.mark.slow
def test_mirrored_perplexity_equals_single_device():
    script = _MIRRORED_SCRIPT.format(tests=str(Path(__file__).parent))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    completed = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["perplexity"] == pytest.approx(result["expected"], rel=1e-5)

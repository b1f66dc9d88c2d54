"""`sparse_accuracy` / `SparseAccuracy` give Keras' `sparse_categorical_accuracy` numbers, ties
included (the first maximal id is the prediction), eagerly, in a graph and under XLA."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from zoo.models import SparseAccuracy
from zoo.models.losses import compiled_with_xla
from zoo.models.metrics import sparse_accuracy


def logits_with_ties(seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.integers(-3, 4, size=(6, 10, 12)).astype("float32")  # small integers: many ties at the max
    labels = rng.integers(0, 12, size=(6, 10)).astype("int32")
    best = logits.max(-1)
    for row in range(6):  # make the label a maximum in many rows, sometimes tied with an earlier id
        logits[row, :5][np.arange(5), labels[row, :5]] = best[row, :5]
    return logits, labels


@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
def test_equals_keras_accuracy_with_ties(mode):
    logits, labels = logits_with_ties()
    expected = keras.metrics.sparse_categorical_accuracy(labels, logits).numpy()
    assert 0 < expected.mean() < 1
    if mode == "eager":
        ours = sparse_accuracy(labels, logits)
    else:
        with compiled_with_xla(mode == "xla"):  # as a model's step declares it (TokenLossSharing)
            ours = tf.function(sparse_accuracy, jit_compile=mode == "xla")(tf.constant(labels), tf.constant(logits))
    np.testing.assert_array_equal(np.asarray(ours), expected)
    np.testing.assert_array_equal(np.asarray(sparse_accuracy(labels[..., None], logits)), expected)  # [..., 1] labels


def test_metric_accumulates_weighted_mean():
    logits, labels = logits_with_ties(1)
    weights = np.random.default_rng(1).random(labels.shape).astype("float32")
    metric = SparseAccuracy()
    metric.update_state(labels[:3], logits[:3], sample_weight=weights[:3])
    metric.update_state(labels[3:], logits[3:], sample_weight=weights[3:])
    expected = keras.metrics.SparseCategoricalAccuracy()
    expected.update_state(labels, logits, sample_weight=weights)
    np.testing.assert_allclose(float(metric.result()), float(expected.result()), rtol=1e-6)

import math

import keras
import numpy as np
import pytest
from keras import ops

from tests.zoo.layers.layer_checks import check_layer
from zoo.layers import FeedForward

rng = np.random.default_rng(2)
x = rng.normal(size=(2, 3, 6)).astype("float32")


def reference(layer, activation):
    w1, b1 = (ops.convert_to_numpy(w) for w in layer.intermediate_dense.weights)
    w2, b2 = (ops.convert_to_numpy(w) for w in layer.output_dense.weights)
    h = x @ w1 + b1
    if activation == "relu":
        h = np.maximum(h, 0)
    elif activation == "gelu":
        h = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
    elif activation == "gelu_approximate":
        h = 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    else:
        wg, bg = (ops.convert_to_numpy(w) for w in layer.gate_dense.weights)
        gate = x @ wg + bg
        h = gate / (1 + np.exp(-gate)) * h
    return h @ w2 + b2


@pytest.mark.parametrize("activation", ["gelu", "gelu_approximate", "relu", "swiglu"])
def test_equals_numpy_reference(activation, tmp_path):
    layer = check_layer(FeedForward, {"intermediate_dim": 12, "activation": activation}, {"inputs": x}, tmp_path)
    np.testing.assert_allclose(ops.convert_to_numpy(layer(x)), reference(layer, activation), atol=1e-5)


def test_unknown_activation_lists_valid_ones():
    with pytest.raises(ValueError, match="gelu_approximate, relu, swiglu"):
        FeedForward(8, activation="tanh")


def test_rms_norm_comes_from_keras():
    # The zoo uses keras.layers.RMSNormalization (Keras has one); check it is what we think it is.
    norm = keras.layers.RMSNormalization(epsilon=1e-6)
    expected = x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(norm(x)), expected, atol=1e-5)

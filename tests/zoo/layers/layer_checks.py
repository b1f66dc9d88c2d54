"""The one helper every layer goes through: config round-trip, .keras reload, a training step, mixed precision."""

import os

import keras
import numpy as np


def _symbolic_inputs(inputs):
    return {name: keras.Input(shape=value.shape[1:], dtype=str(value.dtype), name=name) for name, value in inputs.items()}


def _as_model(layer, inputs):
    symbolic = _symbolic_inputs(inputs)
    return keras.Model(symbolic, layer(**symbolic))


def check_layer(layer_class, init_kwargs, inputs, tmp_path, expect_trainable=True, mixed_output_dtype="bfloat16"):
    """Asserts what every zoo layer guarantees.

    `inputs` maps call-argument names to numpy arrays (batch first); the layer is called as
    `layer(**inputs)`. Heads that return float32 logits under mixed precision (for a stable
    loss) pass `mixed_output_dtype="float32"`.
    """
    layer = layer_class(**init_kwargs)
    model = _as_model(layer, inputs)
    expected = np.asarray(model.predict(inputs, verbose=0))

    # get_config / from_config round-trip gives the same config and the same outputs.
    config = layer.get_config()
    clone = layer_class.from_config(config)
    assert clone.get_config() == config
    clone_model = _as_model(clone, inputs)
    clone_model.set_weights(model.get_weights())
    np.testing.assert_allclose(clone_model.predict(inputs, verbose=0), expected, atol=1e-6)

    # A .keras file reloads to identical outputs.
    path = os.path.join(tmp_path, f"{layer_class.__name__}.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert type(reloaded.layers[-1]) is layer_class
    np.testing.assert_allclose(reloaded.predict(inputs, verbose=0), expected, atol=1e-6)

    # One optimiser step lowers a loss (or the layer really has no weights).
    if expect_trainable:
        assert layer.trainable_weights, f"{layer_class.__name__} has no trainable weights"
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01), loss="mse")
        target = np.zeros_like(expected)
        batch_size = len(expected)
        before = model.evaluate(inputs, target, batch_size=batch_size, verbose=0)
        model.fit(inputs, target, batch_size=batch_size, epochs=1, verbose=0)
        after = model.evaluate(inputs, target, batch_size=batch_size, verbose=0)
        assert after < before, f"one SGD step did not lower the loss: {before} -> {after}"
    else:
        assert not layer.weights, f"{layer_class.__name__} should have no weights"

    # Under mixed_bfloat16 the layer computes in bfloat16 and keeps float32 weights.
    mixed = layer_class(**init_kwargs, dtype="mixed_bfloat16")
    output = mixed(**inputs)
    assert keras.backend.standardize_dtype(output.dtype) == mixed_output_dtype
    assert all(keras.backend.standardize_dtype(w.dtype) == "float32" for w in mixed.weights)
    return layer

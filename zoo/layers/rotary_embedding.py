"""Rotary position embedding (RoPE) for query and key heads."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="zoo")
class RotaryEmbedding(keras.layers.Layer):
    """Rotates query/key features by an angle proportional to their position.

    Features are split into two halves `(x1, x2)`; pair `i` is rotated by
    `position * max_wavelength ** (-2i / head_dim)`. A rotation keeps every vector's norm, and
    the dot product of a rotated query at position m with a rotated key at position n depends
    only on `m - n`: attention sees relative positions without any learned weights.

    Args:
        max_wavelength: the longest wavelength of the rotation frequencies.
        scaling_factor: positions are divided by this (linear position interpolation).

    Call arguments:
        inputs: `[batch, sequence, heads, head_dim]` with an even `head_dim`.
        start_index: position of the first element of `inputs` (a scalar; used with a KV cache).

    Example:
    >>> x = keras.ops.ones((1, 4, 2, 8))
    >>> RotaryEmbedding()(x).shape
    (1, 4, 2, 8)
    """

    def __init__(self, max_wavelength=10000, scaling_factor=1.0, **kwargs):
        super().__init__(**kwargs)
        self.max_wavelength = max_wavelength
        self.scaling_factor = scaling_factor
        self.built = True

    def call(self, inputs, start_index=0):
        head_dim = inputs.shape[-1]
        if head_dim % 2:
            raise ValueError(f"RotaryEmbedding needs an even head_dim, got {head_dim}.")
        sequence_length = ops.shape(inputs)[1]
        half = head_dim // 2
        inverse_frequencies = ops.power(
            float(self.max_wavelength), -ops.arange(0, half, dtype="float32") * 2.0 / head_dim
        )
        positions = ops.cast(ops.arange(sequence_length) + start_index, "float32") / self.scaling_factor
        angles = ops.einsum("t,f->tf", positions, inverse_frequencies)  # [T, half]
        cos = ops.cast(ops.cos(angles)[None, :, None, :], self.compute_dtype)
        sin = ops.cast(ops.sin(angles)[None, :, None, :], self.compute_dtype)
        x = ops.cast(inputs, self.compute_dtype)
        x1, x2 = x[..., :half], x[..., half:]
        return ops.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(max_wavelength=self.max_wavelength, scaling_factor=self.scaling_factor)
        return config

"""Fixed sinusoidal position encoding (Vaswani et al., 2017)."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="zoo")
class SinusoidalPositionEncoding(keras.layers.Layer):
    """`PE(pos, 2i) = sin(pos / w^(2i/d))`, `PE(pos, 2i+1) = cos(pos / w^(2i/d))`, `w = max_wavelength`.

    No weights: the encoding extrapolates to any length.

    Args:
        max_wavelength: `w` in the formula (10000 in the original paper).

    Call arguments:
        inputs: `[batch, sequence, hidden]`; only its shape is used.
        start_index: position of `inputs[:, 0]` (a scalar; used with a KV cache).

    Example:
    >>> SinusoidalPositionEncoding()(keras.ops.zeros((1, 3, 4))).shape
    (1, 3, 4)
    """

    def __init__(self, max_wavelength=10000, **kwargs):
        super().__init__(**kwargs)
        self.max_wavelength = max_wavelength
        self.built = True

    def call(self, inputs, start_index=0):
        shape = ops.shape(inputs)
        sequence_length, hidden_dim = shape[1], inputs.shape[-1]
        positions = ops.cast(ops.arange(sequence_length) + start_index, "float32")
        feature = ops.arange(hidden_dim)
        # Features 2i and 2i+1 share the frequency w^(-2i/d).
        exponents = ops.cast(feature - feature % 2, "float32") / float(hidden_dim)
        angles = positions[:, None] * ops.power(float(self.max_wavelength), -exponents)[None, :]
        encoding = ops.where(feature[None, :] % 2 == 0, ops.sin(angles), ops.cos(angles))
        return ops.broadcast_to(ops.cast(encoding, self.compute_dtype), shape)

    def compute_output_shape(self, inputs_shape):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update(max_wavelength=self.max_wavelength)
        return config

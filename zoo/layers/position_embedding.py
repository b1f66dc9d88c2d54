"""Learned absolute position embedding."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="zoo")
class PositionEmbedding(keras.layers.Layer):
    """A trainable vector per position, added by the caller to the token embeddings.

    Args:
        sequence_length: the largest number of positions.
        initializer: initialiser of the `[sequence_length, hidden]` table.

    Call arguments:
        inputs: `[batch, sequence, hidden]`; only its shape is used.
        start_index: position of `inputs[:, 0]` (a scalar; used with a KV cache).

    Returns `[batch, sequence, hidden]` position vectors.

    Example:
    >>> PositionEmbedding(sequence_length=16)(keras.ops.zeros((2, 4, 8))).shape
    (2, 4, 8)
    """

    def __init__(self, sequence_length, initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.sequence_length = sequence_length
        self.initializer = keras.initializers.get(initializer)

    def build(self, inputs_shape):
        self.position_embeddings = self.add_weight(
            name="embeddings", shape=(self.sequence_length, inputs_shape[-1]), initializer=self.initializer
        )
        self.built = True

    def call(self, inputs, start_index=0):
        sequence_length = ops.shape(inputs)[1]
        hidden_dim = ops.shape(inputs)[-1]
        table = ops.convert_to_tensor(self.position_embeddings)  # JAX cannot slice a Variable directly
        positions = ops.slice(table, (start_index, 0), (sequence_length, hidden_dim))
        return ops.broadcast_to(ops.cast(positions, self.compute_dtype), ops.shape(inputs))

    def compute_output_shape(self, inputs_shape):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update(sequence_length=self.sequence_length, initializer=keras.initializers.serialize(self.initializer))
        return config

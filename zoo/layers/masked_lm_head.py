"""Masked-language-model head: logits only at the masked positions, tied to the token embedding."""

import keras
from keras import ops

from zoo.layers.initializers import clone_initializer


@keras.saving.register_keras_serializable(package="zoo")
class MaskedLMHead(keras.layers.Layer):
    """Gathers the hidden states at `mask_positions`, transforms them, and projects to the vocabulary.

    Computing logits only at the ~15% masked positions instead of every position is what makes
    masked-LM training fast: the `[tokens, vocabulary]` projection is the largest matmul of a
    small BERT. The projection reuses the token embedding table (`token_embedding(x,
    reverse=True)`) plus a per-token bias, as in BERT.

    Args:
        vocabulary_size: number of output classes (token ids).
        token_embedding: the `keras.layers.ReversibleEmbedding` to tie to. Not serialised: the
            model that owns both layers passes it again when it is rebuilt. Without it the head
            has its own output projection.
        activation: activation of the transform ("gelu" for BERT).
        layer_norm_epsilon: epsilon of the transform's layer norm.
        kernel_initializer: initialiser of the transform (and untied projection).

    Call arguments:
        inputs: `[batch, sequence, hidden]` encoder outputs.
        mask_positions: `[batch, predictions]` integer positions to predict.

    Returns float32 logits `[batch, predictions, vocabulary_size]`.

    Example:
    >>> head = MaskedLMHead(vocabulary_size=50)
    >>> head(keras.ops.ones((2, 8, 16)), mask_positions=keras.ops.zeros((2, 3), "int32")).shape
    (2, 3, 50)
    """

    def __init__(
        self,
        vocabulary_size,
        token_embedding=None,
        activation="gelu",
        layer_norm_epsilon=1e-5,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.token_embedding = token_embedding
        self.activation = activation
        self.layer_norm_epsilon = layer_norm_epsilon
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, inputs_shape, mask_positions_shape=None):
        hidden_dim = inputs_shape[-1]
        policy = self.dtype_policy
        self.transform = keras.layers.Dense(
            hidden_dim, activation=self.activation, kernel_initializer=clone_initializer(self.kernel_initializer, "transform"),
            dtype=policy, name="transform",
        )
        self.transform.build((None, None, hidden_dim))
        self.transform_norm = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon, dtype=policy, name="transform_norm")
        self.transform_norm.build((None, None, hidden_dim))
        self.output_projection = None
        if self.token_embedding is None:
            self.output_projection = keras.layers.Dense(
                self.vocabulary_size, use_bias=False,
                kernel_initializer=clone_initializer(self.kernel_initializer, "output_projection"),
                dtype=policy, name="output_projection",
            )
            self.output_projection.build((None, None, hidden_dim))
        self.output_bias = self.add_weight(name="output_bias", shape=(self.vocabulary_size,), initializer="zeros")
        self.built = True

    def call(self, inputs, mask_positions):
        positions = ops.cast(mask_positions, "int32")[..., None]
        gathered = ops.take_along_axis(inputs, positions, axis=1)  # [B, P, hidden]
        hidden = self.transform_norm(self.transform(gathered))
        if self.output_projection is None:
            logits = self.token_embedding(hidden, reverse=True)
        else:
            logits = self.output_projection(hidden)
        return ops.cast(logits, "float32") + ops.cast(self.output_bias, "float32")

    def compute_output_shape(self, inputs_shape, mask_positions_shape):
        return tuple(mask_positions_shape) + (self.vocabulary_size,)

    def compute_output_spec(self, inputs, mask_positions):
        shape = tuple(mask_positions.shape) + (self.vocabulary_size,)
        return keras.KerasTensor(shape, dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update(
            vocabulary_size=self.vocabulary_size,
            activation=self.activation,
            layer_norm_epsilon=self.layer_norm_epsilon,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return config

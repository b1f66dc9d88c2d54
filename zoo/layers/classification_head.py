"""Sequence classification head: pool the encoder outputs, dropout, dense."""

import keras
from keras import ops

from zoo.layers.initializers import clone_initializer

POOLINGS = ("cls", "mean")


@keras.saving.register_keras_serializable(package="zoo")
class ClassificationHead(keras.layers.Layer):
    """Pools a sequence to one vector and maps it to class logits.

    Args:
        num_classes: number of classes.
        pooling: "cls" (the first token, BERT's [CLS]) or "mean" (mean over real tokens).
        dropout: dropout before the output layer.
        kernel_initializer: initialiser of the output layer.

    Call arguments:
        inputs: `[batch, sequence, hidden]`.
        padding_mask: `[batch, sequence]`, true at real tokens (used by "mean" pooling).
        training: enables dropout.

    Returns float32 logits `[batch, num_classes]`.

    Example:
    >>> ClassificationHead(num_classes=3, pooling="mean")(keras.ops.ones((2, 5, 8))).shape
    (2, 3)
    """

    def __init__(self, num_classes, pooling="cls", dropout=0.0, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        if pooling not in POOLINGS:
            raise ValueError(f"Unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}.")
        self.num_classes = num_classes
        self.pooling = pooling
        self.dropout = dropout
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.dropout_layer = keras.layers.Dropout(dropout, dtype=self.dtype_policy)
        self.output_dense = keras.layers.Dense(
            num_classes, kernel_initializer=clone_initializer(self.kernel_initializer, "logits"),
            dtype=self.dtype_policy, name="logits",
        )

    def build(self, inputs_shape, padding_mask_shape=None):
        self.output_dense.build((None, inputs_shape[-1]))
        self.built = True

    def call(self, inputs, padding_mask=None, training=None):
        if self.pooling == "cls":
            pooled = inputs[:, 0]
        else:
            if padding_mask is None:
                pooled = ops.mean(inputs, axis=1)
            else:
                weights = ops.cast(padding_mask, inputs.dtype)[..., None]
                pooled = ops.sum(inputs * weights, axis=1) / ops.maximum(ops.sum(weights, axis=1), 1.0)
        return ops.cast(self.output_dense(self.dropout_layer(pooled, training=training)), "float32")

    def compute_output_shape(self, inputs_shape, padding_mask_shape=None):
        return (inputs_shape[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            pooling=self.pooling,
            dropout=self.dropout,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return config

"""Sequence classification task: an Encoder and a ClassificationHead."""

import keras

from zoo.layers.classification_head import ClassificationHead
from zoo.layers.initializers import clone_initializer


@keras.saving.register_keras_serializable(package="zoo")
class TextClassifier(keras.Model):
    """Maps `{"token_ids", "padding_mask"}` (`[batch, sequence]` each) to float32 class logits `[batch, num_classes]`.

    Args:
        encoder: a `zoo.models.Encoder`. The head's weights follow its `kernel_initializer`.
        num_classes: number of labels.
        pooling: "cls" or "mean" (see `ClassificationHead`).
        dropout: dropout before the output layer.
    """

    def __init__(self, encoder, num_classes, pooling="cls", dropout=0.1, **kwargs):
        inputs = {
            "token_ids": keras.Input(shape=(None,), dtype="int32", name="token_ids"),
            "padding_mask": keras.Input(shape=(None,), dtype="bool", name="padding_mask"),
        }
        sequence = encoder(inputs["token_ids"], padding_mask=inputs["padding_mask"])
        head = ClassificationHead(
            num_classes, pooling=pooling, dropout=dropout, dtype=encoder.dtype_policy, name="classification_head",
            kernel_initializer=clone_initializer(encoder.kernel_initializer, "classification_head"),
        )
        logits = head(sequence, padding_mask=inputs["padding_mask"])
        super().__init__(inputs=inputs, outputs=logits, **kwargs)
        self.encoder = encoder
        self.head = head
        self.num_classes = num_classes
        self.pooling = pooling
        self.dropout = dropout

    def get_config(self):
        return {
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "num_classes": self.num_classes,
            "pooling": self.pooling,
            "dropout": self.dropout,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)

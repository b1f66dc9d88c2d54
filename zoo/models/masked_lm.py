"""BERT-style masked language model task: an Encoder and a MaskedLMHead tied to its embedding."""

import keras

from zoo.layers.initializers import clone_initializer
from zoo.layers.masked_lm_head import MaskedLMHead
from zoo.models.metrics import TokenLossSharing


@keras.saving.register_keras_serializable(package="zoo")
class MaskedLM(TokenLossSharing, keras.Model):
    """Predicts the original tokens at `mask_positions`.

    Inputs (a dict): `token_ids [batch, sequence]`, `padding_mask [batch, sequence]` (true at real
    tokens), `mask_positions [batch, predictions]`. Output: float32 logits
    `[batch, predictions, vocabulary]`. Train with the original ids at the masked positions as
    labels and the mask weights as sample weights (padding predictions weigh 0).

    Args:
        encoder: a `zoo.models.Encoder`. The head's weights follow its `kernel_initializer`.
    """

    def __init__(self, encoder, **kwargs):
        inputs = {
            "token_ids": keras.Input(shape=(None,), dtype="int32", name="token_ids"),
            "padding_mask": keras.Input(shape=(None,), dtype="bool", name="padding_mask"),
            "mask_positions": keras.Input(shape=(None,), dtype="int32", name="mask_positions"),
        }
        sequence = encoder(inputs["token_ids"], padding_mask=inputs["padding_mask"])
        head = MaskedLMHead(
            encoder.vocabulary_size, token_embedding=encoder.token_embedding, activation=encoder.activation,
            layer_norm_epsilon=encoder.layer_norm_epsilon, dtype=encoder.dtype_policy, name="mlm_head",
            kernel_initializer=clone_initializer(encoder.kernel_initializer, "mlm_head"),
        )
        logits = head(sequence, mask_positions=inputs["mask_positions"])
        super().__init__(inputs=inputs, outputs=logits, **kwargs)
        self.encoder = encoder
        self.head = head

    def get_config(self):
        return {"encoder": keras.saving.serialize_keras_object(self.encoder), "name": self.name}

    def summary(self, line_length=None, positions=None, print_fn=None, expand_nested=True, **kwargs):
        """Keras' summary, by default with the encoder's embeddings, norm and blocks listed."""
        return super().summary(line_length, positions, print_fn, expand_nested=expand_nested, **kwargs)

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)

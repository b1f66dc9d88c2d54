"""What encoder and decoder blocks share: the norm choice and the pre-/post-norm residual wiring."""

import keras

NORMALIZATIONS = ("layer_norm", "rms_norm")


def make_norm(normalization, epsilon, dtype, name):
    """A LayerNormalization or Keras' RMSNormalization, by name."""
    if normalization == "layer_norm":
        return keras.layers.LayerNormalization(epsilon=epsilon, dtype=dtype, name=name)
    if normalization == "rms_norm":
        return keras.layers.RMSNormalization(epsilon=epsilon, dtype=dtype, name=name)
    raise ValueError(f"Unknown normalization {normalization!r}; expected one of {', '.join(NORMALIZATIONS)}.")


def residual(x, sublayer, norm, dropout, norm_first, training):
    """`x + dropout(sublayer(norm(x)))` (pre-norm, GPT-2) or `norm(x + dropout(sublayer(x)))` (post-norm, BERT).

    `sublayer` maps a tensor to `(output, extra)`; `extra` (e.g. an updated KV cache) is returned.
    """
    output, extra = sublayer(norm(x) if norm_first else x)
    x = x + dropout(output, training=training)
    return (x if norm_first else norm(x)), extra

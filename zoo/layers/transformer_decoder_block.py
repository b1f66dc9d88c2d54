"""A transformer decoder block: causal self-attention with a KV cache, optional cross-attention, feed-forward."""

import keras

from zoo.layers.multi_head_attention import MultiHeadAttention
from zoo.layers.residual_block import make_norm, residual
from zoo.layers.transformer_encoder_block import TransformerEncoderBlock


@keras.saving.register_keras_serializable(package="zoo")
class TransformerDecoderBlock(TransformerEncoderBlock):
    """Causal self-attention, then (optionally) cross-attention to an encoder, then feed-forward.

    Takes every argument of `TransformerEncoderBlock`, with `norm_first=True` (pre-norm, GPT-2)
    as the default, plus:

    Args:
        cross_attention: if True, the block attends to `encoder_outputs` (encoder-decoder models).

    Call arguments:
        inputs: `[batch, sequence, hidden]`.
        encoder_outputs: `[batch, source_length, hidden]`, required with `cross_attention=True`.
        padding_mask: optional `[batch, key_length]`, true at real tokens of the decoder sequence
            (`key_length` is the cache length when a cache is used).
        encoder_padding_mask: optional `[batch, source_length]`, true at real encoder tokens.
        cache: optional `[batch, 2, max_length, kv_heads, head_dim]` self-attention KV cache; the
            block then returns `(outputs, updated_cache)`.
        cache_index: scalar position of `inputs[:, 0]`, required with `cache`.
        training: enables dropout.

    Example:
    >>> block = TransformerDecoderBlock(num_heads=2, intermediate_dim=32)
    >>> block(keras.ops.ones((2, 5, 8))).shape
    (2, 5, 8)
    """

    _causal = True

    def __init__(self, num_heads, intermediate_dim, norm_first=True, cross_attention=False, **kwargs):
        super().__init__(num_heads, intermediate_dim, norm_first=norm_first, **kwargs)
        self.cross_attention = cross_attention
        self.cross_attention_layer = None
        if cross_attention:
            policy = self.dtype_policy
            self.cross_attention_layer = MultiHeadAttention(
                num_heads, num_key_value_heads=self.num_key_value_heads, dropout=self.attention_dropout,
                use_bias=self.use_bias, dtype=policy, name="cross_attention",
                **self.sublayer_initializers("cross_attention"),
            )
            self.cross_attention_norm = make_norm(self.normalization, self.layer_norm_epsilon, policy, "cross_attention_norm")

    def build(self, inputs_shape, encoder_outputs_shape=None):
        super().build(inputs_shape)
        if self.cross_attention:
            if encoder_outputs_shape is None:
                raise ValueError("This block has cross_attention=True: call it with `encoder_outputs`.")
            self.cross_attention_layer.build(inputs_shape, encoder_outputs_shape)
            self.cross_attention_norm.build(inputs_shape)
        self.built = True

    def call(
        self,
        inputs,
        encoder_outputs=None,
        padding_mask=None,
        encoder_padding_mask=None,
        cache=None,
        cache_index=None,
        training=None,
    ):
        def self_attend(x):
            if cache is None:
                return self.attention(x, padding_mask=padding_mask, training=training), None
            return self.attention(x, padding_mask=padding_mask, cache=cache, cache_index=cache_index, training=training)

        def cross_attend(x):
            return self.cross_attention_layer(
                x, encoder_outputs, padding_mask=encoder_padding_mask, training=training
            ), None

        def feed_forward(x):
            return self.feed_forward(x, training=training), None

        dropout, norm_first = self.residual_dropout, self.norm_first
        x, new_cache = residual(inputs, self_attend, self.attention_norm, dropout, norm_first, training)
        if self.cross_attention:
            if encoder_outputs is None:
                raise ValueError("This block has cross_attention=True: call it with `encoder_outputs`.")
            x, _ = residual(x, cross_attend, self.cross_attention_norm, dropout, norm_first, training)
        x, _ = residual(x, feed_forward, self.feed_forward_norm, dropout, norm_first, training)
        return x if cache is None else (x, new_cache)

    def compute_output_shape(self, inputs_shape, encoder_outputs_shape=None):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update(cross_attention=self.cross_attention)
        return config

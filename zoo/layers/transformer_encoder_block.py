"""A transformer encoder block: bidirectional self-attention and a feed-forward network."""

import keras

from zoo.layers.feed_forward import FeedForward
from zoo.layers.initializers import clone_pair
from zoo.layers.multi_head_attention import MultiHeadAttention
from zoo.layers.residual_block import make_norm, residual


@keras.saving.register_keras_serializable(package="zoo")
class TransformerEncoderBlock(keras.layers.Layer):
    """Self-attention then feed-forward, each in a residual branch with dropout and a norm.

    Args:
        num_heads: attention heads.
        intermediate_dim: width of the feed-forward layer.
        dropout: dropout on each residual branch.
        attention_dropout: dropout on the attention weights; defaults to `dropout`.
        feed_forward_dropout: dropout inside the feed-forward network, after its activation.
            0 by default, as in BERT, GPT-2 and keras-hub's blocks: their only dropouts are on
            the attention weights and the residual branches.
        activation: feed-forward activation ("gelu", "gelu_approximate", "relu", "swiglu").
        norm_first: True for pre-norm (GPT-2 style), False for post-norm (BERT, the default).
        normalization: "layer_norm" or "rms_norm".
        layer_norm_epsilon: epsilon of the norms.
        num_key_value_heads: grouped-query attention (see `MultiHeadAttention`).
        use_rotary: rotary position embedding inside attention.
        use_bias: biases in the projections.
        kernel_initializer: initialiser of the projections; each sublayer gets its own clone,
            seeded from this one's seed and the sublayer's name.
        residual_kernel_initializer: initialiser of the two projections that write into the
            residual stream (attention output, feed-forward output); defaults to
            `kernel_initializer`. GPT-2 scales them by 1/sqrt(2 x layers).

    Call arguments:
        inputs: `[batch, sequence, hidden]`.
        padding_mask: optional `[batch, sequence]`, true at real tokens.
        attention_mask: optional `[batch, sequence, sequence]`, true where attention is allowed.
        training: enables dropout.

    Example:
    >>> block = TransformerEncoderBlock(num_heads=2, intermediate_dim=32)
    >>> block(keras.ops.ones((2, 5, 8)), padding_mask=keras.ops.ones((2, 5))).shape
    (2, 5, 8)
    """

    # Subclasses that decode left to right set this (see TransformerDecoderBlock).
    _causal = False

    def __init__(
        self,
        num_heads,
        intermediate_dim,
        dropout=0.0,
        attention_dropout=None,
        feed_forward_dropout=0.0,
        activation="gelu",
        norm_first=False,
        normalization="layer_norm",
        layer_norm_epsilon=1e-5,
        num_key_value_heads=None,
        use_rotary=False,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        residual_kernel_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.attention_dropout = dropout if attention_dropout is None else attention_dropout
        self.feed_forward_dropout = feed_forward_dropout
        self.activation = activation
        self.norm_first = norm_first
        self.normalization = normalization
        self.layer_norm_epsilon = layer_norm_epsilon
        self.num_key_value_heads = num_key_value_heads
        self.use_rotary = use_rotary
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.residual_kernel_initializer = (
            None if residual_kernel_initializer is None else keras.initializers.get(residual_kernel_initializer)
        )
        policy = self.dtype_policy
        self.attention = MultiHeadAttention(
            num_heads, num_key_value_heads=num_key_value_heads, causal=self._causal, dropout=self.attention_dropout,
            use_bias=use_bias, use_rotary=use_rotary, dtype=policy, name="self_attention",
            **self.sublayer_initializers("self_attention"),
        )
        self.attention_norm = make_norm(normalization, layer_norm_epsilon, policy, "self_attention_norm")
        self.feed_forward = FeedForward(
            intermediate_dim, activation=activation, dropout=feed_forward_dropout, use_bias=use_bias,
            dtype=policy, name="feed_forward", **self.sublayer_initializers("feed_forward"),
        )
        self.feed_forward_norm = make_norm(normalization, layer_norm_epsilon, policy, "feed_forward_norm")
        self.residual_dropout = keras.layers.Dropout(dropout, dtype=policy)

    def sublayer_initializers(self, name):
        """`kernel_initializer` and `output_kernel_initializer` for the sublayer `name`, seeded for it."""
        kernel, output = clone_pair(self.kernel_initializer, self.residual_kernel_initializer, name)
        return {"kernel_initializer": kernel, "output_kernel_initializer": output}

    def build(self, inputs_shape):
        for layer in (self.attention, self.attention_norm, self.feed_forward, self.feed_forward_norm):
            layer.build(inputs_shape)
        self.built = True

    def call(self, inputs, padding_mask=None, attention_mask=None, training=None):
        def attend(x):
            return self.attention(x, padding_mask=padding_mask, attention_mask=attention_mask, training=training), None

        def feed_forward(x):
            return self.feed_forward(x, training=training), None

        x, _ = residual(inputs, attend, self.attention_norm, self.residual_dropout, self.norm_first, training)
        x, _ = residual(x, feed_forward, self.feed_forward_norm, self.residual_dropout, self.norm_first, training)
        return x

    def compute_output_shape(self, inputs_shape):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            intermediate_dim=self.intermediate_dim,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            feed_forward_dropout=self.feed_forward_dropout,
            activation=self.activation,
            norm_first=self.norm_first,
            normalization=self.normalization,
            layer_norm_epsilon=self.layer_norm_epsilon,
            num_key_value_heads=self.num_key_value_heads,
            use_rotary=self.use_rotary,
            use_bias=self.use_bias,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            residual_kernel_initializer=(
                None if self.residual_kernel_initializer is None
                else keras.initializers.serialize(self.residual_kernel_initializer)
            ),
        )
        return config

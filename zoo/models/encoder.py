"""BERT-like encoder backbone: token + position (+ segment) embeddings, then N encoder blocks."""

import keras

from zoo.layers.initializers import clone_initializer, clone_pair
from zoo.layers.residual_block import make_norm
from zoo.layers.token_and_position_embedding import TokenAndPositionEmbedding
from zoo.layers.transformer_encoder_block import TransformerEncoderBlock


@keras.saving.register_keras_serializable(package="zoo")
class Encoder(keras.layers.Layer):
    """A bidirectional transformer: `[batch, sequence]` token ids to `[batch, sequence, hidden]` states.

    Post-norm (BERT) by default: the embeddings are layer-normalised, and each block normalises
    after its residual sum. With `norm_first=True` (pre-norm) the blocks normalise their inputs
    and a final norm follows the last block instead.

    Args:
        vocabulary_size, sequence_length: token ids and positions the embeddings cover.
        num_layers, hidden_dim, num_heads, intermediate_dim: the transformer's shape.
        dropout: dropout on embeddings, residual branches and attention weights.
        activation: feed-forward activation ("gelu" is BERT's exact erf GELU).
        num_segments: segment (token type) vocabulary; 0 for none, 2 for BERT.
        norm_first: pre-norm blocks instead of BERT's post-norm.
        normalization: "layer_norm" or "rms_norm".
        layer_norm_epsilon: epsilon of every norm (BERT checkpoints use 1e-12).
        position_embedding_type: "learned", "sinusoidal" or "none" (with `use_rotary`).
        use_rotary: rotary position embedding inside attention.
        num_key_value_heads: grouped-query attention.
        kernel_initializer: initialiser of the projections and embeddings. Every weight gets its
            own clone, seeded from this one's seed and the weight's path (`block_1/...`): give it
            a seed for a reproducible model. The recipes use GPT-2's and BERT's conventions.
        residual_kernel_initializer: initialiser of the projections into the residual stream
            (each block's attention output and feed-forward output); defaults to
            `kernel_initializer`. GPT-2 uses its stddev / sqrt(2 x num_layers).

    Call arguments:
        token_ids: `[batch, sequence]`.
        padding_mask: `[batch, sequence]`, true at real tokens.
        segment_ids: optional `[batch, sequence]` (needs `num_segments > 0`).
        training: enables dropout.

    Example:
    >>> encoder = Encoder(vocabulary_size=100, sequence_length=16, num_layers=2, hidden_dim=8,
    ...                   num_heads=2, intermediate_dim=16)
    >>> encoder(keras.ops.ones((2, 5), "int32")).shape
    (2, 5, 8)
    """

    def __init__(
        self,
        vocabulary_size,
        sequence_length,
        num_layers,
        hidden_dim,
        num_heads,
        intermediate_dim,
        dropout=0.1,
        activation="gelu",
        num_segments=0,
        norm_first=False,
        normalization="layer_norm",
        layer_norm_epsilon=1e-12,
        position_embedding_type="learned",
        use_rotary=False,
        num_key_value_heads=None,
        kernel_initializer="glorot_uniform",
        residual_kernel_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.sequence_length = sequence_length
        self.num_layers = num_layers
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.activation = activation
        self.num_segments = num_segments
        self.norm_first = norm_first
        self.normalization = normalization
        self.layer_norm_epsilon = layer_norm_epsilon
        self.position_embedding_type = position_embedding_type
        self.use_rotary = use_rotary
        self.num_key_value_heads = num_key_value_heads
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.residual_kernel_initializer = (
            None if residual_kernel_initializer is None else keras.initializers.get(residual_kernel_initializer)
        )
        policy = self.dtype_policy
        self.embeddings = TokenAndPositionEmbedding(
            vocabulary_size, sequence_length, hidden_dim, num_segments=num_segments,
            position_embedding_type=position_embedding_type, embeddings_initializer=clone_initializer(self.kernel_initializer, "embeddings"),
            dtype=policy, name="embeddings",
        )
        # Post-norm normalises the embeddings; pre-norm normalises the last block's output.
        self.norm = make_norm(normalization, layer_norm_epsilon, policy, "final_norm" if norm_first else "embeddings_norm")
        self.embeddings_dropout = keras.layers.Dropout(dropout, dtype=policy)
        self.blocks = [
            TransformerEncoderBlock(
                num_heads, intermediate_dim, dropout=dropout, activation=activation, norm_first=norm_first,
                normalization=normalization, layer_norm_epsilon=layer_norm_epsilon,
                num_key_value_heads=num_key_value_heads, use_rotary=use_rotary,
                dtype=policy, name=f"block_{index}", **self._block_initializers(index),
            )
            for index in range(num_layers)
        ]

    def _block_initializers(self, index):
        kernel, residual = clone_pair(self.kernel_initializer, self.residual_kernel_initializer, f"block_{index}")
        return {"kernel_initializer": kernel, "residual_kernel_initializer": residual}

    @property
    def token_embedding(self):
        """The token table (a ReversibleEmbedding), for heads that tie their output to it."""
        return self.embeddings.token_embedding

    @property
    def layers(self):
        """The sublayers in the order of the computation: embeddings, norm, blocks (or blocks,
        final norm). Keras' `summary(expand_nested=True)` lists them under the encoder's row."""
        if self.norm_first:
            return [self.embeddings, *self.blocks, self.norm]
        return [self.embeddings, self.norm, *self.blocks]

    def build(self, token_ids_shape, padding_mask_shape=None, segment_ids_shape=None):
        self.embeddings.build(token_ids_shape)
        hidden_shape = tuple(token_ids_shape) + (self.hidden_dim,)
        self.norm.build(hidden_shape)
        for block in self.blocks:
            block.build(hidden_shape)
        self.built = True

    def call(self, token_ids, padding_mask=None, segment_ids=None, training=None):
        return self.encode_embeddings(self.embed(token_ids, segment_ids), padding_mask=padding_mask, training=training)

    def embed(self, token_ids, segment_ids=None):
        """The embedding sum (token + position [+ segment]) `[batch, sequence, hidden]`, before
        any norm or dropout: where adversarial training perturbs the input (the encoder must be built)."""
        return self.embeddings(token_ids, segment_ids=segment_ids)

    def encode_embeddings(self, embeddings, padding_mask=None, training=None):
        """The rest of `call` from `embed`'s output: norm, dropout, the blocks (and the final norm)."""
        x = embeddings
        if not self.norm_first:
            x = self.norm(x)
        x = self.embeddings_dropout(x, training=training)
        for block in self.blocks:
            x = block(x, padding_mask=padding_mask, training=training)
        return self.norm(x) if self.norm_first else x

    def compute_output_shape(self, token_ids_shape, padding_mask_shape=None, segment_ids_shape=None):
        return tuple(token_ids_shape) + (self.hidden_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            vocabulary_size=self.vocabulary_size,
            sequence_length=self.sequence_length,
            num_layers=self.num_layers,
            hidden_dim=self.hidden_dim,
            num_heads=self.num_heads,
            intermediate_dim=self.intermediate_dim,
            dropout=self.dropout,
            activation=self.activation,
            num_segments=self.num_segments,
            norm_first=self.norm_first,
            normalization=self.normalization,
            layer_norm_epsilon=self.layer_norm_epsilon,
            position_embedding_type=self.position_embedding_type,
            use_rotary=self.use_rotary,
            num_key_value_heads=self.num_key_value_heads,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            residual_kernel_initializer=(
                None if self.residual_kernel_initializer is None
                else keras.initializers.serialize(self.residual_kernel_initializer)
            ),
        )
        return config

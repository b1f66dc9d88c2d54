"""Token embedding plus position (and optionally segment) embedding."""

import keras
from keras import ops

from zoo.layers.initializers import clone_initializer
from zoo.layers.position_embedding import PositionEmbedding
from zoo.layers.sinusoidal_position_encoding import SinusoidalPositionEncoding

POSITION_EMBEDDING_TYPES = ("learned", "sinusoidal", "none")


@keras.saving.register_keras_serializable(package="zoo")
class TokenAndPositionEmbedding(keras.layers.Layer):
    """Sums token, position and (BERT) segment embeddings.

    The token table is a `keras.layers.ReversibleEmbedding`, so a language-model head can reuse
    it as the output projection (`token_embedding(hidden, reverse=True)`): tied weights.

    Args:
        vocabulary_size: number of token ids.
        sequence_length: the largest number of positions.
        hidden_dim: size of the embeddings.
        num_segments: number of segment (token type) ids; 0 means no segment embedding.
        position_embedding_type: "learned", "sinusoidal", or "none" (e.g. with rotary attention).
        embeddings_initializer: initialiser of the token, position and segment tables.

    Call arguments:
        token_ids: `[batch, sequence]` integer ids.
        segment_ids: optional `[batch, sequence]` segment ids (needs `num_segments > 0`). When the
            layer has segments and none are given, every token is in segment 0 (as in BERT).
        start_index: position of `token_ids[:, 0]` (a scalar; used with a KV cache).

    Example:
    >>> layer = TokenAndPositionEmbedding(vocabulary_size=100, sequence_length=16, hidden_dim=8)
    >>> layer(keras.ops.ones((2, 4), dtype="int32")).shape
    (2, 4, 8)
    """

    def __init__(
        self,
        vocabulary_size,
        sequence_length,
        hidden_dim,
        num_segments=0,
        position_embedding_type="learned",
        embeddings_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ValueError(
                f"Unknown position_embedding_type {position_embedding_type!r}; "
                f"expected one of {', '.join(POSITION_EMBEDDING_TYPES)}."
            )
        self.vocabulary_size = vocabulary_size
        self.sequence_length = sequence_length
        self.hidden_dim = hidden_dim
        self.num_segments = num_segments
        self.position_embedding_type = position_embedding_type
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        policy = self.dtype_policy
        self.token_embedding = keras.layers.ReversibleEmbedding(
            vocabulary_size, hidden_dim, embeddings_initializer=clone_initializer(self.embeddings_initializer, "token_embedding"),
            dtype=policy, name="token_embedding",
        )
        if position_embedding_type == "learned":
            self.position_embedding = PositionEmbedding(
                sequence_length, initializer=clone_initializer(self.embeddings_initializer, "position_embedding"),
                dtype=policy, name="position_embedding",
            )
        elif position_embedding_type == "sinusoidal":
            self.position_embedding = SinusoidalPositionEncoding(dtype=policy, name="position_embedding")
        else:
            self.position_embedding = None
        self.segment_embedding = (
            keras.layers.Embedding(
                num_segments, hidden_dim,
                embeddings_initializer=clone_initializer(self.embeddings_initializer, "segment_embedding"),
                dtype=policy, name="segment_embedding",
            )
            if num_segments
            else None
        )

    def build(self, token_ids_shape):
        self.token_embedding.build(token_ids_shape)
        embedded_shape = tuple(token_ids_shape) + (self.hidden_dim,)
        if self.position_embedding is not None:
            self.position_embedding.build(embedded_shape)
        if self.segment_embedding is not None:
            self.segment_embedding.build(token_ids_shape)
        self.built = True

    def call(self, token_ids, segment_ids=None, start_index=0):
        embedded = self.token_embedding(token_ids)
        if self.position_embedding is not None:
            embedded = embedded + self.position_embedding(embedded, start_index=start_index)
        if segment_ids is not None and self.segment_embedding is None:
            raise ValueError("segment_ids were given but this embedding has num_segments=0.")
        if self.segment_embedding is not None:
            if segment_ids is None:
                segment_ids = ops.zeros_like(token_ids)
            embedded = embedded + self.segment_embedding(segment_ids)
        return embedded

    def compute_output_shape(self, token_ids_shape):
        return tuple(token_ids_shape) + (self.hidden_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            vocabulary_size=self.vocabulary_size,
            sequence_length=self.sequence_length,
            hidden_dim=self.hidden_dim,
            num_segments=self.num_segments,
            position_embedding_type=self.position_embedding_type,
            embeddings_initializer=keras.initializers.serialize(self.embeddings_initializer),
        )
        return config

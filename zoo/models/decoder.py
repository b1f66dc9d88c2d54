"""GPT-like decoder: embeddings, pre-norm causal blocks, final norm, output tied to the token embedding."""

import keras
from keras import ops

from zoo.layers.initializers import clone_initializer, clone_pair
from zoo.layers.residual_block import make_norm
from zoo.layers.token_and_position_embedding import TokenAndPositionEmbedding
from zoo.layers.transformer_decoder_block import TransformerDecoderBlock


@keras.saving.register_keras_serializable(package="zoo")
class Decoder(keras.layers.Layer):
    """A causal language model body: `[batch, sequence]` token ids to float32 next-token logits.

    The output projection is the transposed token embedding (weight tying, as GPT-2).

    Args:
        vocabulary_size, sequence_length: token ids and positions the embeddings cover.
        num_layers, hidden_dim, num_heads, intermediate_dim: the transformer's shape.
        dropout: dropout on embeddings, residual branches and attention weights.
        activation: feed-forward activation ("gelu_approximate" is GPT-2's tanh GELU).
        normalization: "layer_norm" or "rms_norm".
        layer_norm_epsilon: epsilon of every norm.
        position_embedding_type: "learned" (GPT-2), "sinusoidal" or "none" (with `use_rotary`).
        use_rotary: rotary position embedding inside attention.
        num_key_value_heads: grouped-query attention (a smaller KV cache).
        kernel_initializer: initialiser of the projections and embeddings. Every weight gets its
            own clone, seeded from this one's seed and the weight's path (`block_1/...`): give it
            a seed for a reproducible model. The recipes use GPT-2's and BERT's conventions.
        residual_kernel_initializer: initialiser of the projections into the residual stream
            (each block's attention output and feed-forward output); defaults to
            `kernel_initializer`. GPT-2 uses its stddev / sqrt(2 x num_layers).

    Call arguments:
        token_ids: `[batch, sequence]`.
        padding_mask: optional `[batch, key_length]`, true at real tokens.
        cache: optional `[batch, num_layers, 2, max_length, kv_heads, head_dim]` KV cache (see
            `init_cache`); the decoder then returns `(logits, updated_cache)`. May also be a
            list of the layers' caches `[batch, 2, max_length, kv_heads, head_dim]` (then a list
            is returned): a generation loop carrying a list has each layer's cache updated in
            place, where slicing and re-stacking one tensor copies the whole cache every step.
        cache_index: scalar position of `token_ids[:, 0]`, required with `cache`.
        training: enables dropout.
        return_hidden_states: return the final (normalised) hidden states `[batch, sequence,
            hidden]` instead of the logits; `logits(hidden_states)` projects them. Generation
            uses it to project only the positions it needs onto the vocabulary.

    Example:
    >>> decoder = Decoder(vocabulary_size=100, sequence_length=16, num_layers=2, hidden_dim=8,
    ...                   num_heads=2, intermediate_dim=16)
    >>> decoder(keras.ops.ones((2, 5), "int32")).shape
    (2, 5, 100)
    """

    def __init__(
        self,
        vocabulary_size,
        sequence_length,
        num_layers,
        hidden_dim,
        num_heads,
        intermediate_dim,
        dropout=0.0,
        activation="gelu_approximate",
        normalization="layer_norm",
        layer_norm_epsilon=1e-5,
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
            vocabulary_size, sequence_length, hidden_dim, position_embedding_type=position_embedding_type,
            embeddings_initializer=clone_initializer(self.kernel_initializer, "embeddings"), dtype=policy, name="embeddings",
        )
        self.embeddings_dropout = keras.layers.Dropout(dropout, dtype=policy)
        self.blocks = [
            TransformerDecoderBlock(
                num_heads, intermediate_dim, dropout=dropout, activation=activation, normalization=normalization,
                layer_norm_epsilon=layer_norm_epsilon, num_key_value_heads=num_key_value_heads,
                use_rotary=use_rotary, dtype=policy, name=f"block_{index}", **self._block_initializers(index),
            )
            for index in range(num_layers)
        ]
        self.final_norm = make_norm(normalization, layer_norm_epsilon, policy, "final_norm")

    def _block_initializers(self, index):
        kernel, residual = clone_pair(self.kernel_initializer, self.residual_kernel_initializer, f"block_{index}")
        return {"kernel_initializer": kernel, "residual_kernel_initializer": residual}

    @property
    def token_embedding(self):
        return self.embeddings.token_embedding

    @property
    def layers(self):
        """The sublayers in the order of the computation: embeddings, blocks, final norm. Keras'
        `summary(expand_nested=True)` lists them under the decoder's row."""
        return [self.embeddings, *self.blocks, self.final_norm]

    @property
    def head_dim(self):
        return self.hidden_dim // self.num_heads

    def init_cache(self, batch_size, max_length, dtype=None):
        """A zero KV cache for `batch_size` sequences of up to `max_length` tokens."""
        kv_heads = self.num_key_value_heads or self.num_heads
        shape = (batch_size, self.num_layers, 2, max_length, kv_heads, self.head_dim)
        return ops.zeros(shape, dtype=dtype or self.compute_dtype)

    def build(self, token_ids_shape, padding_mask_shape=None):
        self.embeddings.build(token_ids_shape)
        hidden_shape = tuple(token_ids_shape) + (self.hidden_dim,)
        for block in self.blocks:
            block.build(hidden_shape)
        self.final_norm.build(hidden_shape)
        self.built = True

    def output_kernel(self):
        """The output projection `[hidden, vocabulary]` in the compute dtype: the transposed token
        table (tied weights).

        A decoding loop takes it once, before the loop, and passes it to every step's `logits`:
        XLA on a CPU would otherwise transpose the whole table inside the loop, at every step.
        None when the table is quantised (`model.quantize`): `logits` then lets the embedding
        layer project with its quantised table.
        """
        embedding = self.token_embedding
        if embedding.quantization_mode is not None:
            return None
        kernel = ops.transpose(embedding.embeddings) if embedding.tie_weights else embedding.reverse_embeddings
        return ops.cast(kernel, self.compute_dtype)

    def logits(self, hidden_states, output_kernel=None):
        """Float32 logits `[..., vocabulary]` of final hidden states (the tied output projection).

        `output_kernel`: `self.output_kernel()`, computed once by a caller that projects many times.
        """
        if output_kernel is None:
            return ops.cast(self.token_embedding(hidden_states, reverse=True), "float32")
        return ops.cast(ops.matmul(hidden_states, output_kernel), "float32")

    def call(self, token_ids, padding_mask=None, cache=None, cache_index=None, training=None, return_hidden_states=False):
        start_index = 0 if cache is None else cache_index
        x = self.embeddings_dropout(self.embeddings(token_ids, start_index=start_index), training=training)
        layer_caches = []
        for index, block in enumerate(self.blocks):
            if cache is None:
                x = block(x, padding_mask=padding_mask, training=training)
            else:
                layer_cache = cache[index] if isinstance(cache, (list, tuple)) else cache[:, index]
                x, layer_cache = block(
                    x, padding_mask=padding_mask, cache=layer_cache, cache_index=cache_index, training=training
                )
                layer_caches.append(layer_cache)
        x = self.final_norm(x)
        outputs = x if return_hidden_states else self.logits(x)
        if cache is None:
            return outputs
        return outputs, (layer_caches if isinstance(cache, (list, tuple)) else ops.stack(layer_caches, axis=1))

    def compute_output_spec(
        self, token_ids, padding_mask=None, cache=None, cache_index=None, training=None, return_hidden_states=False
    ):
        if return_hidden_states:
            outputs = keras.KerasTensor(tuple(token_ids.shape) + (self.hidden_dim,), dtype=self.compute_dtype)
        else:
            outputs = keras.KerasTensor(tuple(token_ids.shape) + (self.vocabulary_size,), dtype="float32")
        if cache is None:
            return outputs
        if isinstance(cache, (list, tuple)):
            return outputs, [keras.KerasTensor(c.shape, dtype=c.dtype) for c in cache]
        return outputs, keras.KerasTensor(cache.shape, dtype=cache.dtype)

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

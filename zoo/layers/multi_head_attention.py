"""Multi-head attention with a fused QKV projection, masks, grouped-query heads, RoPE and a KV cache."""

import functools
import math

import keras
from keras import ops

from zoo.layers.initializers import clone_initializer
from zoo.layers.rotary_embedding import RotaryEmbedding

# Added to the scores of masked positions. Softmax runs in float32 (see `_attend`), so this
# large finite value cannot overflow even under a float16 compute policy.
_MASKED_SCORE = -1e9

ATTENTION_IMPLEMENTATIONS = ("auto", "fused", "einsum")


@functools.cache
def fused_attention_is_faster():
    """Whether `attention_implementation="auto"` picks `keras.ops.dot_product_attention`: on
    JAX with a GPU (cuDNN flash attention). Elsewhere (TensorFlow, CPUs) the einsum path is
    as fast or faster."""
    if keras.backend.backend() != "jax":
        return False
    return any(device.startswith(("gpu", "cuda")) for device in keras.distribution.list_devices())


@keras.saving.register_keras_serializable(package="zoo")
class MultiHeadAttention(keras.layers.Layer):
    """Scaled dot-product attention over `num_heads` heads.

    Self-attention (`value` not given) uses one fused projection for queries, keys and values:
    a single matmul instead of three. Cross-attention (`value` given) projects the queries from
    `query` and fused keys/values from `value`.

    The projections are `keras.layers.EinsumDense` sublayers, so Keras' `enable_lora(rank)` and
    `quantize("int8")` apply to them:
    - self-attention: `query_key_value` (kernel `[hidden, heads + 2 * kv_heads, head_dim]`:
      the query heads, then the key heads, then the value heads; bias `[heads + 2 * kv_heads,
      head_dim]`);
    - cross-attention: `query` (kernel `[hidden, heads, head_dim]`) and `key_value` (kernel
      `[value_hidden, 2 * kv_heads, head_dim]`);
    - both: `output` (kernel `[heads, head_dim, output_dim]`, bias `[output_dim]`).

    Args:
        num_heads: number of query heads.
        key_dim: size of each head; defaults to `hidden // num_heads`.
        num_key_value_heads: number of key/value heads (grouped-query attention); must divide
            `num_heads`. Defaults to `num_heads` (ordinary multi-head attention); 1 is
            multi-query attention.
        causal: if True, position t attends only to positions <= t.
        dropout: dropout rate on the attention weights.
        use_bias: whether the projections have biases.
        use_rotary: apply rotary position embedding to queries and keys.
        rotary_max_wavelength: the `max_wavelength` of that rotary embedding.
        output_dim: size of the output features; defaults to the query's hidden size.
        kernel_initializer, bias_initializer: initialisers for the projections. Each weight
            gets its own clone, seeded from this one's seed and the weight's name.
        output_kernel_initializer: initialiser of the output projection's kernel (GPT-2 scales
            the projections into the residual stream down); defaults to `kernel_initializer`.
        attention_implementation: "einsum" (einsums with a float32 softmax), "fused"
            (`keras.ops.dot_product_attention`: flash attention on JAX with a GPU), or "auto"
            (fused on JAX with a GPU, einsum elsewhere, where it is as fast or faster). Both
            give the same numbers; attention dropout exists only on the einsum path, so
            training steps with `dropout > 0` take it whatever this says.

    Call arguments:
        query: `[batch, target_length, hidden]`.
        value: optional `[batch, source_length, value_hidden]` for cross-attention.
        padding_mask: optional `[batch, source_length]`, true/1 at real tokens, false/0 at padding.
            Padded keys receive no attention.
        attention_mask: optional `[batch, target_length, source_length]`, true/1 where attention
            is allowed. Combined (logical and) with the padding and causal masks.
        cache: optional `[batch, 2, max_length, kv_heads, head_dim]` key/value cache
            (self-attention only). The new keys/values are written at `cache_index` and the
            layer returns `(output, updated_cache)`.
        cache_index: scalar position of `query[:, 0]` in the sequence (required with `cache`).
        training: enables attention dropout.

    Example:
    >>> layer = MultiHeadAttention(num_heads=2, causal=True)
    >>> layer(keras.ops.ones((1, 5, 8))).shape
    (1, 5, 8)
    """

    def __init__(
        self,
        num_heads,
        key_dim=None,
        num_key_value_heads=None,
        causal=False,
        dropout=0.0,
        use_bias=True,
        use_rotary=False,
        rotary_max_wavelength=10000,
        output_dim=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        output_kernel_initializer=None,
        attention_implementation="auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        num_key_value_heads = num_key_value_heads or num_heads
        if num_heads % num_key_value_heads:
            raise ValueError(
                f"num_heads ({num_heads}) must be a multiple of num_key_value_heads ({num_key_value_heads})."
            )
        if attention_implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"Unknown attention_implementation {attention_implementation!r}; "
                f"expected one of {', '.join(ATTENTION_IMPLEMENTATIONS)}."
            )
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.num_key_value_heads = num_key_value_heads
        self.causal = causal
        self.dropout = dropout
        self.use_bias = use_bias
        self.use_rotary = use_rotary
        self.rotary_max_wavelength = rotary_max_wavelength
        self.output_dim = output_dim
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.output_kernel_initializer = (
            None if output_kernel_initializer is None else keras.initializers.get(output_kernel_initializer)
        )
        self.attention_implementation = attention_implementation
        self.dropout_layer = keras.layers.Dropout(dropout, dtype=self.dtype_policy)
        self.rotary_embedding = (
            RotaryEmbedding(max_wavelength=rotary_max_wavelength, dtype=self.dtype_policy) if use_rotary else None
        )

    def _projection(self, name, seed_name, equation, output_shape, bias_axes, kernel_initializer=None):
        # The initialisers are cloned under the names the weights had when they were the
        # layer's own (`qkv_kernel`, ...): the same seed draws the same values as before.
        return keras.layers.EinsumDense(
            equation,
            output_shape,
            bias_axes=bias_axes if self.use_bias else None,
            kernel_initializer=clone_initializer(kernel_initializer or self.kernel_initializer, f"{seed_name}_kernel"),
            bias_initializer=clone_initializer(self.bias_initializer, f"{seed_name}_bias"),
            dtype=self.dtype_policy,
            name=name,
        )

    def build(self, query_shape, value_shape=None):
        hidden_dim = query_shape[-1]
        self.head_dim = self.key_dim or hidden_dim // self.num_heads
        self.is_cross_attention = value_shape is not None
        heads, kv_heads, head_dim = self.num_heads, self.num_key_value_heads, self.head_dim
        sequence_shape = (None, None)
        if self.is_cross_attention:
            self.query_dense = self._projection("query", "query", "btd,dnh->btnh", (None, heads, head_dim), "nh")
            self.query_dense.build(sequence_shape + (hidden_dim,))
            self.key_value_dense = self._projection(
                "key_value", "key_value", "bsd,dnh->bsnh", (None, 2 * kv_heads, head_dim), "nh"
            )
            self.key_value_dense.build(sequence_shape + (value_shape[-1],))
        else:
            self.query_key_value_dense = self._projection(
                "query_key_value", "qkv", "btd,dnh->btnh", (None, heads + 2 * kv_heads, head_dim), "nh"
            )
            self.query_key_value_dense.build(sequence_shape + (hidden_dim,))
        output_dim = self.output_dim or hidden_dim
        self.output_dense = self._projection(
            "output", "output", "btnh,nhd->btd", (None, output_dim), "d", self.output_kernel_initializer
        )
        self.output_dense.build(sequence_shape + (heads, head_dim))
        self.built = True

    def load_own_variables(self, store):
        if len(store.keys()):
            raise ValueError(
                f"{self.name}: this checkpoint holds the attention weights as the layer's own variables, "
                "as the zoo saved them before its projections became keras.layers.EinsumDense sublayers; "
                "it does not load into this version."
            )

    def projections(self):
        """The projection sublayers by name: `query_key_value` (or `query` and `key_value` for
        cross-attention) and `output`. What LoRA adapts (`zoo.models.lora`). (A method, not a
        property: Keras' saving walks properties, and would file the layers under this name.)"""
        if self.is_cross_attention:
            return {"query": self.query_dense, "key_value": self.key_value_dense, "output": self.output_dense}
        return {"query_key_value": self.query_key_value_dense, "output": self.output_dense}

    @staticmethod
    def _project(dense, x):
        if x.shape[0] == 1 and x.shape[1] == 1 and dense.quantization_mode is None:
            # One token of one sequence (greedy decoding of a single prompt): a vector-matrix
            # product. XLA on CPU fuses the einsum's kernel reshape into it and emits a naive
            # loop that walks the kernel column by column; multiply-and-sum over the kernel's
            # first axis walks it row by row instead (generation 1.25x faster at batch 1).
            # `dense.kernel` has any LoRA update folded in; a quantised layer computes itself.
            y = ops.sum(x[:, :, :, None, None] * dense.kernel, axis=2)
            return y if dense.bias is None else y + dense.bias
        return dense(x)

    def _query_key_value(self, query, value):
        heads, kv_heads = self.num_heads, self.num_key_value_heads
        # ops.split, not three slices: the gradient of a split is one concatenation, that of each
        # slice a zero tensor of the full projection's size with the slice's gradient padded in.
        if self.is_cross_attention:
            q = self._project(self.query_dense, query)
            k, v = ops.split(self._project(self.key_value_dense, value), 2, axis=2)
            return q, k, v
        return ops.split(self._project(self.query_key_value_dense, query), [heads, heads + kv_heads], axis=2)

    def _mask(self, query_length, key_length, padding_mask, attention_mask, start_index, cached):
        """Boolean `[batch or 1, query_length, key_length]` mask, or None when nothing is masked."""
        masks = []
        if padding_mask is not None:
            masks.append(ops.cast(padding_mask, "bool")[:, None, :])
        if attention_mask is not None:
            masks.append(ops.cast(attention_mask, "bool"))
        if self.causal or cached:
            query_positions = ops.arange(query_length)[:, None] + start_index
            key_positions = ops.arange(key_length)[None, :]
            if self.causal:
                allowed = query_positions >= key_positions
            else:  # a cache's unfilled tail holds zeros, not keys
                allowed = key_positions < start_index + query_length
            masks.append(allowed[None])
        if not masks:
            return None
        mask = masks[0]
        for other in masks[1:]:
            mask = ops.logical_and(mask, other)
        return mask

    def _uses_fused_attention(self, training):
        if self.attention_implementation == "einsum" or (training and self.dropout > 0):
            return False
        return self.attention_implementation == "fused" or fused_attention_is_faster()

    def _attend_fused(self, q, k, v, padding_mask, attention_mask, start_index, cached):
        """The context through `keras.ops.dot_product_attention` (grouped heads and all)."""
        scale = 1.0 / math.sqrt(self.head_dim)
        if self.num_key_value_heads == 1 < self.num_heads and keras.backend.backend() == "tensorflow":
            # Keras 3.15's TensorFlow dot_product_attention repeats grouped key/value heads
            # but not a single one (multi-query attention), which its einsum then rejects.
            k = ops.repeat(k, self.num_heads, axis=2)
            v = ops.repeat(v, self.num_heads, axis=2)
        if self.causal and not cached and padding_mask is None and attention_mask is None:
            # Causal only: the kernel's own causal mode (cuDNN's flash attention has one).
            return ops.dot_product_attention(q, k, v, scale=scale, is_causal=True)
        mask = self._mask(ops.shape(q)[1], ops.shape(k)[1], padding_mask, attention_mask, start_index, cached)
        if mask is not None:
            mask = mask[:, None, :, :]  # [batch or 1, 1 (heads), query, key]
        return ops.dot_product_attention(q, k, v, mask=mask, scale=scale)

    def _attend(self, q, k, v, mask, training):
        """Context `[B, T, heads, head_dim]` from q `[B, T, heads, head_dim]` and k, v `[B, S, kv_heads, head_dim]`.

        Three ways to the same numbers, by what is fastest:
        - one query token (a decoding step with the cache): a matrix-vector product, written
          as multiply-and-sum in float32, which XLA fuses into one pass over the cache, where
          an einsum would first copy the whole cache into a transposed layout every step;
        - one query head per key/value head (ordinary multi-head attention): 4-D einsums;
        - grouped queries: 5-D einsums over `[B, T, kv_heads, groups, head_dim]`.
        Softmax always runs in float32: bfloat16/float16 scores lose the small differences
        that matter.
        """
        if q.shape[1] == 1:
            return self._attend_one_query(q, k, v, mask, training)
        batch, query_length = ops.shape(q)[0], ops.shape(q)[1]
        groups = self.num_heads // self.num_key_value_heads
        q = q * ops.cast(1.0 / math.sqrt(self.head_dim), q.dtype)
        if groups == 1:
            scores = ops.einsum("btnh,bsnh->bnts", q, k)
        else:
            # Queries grouped by the key/value head they share: [B, T, kv_heads, groups, head_dim].
            q = ops.reshape(q, (batch, query_length, self.num_key_value_heads, groups, self.head_dim))
            scores = ops.einsum("btkgh,bskh->bkgts", q, k)
        scores = ops.cast(scores, "float32")
        if mask is not None:
            mask = mask[:, None, :, :] if groups == 1 else mask[:, None, None, :, :]
            scores = ops.where(mask, scores, _MASKED_SCORE)
        weights = ops.cast(ops.softmax(scores, axis=-1), self.compute_dtype)
        weights = self.dropout_layer(weights, training=training)
        if groups == 1:
            return ops.einsum("bnts,bsnh->btnh", weights, v)
        context = ops.einsum("bkgts,bskh->btkgh", weights, v)
        return ops.reshape(context, (batch, query_length, self.num_heads, self.head_dim))

    def _attend_one_query(self, q, k, v, mask, training):
        batch = ops.shape(q)[0]
        kv_heads, head_dim = self.num_key_value_heads, self.head_dim
        groups = self.num_heads // kv_heads
        q = ops.reshape(ops.cast(q, "float32"), (batch, 1, kv_heads, groups, head_dim)) * (1.0 / math.sqrt(head_dim))
        # scores [B, S, kv_heads, groups]: each key against the queries of its group.
        scores = ops.sum(q * ops.cast(k, "float32")[:, :, :, None, :], axis=-1)
        if mask is not None:
            scores = ops.where(ops.transpose(mask, (0, 2, 1))[:, :, :, None], scores, _MASKED_SCORE)
        weights = self.dropout_layer(ops.softmax(scores, axis=1), training=training)
        context = ops.sum(weights[..., None] * ops.cast(v, "float32")[:, :, :, None, :], axis=1)  # [B, kv_heads, groups, head_dim]
        return ops.cast(ops.reshape(context, (batch, 1, self.num_heads, head_dim)), self.compute_dtype)

    def call(
        self,
        query,
        value=None,
        padding_mask=None,
        attention_mask=None,
        cache=None,
        cache_index=None,
        training=None,
    ):
        if cache is not None and self.is_cross_attention:
            raise ValueError("A KV cache is for self-attention; cross-attention recomputes keys from `value`.")
        if cache is not None and cache_index is None:
            raise ValueError("`cache_index` (the position of the first query token) is required with `cache`.")
        start_index = 0 if cache is None else cache_index
        q, k, v = self._query_key_value(query, query if value is None else value)
        if self.rotary_embedding is not None:
            q = self.rotary_embedding(q, start_index=start_index)
            k = self.rotary_embedding(k, start_index=start_index)
        if cache is not None:
            new_key_values = ops.cast(ops.stack([k, v], axis=1), cache.dtype)
            cache = ops.slice_update(cache, [0, 0, cache_index, 0, 0], new_key_values)
            k = ops.cast(cache[:, 0], self.compute_dtype)
            v = ops.cast(cache[:, 1], self.compute_dtype)
        if self._uses_fused_attention(training):
            context = self._attend_fused(q, k, v, padding_mask, attention_mask, start_index, cache is not None)
        else:
            mask = self._mask(
                ops.shape(q)[1], ops.shape(k)[1], padding_mask, attention_mask, start_index, cache is not None
            )
            context = self._attend(q, k, v, mask, training)
        output = self.output_dense(context)
        return output if cache is None else (output, cache)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            key_dim=self.key_dim,
            num_key_value_heads=self.num_key_value_heads,
            causal=self.causal,
            dropout=self.dropout,
            use_bias=self.use_bias,
            use_rotary=self.use_rotary,
            rotary_max_wavelength=self.rotary_max_wavelength,
            output_dim=self.output_dim,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
            output_kernel_initializer=(
                None if self.output_kernel_initializer is None
                else keras.initializers.serialize(self.output_kernel_initializer)
            ),
            attention_implementation=self.attention_implementation,
        )
        return config

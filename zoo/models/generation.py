"""Autoregressive generation with a KV cache: greedy, temperature, top-k and top-p sampling.

The loop is one `keras.ops.while_loop` over fixed-shape tensors, so it traces into a single
graph (a `tf.while_loop` on TensorFlow, `lax.while_loop` on JAX): the SavedModel export runs
the very same function. Sampling parameters are tensors, so changing them never retraces.

Sampling parameters may be scalars (one setting for the batch) or vectors with one value per
row, so requests with different settings (a seed each, say) still run as one batch.

Prompts of different lengths share one right-padded buffer `[batch, length]`. Decoding starts
at the shortest prompt; rows whose prompt is longer keep their own tokens until it ends
(keras-hub's approach). The KV cache is first filled by one pass over the whole buffer; each
step then writes one position.
"""

import keras
from keras import ops

_NEGATIVE = -1e9
_PREFILL_CHUNK = 16  # prompt tokens the cache prefill processes at once


def _mix(x):
    """lowbias32 (C. Wellons): a bijective uint32 hash in which every output bit depends on every input bit."""
    x = ops.bitwise_xor(x, ops.right_shift(x, 16))
    x = ops.multiply(x, ops.convert_to_tensor(0x7FEB352D, "uint32"))
    x = ops.bitwise_xor(x, ops.right_shift(x, 15))
    x = ops.multiply(x, ops.convert_to_tensor(0x846CA68B, "uint32"))
    return ops.bitwise_xor(x, ops.right_shift(x, 16))


def _per_row(value, rows, dtype):
    """`value`, a scalar or one value per row, as a `[rows]` tensor of `dtype`.

    A scalar is broadcast, so a batch with one setting computes exactly what a batch with that
    setting repeated per row does.
    """
    return ops.broadcast_to(ops.reshape(ops.cast(value, dtype), (-1,)), (rows,))


def stateless_uniform(shape, seed, step):
    """Uniform (0, 1) noise `shape = (rows, columns)` determined by an integer seed and a step.

    A counter-based generator in integer `keras.ops`: element i of a step is a hash of i and
    of a key hashed from (seed, step). Generation takes the seed as a per-call tensor (the
    serving signature does), which Keras' random ops do not accept; and the backends' own
    stateless generators disagree with themselves (TensorFlow's kernels and XLA derive
    different streams from one seed). This one gives the same bits in TensorFlow, under XLA
    and on JAX, so a seed gives the same text in-process (compiled) and from a SavedModel.
    24 bits of resolution, ample for Gumbel-max sampling.

    `seed` is a scalar or one seed per row: row r's noise is then what a batch with its seed
    for every row draws at row r.
    """
    seed = ops.cast(ops.reshape(ops.cast(seed, "int32"), (-1, 1)), "uint32")  # [1, 1] or [rows, 1]
    step = ops.cast(ops.convert_to_tensor(step, "int32"), "uint32")
    key = _mix(seed * ops.convert_to_tensor(0x9E3779B9, "uint32") + step)
    index = ops.cast(ops.reshape(ops.arange(shape[0] * shape[1]), shape), "uint32")
    bits = _mix(ops.bitwise_xor(_mix(index), key))
    return (ops.cast(ops.right_shift(bits, 8), "float32") + 0.5) * (1.0 / (1 << 24))


def sample_next_token(logits, temperature, top_k, top_p, uniform):
    """Next token ids `[batch]` from logits `[batch, vocabulary]`.

    `temperature`, `top_k` and `top_p` are scalars or `[batch]` vectors (a setting per row).
    A row with `temperature <= 0` or `top_k == 1` is greedy (argmax; ties go to the lowest id).
    Otherwise its logits are divided by the temperature, restricted to the `top_k` best
    (`top_k <= 0`: no limit) and to the smallest set of best tokens whose probability reaches
    `top_p` (`top_p >= 1`: no limit), and one token is drawn with the Gumbel-max trick from the
    `uniform` noise `[batch, vocabulary]`. Tokens tied with the last one kept are kept too.

    `uniform` may be the noise itself or a function returning it: a function is called only
    when sampling, so greedy decoding draws no noise.

    Cost: greedy is one argmax and sampling without filters one argmax over noisy logits;
    neither sorts. `top_k` up to `TOP_K_CANDIDATES` looks at that many best tokens
    (`ops.top_k`, a partial sort), then applies `top_p` among them. A larger `top_k`, or
    `top_p < 1` without `top_k`, sorts the whole vocabulary: top-p needs the exact
    probability mass of all tokens ahead of each. (Ties with the k-th best token that fall
    outside the `TOP_K_CANDIDATES` best are the only difference from a full sort.) A batch
    whose rows need different paths runs each needed path once and picks per row.
    """
    logits = ops.cast(logits, "float32")
    rows = ops.shape(logits)[0]
    temperature = _per_row(temperature, rows, "float32")
    top_k = _per_row(top_k, rows, "int32")
    top_p = _per_row(top_p, rows, "float32")
    greedy_rows = ops.logical_or(temperature <= 0, top_k == 1)

    def greedy():
        return ops.cast(ops.argmax(logits, axis=-1), "int32")

    def mixed():
        scaled = logits / ops.maximum(temperature, 1e-6)[:, None]
        return ops.where(greedy_rows, greedy(), _sample(scaled, top_k, top_p, uniform))

    return ops.cond(ops.all(greedy_rows), greedy, mixed)


# top_k <= this samples among the best tokens found by a partial sort (`ops.top_k` needs a
# static k); larger values sort the whole vocabulary. 64 covers the usual settings (40, 50).
TOP_K_CANDIDATES = 64


def _gumbel(uniform):
    return -ops.log(-ops.log(ops.clip(uniform, 1e-10, 1.0 - 1e-7)))


def _sample(scaled, top_k, top_p, uniform):
    """The sampling rows of `sample_next_token`: `scaled` = logits / temperature, `top_k` and
    `top_p` `[batch]`."""
    vocabulary_size = scaled.shape[-1]
    candidates = min(TOP_K_CANDIDATES, vocabulary_size)
    noise = uniform if not callable(uniform) else None

    def get_noise():
        return uniform() if noise is None else noise

    def unfiltered(noise):
        return ops.cast(ops.argmax(scaled + _gumbel(noise), axis=-1), "int32")

    def among_candidates(noise):
        values, indices = ops.top_k(scaled, candidates)  # best first
        choice = _filtered_choice(values, top_k, top_p, ops.take_along_axis(noise, indices, axis=-1))
        return ops.cast(ops.take_along_axis(indices, choice[:, None], axis=-1)[:, 0], "int32")

    def whole_vocabulary(noise):
        descending = ops.flip(ops.sort(scaled, axis=-1), axis=-1)
        kept = _kept_values(descending, top_k, top_p)
        filtered = ops.where(scaled >= kept, scaled, _NEGATIVE)
        return ops.cast(ops.argmax(filtered + _gumbel(noise), axis=-1), "int32")

    candidate_rows = ops.logical_and(top_k > 0, top_k <= candidates)
    no_top_k = ops.logical_or(top_k <= 0, top_k >= vocabulary_size)
    unfiltered_rows = ops.logical_and(ops.logical_not(candidate_rows), ops.logical_and(no_top_k, top_p >= 1.0))
    whole_rows = ops.logical_not(ops.logical_or(candidate_rows, unfiltered_rows))

    def per_row():
        # Rows with different settings: each path that some row needs runs once.
        noise = get_noise()
        unused = ops.zeros_like(top_k)

        def path(rows, function):
            return ops.cond(ops.any(rows), lambda: function(noise), lambda: unused)

        return ops.where(
            candidate_rows,
            path(candidate_rows, among_candidates),
            ops.where(unfiltered_rows, path(unfiltered_rows, unfiltered), path(whole_rows, whole_vocabulary)),
        )

    return ops.cond(
        ops.all(candidate_rows),
        lambda: among_candidates(get_noise()),
        lambda: ops.cond(ops.all(unfiltered_rows), lambda: unfiltered(get_noise()), per_row),
    )


def _kept_values(descending, top_k, top_p):
    """`[batch, 1]`: the smallest value kept by top-k and top-p (`[batch]` each), from values sorted best first."""
    size = descending.shape[-1]
    k = ops.where(top_k > 0, ops.minimum(top_k, size), size)
    kth_best = ops.take_along_axis(descending, (k - 1)[:, None], axis=-1)
    descending = ops.where(descending >= kth_best, descending, _NEGATIVE)
    probabilities = ops.softmax(descending, axis=-1)
    mass_before = ops.cumsum(probabilities, axis=-1) - probabilities
    kept = ops.logical_and(mass_before < top_p[:, None], descending > _NEGATIVE)
    threshold = ops.min(ops.where(kept, descending, -_NEGATIVE), axis=-1)[:, None]
    return ops.maximum(threshold, kth_best)


def _filtered_choice(values, top_k, top_p, uniform):
    """Index into `values` (sorted best first) of the Gumbel-max choice among those kept."""
    filtered = ops.where(values >= _kept_values(values, top_k, top_p), values, _NEGATIVE)
    return ops.argmax(filtered + _gumbel(uniform), axis=-1)


def generate_tokens(
    decoder,
    token_ids,
    prompt_lengths,
    max_new_tokens,
    end_token_id=-1,
    temperature=0.0,
    top_k=0,
    top_p=1.0,
    seed=0,
    pad_token_id=0,
):
    """Fills `token_ids [batch, length]` after each prompt; returns the filled buffer.

    Args:
        decoder: a `zoo.models.Decoder` (logits and KV cache).
        token_ids: int `[batch, length]`, prompts right-padded with `pad_token_id`; `length`
            must not exceed the decoder's `sequence_length`.
        prompt_lengths: int `[batch]`, each at least 1.
        max_new_tokens: scalar or `[batch]`: tokens to add after each prompt (capped by the buffer).
        end_token_id: a row stops after producing it (-1: never).
        temperature, top_k, top_p, seed: see `sample_next_token`; scalars or `[batch]` (tensors allowed).

    After a row stops, its remaining positions hold `pad_token_id`.
    """
    token_ids = ops.cast(token_ids, "int32")
    prompt_lengths = ops.cast(prompt_lengths, "int32")
    # The batch may be dynamic (a serving signature takes any batch); the length must be static.
    batch_size, length = ops.shape(token_ids)[0], token_ids.shape[1]
    # One cache per layer in the loop state (see Decoder's `cache`): updated in place.
    cache = ops.unstack(decoder.init_cache(batch_size, length), axis=1)
    # Decoding starts at the shortest prompt. The bound keeps the prefill finite whatever the
    # input: the minimum of an empty batch is the int32 maximum, and a 0 length is no prompt.
    start = ops.clip(ops.min(prompt_lengths), 1, length)
    # The output projection, transposed once before the loop (see Decoder.output_kernel): 1.1x
    # faster decoding at batch 8 on a CPU. At a static batch of 1, XLA's fused transpose-and-dot
    # (a dot per row of the token table, in its own layout) is faster than a vector-matrix product.
    output_kernel = None if token_ids.shape[0] == 1 else decoder.output_kernel()
    cache, next_logits = _prefill(decoder, token_ids, start, cache, output_kernel)
    stop_at = ops.minimum(prompt_lengths + ops.cast(max_new_tokens, "int32"), length)
    done = stop_at <= prompt_lengths
    end_token_id = ops.cast(end_token_id, "int32")

    def should_continue(index, token_ids, cache, next_logits, done):
        return ops.logical_and(index < length, ops.logical_not(ops.all(done)))

    def step(index, token_ids, cache, next_logits, done):
        uniform = lambda: stateless_uniform((batch_size, decoder.vocabulary_size), seed, index)  # noqa: E731
        sampled = sample_next_token(next_logits, temperature, top_k, top_p, uniform)
        in_prompt = index < prompt_lengths
        token = ops.where(in_prompt, ops.take(token_ids, index, axis=1), ops.where(done, pad_token_id, sampled))
        token_ids = ops.slice_update(token_ids, [0, index], token[:, None])
        generated = ops.logical_and(ops.logical_not(in_prompt), ops.logical_not(done))
        finished = ops.logical_or(token == end_token_id, index + 1 >= stop_at)
        done = ops.logical_or(done, ops.logical_and(generated, finished))
        hidden_states, cache = decoder(token[:, None], cache=cache, cache_index=index, return_hidden_states=True)
        return index + 1, token_ids, cache, decoder.logits(hidden_states[:, 0], output_kernel), done

    _, token_ids, _, _, _ = ops.while_loop(should_continue, step, (start, token_ids, cache, next_logits, done))
    return token_ids


def _prefill(decoder, token_ids, start, cache, output_kernel):
    """Fills the cache with positions `[0, start)`; returns it and the logits `[batch, vocabulary]` at `start - 1`.

    The decoding loop feeds every later position itself (the rest of longer prompts
    included), so the prefill covers the shortest prompt only. It runs in chunks of
    `_PREFILL_CHUNK` tokens, as many as `start` needs: the work follows the prompt, not the
    buffer, in one compiled function for every prompt length. (A chunk may run past `start`;
    the cache entries it writes there are causally masked until the loop overwrites them.)
    Only one position is projected onto the vocabulary.
    """
    batch_size, length = ops.shape(token_ids)[0], token_ids.shape[1]
    chunk = min(_PREFILL_CHUNK, length)

    def chunk_start(offset):  # the last chunk of a buffer that is not a multiple of `chunk` overlaps the one before
        return ops.minimum(offset, length - chunk)

    def run_chunk(offset, cache, hidden_states):
        first = chunk_start(offset)
        chunk_ids = ops.take(token_ids, first + ops.arange(chunk), axis=1)
        hidden_states, cache = decoder(chunk_ids, cache=cache, cache_index=first, return_hidden_states=True)
        return offset + chunk, cache, hidden_states

    hidden_states = ops.zeros((batch_size, chunk, decoder.hidden_dim), dtype=decoder.compute_dtype)
    offset, cache, hidden_states = ops.while_loop(
        lambda offset, cache, hidden_states: offset < start, run_chunk, (ops.convert_to_tensor(0, "int32"), cache, hidden_states)
    )
    last = ops.take(hidden_states, start - 1 - chunk_start(offset - chunk), axis=1)
    return cache, decoder.logits(last, output_kernel)


def compile_function(function, model):
    """`function` compiled for the current backend, reading `model`'s current weights on every call.

    TensorFlow: a `tf.function` compiled with XLA (`jit_compile=True`; one trace and one XLA
    compilation per input shape, tensor values never retrace). XLA fuses the small ops of a
    decoding step, which otherwise run one kernel launch each: 7x faster greedy decoding on
    a CPU (bench/generation.py).
    JAX: `jax.jit` over a stateless call, the weights passed as arguments (not baked in as
    constants, so training after the first call is seen).
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(function, reduce_retracing=False, jit_compile=True)
    if backend == "jax":
        import jax

        variables = model.variables

        def stateless(values, *args):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return function(*args)

        compiled = jax.jit(stateless)
        return lambda *args: compiled([variable.value for variable in variables], *args)
    return function

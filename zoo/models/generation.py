"""Autoregressive generation with a KV cache: greedy, temperature, top-k and top-p sampling.

The loop is one `keras.ops.while_loop` over fixed-shape tensors, so it traces into a single
graph (a `tf.while_loop` on TensorFlow, `lax.while_loop` on JAX): the SavedModel export runs
the very same function. Sampling parameters are tensors, so changing them never retraces.

Prompts of different lengths share one right-padded buffer `[batch, length]`. Decoding starts
at the shortest prompt; rows whose prompt is longer keep their own tokens until it ends
(keras-hub's approach). The KV cache is first filled by one pass over the whole buffer; each
step then writes one position.
"""

import keras
from keras import ops

_NEGATIVE = -1e9


def stateless_uniform(shape, seed, step):
    """Uniform [0, 1) noise determined by an integer seed tensor and a step.

    Keras' random ops take a Python int or a SeedGenerator, not a seed tensor, and generation
    needs the seed as a per-call input (the serving signature takes it), hence this small
    backend dispatch.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.random.stateless_uniform(shape, seed=tf.stack([tf.cast(seed, tf.int32), tf.cast(step, tf.int32)]))
    if backend == "jax":
        import jax

        key = jax.random.fold_in(jax.random.PRNGKey(seed), step)
        return jax.random.uniform(key, shape)
    raise NotImplementedError(f"Sampling has no stateless random source for the {backend!r} backend.")


def sample_next_token(logits, temperature, top_k, top_p, uniform):
    """Next token ids `[batch]` from logits `[batch, vocabulary]`.

    `temperature <= 0` is greedy (argmax). Otherwise logits are divided by the temperature,
    restricted to the `top_k` best (`top_k <= 0`: no limit) and to the smallest set of best
    tokens whose probability reaches `top_p` (`top_p >= 1`: no limit), and one token is drawn
    with the Gumbel-max trick from the `uniform` noise `[batch, vocabulary]`. Tokens tied with
    the last one kept are kept too.
    """
    logits = ops.cast(logits, "float32")
    vocabulary_size = logits.shape[-1]
    greedy = ops.argmax(logits, axis=-1)
    scaled = logits / ops.maximum(ops.cast(temperature, "float32"), 1e-6)
    descending = ops.flip(ops.sort(scaled, axis=-1), axis=-1)
    top_k = ops.cast(top_k, "int32")
    k = ops.where(top_k > 0, ops.minimum(top_k, vocabulary_size), vocabulary_size)
    kth_best = ops.take(descending, k - 1, axis=-1)[:, None]
    descending = ops.where(descending >= kth_best, descending, _NEGATIVE)
    probabilities = ops.softmax(descending, axis=-1)
    mass_before = ops.cumsum(probabilities, axis=-1) - probabilities
    kept = ops.logical_and(mass_before < ops.cast(top_p, "float32"), descending > _NEGATIVE)
    threshold = ops.min(ops.where(kept, descending, -_NEGATIVE), axis=-1)[:, None]
    filtered = ops.where(scaled >= ops.maximum(threshold, kth_best), scaled, _NEGATIVE)
    gumbel = -ops.log(-ops.log(ops.clip(uniform, 1e-10, 1.0 - 1e-7)))
    sampled = ops.argmax(filtered + gumbel, axis=-1)
    return ops.cast(ops.where(ops.cast(temperature, "float32") > 0, sampled, greedy), "int32")


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
        temperature, top_k, top_p, seed: see `sample_next_token`; scalars (tensors allowed).

    After a row stops, its remaining positions hold `pad_token_id`.
    """
    token_ids = ops.cast(token_ids, "int32")
    prompt_lengths = ops.cast(prompt_lengths, "int32")
    # The batch may be dynamic (a serving signature takes any batch); the length must be static.
    batch_size, length = ops.shape(token_ids)[0], token_ids.shape[1]
    cache = decoder.init_cache(batch_size, length)
    logits, cache = decoder(token_ids, cache=cache, cache_index=0)
    start = ops.min(prompt_lengths)
    next_logits = ops.take(logits, start - 1, axis=1)
    stop_at = ops.minimum(prompt_lengths + ops.cast(max_new_tokens, "int32"), length)
    done = stop_at <= prompt_lengths
    end_token_id = ops.cast(end_token_id, "int32")

    def should_continue(index, token_ids, cache, next_logits, done):
        return ops.logical_and(index < length, ops.logical_not(ops.all(done)))

    def step(index, token_ids, cache, next_logits, done):
        uniform = stateless_uniform((batch_size, decoder.vocabulary_size), seed, index)
        sampled = sample_next_token(next_logits, temperature, top_k, top_p, uniform)
        in_prompt = index < prompt_lengths
        token = ops.where(in_prompt, ops.take(token_ids, index, axis=1), ops.where(done, pad_token_id, sampled))
        token_ids = ops.slice_update(token_ids, [0, index], token[:, None])
        generated = ops.logical_and(ops.logical_not(in_prompt), ops.logical_not(done))
        finished = ops.logical_or(token == end_token_id, index + 1 >= stop_at)
        done = ops.logical_or(done, ops.logical_and(generated, finished))
        step_logits, cache = decoder(token[:, None], cache=cache, cache_index=index)
        return index + 1, token_ids, cache, step_logits[:, 0], done

    _, token_ids, _, _, _ = ops.while_loop(should_continue, step, (start, token_ids, cache, next_logits, done))
    return token_ids


def compile_function(function, model):
    """`function` compiled for the current backend, reading `model`'s current weights on every call.

    TensorFlow: a `tf.function` (one trace per input shape; tensor values never retrace).
    JAX: `jax.jit` over a stateless call, the weights passed as arguments (not baked in as
    constants, so training after the first call is seen).
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(function, reduce_retracing=False)
    if backend == "jax":
        import jax

        variables = model.variables

        def stateless(values, *args):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return function(*args)

        compiled = jax.jit(stateless)
        return lambda *args: compiled([variable.value for variable in variables], *args)
    return function

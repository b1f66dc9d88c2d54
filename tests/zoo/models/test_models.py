import keras
import numpy as np
import pytest
from keras import ops

from zoo.models import generation
from zoo.models import (
    CausalLM,
    Decoder,
    Encoder,
    MacroClassificationMetric,
    MaskedLM,
    Perplexity,
    TextClassifier,
    sample_next_token,
)

rng = np.random.default_rng(5)
VOCAB = 40


def numpy(t):
    return ops.convert_to_numpy(t)


def compiled(function):
    """`function` under jax.jit on JAX (as generation runs it), else as it is. JAX runs eager
    operations one compiled primitive at a time: a test of many small ops is then slow."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(function)
    return function


def small_decoder(**kwargs):
    keras.utils.set_random_seed(0)
    return Decoder(VOCAB, 32, num_layers=2, hidden_dim=16, num_heads=2, intermediate_dim=32, **kwargs)


def small_encoder(**kwargs):
    keras.utils.set_random_seed(0)
    return Encoder(VOCAB, 16, num_layers=2, hidden_dim=16, num_heads=2, intermediate_dim=32, dropout=0.0, **kwargs)


@pytest.fixture(scope="module")
def causal_lm():
    return CausalLM(small_decoder())


def greedy_without_cache(model, prompt, steps):
    """Greedy decoding by full causal passes, no cache: each step reads the logits at the last
    token. The ids sit in a buffer of the model's full context (causal: the tail does not
    matter), so every pass has the same shape (JAX compiles each new shape's operations anew)."""
    buffer = np.zeros((1, model.decoder.sequence_length), "int32")
    buffer[0, : len(prompt)] = prompt
    for length in range(len(prompt), len(prompt) + steps):
        buffer[0, length] = int(numpy(model(buffer))[0, length - 1].argmax())
    return buffer[0, len(prompt) : len(prompt) + steps].tolist()


def test_decoder_kv_cache_equals_full_pass():
    decoder = small_decoder(num_key_value_heads=1, use_rotary=True, position_embedding_type="none")
    ids = rng.integers(0, VOCAB, size=(2, 9)).astype("int32")
    full = numpy(decoder(ids))
    cache = decoder.init_cache(2, 9)
    steps = []
    for index in range(9):
        logits, cache = decoder(ids[:, index : index + 1], cache=cache, cache_index=index)
        steps.append(numpy(logits))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-4)


def test_decoder_output_is_tied_to_token_embedding():
    decoder = small_decoder()
    decoder(np.zeros((1, 2), "int32"))
    # The only vocabulary-sized weight is the embedding table: the output projection reuses it.
    assert [w.path for w in decoder.weights if VOCAB in w.shape] == [decoder.token_embedding.embeddings.path]


def test_greedy_generation_with_cache_equals_without_cache(causal_lm):
    prompts = [[3, 4, 5], [7, 8, 9, 10, 11, 12]]
    generated = causal_lm.generate(prompts, max_new_tokens=7)
    for prompt, tokens in zip(prompts, generated):
        assert tokens == greedy_without_cache(causal_lm, prompt, 7)


def test_batched_prompts_equal_single_prompts(causal_lm):
    prompts = [[1], [2, 3, 4, 5], [6, 7]]
    batched = causal_lm.generate(prompts, max_new_tokens=5, temperature=0.0)
    assert batched == [causal_lm.generate([p], max_new_tokens=5)[0] for p in prompts]


def test_generation_compiles_once_per_shape(causal_lm):
    causal_lm.generate([[1, 2], [3, 4]], max_new_tokens=4)
    traces = causal_lm.generate_traces
    # Same (batch, buffer) shape: other prompts, lengths and sampling settings reuse the function.
    causal_lm.generate([[5], [6, 7, 8]], max_new_tokens=6, temperature=0.8, top_k=5, top_p=0.9, seed=3)
    causal_lm.generate([[9, 9, 9], [1]], max_new_tokens=3, temperature=1.5, seed=4)
    assert causal_lm.generate_traces == traces


def test_sampling_is_seeded_and_stops_at_end_token(causal_lm):
    a = causal_lm.generate([[1, 2, 3]], max_new_tokens=10, temperature=1.0, seed=11)
    b = causal_lm.generate([[1, 2, 3]], max_new_tokens=10, temperature=1.0, seed=11)
    c = causal_lm.generate([[1, 2, 3]], max_new_tokens=10, temperature=1.0, seed=12)
    assert a == b and a != c
    first = causal_lm.generate([[1, 2, 3]], max_new_tokens=10)[0]
    stopped = causal_lm.generate([[1, 2, 3]], max_new_tokens=10, end_token_id=first[2])[0]
    assert stopped == first[: first.index(first[2]) + 1]


def test_sample_next_token_filters():
    logits = np.log(np.array([[0.5, 0.3, 0.1, 0.06, 0.04]] * 4000, "float32"))
    noise = np.random.default_rng(0).random((4000, 5)).astype("float32")
    sample_next_token = compiled(generation.sample_next_token)
    greedy = numpy(sample_next_token(logits, 0.0, 0, 1.0, noise))
    assert set(greedy) == {0}
    top_k = numpy(sample_next_token(logits, 1.0, 2, 1.0, noise))
    assert set(top_k) == {0, 1}
    assert abs((top_k == 0).mean() - 0.5 / 0.8) < 0.03  # renormalised over the top 2
    top_p = numpy(sample_next_token(logits, 1.0, 0, 0.85, noise))  # 0.5 + 0.3 < 0.85: needs the third
    assert set(top_p) == {0, 1, 2}
    free = numpy(sample_next_token(logits, 1.0, 0, 1.0, noise))
    np.testing.assert_allclose(np.bincount(free, minlength=5) / 4000, [0.5, 0.3, 0.1, 0.06, 0.04], atol=0.03)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="jax.jit always compiles with XLA")
def test_generation_is_compiled_with_xla(causal_lm):
    causal_lm.generate([[1, 2, 3]], max_new_tokens=2)
    function = causal_lm._generate_functions.functions[(1, 16)]
    scalars = [np.int32(2), np.int32(-1), np.float32(0), np.int32(0), np.float32(1), np.int32(0)]
    concrete = function.get_concrete_function(np.zeros((1, 16), "int32"), np.array([3], "int32"), *scalars)
    assert concrete.function_def.attr["_XlaMustCompile"].b


def test_prompts_longer_than_a_prefill_chunk_and_a_ragged_buffer():
    # Context 40: a 35-token prompt + 4 new tokens fills a 40-token buffer, which 16-token
    # prefill chunks do not divide (the last chunk overlaps the one before).
    model = CausalLM(Decoder(VOCAB, 40, num_layers=2, hidden_dim=16, num_heads=2, intermediate_dim=32))
    long_prompt = rng.integers(0, VOCAB, size=35).tolist()
    for prompts in ([long_prompt], [long_prompt, long_prompt[:17], long_prompt[:3]]):
        generated = model.generate(prompts, max_new_tokens=4)
        assert generated == [greedy_without_cache(model, prompt, 4) for prompt in prompts]


def reference_sample(logits, temperature, top_k, top_p, uniform):
    """The filters of `sample_next_token` over the fully sorted vocabulary, in NumPy."""
    scaled = logits / temperature
    descending = -np.sort(-scaled, axis=-1)
    k = top_k if 0 < top_k < scaled.shape[-1] else scaled.shape[-1]
    kth_best = descending[:, k - 1 : k]
    kept_values = np.where(descending >= kth_best, descending, -np.inf)
    probabilities = np.exp(kept_values - kept_values[:, :1])
    probabilities /= probabilities.sum(-1, keepdims=True)
    mass_before = np.cumsum(probabilities, -1) - probabilities
    kept = (mass_before < top_p) & (kept_values > -np.inf)
    threshold = np.maximum(np.where(kept, descending, np.inf).min(-1, keepdims=True), kth_best)
    gumbel = -np.log(-np.log(np.clip(uniform, 1e-10, 1 - 1e-7)))
    return np.argmax(np.where(scaled >= threshold, scaled, -1e9) + gumbel, axis=-1)


# One function (one compilation on JAX) for every case: the settings are tensors, not constants.
sample_with_noise_and_noise_function = compiled(
    lambda *args: (sample_next_token(*args), sample_next_token(*args[:-1], lambda: args[-1]))
)


@pytest.mark.parametrize("top_k,top_p", [(5, 1.0), (40, 0.9), (64, 0.5), (65, 1.0), (0, 0.9), (0, 1.0), (1, 1.0)])
def test_sampling_paths_equal_filters_over_the_sorted_vocabulary(top_k, top_p):
    # top_k <= 64 samples among a partial sort's candidates, larger top_k or top-p alone sort
    # the whole vocabulary, no filter sorts nothing, top_k == 1 is greedy: all as if sorted.
    sample_rng = np.random.default_rng(top_k)
    logits = sample_rng.normal(scale=3.0, size=(64, 300)).astype("float32")
    noise = sample_rng.random((64, 300)).astype("float32")
    expected = reference_sample(logits, 0.7, top_k, top_p, noise)
    if top_k == 1:
        expected = logits.argmax(-1)
    # The noise may also be given as a function (the second result): greedy decoding then never draws it.
    for actual in sample_with_noise_and_noise_function(logits, 0.7, top_k, top_p, noise):
        np.testing.assert_array_equal(numpy(actual), expected)


def test_task_models_reload_from_keras_files(tmp_path):
    ids = rng.integers(5, VOCAB, size=(2, 8)).astype("int32")
    padding = np.ones((2, 8), bool)
    cases = [
        (CausalLM(small_decoder()), ids),
        (MaskedLM(small_encoder()), {"token_ids": ids, "padding_mask": padding, "mask_positions": np.array([[1, 2], [3, 0]], "int32")}),
        (TextClassifier(small_encoder(num_segments=2), num_classes=3), {"token_ids": ids, "padding_mask": padding}),
    ]
    for model, inputs in cases:
        expected = numpy(model(inputs))
        path = tmp_path / f"{model.name}.keras"
        model.save(path)
        reloaded = keras.saving.load_model(path)
        assert type(reloaded) is type(model)
        np.testing.assert_allclose(numpy(reloaded(inputs)), expected, atol=1e-6)


def test_masked_lm_head_is_tied_to_encoder_embedding():
    model = MaskedLM(small_encoder())
    assert model.head.token_embedding is model.encoder.token_embedding


def test_perplexity_is_exp_of_weighted_cross_entropy():
    logits = rng.normal(size=(3, 4, 6)).astype("float32")
    labels = rng.integers(0, 6, size=(3, 4))
    weights = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], "float32")
    metric = Perplexity()
    metric.update_state(labels, logits, sample_weight=weights)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(metric.result()), np.exp((nll * weights).sum() / weights.sum()), rtol=1e-5)


def test_macro_metrics_match_hand_computation():
    y_true = np.array([0, 0, 1, 1, 2, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0, 2])
    logits = np.eye(3, dtype="float32")[y_pred]
    # per class precision: 1/2, 2/3, 2/2; recall: 1/2, 2/2, 2/3
    precision = [1 / 2, 2 / 3, 1.0]
    recall = [1 / 2, 1.0, 2 / 3]
    f1 = [2 * p * r / (p + r) for p, r in zip(precision, recall)]
    for kind, values in (("precision", precision), ("recall", recall), ("f1", f1)):
        metric = MacroClassificationMetric(3, kind=kind)
        metric.update_state(y_true[:4], logits[:4])
        metric.update_state(y_true[4:], logits[4:])
        np.testing.assert_allclose(float(metric.result()), np.mean(values), rtol=1e-5)

"""tf.data pipelines: exact packing, masking statistics, classification layout."""

import numpy as np
import pytest
import tensorflow as tf

from zoo.data import corpora
from zoo.data import pipelines
from zoo.data import tokenizer as tokenizers
from zoo.data.preprocessing import CausalLMPreprocessor, EncoderPreprocessor, MaskedLMPreprocessor

PAD, UNK, CLS, SEP, MASK = range(5)


@pytest.fixture(scope="module")
def documents():
    return corpora.text_documents("stdlib", max_documents=12)


@pytest.fixture(scope="module")
def tokenizer(documents, tmp_path_factory):
    # Same arguments and cache entry as test_tokenizer.py: trained once per test session.
    cache_dir = tmp_path_factory.getbasetemp() / "zoo-tokenizer-cache"
    return tokenizers.train_tokenizer(documents, 1000, cache_dir=str(cache_dir), cache_key="stdlib-slice")


def _stream(tokenizer, documents):
    """The reference token stream: each document's ids followed by [SEP], in order."""
    stream = []
    for document in documents:
        stream.extend(np.asarray(tokenizer(document)).tolist())
        stream.append(SEP)
    return stream


def _small_documents():
    return corpora.text_documents("fortunes", "validation", max_documents=30)


def test_causal_blocks_are_the_document_stream_cut_in_order(tokenizer):
    documents = _small_documents()
    length, batch = 16, 4
    dataset = pipelines.causal_lm_dataset(documents, CausalLMPreprocessor(tokenizer, length), batch, shuffle=False)
    assert dataset.element_spec[0].shape == (batch, length)
    assert dataset.element_spec[1].shape == (batch, length)
    blocks = []
    for token_ids, labels in dataset:
        assert token_ids.dtype == tf.int32 and labels.dtype == tf.int32
        token_ids, labels = token_ids.numpy(), labels.numpy()
        np.testing.assert_array_equal(token_ids[:, 1:], labels[:, :-1])  # y is x shifted by one
        blocks.extend(np.concatenate([token_ids, labels[:, -1:]], axis=1).tolist())
    stream = _stream(tokenizer, documents)
    packed = [token for block in blocks for token in block]
    assert len(stream) - len(packed) < (length + 1) * batch  # only the tail is dropped
    assert len(blocks) == len(stream) // (length + 1) // batch * batch
    assert packed == stream[: len(packed)]
    assert PAD not in packed
    assert packed.count(SEP) >= 10  # documents really are separated


def test_causal_shuffle_is_seeded_and_repeat_continues(tokenizer):
    documents = _small_documents()

    def first_batches(seed, count=3):
        dataset = pipelines.causal_lm_dataset(documents, CausalLMPreprocessor(tokenizer, 16), 4, shuffle=True, seed=seed)
        return [x.numpy().tolist() for x, _ in dataset.take(count)]

    assert first_batches(3) == first_batches(3)
    assert first_batches(3) != first_batches(4)
    ordered = pipelines.causal_lm_dataset(documents, CausalLMPreprocessor(tokenizer, 16), 4, shuffle=False)
    assert first_batches(3) != [x.numpy().tolist() for x, _ in ordered.take(3)]
    epoch = sum(1 for _ in ordered)
    repeated = pipelines.causal_lm_dataset(documents, CausalLMPreprocessor(tokenizer, 16), 4, repeat=True)
    assert sum(1 for _ in repeated.take(3 * epoch)) == 3 * epoch


def test_masked_lm_chunks_are_the_stream_wrapped_in_cls_sep(tokenizer):
    documents = _small_documents()
    length, batch = 24, 4
    dataset = pipelines.masked_lm_dataset(documents, MaskedLMPreprocessor(tokenizer, length), batch, shuffle=False)
    x_spec, y_spec, w_spec = dataset.element_spec
    predictions = int(np.ceil(0.15 * (length - 2)))
    assert x_spec["token_ids"].shape == (batch, length)
    assert x_spec["mask_positions"].shape == (batch, predictions)
    assert y_spec.shape == (batch, predictions) and w_spec.dtype == tf.float32
    chunks = []
    for x, y, weights in dataset:
        original = _unmask(x["token_ids"].numpy(), x["mask_positions"].numpy(), y.numpy(), weights.numpy())
        assert (original[:, 0] == CLS).all() and (original[:, -1] == SEP).all()
        assert x["padding_mask"].numpy().all()
        chunks.extend(original[:, 1:-1].reshape(-1).tolist())
    stream = _stream(tokenizer, documents)
    assert len(stream) - len(chunks) < (length - 2) * batch
    assert chunks == stream[: len(chunks)]


def _unmask(token_ids, positions, mask_ids, weights):
    original = token_ids.copy()
    for row in range(len(token_ids)):
        real = weights[row] > 0
        original[row, positions[row][real]] = mask_ids[row][real]
    return original


def test_masking_statistics(tokenizer, documents):
    length, batch = 128, 32
    dataset = pipelines.masked_lm_dataset(documents, MaskedLMPreprocessor(tokenizer, length), batch, shuffle=True, repeat=True)
    selected = selectable = as_mask = unchanged = 0
    for x, y, weights in dataset.take(40):  # 1,280 sequences, ~24k selected tokens
        token_ids, positions = x["token_ids"].numpy(), x["mask_positions"].numpy()
        y, weights = y.numpy(), weights.numpy()
        real = weights > 0
        # Unused prediction slots are zero everywhere.
        assert (positions[~real] == 0).all() and (y[~real] == 0).all()
        # [CLS] (position 0), [SEP] and [PAD] are never selected.
        assert (positions[real] > 0).all() and (positions[real] < length - 1).all()
        assert not np.isin(y[real], [PAD, CLS, SEP, MASK]).any()
        original = _unmask(token_ids, positions, y, weights)
        selectable += int((~np.isin(original, [PAD, CLS, SEP, MASK])).sum())
        selected += int(real.sum())
        replaced = np.take_along_axis(token_ids, positions, axis=1)[real]
        as_mask += int((replaced == MASK).sum())
        unchanged += int((replaced == y[real]).sum())
    assert selected >= 20000
    assert abs(selected / selectable - 0.15) < 0.015
    assert abs(as_mask / selected - 0.8) < 0.03
    assert abs(unchanged / selected - 0.1) < 0.03
    assert abs((selected - as_mask - unchanged) / selected - 0.1) < 0.03


def test_classification_layout_and_labels(tokenizer):
    texts = [
        "def f(x): return x",
        "",
        "class Handler(socketserver.BaseRequestHandler): pass " * 20,  # truncated
        "import os",
        "while True: break",
    ]
    labels = [3, 0, 1, 2, 1]
    length, batch = 12, 2
    dataset = pipelines.classification_dataset(texts, labels, EncoderPreprocessor(tokenizer, length), batch, shuffle=False)
    rows, seen_labels = [], []
    for x, y in dataset:
        assert y.dtype == tf.int32 and x["token_ids"].dtype == tf.int32
        rows.extend(zip(x["token_ids"].numpy().tolist(), x["padding_mask"].numpy().tolist()))
        seen_labels.extend(y.numpy().tolist())
    assert seen_labels == labels  # all examples, last batch included, in order
    for text, (ids, mask) in zip(texts, rows):
        real = sum(mask)
        assert mask == [True] * real + [False] * (length - real)  # padding only at the end
        assert ids[0] == CLS and ids[real - 1] == SEP
        assert ids[real:] == [PAD] * (length - real)
        content = np.asarray(tokenizer(text)).tolist()[: length - 2]
        assert ids[1 : real - 1] == content
    assert sum(rows[2][1]) == length  # the long text fills the whole sequence


def test_classification_shuffle_keeps_pairs_and_drop_remainder_gives_static_shapes(tokenizer):
    texts = [f"value_{i} = {i} * {i}" for i in range(10)]
    labels = [i % 3 for i in range(10)]

    def pairs(**options):
        dataset = pipelines.classification_dataset(texts, labels, EncoderPreprocessor(tokenizer, 16), 4, **options)
        return dataset, [
            (tuple(ids), label)
            for x, y in dataset
            for ids, label in zip(x["token_ids"].numpy().tolist(), y.numpy().tolist())
        ]

    _, ordered = pairs(shuffle=False)
    _, shuffled = pairs(shuffle=True, seed=1)
    assert shuffled != ordered and sorted(shuffled) == sorted(ordered)
    dropped, kept = pairs(shuffle=False, drop_remainder=True)
    assert dropped.element_spec[0]["token_ids"].shape == (4, 16)
    assert kept == ordered[:8]


def test_pipeline_arguments_are_checked(tokenizer):
    with pytest.raises(ValueError, match="sequence_length"):
        MaskedLMPreprocessor(tokenizer, 2)
    with pytest.raises(ValueError, match="labels"):
        pipelines.classification_dataset(["a", "b"], [0], EncoderPreprocessor(tokenizer, 8), 2)
    with pytest.raises(ValueError, match="mask_token_rate"):
        MaskedLMPreprocessor(tokenizer, 16, mask_token_rate=0.95, random_token_rate=0.1)
    with pytest.raises(ValueError, match="batch_size"):
        pipelines.causal_lm_dataset(["a b c"], CausalLMPreprocessor(tokenizer, 16), 0)


def test_one_pass_datasets_declare_their_length_and_keras_averages_exactly(tokenizer):
    """A packed one-pass dataset declares its exact number of batches. Without it, Keras (TF,
    no XLA) read past the end once per evaluate and counted a phantom batch in the loss's mean."""
    import keras

    documents = _small_documents()
    causal = pipelines.causal_lm_dataset(documents, CausalLMPreprocessor(tokenizer, 16), 4, shuffle=False)
    masked = pipelines.masked_lm_dataset(documents, MaskedLMPreprocessor(tokenizer, 24), 4, shuffle=False)
    for dataset in (causal, masked):
        assert int(dataset.cardinality()) == sum(1 for _ in dataset) > 2
    model = keras.Sequential([keras.Input((16,), dtype="int32"), keras.layers.Embedding(tokenizer.vocabulary_size(), 32),
                              keras.layers.Dense(tokenizer.vocabulary_size())])
    losses = []
    for token_ids, labels in causal:
        logits = model(token_ids).numpy().astype(np.float64)
        logits -= logits.max(-1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        losses.append(-np.take_along_axis(log_probs, labels.numpy()[..., None], -1).mean())
    for jit_compile in (False, True):
        model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit_compile)
        assert model.evaluate(causal, verbose=0) == pytest.approx(np.mean(losses), rel=1e-5)
        assert model.evaluate(causal.take(2), verbose=0) == pytest.approx(np.mean(losses[:2]), rel=1e-5)

"""tf.data pipelines for causal LM, masked LM and classification training.

Tokenization happens inside the pipeline (the keras-hub tokenizer runs as TensorFlow ops in
parallel `map` calls), so the Python process only hands over raw strings. All training
batches have static shapes (`drop_remainder=True`), which XLA and tf.distribute need.

Packing (both LMs): each document is tokenized and followed by `[SEP]`; the documents form one
token stream that is cut into fixed-size blocks with no padding. The cutting is a
`Dataset.scan` that carries the unfinished tail of the stream from one document to the next,
so memory stays at one document and no per-token dataset elements are created (an
`unbatch()` to single tokens costs microseconds per token, seconds per epoch on this corpus).
The tail of each pass's stream that does not fill a block is dropped. Shuffling reorders
documents before packing and blocks after it; with `shuffle=False` blocks come in corpus order.

Every pass's order is a pure function of `(seed, pass number)`: documents are permuted with
`tf.random.experimental.stateless_shuffle`, and the block shuffle is rebuilt per pass with
fixed seeds. tf.data's `reshuffle_each_iteration` would instead advance hidden state with every
new iterator, and Keras opens more than one (its symbolic build under a strategy, a resumed
run): the same dataset would then feed different data. With `repeat=True` the passes follow
each other: 0, 1, 2, ...

Every function takes the tokenizer returned by `train_tokenizer` / `load_tokenizer`; the ids
of `[PAD]`, `[CLS]`, `[SEP]` and `[MASK]` are looked up in its vocabulary.
"""

import math

import keras_hub
import tensorflow as tf

from zoo.data.errors import NotEnoughDataError

SHUFFLE_BUFFER_BLOCKS = 4096


def causal_lm_dataset(
    documents,
    tokenizer,
    sequence_length,
    batch_size,
    shuffle=True,
    seed=0,
    repeat=False,
):
    """Packs documents into next-token prediction batches.

    Args:
        documents: list of strings.
        tokenizer: a WordPiece tokenizer from `train_tokenizer` / `load_tokenizer`.
        sequence_length: T, the length of model inputs.
        batch_size: B; the last partial batch is dropped.
        shuffle: shuffle documents and packed blocks (seeded, reshuffled every epoch).
        seed: seed of both shuffles.
        repeat: repeat forever (one continuous token stream over reshuffled passes).

    Returns:
        A `tf.data.Dataset` of `(token_ids, labels)`, both `[B, T]` int32, where each row
        is one block of T + 1 consecutive stream tokens: `token_ids = block[:-1]`,
        `labels = block[1:]`. No padding anywhere.
    """
    _check_sizes(sequence_length, batch_size)
    end_id = tokenizer.token_to_id("[SEP]")
    blocks = _packed_blocks(documents, tokenizer, sequence_length + 1, end_id, shuffle, seed, repeat)
    dataset = blocks.batch(batch_size, drop_remainder=True)
    dataset = dataset.map(lambda block: (block[:, :-1], block[:, 1:]), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def masked_lm_dataset(
    documents,
    tokenizer,
    sequence_length,
    batch_size,
    mask_selection_rate=0.15,
    mask_token_rate=0.8,
    random_token_rate=0.1,
    max_predictions=None,
    shuffle=True,
    seed=0,
    repeat=False,
):
    """Packs documents into `[CLS] ... [SEP]` sequences with dynamic BERT-style masking.

    The token stream (documents joined by `[SEP]`) is cut into chunks of T - 2 tokens and
    each chunk is wrapped as `[CLS] chunk [SEP]`; the final short chunk is dropped, so no
    sequence is padded (`padding_mask` is all true, and is provided for the model's sake).
    Masks are drawn afresh every time a batch is produced (RoBERTa's dynamic masking) by
    `keras_hub.layers.MaskedLMMaskGenerator`: in each sequence, ceil(rate * n) of the n
    selectable tokens are chosen; `[PAD]`, `[CLS]`, `[SEP]` and `[MASK]` are never chosen.
    Of the chosen, `mask_token_rate` become `[MASK]`, `random_token_rate` a random token and
    the rest stay as they are. Masking is not seeded: `seed` governs only the shuffles.

    Args:
        documents, tokenizer, sequence_length, batch_size, shuffle, seed, repeat: as in
            `causal_lm_dataset`.
        mask_selection_rate: fraction of selectable tokens to predict.
        mask_token_rate: fraction of the selected tokens replaced by `[MASK]`.
        random_token_rate: fraction of the selected tokens replaced by a random token.
        max_predictions: P, the number of prediction slots per sequence. Defaults to
            ceil(mask_selection_rate * (T - 2)), the most the selector can choose in a
            sequence, so no selection is ever cut. A smaller P caps the selections.

    Returns:
        A `tf.data.Dataset` of `(x, y, sample_weight)`: x = {"token_ids": [B, T] int32,
        "padding_mask": [B, T] bool, "mask_positions": [B, P] int32}, y = the original ids
        at the masked positions [B, P] int32, sample_weight = [B, P] float32, 1 for real
        predictions and 0 for unused slots (whose position and id are 0).
    """
    _check_sizes(sequence_length, batch_size, minimum_length=3)
    for name, rate in [
        ("mask_selection_rate", mask_selection_rate),
        ("mask_token_rate", mask_token_rate),
        ("random_token_rate", random_token_rate),
    ]:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {rate}.")
    if mask_token_rate + random_token_rate > 1.0:
        raise ValueError(
            f"mask_token_rate + random_token_rate must be <= 1, got "
            f"{mask_token_rate} + {random_token_rate}."
        )
    if max_predictions is None:
        max_predictions = max(1, math.ceil(mask_selection_rate * (sequence_length - 2)))
    pad_id, cls_id, sep_id, mask_id = (
        tokenizer.token_to_id(token) for token in ("[PAD]", "[CLS]", "[SEP]", "[MASK]")
    )
    masker = keras_hub.layers.MaskedLMMaskGenerator(
        vocabulary_size=tokenizer.vocabulary_size(),
        mask_selection_rate=mask_selection_rate,
        mask_token_id=mask_id,
        mask_selection_length=max_predictions,
        unselectable_token_ids=[pad_id, cls_id, sep_id, mask_id],
        mask_token_rate=mask_token_rate,
        random_token_rate=random_token_rate,
    )
    chunks = _packed_blocks(documents, tokenizer, sequence_length - 2, sep_id, shuffle, seed, repeat)
    dataset = chunks.batch(batch_size, drop_remainder=True)

    def wrap_and_mask(chunk):
        batch = tf.shape(chunk)[0]
        token_ids = tf.concat(
            [tf.fill([batch, 1], cls_id), chunk, tf.fill([batch, 1], sep_id)], axis=1
        )
        masked = masker(token_ids)
        x = {
            "token_ids": tf.cast(masked["token_ids"], tf.int32),
            "padding_mask": tf.not_equal(token_ids, pad_id),
            "mask_positions": tf.cast(masked["mask_positions"], tf.int32),
        }
        y = tf.cast(masked["mask_ids"], tf.int32)
        sample_weight = tf.cast(masked["mask_weights"], tf.float32)
        shape = [batch_size, max_predictions]
        x["token_ids"] = tf.ensure_shape(x["token_ids"], [batch_size, sequence_length])
        x["padding_mask"] = tf.ensure_shape(x["padding_mask"], [batch_size, sequence_length])
        x["mask_positions"] = tf.ensure_shape(x["mask_positions"], shape)
        return x, tf.ensure_shape(y, shape), tf.ensure_shape(sample_weight, shape)

    dataset = dataset.map(wrap_and_mask, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def classification_dataset(
    texts,
    labels,
    tokenizer,
    sequence_length,
    batch_size,
    shuffle=True,
    seed=0,
    repeat=False,
    drop_remainder=False,
):
    """Turns texts into `[CLS] tokens [SEP] [PAD]...` sequences with their labels.

    Texts longer than T - 2 tokens are truncated (their end is lost).

    Args:
        texts: list of strings.
        labels: list of integer class ids, one per text.
        tokenizer, sequence_length, batch_size, shuffle, seed, repeat: as in
            `causal_lm_dataset` (shuffling is over examples, buffer = the whole list).
        drop_remainder: drop the last partial batch. Training under tf.distribute or XLA
            wants True; evaluation wants False so every example counts.

    Returns:
        A `tf.data.Dataset` of `({"token_ids": [B, T] int32, "padding_mask": [B, T] bool},
        labels [B] int32)`.
    """
    _check_sizes(sequence_length, batch_size, minimum_length=3)
    texts, labels = list(texts), [int(label) for label in labels]
    if len(texts) != len(labels):
        raise ValueError(f"Got {len(texts)} texts but {len(labels)} labels.")
    if not texts:
        raise NotEnoughDataError("classification_dataset needs at least one example.")
    pad_id, cls_id, sep_id = (tokenizer.token_to_id(t) for t in ("[PAD]", "[CLS]", "[SEP]"))
    packer = keras_hub.layers.StartEndPacker(
        sequence_length=sequence_length,
        start_value=cls_id,
        end_value=sep_id,
        pad_value=pad_id,
        return_padding_mask=True,
    )
    texts, labels = tf.constant(texts, tf.string), tf.constant(labels, tf.int32)

    def one_pass(epoch):
        if not shuffle:
            return tf.data.Dataset.from_tensor_slices((texts, labels))
        order = _permutation(tf.shape(texts)[0], seed, epoch)
        return tf.data.Dataset.from_tensor_slices((tf.gather(texts, order), tf.gather(labels, order)))

    dataset = _passes(one_pass, repeat)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)

    def preprocess(text, label):
        token_ids, padding_mask = packer(tokenizer(text))
        # The packer forgets the static batch size that drop_remainder guarantees.
        shape = [batch_size if drop_remainder else None, sequence_length]
        x = {
            "token_ids": tf.ensure_shape(tf.cast(token_ids, tf.int32), shape),
            "padding_mask": tf.ensure_shape(tf.cast(padding_mask, tf.bool), shape),
        }
        return x, tf.ensure_shape(label, shape[:1])

    dataset = dataset.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _check_sizes(sequence_length, batch_size, minimum_length=1):
    if int(sequence_length) < minimum_length:
        raise ValueError(f"sequence_length must be >= {minimum_length}, got {sequence_length}.")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")


def _permutation(size, seed, epoch):
    """A permutation of range(size) that depends only on (seed, epoch)."""
    seeds = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.experimental.stateless_shuffle(tf.range(size), seed=seeds)


def _passes(one_pass, repeat):
    """`one_pass(0)`, or with `repeat` the endless sequence of passes 0, 1, 2, ..."""
    if not repeat:
        return one_pass(tf.constant(0, tf.int64))
    return tf.data.Dataset.counter().flat_map(one_pass)


def _packed_blocks(documents, tokenizer, block_length, end_id, shuffle, seed, repeat):
    """A dataset of [block_length] int32 blocks cut from the tokenized document stream."""
    documents = [document for document in documents if document]
    if not documents:
        raise NotEnoughDataError("Need at least one non-empty document to build a language-model dataset.")
    documents = tf.constant(documents, tf.string)

    def tokenize(document):
        token_ids = tf.cast(tokenizer(document), tf.int32)
        return tf.concat([token_ids, [end_id]], axis=0)

    def cut(tail, token_ids):
        stream = tf.concat([tail, token_ids], axis=0)
        full = tf.shape(stream)[0] // block_length * block_length
        blocks = tf.reshape(stream[:full], [-1, block_length])
        return stream[full:], blocks

    def one_pass(epoch):
        ordered = tf.gather(documents, _permutation(tf.shape(documents)[0], seed, epoch)) if shuffle else documents
        dataset = tf.data.Dataset.from_tensor_slices(ordered)
        # deterministic=True keeps the stream in document order despite parallel tokenization.
        dataset = dataset.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        blocks = dataset.scan(tf.zeros([0], tf.int32), cut).unbatch()
        if shuffle:
            blocks = blocks.shuffle(SHUFFLE_BUFFER_BLOCKS, seed=seed + 1, reshuffle_each_iteration=False)
        return blocks

    return _passes(one_pass, repeat)

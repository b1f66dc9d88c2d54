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

Classification training can corrupt its texts on the fly (`augment`: typos, dropped words, case,
see `zoo.data.shifts.Augmentation`) before tokenization, with stateless draws keyed by (seed,
pass number, example index): a replayed stream replays the same corruptions too.

Every function takes the recipe's preprocessor (`zoo.data.preprocessing`), which does all the
text-to-ids work: tokenizing, packing, masking; these functions only order, cut and batch.
"""

import tensorflow as tf

from zoo.data import shifts
from zoo.data.errors import NotEnoughDataError

SHUFFLE_BUFFER_BLOCKS = 4096


def causal_lm_dataset(documents, preprocessor, batch_size, shuffle=True, seed=0, repeat=False):
    """Packs documents into next-token prediction batches.

    Args:
        documents: list of strings.
        preprocessor: a `zoo.data.preprocessing.CausalLMPreprocessor` (its `sequence_length`
            is T, and `document_ids` turns a document into ids).
        batch_size: B; the last partial batch is dropped.
        shuffle: shuffle documents and packed blocks (seeded, reshuffled every epoch).
        seed: seed of both shuffles.
        repeat: repeat forever (one continuous token stream over reshuffled passes).

    Returns:
        A `tf.data.Dataset` of `(token_ids, labels)`, both `[B, T]` int32, where each row
        is one block of T + 1 consecutive stream tokens: `token_ids = block[:-1]`,
        `labels = block[1:]`. No padding anywhere.
    """
    _check_sizes(preprocessor.sequence_length, batch_size)
    blocks = _packed_blocks(documents, preprocessor.document_ids, preprocessor.sequence_length + 1, shuffle, seed, repeat)
    dataset = blocks.batch(batch_size, drop_remainder=True)
    dataset = dataset.map(lambda block: (block[:, :-1], block[:, 1:]), num_parallel_calls=tf.data.AUTOTUNE)
    if not repeat:
        dataset = _with_cardinality(dataset, documents, preprocessor.document_ids, preprocessor.sequence_length + 1, batch_size)
    return dataset.prefetch(tf.data.AUTOTUNE)


def masked_lm_dataset(documents, preprocessor, batch_size, shuffle=True, seed=0, repeat=False):
    """Packs documents into `[CLS] ... [SEP]` sequences with dynamic BERT-style masking.

    The token stream (each document's tokens followed by `[SEP]`) is cut into chunks of T - 2
    tokens and each chunk is packed as `[CLS] chunk [SEP]` and masked by the preprocessor (a
    `zoo.data.preprocessing.MaskedLMPreprocessor`: its rates, its `max_predictions` P); the
    final short chunk is dropped, so no sequence is padded (`padding_mask` is all true, and is
    provided for the model's sake). Masks are drawn afresh every time a batch is produced
    (RoBERTa's dynamic masking) and are not seeded: `seed` governs only the shuffles.

    Args:
        documents, batch_size, shuffle, seed, repeat: as in `causal_lm_dataset`.
        preprocessor: the recipe's `MaskedLMPreprocessor`.

    Returns:
        A `tf.data.Dataset` of `(x, y, sample_weight)`: x = {"token_ids": [B, T] int32,
        "padding_mask": [B, T] bool, "mask_positions": [B, P] int32}, y = the original ids
        at the masked positions [B, P] int32, sample_weight = [B, P] float32, 1 for real
        predictions and 0 for unused slots (whose position and id are 0).
    """
    sequence_length = preprocessor.sequence_length
    _check_sizes(sequence_length, batch_size, minimum_length=3)
    chunks = _packed_blocks(documents, preprocessor.document_ids, sequence_length - 2, shuffle, seed, repeat)
    dataset = chunks.batch(batch_size, drop_remainder=True)
    predictions = [batch_size, preprocessor.max_predictions]

    def pack_and_mask(chunk):
        x, y, sample_weight = preprocessor.mask(*preprocessor.pack(chunk))
        x = {
            "token_ids": tf.ensure_shape(x["token_ids"], [batch_size, sequence_length]),
            "padding_mask": tf.ensure_shape(x["padding_mask"], [batch_size, sequence_length]),
            "mask_positions": tf.ensure_shape(x["mask_positions"], predictions),
        }
        return x, tf.ensure_shape(y, predictions), tf.ensure_shape(sample_weight, predictions)

    dataset = dataset.map(pack_and_mask, num_parallel_calls=tf.data.AUTOTUNE)
    if not repeat:
        dataset = _with_cardinality(dataset, documents, preprocessor.document_ids, sequence_length - 2, batch_size)
    return dataset.prefetch(tf.data.AUTOTUNE)


def classification_dataset(
    texts,
    labels,
    preprocessor,
    batch_size,
    shuffle=True,
    seed=0,
    repeat=False,
    drop_remainder=False,
    augment=None,
    augment_index=None,
    augmented_view=False,
):
    """Texts packed by the preprocessor (`[CLS] tokens [SEP] [PAD]...`) with their labels.

    Texts longer than T - 2 tokens keep their first T - 2 (see `EncoderPreprocessor`).

    Args:
        texts: list of strings.
        labels: list of integer class ids, one per text (the distillation transfer set uses
            -1 for texts without a label).
        preprocessor: a `zoo.data.preprocessing.EncoderPreprocessor` (or a subclass).
        batch_size, shuffle, seed, repeat: as in `causal_lm_dataset` (shuffling is over
            examples, buffer = the whole list).
        drop_remainder: drop the last partial batch. Training under tf.distribute or XLA
            wants True; evaluation wants False so every example counts.
        augment: a `zoo.data.shifts.Augmentation` (or a tuple of them, see `augment_index`)
            that corrupts each text on the fly, before tokenization. Each example's draws
            are keyed by (seed, pass number, its index in `texts`): the same pass of the same
            seed corrupts every example the same way whatever the batch, process or resume,
            and every new pass corrupts it afresh.
        augment_index: with a tuple of augmentations, which one each example gets (one int
            per text; -1: none). Default: the first, for every example.
        augmented_view: keep the clean text as the input and add the corrupted one beside it
            (`augmented_token_ids`, `augmented_padding_mask`), for consistency training.

    Returns:
        A `tf.data.Dataset` of `({"token_ids": [B, T] int32, "padding_mask": [B, T] bool},
        labels [B] int32)`; with `augmented_view` the dict also holds the corrupted view.
    """
    sequence_length = preprocessor.sequence_length
    _check_sizes(sequence_length, batch_size, minimum_length=3)
    texts, labels = list(texts), [int(label) for label in labels]
    if len(texts) != len(labels):
        raise ValueError(f"Got {len(texts)} texts but {len(labels)} labels.")
    if not texts:
        raise NotEnoughDataError("classification_dataset needs at least one example.")
    augmentations = tuple(augment) if isinstance(augment, (list, tuple)) else ((augment,) if augment is not None else ())
    if augmented_view and not augmentations:
        raise ValueError("augmented_view needs an augmentation (augment=...).")
    if augment_index is None:
        augment_index = [0 if augmentations else -1] * len(texts)
    augment_index = [int(index) for index in augment_index]
    if len(augment_index) != len(texts) or any(not -1 <= index < len(augmentations) for index in augment_index):
        raise ValueError(f"augment_index needs one int in [-1, {len(augmentations)}) per text.")
    indices = tf.range(len(texts), dtype=tf.int64)
    choices = tf.constant(augment_index, tf.int32)
    texts, labels = tf.constant(texts, tf.string), tf.constant(labels, tf.int32)

    def corrupt(epoch):
        def one(text, label, index, choice):
            key = shifts.augmentation_key(seed, epoch, index)
            # Branch 0: clean; branch k + 1: augmentations[k].
            branches = [lambda: text] + [lambda a=a: a.apply(text, key) for a in augmentations]
            corrupted = tf.switch_case(choice + 1, branches)
            return ((text, corrupted) if augmented_view else (corrupted,)) + (label,)

        return one

    def one_pass(epoch):
        order = _permutation(tf.shape(texts)[0], seed, epoch) if shuffle else tf.range(tf.shape(texts)[0])
        examples = (tf.gather(texts, order), tf.gather(labels, order))
        if not augmentations:
            return tf.data.Dataset.from_tensor_slices(examples)
        dataset = tf.data.Dataset.from_tensor_slices(examples + (tf.gather(indices, order), tf.gather(choices, order)))
        return dataset.map(corrupt(epoch), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    dataset = _passes(one_pass, repeat)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    # Packing forgets the static batch size that drop_remainder guarantees.
    shape = [batch_size if drop_remainder else None, sequence_length]

    def pack(text):
        token_ids, padding_mask = preprocessor.pack(preprocessor.tokenize(text))
        return tf.ensure_shape(token_ids, shape), tf.ensure_shape(padding_mask, shape)

    def preprocess(*batch):
        text, label = batch[0], batch[-1]
        token_ids, padding_mask = pack(text)
        x = {"token_ids": token_ids, "padding_mask": padding_mask}
        if augmented_view:
            x["augmented_token_ids"], x["augmented_padding_mask"] = pack(batch[1])
        return x, tf.ensure_shape(label, shape[:1])

    dataset = dataset.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def count_tokens_and_bytes(documents, document_ids):
    """`(tokens, bytes)`: the length of a split's language-model token stream, and of its text in UTF-8.

    The documents are taken as `_packed_blocks` takes them (the empty ones left out) and each is
    turned into ids by the same `document_ids` call the pipelines map over them (the recipe's
    `preprocessor.document_ids`: the document's tokens, then its one end token `[SEP]`), in a
    parallel tf.data map whose lengths are summed. `tokens` counts every token of every document
    plus one end token each; `bytes` is the sum of the documents' UTF-8 lengths: the text's own
    bytes, the same whatever the tokenizer. Both are int64 sums, returned as Python ints. The
    `stdlib` test split (36 documents, 513 KB, 140k byte-level BPE tokens) takes 1.2 s on 2 idle
    CPU cores, about 5 s while other jobs share them.

    The pipelines drop the tail of the stream that does not fill a block (and `steps` or
    `validation_steps` may stop earlier); these counts do not: `tokens / bytes` is the average
    over the whole split, which is what turns a mean per-token loss into bits per byte
    (`zoo.evaluation.bits_per_byte`).
    """
    documents = tf.constant(_stream_documents(documents), tf.string)

    def count(document):
        return (
            tf.size(document_ids(document), out_type=tf.int64),
            tf.cast(tf.strings.length(document, unit="BYTE"), tf.int64),
        )

    counts = tf.data.Dataset.from_tensor_slices(documents).map(count, num_parallel_calls=tf.data.AUTOTUNE)
    zero = tf.constant(0, tf.int64)
    tokens, num_bytes = counts.reduce((zero, zero), lambda total, one: (total[0] + one[0], total[1] + one[1]))
    return int(tokens), int(num_bytes)


def _with_cardinality(dataset, documents, document_ids, block_length, batch_size):
    """`dataset` (one pass of packed blocks, batched) declaring its exact number of batches.

    The number follows from the stream's length (`count_tokens_and_bytes`: one tokenization
    pass, seconds): floor(floor(tokens / block_length) / batch_size). Without it the packed
    dataset's length is unknown, and Keras (TensorFlow backend, without XLA) then reads past its
    end once per `evaluate`: the failed read aborts the step, but the loss tracker's count, which
    with static batch shapes depends on no data, is still incremented, so every non-XLA
    evaluation averaged over one batch too many (a validation loss of 5.59 over 20 batches read
    5.32). With a known length Keras stops at the last batch.
    """
    tokens, _ = count_tokens_and_bytes(documents, document_ids)
    return dataset.apply(tf.data.experimental.assert_cardinality(tokens // block_length // batch_size))


def _stream_documents(documents):
    """The documents a language-model token stream is made of: the non-empty ones, in order."""
    documents = [document for document in documents if document]
    if not documents:
        raise NotEnoughDataError("Need at least one non-empty document to build a language-model dataset.")
    return documents


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


def _packed_blocks(documents, document_ids, block_length, shuffle, seed, repeat):
    """A dataset of [block_length] int32 blocks cut from the stream of `document_ids(document)`."""
    documents = tf.constant(_stream_documents(documents), tf.string)

    def cut(tail, token_ids):
        stream = tf.concat([tail, token_ids], axis=0)
        full = tf.shape(stream)[0] // block_length * block_length
        blocks = tf.reshape(stream[:full], [-1, block_length])
        return stream[full:], blocks

    def one_pass(epoch):
        ordered = tf.gather(documents, _permutation(tf.shape(documents)[0], seed, epoch)) if shuffle else documents
        dataset = tf.data.Dataset.from_tensor_slices(ordered)
        # deterministic=True keeps the stream in document order despite parallel tokenization.
        dataset = dataset.map(document_ids, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        blocks = dataset.scan(tf.zeros([0], tf.int32), cut).unbatch()
        if shuffle:
            blocks = blocks.shuffle(SHUFFLE_BUFFER_BLOCKS, seed=seed + 1, reshuffle_each_iteration=False)
        return blocks

    return _passes(one_pass, repeat)

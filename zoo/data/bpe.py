"""A lossless byte-level BPE tokenizer: trained with Hugging Face `tokenizers`, applied in the
TensorFlow graph (tf.data, exported SavedModels) with the very same ids.

Why byte-level BPE: a causal LM trained on source code must be able to write source code.
WordPiece drops whitespace (words are joined with single spaces on decoding), so Python loses
its newlines and indentation. Here every byte of the input is covered: `detokenize(tokenize(x))
== x` for any UTF-8 text, tabs, runs of spaces, blank lines, CRLF and non-ASCII included.

How text becomes ids (identical in both implementations):
1. Pre-tokenisation: `PRETOKENIZE_PATTERN` cuts the text into pieces: runs of "word"
   characters (ASCII letters, `_` and every non-ASCII character), of digits and of other ASCII
   symbols, each with an optional leading space; English contractions; runs of whitespace; and
   each NUL on its own. The pattern names characters explicitly: no lookahead (GPT-2's needs
   one, which RE2 lacks), no `\\s` (RE2's and Oniguruma's differ) and no Unicode categories
   (TensorFlow's RE2 and Hugging Face's Oniguruma carry different Unicode versions: U+1C8A is
   a letter to one and not to the other). So it cuts identically in both engines, on any
   text, whatever their Unicode tables. The pieces concatenate to the input: nothing is lost.
2. Each piece's UTF-8 bytes are written with GPT-2's byte alphabet (a printable character per
   byte), so every piece is a string over 256 symbols.
3. BPE: in each piece, the adjacent pair of symbols with the lowest merge rank is joined,
   until no pair of the piece has a merge. Ties go to the leftmost pair. (A merge learned from
   a token always ranks after the merge that made the token, so joining all non-overlapping
   occurrences of the lowest-ranked pair at once gives what joining them one at a time gives;
   the graph does that, in one pass per rank level.)
4. Each resulting symbol is looked up in the vocabulary.

The special tokens of the zoo (`[PAD]`, `[UNK]`, `[CLS]`, `[SEP]`, `[MASK]`) keep ids 0..4 and
are never produced from raw text: "[SEP]" in a source file is "[", "SEP", "]".
"""

import json

import keras_hub
import tensorflow as tf

try:
    import tensorflow_text as tf_text
except ImportError:  # pragma: no cover - a dependency of keras-hub on TensorFlow
    tf_text = None

# Explicit classes: RE2's \s lacks \v and Oniguruma's adds Unicode spaces; Unicode categories
# differ between the engines' Unicode versions. NUL is excluded from every class (a piece of
# its own): TensorFlow Text's regex split stops at NUL, so the graph splits the text there first.
_WHITESPACE = r"\t\n\x0b\x0c\r "
_WORD = r"A-Za-z_\x{80}-\x{10FFFF}"
_DIGIT = r"0-9"
PRETOKENIZE_PATTERN = (
    r"'(?:s|t|re|ve|m|ll|d)"
    rf"| ?[{_WORD}]+"
    rf"| ?[{_DIGIT}]+"
    rf"| ?[^\x00{_WHITESPACE}{_WORD}{_DIGIT}]+"
    rf"|[{_WHITESPACE}]+"
    r"|\x00"
)
VOCABULARY_FILE = "vocabulary.json"
MERGES_FILE = "merges.txt"
_NO_MERGE = 2**31 - 1


def byte_alphabet():
    """GPT-2's byte-to-character table: a list of 256 one-character strings, indexed by byte.

    Printable bytes stand for themselves; the others (controls, space, 0x7f-0xa0, 0xad) are
    shifted to characters from U+0100 on, so that no piece contains whitespace or controls.
    """
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, shifted = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + shifted)
            shifted += 1
    return [table[byte] for byte in range(256)]


# -- training (Hugging Face tokenizers) ----------------------------------------------------------


def hf_tokenizer(vocabulary=None, merges=None):
    """A `tokenizers.Tokenizer` with the zoo's pre-tokenisation and byte-level decoding: an empty
    BPE model (for training), or the given vocabulary (dict) and merges (list of "a b")."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    if vocabulary is None:
        model = models.BPE()
    else:
        model = models.BPE(vocab=dict(vocabulary), merges=[tuple(m.split(" ")) for m in merges])
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def train_bpe(texts, vocabulary_size, special_tokens, show_progress=False):
    """(vocabulary dict token -> id, merges list) learned from `texts` by `tokenizers`' BPE trainer.

    The special tokens take ids 0..len-1, the 256 byte symbols follow, then one token per merge.
    Pieces seen fewer than 2 times are not merged (the trainer's `min_frequency`).

    `show_progress`: the trainer's progress bars, drawn on file descriptor 2 when it is a
    terminal, each ended by a newline on descriptor 1; `zoo.data.tokenizer.train_tokenizer` turns
    them on when stderr is a terminal.
    """
    from tokenizers import pre_tokenizers, trainers

    tokenizer = hf_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocabulary_size, min_frequency=2, special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    state = json.loads(tokenizer.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["merges"]]
    return dict(state["vocab"]), merges


# -- the in-graph tokenizer ----------------------------------------------------------------------


class BytePairTokenizer(keras_hub.tokenizers.Tokenizer):
    """Byte-level BPE in TensorFlow ops: strings to ragged int32 ids, and back, losslessly.

    Args:
        vocabulary: dict token -> id (ids 0..n-1), as `train_bpe` returns.
        merges: list of "a b" merge rules, in rank order.
        special_tokens: tokens of the vocabulary that raw text never produces.

    Example:
    >>> vocabulary, merges = train_bpe(["def f(x):\\n    return x\\n"] * 4, 300, ["[PAD]"])
    >>> tokenizer = BytePairTokenizer(vocabulary, merges, special_tokens=["[PAD]"])
    >>> tokenizer.detokenize(tokenizer("  x\\t= 1\\r\\n")).numpy().decode()
    '  x\\t= 1\\r\\n'
    """

    def __init__(self, vocabulary, merges, special_tokens=(), **kwargs):
        kwargs.setdefault("dtype", "int32")
        super().__init__(**kwargs)
        self.vocabulary = dict(vocabulary)
        self.merges = list(merges)
        self._special_tokens = list(special_tokens)
        tokens = sorted(self.vocabulary, key=self.vocabulary.get)
        if [self.vocabulary[t] for t in tokens] != list(range(len(tokens))):
            raise ValueError("The BPE vocabulary's ids must be 0..n-1, each once.")
        self._tokens = tokens
        missing = [t for t in self._special_tokens if t not in self.vocabulary]
        if missing:
            raise ValueError(f"Special tokens {missing} are not in the vocabulary.")
        alphabet = byte_alphabet()
        absent = [symbol for symbol in alphabet if symbol not in self.vocabulary]
        if absent:
            raise ValueError(f"The vocabulary lacks {len(absent)} of the 256 byte symbols (e.g. {absent[0]!r}).")
        for index, merge in enumerate(self.merges):
            parts = merge.split(" ")
            if len(parts) != 2 or "".join(parts) not in self.vocabulary:
                raise ValueError(f"Merge {index} ({merge!r}) is not two tokens whose join is in the vocabulary.")
        self._build_tables(alphabet)

    def _build_tables(self, alphabet):
        def table(keys, values, default):
            return tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.constant(values)), default
            )

        self._byte_to_symbol = tf.constant(alphabet)  # gathered by byte value
        self._symbol_to_byte = table(alphabet, [bytes([b]) for b in range(256)], b"")
        self._token_to_id = table(self._tokens, list(range(len(self._tokens))), -1)
        self._id_to_token = tf.constant(self._tokens)
        self._merge_rank = table(self.merges, list(range(len(self.merges))), _NO_MERGE)

    # -- the Tokenizer interface (what pipelines, models and exports use) ----------------------

    def get_vocabulary(self):
        return list(self._tokens)

    def vocabulary_size(self):
        return len(self._tokens)

    def id_to_token(self, id):
        return self._tokens[id]

    def token_to_id(self, token):
        return self.vocabulary[token]

    @property
    def special_tokens(self):
        return list(self._special_tokens)

    def tokenize(self, inputs):
        """Strings `[batch]` (or a scalar) to ragged int32 ids `[batch, None]` (or `[None]`)."""
        inputs = tf.convert_to_tensor(inputs, tf.string)
        scalar = inputs.shape.rank == 0
        ids = self._encode(tf.reshape(inputs, [-1]))
        return ids[0] if scalar else ids

    def detokenize(self, inputs):
        """Ids `[batch, None]` (ragged or dense) or `[None]` to the strings they spell, byte for byte."""
        if isinstance(inputs, (list, tuple)):
            inputs = tf.ragged.constant([list(row) for row in inputs], tf.int32) if inputs and isinstance(
                inputs[0], (list, tuple)) else tf.constant(inputs, tf.int32)
        inputs = inputs if isinstance(inputs, tf.RaggedTensor) else tf.convert_to_tensor(inputs)
        scalar = inputs.shape.rank == 1
        if scalar:
            inputs = tf.RaggedTensor.from_tensor(inputs[None, :])
        elif not isinstance(inputs, tf.RaggedTensor):
            inputs = tf.RaggedTensor.from_tensor(inputs)
        tokens = tf.gather(self._id_to_token, tf.cast(inputs, tf.int32))
        symbols = tf.strings.unicode_split(tf.strings.reduce_join(tokens, axis=-1), "UTF-8")
        text = tf.strings.reduce_join(self._symbol_to_byte.lookup(symbols), axis=-1)
        return text[0] if scalar else text

    def call(self, inputs, *args, training=None, **kwargs):
        return self.tokenize(inputs)

    # -- BPE ------------------------------------------------------------------------------------

    def _encode(self, texts):
        pieces = _pretokenize(texts)  # [B, P] strings
        # Each distinct piece is merged once: text repeats its words (code: "self", "    ").
        unique_pieces, piece_index = tf.unique(pieces.flat_values)
        piece_bytes = tf.strings.bytes_split(unique_pieces)
        byte_values = tf.reshape(tf.io.decode_raw(piece_bytes.flat_values, tf.uint8, fixed_length=1), [-1])
        symbols = tf.gather(self._byte_to_symbol, tf.cast(byte_values, tf.int32))
        merged = self._merge(symbols, piece_bytes.row_lengths())
        word_ids = tf.RaggedTensor.from_row_splits(self._token_to_id.lookup(merged.flat_values), merged.row_splits)
        # Back to [B, tokens]: each text's pieces, in order, flattened.
        return tf.RaggedTensor.from_row_splits(tf.gather(word_ids, piece_index), pieces.row_splits).merge_dims(1, 2)

    def _merge(self, symbols, lengths):
        """Applies the merges to every word: one pass per rank level, over the words that still
        had a merge in the previous pass (a word leaves the loop once no pair of it merges, so
        a few long words do not keep every short one in the work). `symbols`: flat strings;
        `lengths`: symbols per word. Returns the merged words, ragged, in their order."""

        def body(step, symbols, lengths, word_ids, done_symbols, done_lengths, done_ids):
            words = tf.RaggedTensor.from_row_lengths(symbols, lengths)
            left, right = words[:, :-1], words[:, 1:]
            pair_ranks = self._merge_rank.lookup(tf.strings.join([left.flat_values, right.flat_values], separator=" "))
            ranks = tf.RaggedTensor.from_row_splits(pair_ranks, left.row_splits)
            lowest = tf.reduce_min(ranks, axis=1)  # _NO_MERGE (the int32 max) for a word without pairs
            hit = tf.equal(ranks, tf.expand_dims(lowest, 1)).flat_values & tf.not_equal(pair_ranks, _NO_MERGE)
            # Non-overlapping occurrences, leftmost first: in a run of consecutive hits (the pair
            # "a a" in "a a a a"), every other one, from the run's first.
            position = tf.range(tf.size(hit))
            previous = tf.concat([[False], hit[:-1]], 0) & ~_row_start_mask(ranks)
            run_start = hit & ~previous
            run = tf.maximum(tf.cumsum(tf.cast(run_start, tf.int32)) - 1, 0)
            starts = tf.concat([tf.boolean_mask(position, run_start), [0]], 0)  # [0]: no hit at all
            chosen = hit & tf.equal((position - tf.gather(starts, run)) % 2, 0)
            # Pair p of word w is symbols (p + w, p + w + 1) of the flat symbols: the left one
            # becomes the join, the right one goes.
            word = tf.cast(ranks.value_rowids(), tf.int32)
            left_index = tf.boolean_mask(position + word, chosen)
            joined = tf.strings.join([tf.gather(symbols, left_index), tf.gather(symbols, left_index + 1)])
            symbols = tf.tensor_scatter_nd_update(symbols, left_index[:, None], joined)
            dropped = tf.scatter_nd(left_index[:, None] + 1, tf.ones_like(left_index), tf.shape(symbols))
            merged = tf.math.unsorted_segment_sum(tf.cast(chosen, tf.int32), word, tf.shape(lengths)[0])
            symbols, lengths = tf.boolean_mask(symbols, tf.equal(dropped, 0)), lengths - merged
            # Words without a merge in this pass are final.
            final = tf.equal(merged, 0)
            final_symbol = tf.repeat(final, lengths)
            done_symbols = done_symbols.write(step, tf.boolean_mask(symbols, final_symbol))
            done_lengths = done_lengths.write(step, tf.boolean_mask(lengths, final))
            done_ids = done_ids.write(step, tf.boolean_mask(word_ids, final))
            return (
                step + 1, tf.boolean_mask(symbols, ~final_symbol), tf.boolean_mask(lengths, ~final),
                tf.boolean_mask(word_ids, ~final), done_symbols, done_lengths, done_ids,
            )

        lengths = tf.cast(lengths, tf.int32)
        # Element 0 is empty, so that a batch without any word still concatenates.
        arrays = [
            tf.TensorArray(dtype, size=1, dynamic_size=True, infer_shape=False).write(0, tf.zeros([0], dtype))
            for dtype in (tf.string, tf.int32, tf.int32)
        ]
        loop = tf.while_loop(
            lambda step, symbols, lengths, *_: tf.size(lengths) > 0, body,
            (tf.constant(1), symbols, lengths, tf.range(tf.size(lengths)), *arrays),
            shape_invariants=(tf.TensorShape([]), tf.TensorShape([None]), tf.TensorShape([None]), tf.TensorShape([None]),
                              tf.TensorShape(None), tf.TensorShape(None), tf.TensorShape(None)),
        )
        done_symbols, done_lengths, done_ids = (tf.reshape(array.concat(), [-1]) for array in loop[4:])
        words = tf.RaggedTensor.from_row_lengths(done_symbols, tf.cast(done_lengths, tf.int64))
        return tf.gather(words, tf.argsort(done_ids))

    def get_config(self):
        config = super().get_config()
        config.update(vocabulary=self.vocabulary, merges=self.merges, special_tokens=self._special_tokens)
        return config


def _pretokenize(texts):
    """The pieces `[B, P]` of strings `[B]`, as `PRETOKENIZE_PATTERN` cuts them.

    TensorFlow Text's regex split stops at a NUL character, so the texts are first cut at NUL
    (which the pattern always isolates, so no piece spans one) and a NUL piece is put back
    after every segment but the last of its text.
    """
    segments = tf.strings.split(texts, sep="\x00")  # [B, S], S >= 1
    pieces = tf_text.regex_split(segments.flat_values, PRETOKENIZE_PATTERN, PRETOKENIZE_PATTERN)  # [B*S, P]
    row = segments.value_rowids()
    index_in_row = tf.range(tf.shape(row, out_type=row.dtype)[0]) - tf.gather(segments.row_starts(), row)
    followed_by_nul = tf.cast(index_in_row < tf.gather(segments.row_lengths() - 1, row), pieces.row_splits.dtype)
    nul = tf.RaggedTensor.from_row_lengths(tf.fill([tf.reduce_sum(followed_by_nul)], "\x00"), followed_by_nul)
    with_nul = tf.concat([pieces, nul], axis=1)
    return tf.RaggedTensor.from_row_splits(with_nul, tf.cast(segments.row_splits, with_nul.row_splits.dtype)).merge_dims(1, 2)


def _row_start_mask(ragged):
    """True at the first value of each row of `ragged` (flat), so runs never cross rows."""
    starts = ragged.row_starts()
    size = tf.shape(ragged.flat_values, out_type=starts.dtype)[0]
    nonempty = tf.boolean_mask(starts, starts < size)
    return tf.cast(tf.scatter_nd(nonempty[:, None], tf.ones_like(nonempty), [size]), tf.bool)

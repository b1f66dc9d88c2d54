"""BERT's text normalisation and pre-tokenisation, as Hugging Face's `tokenizers` applies them,
in TensorFlow ops.

`BertTokenizer` is a `keras_hub.tokenizers.WordPieceTokenizer` (same vocabulary handling,
`token_to_id`, `detokenize`, assets, export tracking) whose `tokenize` reproduces the
`BertNormalizer` + `BertPreTokenizer` + `WordPiece` pipeline of a checkpoint's `tokenizer.json`
(what `transformers`' `BertTokenizerFast` and sentence-transformers run), instead of keras-hub's
own normalisation, which folds case with NFKC (so "…" becomes "...", "ß" "ss") and splits only
on ASCII whitespace. Every step is a TensorFlow or tensorflow_text op, so the tokenizer runs the
same way eagerly, in `tf.data` and inside an exported SavedModel that is loaded with only
`tensorflow` and `tensorflow_text`.

The steps, in Hugging Face's order:

1. Clean text: delete NUL, U+FFFD and every control (Cc), format (Cf) and private-use (Co)
   character except tab, line feed and carriage return; then every whitespace character
   (those three, the space separators Zs, U+2028, U+2029) becomes a space.
2. Chinese characters (`handle_chinese_chars`, the CJK ideograph blocks of `CJK_RANGES`) get a
   space on each side, so that each is a word of its own.
3. Strip accents (`strip_accents`, on by default when lowercasing): NFD, then delete the
   nonspacing marks (Mn). Hangul syllables decompose into their jamo here and stay decomposed.
4. Lowercase (`lowercase`): the plain per-character lowercase mapping of Rust's
   `char::to_lowercase` (no NFKC, no case folding: "ß", "ﬁ", "²", full-width "Ａ" keep their
   form), without context (a final "Σ" becomes "σ", where Python's `str.lower` makes "ς") and
   without locale (see `_lowercase`).
5. Split into words at spaces (dropped) and at punctuation (each mark a word of its own):
   ASCII 33-47, 58-64, 91-96, 123-126 and the Unicode P* categories.
6. WordPiece, greedy longest match first, over the vocabulary; a word longer than
   `max_chars_per_word` (100) characters, or one that cannot be spelled with the vocabulary's
   pieces, is the unknown token.

Where the Unicode tables of the two implementations disagree (TensorFlow's RE2 is newer than
the `unicode_categories` tables Hugging Face classifies punctuation, marks and controls with),
the tokenizer follows Hugging Face: `_RE2_ONLY_MN`, `_RE2_ONLY_PUNCTUATION` and their siblings
list the code points. The remaining, measured differences (case mappings and decompositions of
characters encoded since Unicode 13) are listed in zoo/converters/hf_bert.py.
"""

import keras
import keras_hub
import tensorflow as tf
import tensorflow_text as tf_text

MAX_CHARS_PER_WORD = 100  # Hugging Face's `max_input_chars_per_word` for BERT checkpoints
# tf_text's WordPiece limit is in bytes. A word of at most MAX_CHARS_PER_WORD characters has at
# most 4 bytes per character; longer words never reach it (they are replaced by the unknown
# token first), so its byte limit never decides anything.
BYTES_PER_CHAR = 4

# Hugging Face's `is_chinese_char` blocks (note 0x2B920, not BERT's original 0x2B820: Hugging
# Face's table starts the fifth range there, and the ids must match its output).
CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
    (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)


# Where Hugging Face's character classes (the `unicode_categories` crate, whose tables predate
# Unicode 9) and TensorFlow's RE2 (a recent Unicode) disagree, the tokenizer follows Hugging
# Face. Measured over every code point with tokenizers 0.23 and TensorFlow 2.21 by
# tests/zoo/data/test_bert_tokenizer.py::test_every_code_point_is_classified_as_hugging_face_does,
# which names the code points to add here should a TensorFlow upgrade bring a newer Unicode.
# Mostly letters, marks and punctuation of scripts encoded since Unicode 9 (Arabic Quranic
# marks, Masaram Gondi, Newa, medieval punctuation U+2E43-2E5D, ...), which Hugging Face treats
# as ordinary letters (they stay inside words).
_RE2_ONLY_FORMAT = "890-891 8E2 110CD 13430-1343F"  # Cf to RE2; Hugging Face keeps them
_RE2_ONLY_MN = """
7FD 898-89F 8CA-8E1 9FE AFA-AFF B55 C04 C3C D00 D3B-D3C D81 EBA ECE 180F 1885-1886 1ABF-1ACE
1DF6-1DFB A82C A8C5 A8FF A9BD 10D24-10D27 10EAB-10EAC 10EFD-10EFF 10F46-10F50 10F82-10F85 11070
11073-11074 110C2 111C9 111CF 1123E 11241 1133B 11438-1143F 11442-11444 11446 1145E 1182F-11837
11839-1183A 1193B-1193C 1193E 11943 119D4-119D7 119DA-119DB 119E0 11A01-11A0A 11A33-11A38
11A3B-11A3E 11A47 11A51-11A56 11A59-11A5B 11A8A-11A96 11A98-11A99 11C30-11C36 11C38-11C3D 11C3F
11C92-11CA7 11CAA-11CB0 11CB2-11CB3 11CB5-11CB6 11D31-11D36 11D3A 11D3C-11D3D 11D3F-11D45 11D47
11D90-11D91 11D95 11D97 11EF3-11EF4 11F00-11F01 11F36-11F3A 11F40 11F42 13440 13447-13455 16F4F
16FE4 1CF00-1CF2D 1CF30-1CF46 1E000-1E006 1E008-1E018 1E01B-1E021 1E023-1E024 1E026-1E02A 1E08F
1E130-1E136 1E2AE 1E2EC-1E2EF 1E4EC-1E4EF 1E944-1E94A
"""  # Mn to RE2; Hugging Face keeps them when stripping accents
_HF_ONLY_MN = "1734"  # HANUNOO SIGN PAMUDPOD: Mc today, Mn in Hugging Face's tables
_RE2_ONLY_PUNCTUATION = """
61D 9FD A76 C77 C84 1B7D-1B7E 2E43-2E4F 2E52-2E5D 10EAD 10F55-10F59 10F86-10F89 1144B-1144F
1145A-1145B 1145D 11660-1166C 116B9 1183B 11944-11946 119E2 11A3F-11A46 11A9A-11A9C 11A9E-11AA2
11B00-11B09 11C41-11C45 11C70-11C71 11EF7-11EF8 11F43-11F4F 11FFF 12FF1-12FF2 16E97-16E9A 16FE2
1E95E-1E95F
"""  # P* to RE2; letters to Hugging Face
# CANADIAN SYLLABICS CHI SIGN (So today) and SHARADA SANDHI MARK (Mn today) were Po.
_HF_ONLY_PUNCTUATION = "166D 111C9"


def _class(ranges):
    """RE2 class items for `(start, end)` code point ranges, or a "7FD 898-89F" string of them."""
    if isinstance(ranges, str):
        bounds = [[int(bound, 16) for bound in item.split("-")] for item in ranges.split()]
        ranges = [(pair[0], pair[-1]) for pair in bounds]
    return "".join(f"\\x{{{start:X}}}" + (f"-\\x{{{end:X}}}" if end != start else "") for start, end in ranges)


# Step 1. Cc is U+0000-001F and U+007F-009F, written out so that \t \n \r can be left out.
# `[^\P{Cf}...]` is "Cf except ...": RE2 has no class subtraction.
_REMOVED = (
    r"[\x{0}-\x{8}\x{B}\x{C}\x{E}-\x{1F}\x{7F}-\x{9F}\p{Co}\x{FFFD}]|[^\P{Cf}" + _class(_RE2_ONLY_FORMAT) + "]"
)
# What remains of Rust's `char::is_whitespace` once the controls above are gone.
_WHITESPACE = r"[\t\n\r\p{Zs}\x{2028}\x{2029}]"
_CJK = "[" + _class(CJK_RANGES) + "]"
_NONSPACING_MARK = r"[^\P{Mn}" + _class(_RE2_ONLY_MN) + "]|[" + _class(_HF_ONLY_MN) + "]"
_PUNCTUATION = (
    r"[!-/:-@\[-`{-~" + _class(_HF_ONLY_PUNCTUATION) + r"]|[^\P{P}" + _class(_RE2_ONLY_PUNCTUATION) + "]"
)


# Letters other than ASCII I and J whose ICU lowercase depends on the locale (tr, az, lt in
# SpecialCasing.txt), with their root lowercase. NFD splits each into a base letter and a mark.
_LOCALE_SENSITIVE = (
    ("\u0130", "i\u0307"), ("\u00cc", "\u00ec"), ("\u00cd", "\u00ed"), ("\u0128", "\u0129"), ("\u012e", "\u012f"),
)


def _lowercase(text, decomposed):
    """Per-character lowercasing, independent of context and of the process's locale.

    `tf.strings.lower(encoding="utf-8")` is ICU's `toLower` in the default locale, which ICU
    takes from the environment: under LANG=tr_TR "I" would become dotless "ı", under lt_LT
    "Ì" would gain a dot above. Those rules only touch I, J and `_LOCALE_SENSITIVE`, so these
    are lowercased first with the root mappings: ASCII by the byte-wise `tf.strings.lower`, the
    others by replacement (not needed once NFD has `decomposed` them). ICU also applies the one
    contextual root rule, final sigma (Σ -> ς at the end of a word), which Hugging Face does
    not: Σ is mapped to σ beforehand.
    """
    text = tf.strings.lower(text)  # ASCII only, no locale
    for upper, lower in (() if decomposed else _LOCALE_SENSITIVE) + (("\u03a3", "\u03c3"),):
        text = tf.strings.regex_replace(text, upper, lower, replace_global=True)
    return tf.strings.lower(text, encoding="utf-8")


def normalize(text, lowercase=True, strip_accents=None, handle_chinese_chars=True):
    """Hugging Face's `BertNormalizer` (with `clean_text`) on a string tensor of any shape."""
    strip_accents = lowercase if strip_accents is None else strip_accents
    text = tf.strings.regex_replace(text, _REMOVED, "")
    text = tf.strings.regex_replace(text, _WHITESPACE, " ")
    if handle_chinese_chars:
        text = tf.strings.regex_replace(text, _CJK, r" \0 ")
    if strip_accents:
        text = tf_text.normalize_utf8(text, "NFD")
        text = tf.strings.regex_replace(text, _NONSPACING_MARK, "")
    if lowercase:
        text = _lowercase(text, decomposed=strip_accents)
    return text


def pre_tokenize(text):
    """Hugging Face's `BertPreTokenizer` on normalised text `[B]`: ragged words `[B, (W)]`."""
    return tf_text.regex_split(text, delim_regex_pattern=" |" + _PUNCTUATION, keep_delim_regex_pattern=_PUNCTUATION)


@keras.saving.register_keras_serializable(package="zoo")
class BertTokenizer(keras_hub.tokenizers.WordPieceTokenizer):
    """A WordPiece tokenizer that tokenizes as a Hugging Face BERT `tokenizer.json` does.

    Args:
        vocabulary: the tokens (a list, or a file with one per line), as for the base class.
        lowercase: lowercase the text (`do_lower_case`).
        strip_accents: delete accents after NFD; None (the default): same as `lowercase`, as in
            Hugging Face.
        split_on_cjk: put spaces around CJK ideographs (`tokenize_chinese_chars`).
        max_chars_per_word: longer words (in characters, after normalisation) are unknown.
        **kwargs: the base class's `sequence_length`, `suffix_indicator`, `oov_token`,
            `special_tokens`, `special_tokens_in_strings` (must stay False), `dtype`, ...

    `split` is always True: the pre-tokeniser is part of what this class reproduces.
    """

    # zoo.data.tokenizer.save_tokenizer writes it to tokenizer.json, so load_tokenizer rebuilds this class.
    normalization = "bert"

    def __init__(
        self,
        vocabulary=None,
        lowercase=True,
        strip_accents=None,
        split_on_cjk=True,
        max_chars_per_word=MAX_CHARS_PER_WORD,
        split=True,
        **kwargs,
    ):
        if not split:
            raise ValueError("BertTokenizer always splits text into words (split=True).")
        if kwargs.get("special_tokens_in_strings"):
            raise ValueError(
                "BertTokenizer never recognises special tokens in raw text (special_tokens_in_strings=False)."
            )
        if int(max_chars_per_word) < 1:
            raise ValueError(f"max_chars_per_word must be positive, got {max_chars_per_word}.")
        strip_accents = lowercase if strip_accents is None else strip_accents
        # The vocabulary is set after max_chars_per_word, which the tf-text WordPiece needs.
        super().__init__(
            vocabulary=None, lowercase=bool(lowercase), strip_accents=bool(strip_accents), split=True,
            split_on_cjk=bool(split_on_cjk), **kwargs,
        )
        self.max_chars_per_word = int(max_chars_per_word)
        self.set_vocabulary(vocabulary)

    def set_vocabulary(self, vocabulary):
        """The base class's, plus the WordPiece this class tokenizes with (words counted in
        characters before it, see `tokenize`), built here, outside any tf.data pipeline."""
        super().set_vocabulary(vocabulary)
        self.bert_word_piece = None
        if self.vocabulary is not None:
            self.bert_word_piece = tf_text.FastWordpieceTokenizer(
                vocab=self.vocabulary,
                token_out_type=self.compute_dtype,
                suffix_indicator=self.suffix_indicator,
                unknown_token=self.oov_token,
                max_bytes_per_word=BYTES_PER_CHAR * self.max_chars_per_word,
                no_pretokenization=True,
                support_detokenization=False,  # `detokenize` is the base class's
            )

    def words(self, text):
        """The normalised, pre-tokenised words of string `[B]` text: ragged `[B, (W)]`."""
        text = normalize(text, self.lowercase, self.strip_accents, self.split_on_cjk)
        return pre_tokenize(text)

    def tokenize(self, inputs):
        """Token ids of string `inputs` (`[]` or `[B]`): `[n]` / ragged `[B, (n)]`, or dense with
        `sequence_length`. Always in TensorFlow ops (keras-hub would run its own Python
        normalisation eagerly). Eagerly, Python text is accepted and the result is given as
        keras-hub's tokenizers give it: ragged ids as Python lists, dense ones as the backend's
        tensors; in a graph (tf.data, tf.function, an export), as TensorFlow tensors."""
        if self.vocabulary is None:
            raise ValueError("BertTokenizer has no vocabulary: pass `vocabulary` when creating it.")
        eager = tf.executing_eagerly()
        with tf.device("cpu"):
            if eager and not isinstance(inputs, (tf.Tensor, tf.RaggedTensor)):
                inputs = _text_tensor(inputs)
            tokens = self._tokenize_bert(inputs)
        return _eager_result(tokens) if eager else tokens

    def _tokenize_bert(self, inputs):
        if not isinstance(inputs, tf.RaggedTensor):
            inputs = tf.convert_to_tensor(inputs)
        unbatched = inputs.shape.rank == 0
        if unbatched:
            inputs = tf.expand_dims(inputs, 0)
        words = self.words(inputs)
        # Hugging Face counts characters, tf-text bytes: over-long words become the unknown
        # token here, which WordPiece then finds whole in the vocabulary.
        too_long = tf.strings.length(words.flat_values, unit="UTF8_CHAR") > self.max_chars_per_word
        words = words.with_flat_values(tf.where(too_long, self.oov_token, words.flat_values))
        tokens = self.bert_word_piece.tokenize(words).merge_dims(-2, -1)
        if self.sequence_length:
            output_shape = tokens.shape.as_list()
            output_shape[-1] = self.sequence_length
            tokens = tokens.to_tensor(shape=output_shape)
        if unbatched:
            tokens = tf.squeeze(tokens, 0)
            tf.ensure_shape(tokens, shape=[self.sequence_length])
        return tokens

    def get_config(self):
        config = super().get_config()
        # keras-hub's config leaves split_on_cjk out (a clone would split CJK whatever the original did).
        config.update(split_on_cjk=self.split_on_cjk, max_chars_per_word=self.max_chars_per_word)
        return config


def _text_tensor(text):
    """Python text (a string, or a possibly ragged nested list of them) as a string tensor."""
    if isinstance(text, (str, bytes)):
        return tf.constant(text)
    try:
        return tf.convert_to_tensor(text, tf.string)
    except (ValueError, TypeError):
        return tf.ragged.constant(text, tf.string)


def _eager_result(tokens):
    """Eager tokens as keras-hub's tokenizers return them: ragged as (nested) Python lists,
    strings decoded, dense numbers as the backend's tensors."""
    if isinstance(tokens, tf.RaggedTensor) or tokens.dtype == tf.string:
        values = tokens.to_list() if isinstance(tokens, tf.RaggedTensor) else tokens.numpy().tolist()
        return _decoded(values) if tokens.dtype == tf.string else values
    return keras.ops.convert_to_tensor(tokens, dtype=keras.backend.standardize_dtype(tokens.dtype))


def _decoded(values):
    if isinstance(values, bytes):
        return values.decode("utf-8")
    if isinstance(values, list):
        return [_decoded(value) for value in values]
    return values

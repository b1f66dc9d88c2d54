"""Tokenizers: training (with an on-disk cache), saving and loading.

Two kinds (a recipe's `tokenizer` config key):
- "wordpiece": a `keras_hub.tokenizers.WordPieceTokenizer`, for BERT-style encoders of prose.
- "bpe": the zoo's lossless byte-level `zoo.data.bpe.BytePairTokenizer`, for causal LMs and
  code: decoding gives back every byte of the input, whitespace included.

Both vocabularies are learned by Hugging Face `tokenizers` (seconds on the 4 MB training
sample, with status lines on stderr and, on a terminal, its progress bars) and applied in the
TensorFlow graph: WordPiece by keras-hub's own `WordPieceTokenizer`, BPE by the zoo's. Every
vocabulary starts with `SPECIAL_TOKENS` at ids 0..4, so pipelines, models and exports can rely
on `PAD_ID == 0` and friends. `[SEP]` doubles as the end-of-document token of causal LMs.

Special tokens are never recognised inside raw text (`special_tokens_in_strings=False`): a
source file that contains the characters "[MASK]" is tokenized as "[", "MASK", "]".

`save_tokenizer` / `load_tokenizer` are the one way a vocabulary travels with a checkpoint or
an export, so a model never meets a vocabulary other than the one it was trained with.
"""

import collections
import contextlib
import functools
import hashlib
import json
import os
import sys
import tempfile
import time

import keras_hub
import tensorflow as tf
import tensorflow_text as tf_text

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(len(SPECIAL_TOKENS))

VOCABULARY_FILE = "vocab.txt"
CONFIG_FILE = "tokenizer.json"
FORMAT = "zoo.wordpiece/1"
BPE_FORMAT = "zoo.bpe/1"
TOKENIZER_KINDS = ("wordpiece", "bpe")
DEFAULT_MAX_TRAINING_CHARS = 4_000_000
# Part of a WordPiece cache entry's name: vocabularies learned by another learner (the earlier
# entries, named without it, came from keras-hub's `compute_word_piece_vocabulary`) are not reused.
WORDPIECE_LEARNER = "hf1"
MIN_FREQUENCY = 2  # a pair of pieces seen fewer times is not merged into a new piece
MAX_ALPHABET = 1000  # the most frequent characters kept as pieces (each twice: "c" and "##c")
PRETOKENIZE_BATCH = 256  # texts per call of the in-graph word cutter
# keras-hub's WordPieceTokenizer makes a longer word (in UTF-8 bytes) its unknown token.
MAX_BYTES_PER_WORD = 100

# The word boundaries of keras-hub's WordPieceTokenizer (`split=True`, `split_on_cjk=True`), which
# are BERT's (google-research/bert, tokenization.py): whitespace and the invisible control and
# format characters separate words and are dropped; punctuation (every ASCII character that is
# not a letter, digit or space, and Unicode's P* categories) and CJK ideographs are words of
# their own. As RE2 patterns, for tensorflow_text.regex_split.
_SEPARATOR = r"\s|\p{Cc}|\p{Cf}"
_PUNCTUATION = r"[!-/:-@\[-`{-~]|\p{P}"
_CJK_BLOCKS = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)
_CJK = "[" + "".join(f"\\x{{{start:X}}}-\\x{{{end:X}}}" for start, end in _CJK_BLOCKS) + "]"


def default_cache_dir():
    """Returns `$ZOO_CACHE_DIR`, or `~/.cache/zoo` when it is unset."""
    return os.environ.get("ZOO_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "zoo")


# -- status lines and progress bars ------------------------------------------------------------
# In the style of the trainer's phases (`trainers.progress`, which the zoo package does not
# import): "[zoo] <phase> ..." on stderr when it starts, "[zoo] <phase> ... done in 2.1 s" when
# it ends.

STATUS_PREFIX = "[zoo]"
_status_lines = True


@contextlib.contextmanager
def status_lines(enabled=True):
    """Within the block, `train_tokenizer` prints its status lines and progress bars only if
    `enabled` (the trainer turns them off at `verbose=0`, which is silent)."""
    global _status_lines
    previous, _status_lines = _status_lines, enabled
    try:
        yield
    finally:
        _status_lines = previous


def _status(message):
    if _status_lines:
        sys.stderr.write(f"{STATUS_PREFIX} {message}\n")
        sys.stderr.flush()


def _duration(seconds):
    """A duration as `trainers.progress.format_duration` writes it: `0.4 s`, `2 min 05 s`, `1 h 02 min`."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    seconds = int(round(seconds))
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _terminal_fd(stream):
    """The file descriptor of `stream` if it is a terminal, else None (a file, a pipe, a capture)."""
    try:
        return stream.fileno() if stream.isatty() else None
    except (AttributeError, ValueError, OSError):  # None, no fileno (StringIO), or closed
        return None


@contextlib.contextmanager
def _progress_bars():
    """Yields whether `tokenizers` should draw its progress bars (`show_progress`): with status
    lines on and stderr (`sys.stderr`) a terminal; never into a log file or a pipe.

    The bars (Rust's indicatif) draw on file descriptor 2 only when it is a terminal, and each
    ends with a newline written to descriptor 1. During `zoo train`, fd 2 is the pipe of the
    live stderr filter (`trainers.quiet.live_filtered_stderr`, which points `sys.stderr` at the
    terminal), and stdout may be a log file; so for the block both descriptors are pointed at
    `sys.stderr`'s terminal: the bars show, and stdout gets none of their newlines. Keep only
    the `tokenizers` training call in the block: it runs no TensorFlow op, whose native notes
    the filter would have dropped.
    """
    terminal = _terminal_fd(sys.stderr) if _status_lines else None
    if terminal is None:
        yield False
        return
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    saved = os.dup(1), os.dup(2)
    try:
        os.dup2(terminal, 1)
        os.dup2(terminal, 2)
        yield True
    finally:
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)


def train_tokenizer(
    texts,
    vocabulary_size,
    lowercase=False,
    cache_dir=None,
    cache_key=None,
    max_training_chars=DEFAULT_MAX_TRAINING_CHARS,
    kind="wordpiece",
):
    """Trains a WordPiece (or, with `kind="bpe"`, a byte-level BPE) tokenizer on `texts`, or loads it from the cache.

    Both kinds learn on a deterministic sample of at most `max_training_chars` characters: whole
    texts in the order of an MD5 hash of their content (the last one cut at a line break), so
    the sample is spread over the corpus rather than its first files. Both are learned by
    Hugging Face `tokenizers`, in seconds on the 4 MB default. Status lines on stderr, in the
    trainer's `[zoo]` style, say what is being trained and how long it took (or, on a cache hit,
    where the vocabulary was loaded from); between them, when stderr is a terminal, `tokenizers`
    draws its progress bars (never into a log file or a pipe). `status_lines(False)` silences
    both.

    BPE: `zoo.data.bpe.train_bpe`; the special tokens take ids 0..4, and `lowercase` must be
    False (lowercasing is not lossless).

    WordPiece (`_train_wordpiece`): the texts are cut into words in the graph as the tokenizer
    that will apply the vocabulary cuts them (`_word_cutter`: split on whitespace, control
    characters, punctuation and CJK characters; with `lowercase`, accents stripped and case
    folded), so the learner counts exactly the words the tokenizer will meet. The vocabulary is the special tokens at ids 0..4; every character seen (at most the
    `MAX_ALPHABET` most frequent) both as "c" and as "##c", so that any word made of them
    has a tokenization instead of becoming `[UNK]`; then the pieces of `tokenizers`'
    `WordPieceTrainer` (BPE-style merges, continuing pieces marked "##"), in the order
    learned, merging only pairs seen at least `MIN_FREQUENCY` (2) times. Words of other
    characters, and words longer than keras-hub's 100 bytes (always `[UNK]`), are left out.
    The same texts give the same vocabulary, in every process. If the corpus has too few
    pieces, the vocabulary is filled up with `[unused0]`, `[unused1]`, ... (BERT's
    convention; raw text can never produce them), so that `vocabulary_size()` is always
    exactly `vocabulary_size` and model shapes follow the config. The tokenizer returned is
    keras-hub's `WordPieceTokenizer` over that vocabulary.

    Args:
        texts: list of training strings.
        vocabulary_size: number of tokens in the vocabulary, special tokens included.
        lowercase: lowercase (and strip accents from) the input. Off by default: the main
            corpus is source code, where case carries meaning.
        cache_dir: directory of the cache; with `cache_key`, the vocabulary is stored in
            `<cache_dir>/<cache_key>-v<vocabulary_size>-<cased|uncased>-hf1/` (BPE:
            `<cache_key>-v<vocabulary_size>-bpe/`) and reused by the next call with the same
            arguments without retraining. The `-hf1` names the WordPiece learner: entries of
            the earlier one are left alone and retrained. `default_cache_dir()` is the usual
            choice. The key must name the training data (e.g. "stdlib-train").
        cache_key: see `cache_dir`. No caching unless both are given.
        max_training_chars: the cap on training characters; `None` trains on everything.

    Returns:
        A `keras_hub.tokenizers.WordPieceTokenizer` (BPE: a `zoo.data.bpe.BytePairTokenizer`).
    """
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"Unknown tokenizer kind {kind!r}; expected one of {', '.join(TOKENIZER_KINDS)}.")
    if kind == "bpe" and lowercase:
        raise ValueError("A byte-level BPE tokenizer keeps every byte: it cannot lowercase (set lowercase=False).")
    if vocabulary_size <= len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocabulary_size must exceed the {len(SPECIAL_TOKENS)} special tokens, "
            f"got {vocabulary_size}."
        )
    name = "byte-level BPE" if kind == "bpe" else "WordPiece"
    cache_path = None
    if cache_dir is not None and cache_key is not None:
        if os.sep in cache_key or "/" in cache_key or cache_key.startswith("."):
            raise ValueError(f"cache_key must be a plain name without '/', got {cache_key!r}.")
        casing = "bpe" if kind == "bpe" else ("uncased" if lowercase else "cased") + "-" + WORDPIECE_LEARNER
        cache_path = os.path.join(cache_dir, f"{cache_key}-v{vocabulary_size}-{casing}")
        cached = _load_cached(cache_path, vocabulary_size, lowercase, kind)
        if cached is not None:
            _status(f"loaded the {name} vocabulary ({vocabulary_size} tokens) from the cache: {cache_path}")
            return cached

    sample = _training_sample(texts, max_training_chars)
    if not sample:
        raise ValueError("train_tokenizer needs at least one non-empty text.")
    megabytes = sum(len(text.encode("utf-8", "replace")) for text in sample) / 1e6
    options = "" if kind == "bpe" else ", uncased" if lowercase else ", cased"
    phase = f"training a {name} vocabulary ({vocabulary_size} tokens{options}) on {megabytes:.1f} MB of text"
    _status(f"{phase} ...")
    start = time.perf_counter()
    try:
        if kind == "bpe":
            tokenizer = _train_bpe(sample, vocabulary_size)
        else:
            tokenizer = _train_wordpiece(sample, vocabulary_size, lowercase)
        if cache_path is not None:
            save_tokenizer(tokenizer, cache_path)
    except BaseException:  # KeyboardInterrupt too: say how long it ran, as the trainer's phases do
        _status(f"{phase} ... stopped after {_duration(time.perf_counter() - start)}")
        raise
    where = f"; cached in {cache_path}" if cache_path is not None else ""
    _status(f"{phase} ... done in {_duration(time.perf_counter() - start)}{where}")
    return tokenizer


def _train_wordpiece(texts, vocabulary_size, lowercase):
    """keras-hub's `WordPieceTokenizer` over a vocabulary learned from `texts` (see `train_tokenizer`)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    words = _word_counts(texts, lowercase)
    characters = collections.Counter()
    for word, count in words.items():
        for character in word:
            characters[character] += count
    # The most frequent characters, ties by code point; "c" and "##c" must both fit.
    room = (vocabulary_size - len(SPECIAL_TOKENS)) // 2
    ranked = sorted(characters, key=lambda c: (-characters[c], c))
    alphabet = sorted(ranked[: min(MAX_ALPHABET, room)])
    allowed = set(alphabet)
    words = {word: count for word, count in words.items() if set(word) <= allowed}
    continuing = [f"##{c}" for c in alphabet]

    model = Tokenizer(models.WordPiece(unk_token=SPECIAL_TOKENS[UNK_ID], continuing_subword_prefix="##"))
    model.pre_tokenizer = pre_tokenizers.Split("\n", behavior="removed")  # words are already cut
    with _progress_bars() as show_progress:  # the words are counted (TensorFlow ops) before it
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocabulary_size,
            min_frequency=MIN_FREQUENCY,
            # The "##c" pieces go in as special tokens only so that their ids come in a fixed order:
            # the trainer otherwise numbers them in hash-map order, which breaks ties between
            # equally frequent pairs differently from run to run (huggingface/tokenizers#1794).
            special_tokens=SPECIAL_TOKENS + continuing,
            initial_alphabet=alphabet,
            limit_alphabet=len(alphabet),
            continuing_subword_prefix="##",
            show_progress=show_progress,
        )
        # One sequence per distinct word, the word repeated as often as it was seen: the trainer
        # counts the same words as in the texts, from a fixed order.
        model.train_from_iterator(
            ("\n".join([word] * count) for word, count in sorted(words.items())), trainer=trainer, length=len(words)
        )
    learned = sorted(model.get_vocab().items(), key=lambda item: item[1])
    if [token for token, _ in learned[: len(SPECIAL_TOKENS)]] != SPECIAL_TOKENS:
        raise RuntimeError(f"Special tokens not at ids 0..4: {learned[:5]}")
    # Special tokens, characters, "##" characters, then the learned pieces in the order learned.
    vocabulary = SPECIAL_TOKENS + alphabet + continuing
    known = set(vocabulary)
    vocabulary += [token for token, _ in learned if token not in known]
    vocabulary = _fill_up(vocabulary[:vocabulary_size], vocabulary_size)
    return _make_tokenizer(vocabulary, lowercase=lowercase, strip_accents=lowercase)


def _fill_up(tokens, vocabulary_size):
    """`tokens` followed by `[unused0]`, `[unused1]`, ... (BERT's fillers; skipping any already
    there) up to `vocabulary_size` tokens: a corpus too small for the vocabulary still gives a
    vocabulary of the configured size, so model shapes follow the config."""
    tokens = list(tokens)
    known = set(tokens)
    index = 0
    while len(tokens) < vocabulary_size:
        filler = f"[unused{index}]"
        index += 1
        if filler not in known:
            tokens.append(filler)
    return tokens


def _word_counts(texts, lowercase):
    """{word: count} of `texts` as `_make_tokenizer(..., lowercase=lowercase)` cuts them (see
    `_word_cutter`). Words over `MAX_BYTES_PER_WORD` are left out (the tokenizer maps them to
    [UNK] whatever the vocabulary)."""
    cut = _word_cutter(lowercase)
    counts = collections.Counter()
    for first in range(0, len(texts), PRETOKENIZE_BATCH):
        for joined in cut(tf.constant(texts[first : first + PRETOKENIZE_BATCH])).numpy():
            counts.update(joined.decode("utf-8", "replace").split("\n"))
    counts.pop("", None)
    return {word: n for word, n in counts.items() if len(word.encode("utf-8")) <= MAX_BYTES_PER_WORD}


@functools.lru_cache(maxsize=None)
def _word_cutter(lowercase):
    """A graph function: a batch of texts -> each text's words joined by newlines (no word holds one).

    The words are those keras-hub's `WordPieceTokenizer` hands to WordPiece with our options
    (`lowercase` and `strip_accents` both `lowercase`, `split_on_cjk`, special tokens not
    recognised in text), in its order of steps: a space on each side of every CJK ideograph;
    when lowercasing, accents stripped (NFD, then the nonspacing marks Mn deleted); the cut at
    `_SEPARATOR`, `_PUNCTUATION` and `_CJK`, keeping the last two as words; then, when
    lowercasing, Unicode case folding (so "ß" becomes "ss"). tests/zoo/data/test_tokenizer.py
    checks the words against that tokenizer's own pieces.
    """

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def cut(batch):
        text = tf.strings.regex_replace(batch, _CJK, r" \0 ")
        if lowercase:
            text = tf.strings.regex_replace(tf_text.normalize_utf8(text, "NFD"), r"\p{Mn}", "")
        kept = f"{_PUNCTUATION}|{_CJK}"
        words = tf_text.regex_split(text, delim_regex_pattern=f"{_SEPARATOR}|{kept}", keep_delim_regex_pattern=kept)
        if lowercase:
            words = tf_text.case_fold_utf8(words)
        return tf.strings.reduce_join(words, axis=-1, separator="\n")

    return cut


def _train_bpe(texts, vocabulary_size):
    from zoo.data import bpe

    with _progress_bars() as show_progress:
        vocabulary, merges = bpe.train_bpe(texts, vocabulary_size, SPECIAL_TOKENS, show_progress=show_progress)
    if [vocabulary.get(token) for token in SPECIAL_TOKENS] != list(range(len(SPECIAL_TOKENS))):
        raise RuntimeError(f"Special tokens not at ids 0..4: {[vocabulary.get(t) for t in SPECIAL_TOKENS]}")
    # A corpus too small for the vocabulary: fill up, as for WordPiece, so shapes follow the config.
    for token in _fill_up(vocabulary, vocabulary_size)[len(vocabulary):]:
        vocabulary[token] = len(vocabulary)
    return bpe.BytePairTokenizer(vocabulary, merges, special_tokens=SPECIAL_TOKENS)


def tokenizer_kind(tokenizer):
    """ "bpe" or "wordpiece"."""
    from zoo.data import bpe

    return "bpe" if isinstance(tokenizer, bpe.BytePairTokenizer) else "wordpiece"


def save_tokenizer(tokenizer, directory):
    """Writes the tokenizer to `directory`: WordPiece as `vocab.txt` (one token per line), BPE as
    `vocabulary.json` and `merges.txt`; then `tokenizer.json` (format and options).

    Every file is written atomically; `tokenizer.json` goes last, so a directory that has it
    is complete.
    """
    os.makedirs(directory, exist_ok=True)
    if tokenizer_kind(tokenizer) == "bpe":
        from zoo.data import bpe

        _atomic_write(os.path.join(directory, bpe.VOCABULARY_FILE), json.dumps(tokenizer.vocabulary, ensure_ascii=False))
        _atomic_write(os.path.join(directory, bpe.MERGES_FILE), "".join(merge + "\n" for merge in tokenizer.merges))
        config = {
            "format": BPE_FORMAT,
            "vocabulary_size": tokenizer.vocabulary_size(),
            "special_tokens": tokenizer.special_tokens,
            "pretokenize_pattern": bpe.PRETOKENIZE_PATTERN,
        }
        _atomic_write(os.path.join(directory, CONFIG_FILE), json.dumps(config, indent=2) + "\n")
        return
    vocabulary = list(tokenizer.get_vocabulary())
    bad = [token for token in vocabulary if "\n" in token or "\r" in token]
    if bad:
        raise ValueError(f"Vocabulary tokens must not contain line breaks: {bad[:3]}")
    config = {
        "format": FORMAT,
        "vocabulary_size": len(vocabulary),
        "lowercase": bool(tokenizer.lowercase),
        "strip_accents": bool(tokenizer.strip_accents),
        "split_on_cjk": bool(tokenizer.split_on_cjk),
        "suffix_indicator": tokenizer.suffix_indicator,
        "oov_token": tokenizer.oov_token,
        # By name: imported vocabularies (BERT's has [CLS] at 101) do not keep them at 0..4.
        "special_tokens": list(getattr(tokenizer, "special_tokens", None) or [t for t in SPECIAL_TOKENS if t in vocabulary]),
    }
    if getattr(tokenizer, "normalization", None) == "bert":  # zoo.data.bert_tokenizer.BertTokenizer
        config["normalization"] = "bert"  # absent: keras-hub's own normalisation
        config["max_chars_per_word"] = tokenizer.max_chars_per_word
    _atomic_write(os.path.join(directory, VOCABULARY_FILE), "".join(t + "\n" for t in vocabulary))
    _atomic_write(os.path.join(directory, CONFIG_FILE), json.dumps(config, indent=2) + "\n")


def load_tokenizer(directory):
    """Rebuilds the tokenizer saved by `save_tokenizer`; it gives the same ids on any text."""
    config_path = os.path.join(directory, CONFIG_FILE)
    vocabulary_path = os.path.join(directory, VOCABULARY_FILE)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"No saved tokenizer in {directory}: {config_path} is missing.")
    with open(config_path, encoding="utf-8") as file:
        config = json.load(file)
    if config.get("format") == BPE_FORMAT:
        return _load_bpe(directory, config, config_path)
    if not os.path.isfile(vocabulary_path):
        raise FileNotFoundError(f"No saved tokenizer in {directory}: {vocabulary_path} is missing.")
    if config.get("format") != FORMAT:
        raise ValueError(f"{config_path}: unknown format {config.get('format')!r}, expected {FORMAT!r}.")
    with open(vocabulary_path, encoding="utf-8", newline="") as file:
        vocabulary = file.read().split("\n")
    if vocabulary and vocabulary[-1] == "":
        vocabulary.pop()
    if len(vocabulary) != config["vocabulary_size"]:
        raise ValueError(
            f"{vocabulary_path} has {len(vocabulary)} tokens but {config_path} says "
            f"{config['vocabulary_size']}: the directory is corrupt, delete it and retrain."
        )
    normalization = config.get("normalization", "keras-hub")
    if normalization == "bert":  # a Hugging Face BERT checkpoint's tokenization (zoo.converters.hf_bert)
        from zoo.data.bert_tokenizer import BertTokenizer

        return BertTokenizer(
            vocabulary, lowercase=config["lowercase"], strip_accents=config["strip_accents"],
            split_on_cjk=config["split_on_cjk"], max_chars_per_word=config["max_chars_per_word"],
            suffix_indicator=config["suffix_indicator"], oov_token=config["oov_token"],
            special_tokens=config["special_tokens"], special_tokens_in_strings=False,
        )
    if normalization != "keras-hub":
        raise ValueError(f"{config_path}: unknown normalization {normalization!r}, expected 'bert' or none.")
    return _make_tokenizer(
        vocabulary,
        lowercase=config["lowercase"],
        strip_accents=config["strip_accents"],
        split_on_cjk=config["split_on_cjk"],
        suffix_indicator=config["suffix_indicator"],
        oov_token=config["oov_token"],
        special_tokens=config["special_tokens"],
    )


def _load_bpe(directory, config, config_path):
    from zoo.data import bpe

    if config.get("pretokenize_pattern") != bpe.PRETOKENIZE_PATTERN:
        raise ValueError(f"{config_path}: saved with another pre-tokenisation pattern; retrain the tokenizer.")
    paths = [os.path.join(directory, name) for name in (bpe.VOCABULARY_FILE, bpe.MERGES_FILE)]
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No saved tokenizer in {directory}: {path} is missing.")
    with open(paths[0], encoding="utf-8") as file:
        vocabulary = json.load(file)
    with open(paths[1], encoding="utf-8", newline="") as file:
        merges = [line for line in file.read().split("\n") if line]
    if len(vocabulary) != config["vocabulary_size"]:
        raise ValueError(
            f"{paths[0]} has {len(vocabulary)} tokens but {config_path} says {config['vocabulary_size']}: "
            "the directory is corrupt, delete it and retrain."
        )
    return bpe.BytePairTokenizer(vocabulary, merges, special_tokens=config["special_tokens"])


def _make_tokenizer(vocabulary, special_tokens=SPECIAL_TOKENS, **options):
    return keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=vocabulary,
        special_tokens=list(special_tokens),
        special_tokens_in_strings=False,
        **options,
    )


def _load_cached(path, vocabulary_size, lowercase, kind="wordpiece"):
    try:
        tokenizer = load_tokenizer(path)
    except (FileNotFoundError, ValueError, KeyError, json.JSONDecodeError):
        return None  # absent or half-written: retrain and overwrite
    if tokenizer.vocabulary_size() != vocabulary_size or tokenizer_kind(tokenizer) != kind:
        return None
    if kind == "wordpiece" and tokenizer.lowercase != lowercase:
        return None
    return tokenizer


def _training_sample(texts, max_training_chars):
    texts = [text for text in texts if text and text.strip()]
    if max_training_chars is None or sum(len(t) for t in texts) <= max_training_chars:
        return texts
    ranked = sorted(texts, key=lambda t: hashlib.md5(t.encode("utf-8", "replace")).digest())
    sample, total = [], 0
    for text in ranked:
        room = max_training_chars - total
        if room <= 0:
            break
        if len(text) > room:
            cut = text.rfind("\n", 0, room)
            text = text[: cut if cut > 0 else room]
        sample.append(text)
        total += len(text)
    return sample


def _atomic_write(path, content):
    directory = os.path.dirname(path) or "."
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as file:
            file.write(content)
        os.chmod(temporary, 0o644)  # mkstemp creates 0600; the vocabulary is for every reader of the run or export
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise

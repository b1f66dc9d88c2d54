"""Tokenizers: training (with an on-disk cache), saving and loading.

Two kinds (a recipe's `tokenizer` config key):
- "wordpiece": a `keras_hub.tokenizers.WordPieceTokenizer`, for BERT-style encoders of prose.
- "bpe": the zoo's lossless byte-level `zoo.data.bpe.BytePairTokenizer`, for causal LMs and
  code: decoding gives back every byte of the input, whitespace included.

Every tokenizer made here is a plain `keras_hub.tokenizers.WordPieceTokenizer` whose vocabulary
starts with `SPECIAL_TOKENS` at ids 0..4, so pipelines, models and exports can rely on
`PAD_ID == 0` and friends. `[SEP]` doubles as the end-of-document token of causal LMs.

Special tokens are never recognised inside raw text (`special_tokens_in_strings=False`): a
source file that contains the characters "[MASK]" is tokenized as "[", "MASK", "]".

`save_tokenizer` / `load_tokenizer` are the one way a vocabulary travels with a checkpoint or
an export, so a model never meets a vocabulary other than the one it was trained with.
"""

import hashlib
import json
import os
import tempfile

import keras_hub
import tensorflow as tf

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(len(SPECIAL_TOKENS))

VOCABULARY_FILE = "vocab.txt"
CONFIG_FILE = "tokenizer.json"
FORMAT = "zoo.wordpiece/1"
BPE_FORMAT = "zoo.bpe/1"
TOKENIZER_KINDS = ("wordpiece", "bpe")
DEFAULT_MAX_TRAINING_CHARS = 4_000_000
# Word counts are scaled by this (see `train_tokenizer`): minimum piece frequency 10 / 5 = 2.
COUNT_SCALE = 5
TRAINING_BATCH = 512  # texts per element of the dataset the vocabulary learner reads


def default_cache_dir():
    """Returns `$ZOO_CACHE_DIR`, or `~/.cache/zoo` when it is unset."""
    return os.environ.get("ZOO_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "zoo")


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

    BPE: `zoo.data.bpe.train_bpe` (Hugging Face `tokenizers`, seconds on the 4 MB sample); the
    special tokens take ids 0..4, and `lowercase` must be False (lowercasing is not lossless).

    The vocabulary is learned with `keras_hub.tokenizers.compute_word_piece_vocabulary` on a
    deterministic sample of at most `max_training_chars` characters: whole texts in the order
    of an MD5 hash of their content (the last one cut at a line break), so the sample is spread
    over the corpus rather than its first files. The learner's cost grows with the number of
    distinct words; the 4 MB default keeps training on the whole standard library under a
    minute on two CPU cores, and a WordPiece vocabulary of a few thousand pieces is settled well
    before that.

    `compute_word_piece_vocabulary` cannot be told its minimum piece frequency, which is fixed
    at 10 (the tf-text learner's `lower_thresh`): on a 4 MB sample of the standard library that
    yields only about 6,100 of 8,192 pieces. The sample is therefore fed `COUNT_SCALE` (5) times,
    which multiplies every count by 5 and so lowers the effective minimum frequency to 2
    without changing the ranking of pieces; it costs a few more seconds of word counting. If
    the corpus still has too few pieces, the vocabulary is filled up with `[unused0]`,
    `[unused1]`, ... (BERT's convention; raw text can never produce them), so that
    `vocabulary_size()` is always exactly `vocabulary_size` and model shapes follow the config.

    Args:
        texts: list of training strings.
        vocabulary_size: number of tokens in the vocabulary, special tokens included.
        lowercase: lowercase (and strip accents from) the input. Off by default: the main
            corpus is source code, where case carries meaning.
        cache_dir: directory of the cache; with `cache_key`, the vocabulary is stored in
            `<cache_dir>/<cache_key>-v<vocabulary_size>-<cased|uncased>/` and reused by the
            next call with the same arguments without retraining. `default_cache_dir()` is
            the usual choice. The key must name the training data (e.g. "stdlib-train").
        cache_key: see `cache_dir`. No caching unless both are given.
        max_training_chars: the cap on training characters; `None` trains on everything.

    Returns:
        A `keras_hub.tokenizers.WordPieceTokenizer`.
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
    cache_path = None
    if cache_dir is not None and cache_key is not None:
        if os.sep in cache_key or "/" in cache_key or cache_key.startswith("."):
            raise ValueError(f"cache_key must be a plain name without '/', got {cache_key!r}.")
        casing = "bpe" if kind == "bpe" else "uncased" if lowercase else "cased"
        cache_path = os.path.join(cache_dir, f"{cache_key}-v{vocabulary_size}-{casing}")
        cached = _load_cached(cache_path, vocabulary_size, lowercase, kind)
        if cached is not None:
            return cached

    sample = _training_sample(texts, max_training_chars)
    if not sample:
        raise ValueError("train_tokenizer needs at least one non-empty text.")
    if kind == "bpe":
        tokenizer = _train_bpe(sample, vocabulary_size)
        if cache_path is not None:
            save_tokenizer(tokenizer, cache_path)
        return tokenizer
    # Batched: the learner counts words in a Python loop over the dataset's elements, and one
    # element per text made that loop most of the time on corpora of short texts (WordNet's
    # glosses: 19 s -> 13 s, the same vocabulary).
    vocabulary = keras_hub.tokenizers.compute_word_piece_vocabulary(
        tf.data.Dataset.from_tensor_slices(sample).batch(TRAINING_BATCH).repeat(COUNT_SCALE),
        vocabulary_size,
        lowercase=lowercase,
        strip_accents=lowercase,
        reserved_tokens=SPECIAL_TOKENS,
    )
    vocabulary = list(vocabulary)[:vocabulary_size]
    if vocabulary[: len(SPECIAL_TOKENS)] != SPECIAL_TOKENS:
        raise RuntimeError(f"Special tokens not at ids 0..4: {vocabulary[:5]}")
    known = set(vocabulary)
    filler = (f"[unused{i}]" for i in range(vocabulary_size))
    while len(vocabulary) < vocabulary_size:
        token = next(filler)
        if token not in known:
            vocabulary.append(token)
    tokenizer = _make_tokenizer(vocabulary, lowercase=lowercase, strip_accents=lowercase)
    if cache_path is not None:
        save_tokenizer(tokenizer, cache_path)
    return tokenizer


def _train_bpe(texts, vocabulary_size):
    from zoo.data import bpe

    vocabulary, merges = bpe.train_bpe(texts, vocabulary_size, SPECIAL_TOKENS)
    if [vocabulary.get(token) for token in SPECIAL_TOKENS] != list(range(len(SPECIAL_TOKENS))):
        raise RuntimeError(f"Special tokens not at ids 0..4: {[vocabulary.get(t) for t in SPECIAL_TOKENS]}")
    # A corpus too small for the vocabulary: fill up, as for WordPiece, so shapes follow the config.
    filler = (f"[unused{i}]" for i in range(vocabulary_size))
    while len(vocabulary) < vocabulary_size:
        token = next(filler)
        if token not in vocabulary:
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
    if normalization == "bert":  # a Hugging Face BERT checkpoint's tokenization (zoo.models.hf_bert)
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

"""The zoo's tokenizers as Hugging Face tokenizer files: `tokenizer.json` (read by the `tokenizers`
library, `transformers`' `PreTrainedTokenizerFast`, TGI, vLLM), `tokenizer_config.json`,
`special_tokens_map.json` and, for WordPiece, `vocab.txt`.

`tokenizer.json` holds the whole pipeline, so `tokenizers.Tokenizer.from_file(path)
.encode(text, add_special_tokens=False).ids` are the zoo's `tokenizer(text)` ids:

- byte-level BPE (`zoo.data.bpe`): the zoo's own pre-tokenisation pattern (not GPT-2's, which
  needs a lookahead RE2 lacks), GPT-2's byte alphabet, the merges in rank order. The same
  pipeline trained the vocabulary, so the ids agree on any text. No `vocab.json`/`merges.txt`
  is written: a reader that rebuilds a slow `GPT2Tokenizer` from them would apply GPT-2's
  pattern and get other ids. The post-processor puts `[SEP]` before the text, as the zoo's
  `CausalLMPreprocessor.prompt_ids` does (a document starts after an end token).
- WordPiece trained by the zoo (keras-hub's `WordPieceTokenizer`): keras-hub's normalisation
  written as `tokenizers` steps (uncased: NFD, accents stripped, NFKC, lowercase; cased: none),
  its split (ASCII whitespace, control and format characters dropped; ASCII symbols, Unicode
  punctuation and CJK ideographs kept as words), WordPiece with "##". keras-hub folds case
  (NFKC_Casefold) per word after splitting, which `tokenizers` cannot order so: its
  normalizer (NFKC, lowercase, then "ß" -> "ss" and "ς" -> "σ" as folding does) runs before
  the split. Measured on the words both cut from "a{c}b {c}" for every assigned code point c
  (145,854 texts; tokenizers 0.23, TensorFlow 2.21): cased, no difference; uncased, 953
  (0.65%), characters whose compatibility form holds a space, punctuation or a combining
  mark (U+00A0 and the other compatibility spaces, "¨", "⑴", "Ŀ", ...) and letters whose
  folding is not their lowercase (Cherokee, some Greek and Latin compatibility letters).
  keras-hub's word limit is 100 bytes, this one 100 characters (the same for ASCII).
- WordPiece of an imported Hugging Face BERT (`zoo.data.bert_tokenizer.BertTokenizer`):
  `BertNormalizer` + `BertPreTokenizer` + `WordPiece`, the checkpoint's own pipeline.
  The post-processor wraps texts as `[CLS] text [SEP]` (pairs: `[CLS] a [SEP] b [SEP]`).

Special tokens are never recognised in raw text by the zoo, so they are not in
`tokenizer.json`'s `added_tokens`, and `tokenizer_config.json` sets `split_special_tokens`
(`transformers` then treats a literal "[MASK]" in text as text too).

Back: `import_tokenizer(directory)` gives each of these tokenizers again, with the same ids.
`keras_hub_wordpiece(directory)` gives keras-hub's WordPiece when `tokenizer.json` holds its
pipeline and None otherwise: `zoo.converters.hf_bert` asks it first, so `init_from="hf:<dir>"`
of a BERT directory the zoo wrote restores the zoo's tokenizer, and a Hugging Face BERT (its
`BertNormalizer`) still gets BERT's.
"""

import itertools
import json
import os

from zoo.converters.files import read_json, write_json
from zoo.data.tokenizer import tokenizer_kind

# The zoo looks special tokens up by these names (zoo.data.tokenizer.SPECIAL_TOKENS).
PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
VOCABULARY_FILE = "vocab.txt"
MAX_CHARS_PER_WORD = 100

# keras-hub's word splitting (keras_hub WordPieceTokenizer's regexes, written for Oniguruma).
_KERAS_HUB_DROPPED = r"[\t\n\f\r ]|\p{Cc}|\p{Cf}"
_KERAS_HUB_CJK = (
    r"[\x{4E00}-\x{9FFF}\x{3400}-\x{4DBF}\x{20000}-\x{2A6DF}\x{2A700}-\x{2B73F}\x{2B740}-\x{2B81F}"
    r"\x{2B820}-\x{2CEAF}\x{F900}-\x{FAFF}\x{2F800}-\x{2FA1F}]"
)
_KERAS_HUB_KEPT = r"[!-/:-@\[-`{-~]|\p{P}|" + _KERAS_HUB_CJK
# Where case folding differs from lowercasing in German and Greek text.
_CASE_FOLDS = (("ß", "ss"), ("ς", "σ"))


def hf_tokenizer(tokenizer):
    """A `tokenizers.Tokenizer` giving the zoo tokenizer's ids (see the module docstring)."""
    kind = tokenizer_kind(tokenizer)
    if kind == "bpe":
        return _bpe(tokenizer)
    return _wordpiece(tokenizer)


def _token_id(tokenizer, token):
    return int(tokenizer.token_to_id(token))


def _bpe(tokenizer):
    from tokenizers import processors

    from zoo.data import bpe

    hf = bpe.hf_tokenizer(tokenizer.vocabulary, tokenizer.merges)
    sep = _token_id(tokenizer, SEP)
    hf.post_processor = processors.TemplateProcessing(
        single=f"{SEP} $A", pair=f"{SEP} $A {SEP} $B:1", special_tokens=[(SEP, sep)]
    )
    return hf


def _wordpiece(tokenizer):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocabulary = {token: index for index, token in enumerate(tokenizer.get_vocabulary())}
    suffix = getattr(tokenizer, "suffix_indicator", "##")
    bert_normalization = getattr(tokenizer, "normalization", None) == "bert"
    max_chars = int(getattr(tokenizer, "max_chars_per_word", None) or MAX_CHARS_PER_WORD)
    hf = Tokenizer(models.WordPiece(
        vocab=vocabulary, unk_token=tokenizer.oov_token, continuing_subword_prefix=suffix, max_input_chars_per_word=max_chars,
    ))
    if bert_normalization:  # an imported Hugging Face BERT: its own pipeline
        hf.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=bool(tokenizer.split_on_cjk),
            strip_accents=bool(tokenizer.strip_accents), lowercase=bool(tokenizer.lowercase),
        )
        hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    else:  # keras-hub's WordPieceTokenizer
        normalizer, hf.pre_tokenizer = _keras_hub_pipeline(tokenizer.lowercase, tokenizer.strip_accents, tokenizer.split_on_cjk)
        if normalizer is not None:
            hf.normalizer = normalizer
    cls, sep = _token_id(tokenizer, CLS), _token_id(tokenizer, SEP)
    hf.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}", pair=f"{CLS} $A {SEP} $B:1 {SEP}:1", special_tokens=[(CLS, cls), (SEP, sep)]
    )
    hf.decoder = decoders.WordPiece(prefix=suffix)
    return hf


def _keras_hub_pipeline(lowercase, strip_accents, split_on_cjk):
    """(normalizer or None, pre-tokenizer) doing what keras-hub's `WordPieceTokenizer` does
    before WordPiece, with these options (see the module docstring for the differences)."""
    from tokenizers import Regex, normalizers, pre_tokenizers

    steps = []
    if strip_accents:  # keras-hub deletes Mn only (`StripAccents` also Mc and Me)
        steps += [normalizers.NFD(), normalizers.Replace(Regex(r"\p{Mn}"), "")]
    if lowercase:  # keras-hub folds case (NFKC_Casefold); its common differences from lowercasing follow
        steps += [normalizers.NFKC(), normalizers.Lowercase()]
        steps += [normalizers.Replace(source, target) for source, target in _CASE_FOLDS]
    kept = _KERAS_HUB_KEPT if split_on_cjk else r"[!-/:-@\[-`{-~]|\p{P}"
    pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_KERAS_HUB_DROPPED), behavior="removed"),
        pre_tokenizers.Split(Regex(kept), behavior="isolated"),
    ])
    return (normalizers.Sequence(steps) if steps else None), pre_tokenizer


def write_tokenizer_files(tokenizer, directory, model_max_length=None):
    """Writes `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json` (and, for
    WordPiece, `vocab.txt`) into `directory`; returns the file names written.

    Args:
        tokenizer: a zoo tokenizer (`zoo.data.tokenizer`: byte-level BPE or WordPiece).
        model_max_length: `tokenizer_config.json`'s `model_max_length` (the inputs' length in
            training); the files truncate nothing themselves.
    """
    os.makedirs(directory, exist_ok=True)
    kind = tokenizer_kind(tokenizer)
    written = [TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE]
    hf_tokenizer(tokenizer).save(os.path.join(directory, TOKENIZER_FILE), pretty=True)
    if kind == "bpe":
        # A causal LM's prompts and documents start after [SEP] (the end of the previous one).
        special = {"bos_token": SEP, "eos_token": SEP, "pad_token": PAD, "unk_token": UNK}
        config = {}
    else:
        special = {"cls_token": CLS, "sep_token": SEP, "pad_token": PAD, "unk_token": UNK, "mask_token": MASK}
        config = {
            "do_lower_case": bool(tokenizer.lowercase),
            "strip_accents": bool(tokenizer.strip_accents),
            "tokenize_chinese_chars": bool(tokenizer.split_on_cjk),
        }
        vocabulary = list(tokenizer.get_vocabulary())
        with open(os.path.join(directory, VOCABULARY_FILE), "w", encoding="utf-8", newline="") as file:
            file.write("".join(token + "\n" for token in vocabulary))
        written.append(VOCABULARY_FILE)
    config = {
        # The fast tokenizer reads tokenizer.json as written; a model-specific class would
        # rebuild parts of the pipeline from its own defaults.
        "tokenizer_class": "PreTrainedTokenizerFast",
        **config,
        **special,
        "split_special_tokens": True,  # the zoo never reads "[MASK]" in raw text as the token
        "clean_up_tokenization_spaces": False,
        **({"model_max_length": int(model_max_length)} if model_max_length else {}),
    }
    write_json(os.path.join(directory, TOKENIZER_CONFIG_FILE), config)
    write_json(os.path.join(directory, SPECIAL_TOKENS_MAP_FILE), special)
    return written


def import_tokenizer(directory, kind=None):
    """The zoo tokenizer of a `tokenizer.json` that `write_tokenizer_files` wrote.

    Byte-level BPE comes back as `zoo.data.bpe.BytePairTokenizer`; WordPiece with keras-hub's
    pipeline as keras-hub's `WordPieceTokenizer`, with BERT's (`BertNormalizer`) as
    `zoo.data.bert_tokenizer.BertTokenizer` (`zoo.converters.hf_bert.load_tokenizer`). `kind`
    ("bpe" or "wordpiece") is what the caller needs. ValueError naming the file when its
    pipeline is none of these (the zoo could not give its ids in the TensorFlow graph).
    """
    path = os.path.join(directory, TOKENIZER_FILE)
    state = read_json(path)
    model_type = (state.get("model") or {}).get("type")
    found = {"BPE": "bpe", "WordPiece": "wordpiece"}.get(model_type)
    if found is None or (kind is not None and found != kind):
        raise ValueError(f"{path}: a {model_type} tokenizer; expected {kind or 'byte-level BPE or WordPiece'}.")
    tokenizer = _import_bpe(state, path) if found == "bpe" else _import_wordpiece(state, path, directory)
    return _with_special_tokens(tokenizer, path)


def keras_hub_wordpiece(directory):
    """keras-hub's `WordPieceTokenizer` of `directory`'s `tokenizer.json` when that file holds
    keras-hub's pipeline (what `write_tokenizer_files` writes for a WordPiece the zoo trained),
    else None: no such file, or another pipeline (a Hugging Face BERT's `BertNormalizer`, which
    `zoo.converters.hf_bert.load_tokenizer` reads). ValueError naming the file as `import_tokenizer`.
    """
    path = os.path.join(directory, TOKENIZER_FILE)
    if not os.path.isfile(path):
        return None
    state = read_json(path)
    if (state.get("model") or {}).get("type") != "WordPiece":
        return None
    options = _keras_hub_options(state)
    if options is None:
        return None
    return _with_special_tokens(_keras_hub_wordpiece(state, _wordpiece_vocabulary(state, path), options), path)


def _with_special_tokens(tokenizer, path):
    missing = [token for token in (PAD, UNK, CLS, SEP, MASK) if token not in set(tokenizer.get_vocabulary())]
    if missing:
        raise ValueError(f"{path}: special token(s) {', '.join(missing)} not in the vocabulary (the zoo's pipelines need them).")
    return tokenizer


def _parts(state):
    """The parts of a `tokenizer.json` state that cut the text before the model: its normalizer and pre-tokenizer."""
    return {part: state.get(part) for part in ("normalizer", "pre_tokenizer")}


def _pipeline(hf):
    return _parts(json.loads(hf.to_str()))


def _import_bpe(state, path):
    from zoo.data import bpe
    from zoo.data.tokenizer import SPECIAL_TOKENS

    if _parts(state) != _pipeline(bpe.hf_tokenizer()):
        raise ValueError(
            f"{path}: not the zoo's byte-level BPE pre-tokenisation (pattern {bpe.PRETOKENIZE_PATTERN!r}); "
            "the zoo cannot apply another one in the TensorFlow graph."
        )
    model = state["model"]
    for option in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(option):
            raise ValueError(f"{path}: BPE {option} {model[option]!r} is not supported.")
    vocabulary = model.get("vocab") or {}
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model.get("merges") or []]
    return bpe.BytePairTokenizer(vocabulary, merges, special_tokens=[t for t in SPECIAL_TOKENS if t in vocabulary])


def _import_wordpiece(state, path, directory):
    vocabulary = _wordpiece_vocabulary(state, path)
    if (state.get("normalizer") or {}).get("type") == "BertNormalizer":
        from zoo.converters import hf_bert

        return hf_bert.load_tokenizer(directory)
    options = _keras_hub_options(state)
    if options is None:
        raise ValueError(f"{path}: neither keras-hub's nor BERT's WordPiece pipeline; the zoo cannot apply it in the TensorFlow graph.")
    return _keras_hub_wordpiece(state, vocabulary, options)


def _wordpiece_vocabulary(state, path):
    """The tokens of a WordPiece `tokenizer.json` state in id order; ValueError unless the ids are 0..n-1."""
    vocab = state["model"].get("vocab") or {}
    vocabulary = sorted(vocab, key=vocab.get)
    if [vocab[token] for token in vocabulary] != list(range(len(vocabulary))):
        raise ValueError(f"{path}: the WordPiece ids are not 0..n-1.")
    return vocabulary


def _keras_hub_options(state):
    """`(lowercase, strip_accents, split_on_cjk)` of the keras-hub pipeline a `tokenizer.json`
    state holds (`_keras_hub_pipeline`), or None when it holds none of them."""
    from tokenizers import Tokenizer, models

    found = _parts(state)
    for options in itertools.product((False, True), repeat=3):
        reference = Tokenizer(models.WordPiece(vocab={UNK: 0}, unk_token=UNK))
        normalizer, reference.pre_tokenizer = _keras_hub_pipeline(*options)
        if normalizer is not None:
            reference.normalizer = normalizer
        if _pipeline(reference) == found:
            return options
    return None


def _keras_hub_wordpiece(state, vocabulary, options):
    import keras_hub

    model = state["model"]
    lowercase, strip_accents, split_on_cjk = options
    return keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=vocabulary, lowercase=lowercase, strip_accents=strip_accents,
        split_on_cjk=split_on_cjk, suffix_indicator=model.get("continuing_subword_prefix") or "##",
        oov_token=model.get("unk_token") or UNK,
        special_tokens=[token for token in (PAD, UNK, CLS, SEP, MASK) if token in model["vocab"]],
        special_tokens_in_strings=False,
    )

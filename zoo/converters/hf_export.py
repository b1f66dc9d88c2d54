"""The zoo's models in the Hugging Face layout, and back.

Export (each a new directory, written beside its final name and renamed into place; an existing
directory is never overwritten):

- `export_gpt2(decoder, tokenizer, directory)`: a causal LM's `Decoder` as `GPT2LMHeadModel`:
  `config.json`, `model.safetensors` (float32), `generation_config.json` and the tokenizer
  files (`zoo.converters.hf_tokenizer`: `tokenizer.json` with the zoo's byte-level BPE).
- `export_bert(encoder, tokenizer, directory, ...)`: an `Encoder` as `BertModel`; with a
  `MaskedLMHead`, `BertForMaskedLM`; with a classification head, `BertModel` plus
  sentence-transformers modules for the head (see below). Tokenizer files: `vocab.txt`,
  `tokenizer.json` (WordPiece), `tokenizer_config.json` (`do_lower_case` from the tokenizer).

Import: `import_gpt2(directory)` (a `Decoder` and the BPE tokenizer, for a causal LM's
`init_from="hf:<dir>"`), `import_bert_classifier(directory)` (a `TextClassifier`);
`zoo.converters.hf_bert` imports `BertModel` and `BertForMaskedLM` (an encoder recipe's
`init_from="hf:<dir>"`), with the exported tokenizer back. Export then import gives back every
weight bit for bit (the conversions are transposes and reshapes of float32 arrays) and the same ids.

GPT-2 tensors (HF's `Conv1D` weights are `[in, out]`, as Keras kernels):

| Hugging Face (`transformer.` prefix)    | zoo `Decoder`                                        |
|-----------------------------------------|------------------------------------------------------|
| wte.weight, wpe.weight                  | embeddings token table `[vocab, hidden]`, position table `[positions, hidden]` |
| h.i.ln_1, h.i.ln_2                      | block_i attention_norm, feed_forward_norm (pre-norm) |
| h.i.attn.c_attn `[hidden, 3 x hidden]`  | block_i attention query_key_value kernel `[hidden, 3 x heads, head_dim]` (q heads, k heads, v heads) |
| h.i.attn.c_proj `[hidden, hidden]`      | block_i attention output kernel `[heads, head_dim, hidden]` |
| h.i.mlp.c_fc, h.i.mlp.c_proj            | block_i feed_forward intermediate, output            |
| ln_f                                    | final_norm                                           |
| lm_head.weight (tied: not written)      | the token table (the decoder's output is tied)       |

BERT tensors: the table of `zoo.converters.hf_bert` (HF `Linear` weights are `[out, in]`, transposed).

What the layouts cannot say fails before anything is written, with one line naming the field:
GPT-2 is a pre-norm LayerNorm decoder with learned positions, biases, a tied output and one
key/value head per query head, whose `activation_function` may be "gelu_new" (our
"gelu_approximate", GPT-2's tanh GELU), "gelu" or "relu" (not "swiglu"); BERT is the same
encoder post-norm, with `hidden_act` "gelu", "gelu_new" or "relu".

A classifier's head is not BERT's: `BertForSequenceClassification` classifies `tanh(dense(h[CLS]))`
(BERT's pooler), the zoo's `ClassificationHead` a plain linear layer over the mean of the real
tokens ("mean") or over h[CLS] ("cls"), with no pooler. Neither can be written as the former.
A classifier is therefore exported as `BertModel` (`config.json` still carries `id2label` and
`label2id`) plus the sentence-transformers modules that compute exactly the zoo's head:
`modules.json`, `1_Pooling/config.json` (mean or CLS pooling) and `2_Dense` (a linear layer
with identity activation: `linear.weight [classes, hidden]`, `linear.bias`), so
`SentenceTransformer(directory).encode(texts)` returns the logits, and any reader can apply
the head by hand from those two small files.
"""

import os

import numpy as np

from zoo.converters import hf_tokenizer
from zoo.converters.files import new_directory, read_json, write_json

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
GENERATION_CONFIG_FILE = "generation_config.json"
METADATA_FILE = "zoo_metadata.json"
METADATA_FORMAT = "zoo.hf/1"
SAFETENSORS_METADATA = {"format": "pt"}  # what transformers' loader expects of a safetensors file

# zoo FeedForward activation -> GPT-2 `activation_function` / BERT `hidden_act`.
GPT2_ACTIVATIONS = {"gelu_approximate": "gelu_new", "gelu": "gelu", "relu": "relu"}
BERT_ACTIVATIONS = {"gelu": "gelu", "gelu_approximate": "gelu_new", "relu": "relu"}
# And back (HF names that compute the same function).
GPT2_IMPORT_ACTIVATIONS = {"gelu_new": "gelu_approximate", "gelu_pytorch_tanh": "gelu_approximate", "gelu": "gelu", "relu": "relu"}
GPT2_REQUIRED_FIELDS = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")
# Buffers some GPT-2 files carry (the causal mask), which the Decoder computes.
GPT2_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")

SENTENCE_TRANSFORMERS_MODULES = (
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
)
POOLING_DIR, DENSE_DIR = "1_Pooling", "2_Dense"


def _numpy(variable):
    from keras import ops

    return np.ascontiguousarray(ops.convert_to_numpy(variable), dtype=np.float32)


def _fail(layout, field, value, reason):
    raise ValueError(f"Cannot export as {layout}: {field}={value!r} ({reason}).")


def _write_metadata(directory, architecture, recipe=None, config=None, metrics=None):
    write_json(os.path.join(directory, METADATA_FILE), {
        "format": METADATA_FORMAT, "architecture": architecture, "recipe": recipe, "config": config, "metrics": metrics,
    })


def _save_tensors(tensors, path):
    from safetensors.numpy import save_file

    save_file({name: np.ascontiguousarray(value, dtype=np.float32) for name, value in tensors.items()}, path,
              metadata=SAFETENSORS_METADATA)


def _check_block(layout, block, norm_first):
    attention = block.attention
    if not block.use_bias:
        _fail(layout, "use_bias", False, "the layout's projections all have biases")
    if block.normalization != "layer_norm":
        _fail(layout, "normalization", block.normalization, "the layout has LayerNorm only")
    if block.norm_first != norm_first:
        _fail(layout, "norm_first", block.norm_first, f"the layout is {'pre' if norm_first else 'post'}-norm")
    if attention.key_dim not in (None, attention.head_dim):
        _fail(layout, "key_dim", attention.key_dim, "the layout's heads are hidden_size / num_heads wide")
    if getattr(block, "cross_attention", False):
        _fail(layout, "cross_attention", True, "the layout has self-attention only")
    for layer in (*attention.projections().values(), *block.feed_forward.projections().values()):
        if layer.quantization_mode is not None:
            _fail(layout, "quantization", layer.quantization_mode, "the layout stores float weights")


def _check_body(layout, body, activations, norm_first):
    """The checks GPT-2 and BERT share, on a zoo Decoder or Encoder; returns HF's activation name."""
    if body.normalization != "layer_norm":
        _fail(layout, "normalization", body.normalization, "the layout has LayerNorm only")
    if body.use_rotary:
        _fail(layout, "use_rotary", True, "the layout has absolute learned positions only")
    if body.position_embedding_type != "learned":
        _fail(layout, "position_embedding_type", body.position_embedding_type, "the layout has learned positions only")
    if body.num_key_value_heads not in (None, body.num_heads):
        _fail(layout, "num_key_value_heads", body.num_key_value_heads, "the layout has one key/value head per query head")
    if body.activation not in activations:
        _fail(layout, "activation", body.activation, f"the layout takes {', '.join(activations)}")
    if body.hidden_dim % body.num_heads:
        _fail(layout, "hidden_dim", body.hidden_dim, f"not a multiple of num_heads {body.num_heads}")
    if body.token_embedding.quantization_mode is not None:
        _fail(layout, "quantization", body.token_embedding.quantization_mode, "the layout stores float weights")
    for block in body.blocks:
        _check_block(layout, block, norm_first)
    return activations[body.activation]


# -- GPT-2 -------------------------------------------------------------------------------------


def gpt2_config(decoder, tokenizer=None):
    """The `config.json` of `decoder` as `GPT2LMHeadModel`; ValueError naming the first field the
    layout cannot express."""
    layout = "GPT-2 (GPT2LMHeadModel)"
    activation = _check_body(layout, decoder, GPT2_ACTIVATIONS, norm_first=True)
    if not decoder.token_embedding.tie_weights:
        _fail(layout, "tie_weights", False, "GPT-2's output projection is the token table")
    special = {}
    if tokenizer is not None:
        end, pad = tokenizer.token_to_id(hf_tokenizer.SEP), tokenizer.token_to_id(hf_tokenizer.PAD)
        special = {"bos_token_id": int(end), "eos_token_id": int(end), "pad_token_id": int(pad)}
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": int(decoder.vocabulary_size),
        "n_positions": int(decoder.sequence_length),
        "n_ctx": int(decoder.sequence_length),
        "n_embd": int(decoder.hidden_dim),
        "n_layer": int(decoder.num_layers),
        "n_head": int(decoder.num_heads),
        "n_inner": int(decoder.intermediate_dim),
        "activation_function": activation,
        "resid_pdrop": float(decoder.dropout),
        "embd_pdrop": float(decoder.dropout),
        "attn_pdrop": float(decoder.dropout),
        "layer_norm_epsilon": float(decoder.layer_norm_epsilon),
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "torch_dtype": "float32",
        **special,
    }


def gpt2_tensors(decoder):
    """{GPT2LMHeadModel tensor name: float32 array} of a built `decoder`."""
    hidden = decoder.hidden_dim
    embeddings = decoder.embeddings
    tensors = {
        "transformer.wte.weight": _numpy(embeddings.token_embedding.embeddings),
        "transformer.wpe.weight": _numpy(embeddings.position_embedding.position_embeddings),
        "transformer.ln_f.weight": _numpy(decoder.final_norm.gamma),
        "transformer.ln_f.bias": _numpy(decoder.final_norm.beta),
    }
    for index, block in enumerate(decoder.blocks):
        prefix = f"transformer.h.{index}."
        attention, feed_forward = block.attention, block.feed_forward
        qkv, output = attention.query_key_value_dense, attention.output_dense
        tensors.update({
            prefix + "ln_1.weight": _numpy(block.attention_norm.gamma),
            prefix + "ln_1.bias": _numpy(block.attention_norm.beta),
            prefix + "attn.c_attn.weight": _numpy(qkv.kernel).reshape(hidden, 3 * hidden),
            prefix + "attn.c_attn.bias": _numpy(qkv.bias).reshape(3 * hidden),
            prefix + "attn.c_proj.weight": _numpy(output.kernel).reshape(hidden, hidden),
            prefix + "attn.c_proj.bias": _numpy(output.bias),
            prefix + "ln_2.weight": _numpy(block.feed_forward_norm.gamma),
            prefix + "ln_2.bias": _numpy(block.feed_forward_norm.beta),
            prefix + "mlp.c_fc.weight": _numpy(feed_forward.intermediate_dense.kernel),
            prefix + "mlp.c_fc.bias": _numpy(feed_forward.intermediate_dense.bias),
            prefix + "mlp.c_proj.weight": _numpy(feed_forward.output_dense.kernel),
            prefix + "mlp.c_proj.bias": _numpy(feed_forward.output_dense.bias),
        })
    return tensors


def export_gpt2(decoder, tokenizer, directory, max_new_tokens=None, recipe=None, config=None, metrics=None):
    """Writes `decoder` (a zoo `Decoder`) and its BPE `tokenizer` as a `GPT2LMHeadModel` directory.

    Args:
        decoder, tokenizer: a causal LM's decoder and byte-level BPE tokenizer.
        directory: the directory to create (it must not exist).
        max_new_tokens: `generation_config.json`'s default continuation length.
        recipe, config, metrics: recorded in `zoo_metadata.json`.

    Returns `directory`. ValueError (one line, naming the field) when the decoder or the
    tokenizer has no GPT-2 form; FileExistsError when `directory` exists.
    """
    from zoo.data.tokenizer import tokenizer_kind

    if tokenizer_kind(tokenizer) != "bpe":
        _fail("GPT-2 (GPT2LMHeadModel)", "tokenizer", "wordpiece", "GPT-2 models take byte-level BPE")
    model_config = gpt2_config(decoder, tokenizer)
    tensors = gpt2_tensors(decoder)
    generation = {
        "bos_token_id": model_config["bos_token_id"], "eos_token_id": model_config["eos_token_id"],
        "pad_token_id": model_config["pad_token_id"], "do_sample": False,
        **({"max_new_tokens": int(max_new_tokens)} if max_new_tokens else {}),
    }
    with new_directory(directory) as temporary:
        write_json(os.path.join(temporary, CONFIG_FILE), model_config)
        write_json(os.path.join(temporary, GENERATION_CONFIG_FILE), generation)
        _save_tensors(tensors, os.path.join(temporary, WEIGHTS_FILE))
        hf_tokenizer.write_tokenizer_files(tokenizer, temporary, model_max_length=decoder.sequence_length)
        _write_metadata(temporary, "GPT2LMHeadModel", recipe, config, metrics)
    return os.fspath(directory)


def import_gpt2(directory, dtype=None):
    """A zoo `Decoder` and BPE tokenizer from a `GPT2LMHeadModel` directory written by `export_gpt2`.

    The `config.json` gives the shape (`n_inner` null means 4 x `n_embd`); `model.safetensors`
    the weights, with or without the `transformer.` prefix (a tied `lm_head.weight` is
    checked and skipped); `tokenizer.json` the vocabulary and merges, which must use the
    zoo's pre-tokenisation (GPT-2's own pattern has no TensorFlow implementation here).

    Returns `(decoder, tokenizer, info)`: the built Decoder (named "decoder"), a
    `zoo.data.bpe.BytePairTokenizer`, and the config dict read. ValueError naming the field,
    tensor or file that does not fit.
    """
    from safetensors.numpy import load_file

    from zoo.models.decoder import Decoder

    directory = _strip_hf_prefix(directory)
    config_path = os.path.join(directory, CONFIG_FILE)
    config = read_json(config_path)
    if config.get("model_type") != "gpt2":
        raise ValueError(f"{config_path}: model_type is {config.get('model_type')!r}; a causal LM imports 'gpt2' checkpoints.")
    missing = [field for field in GPT2_REQUIRED_FIELDS if field not in config]
    if missing:
        raise ValueError(f"{config_path}: missing field(s) {', '.join(missing)}.")
    activation = config.get("activation_function", "gelu_new")
    if activation not in GPT2_IMPORT_ACTIVATIONS:
        raise ValueError(f"{config_path}: activation_function {activation!r} is not supported; "
                         f"expected one of {', '.join(GPT2_IMPORT_ACTIVATIONS)}.")
    for field, expected in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                            ("tie_word_embeddings", True), ("add_cross_attention", False)):
        if config.get(field, expected) != expected:
            raise ValueError(f"{config_path}: {field} is {config[field]!r}; the zoo's Decoder needs {expected!r}.")
    hidden, heads = int(config["n_embd"]), int(config["n_head"])
    if hidden % heads:
        raise ValueError(f"{config_path}: n_embd {hidden} is not a multiple of n_head {heads}.")
    decoder = Decoder(
        vocabulary_size=int(config["vocab_size"]), sequence_length=int(config["n_positions"]),
        num_layers=int(config["n_layer"]), hidden_dim=hidden, num_heads=heads,
        intermediate_dim=int(config.get("n_inner") or 4 * hidden), dropout=float(config.get("resid_pdrop", 0.0)),
        activation=GPT2_IMPORT_ACTIVATIONS[activation], layer_norm_epsilon=float(config.get("layer_norm_epsilon", 1e-5)),
        dtype=dtype, name="decoder",
    )
    decoder.build((None, None))
    weights_path = os.path.join(directory, WEIGHTS_FILE)
    if not os.path.isfile(weights_path):
        raise FileNotFoundError(f"{weights_path} is missing.")
    tensors = _gpt2_checked_tensors(load_file(weights_path), gpt2_tensors(decoder), weights_path)
    _assign_gpt2(decoder, tensors)
    tokenizer = hf_tokenizer.import_tokenizer(directory, kind="bpe")
    if tokenizer.vocabulary_size() != decoder.vocabulary_size:
        raise ValueError(f"{os.path.join(directory, hf_tokenizer.TOKENIZER_FILE)}: {tokenizer.vocabulary_size()} tokens, "
                         f"but {config_path} says vocab_size {decoder.vocabulary_size}.")
    return decoder, tokenizer, config


def _strip_hf_prefix(directory):
    directory = os.fspath(directory)
    directory = directory[len("hf:"):] if directory.startswith("hf:") else directory
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"No Hugging Face model directory {directory!r}.")
    return directory


def _gpt2_checked_tensors(found, expected, path):
    """The file's tensors under their `transformer.` names, once each expected one is there with its shape."""
    tensors = {}
    for name, value in found.items():
        if name == "lm_head.weight" or name.endswith(GPT2_IGNORED_SUFFIXES):
            continue
        tensors[name if name.startswith("transformer.") else "transformer." + name] = value
    missing = [name for name in expected if name not in tensors]
    if missing:
        raise ValueError(f"{path}: missing tensor(s) {', '.join(missing[:5])}" + (f" and {len(missing) - 5} more" if len(missing) > 5 else "") + ".")
    unused = sorted(set(tensors) - set(expected))
    if unused:
        raise ValueError(f"{path}: tensor(s) the Decoder has no place for: {', '.join(unused[:5])} (is n_layer right?).")
    wrong = [f"{name}: expected {expected[name].shape}, found {tuple(tensors[name].shape)}"
             for name in expected if tuple(tensors[name].shape) != expected[name].shape]
    if wrong:
        raise ValueError(f"{path}: tensor shape mismatch with config.json: " + "; ".join(wrong[:3]) + ".")
    head = found.get("lm_head.weight")
    if head is not None and not np.array_equal(head, tensors["transformer.wte.weight"]):
        raise ValueError(f"{path}: lm_head.weight differs from transformer.wte.weight; the zoo's Decoder ties them.")
    return {name: np.asarray(tensors[name], np.float32) for name in expected}


def _assign_gpt2(decoder, tensors):
    heads, hidden = decoder.num_heads, decoder.hidden_dim
    head_dim = hidden // heads
    embeddings = decoder.embeddings
    pairs = [
        (embeddings.token_embedding.embeddings, tensors["transformer.wte.weight"]),
        (embeddings.position_embedding.position_embeddings, tensors["transformer.wpe.weight"]),
        (decoder.final_norm.gamma, tensors["transformer.ln_f.weight"]),
        (decoder.final_norm.beta, tensors["transformer.ln_f.bias"]),
    ]
    for index, block in enumerate(decoder.blocks):
        def tensor(name):
            return tensors[f"transformer.h.{index}.{name}"]

        attention, feed_forward = block.attention, block.feed_forward
        pairs += [
            (block.attention_norm.gamma, tensor("ln_1.weight")),
            (block.attention_norm.beta, tensor("ln_1.bias")),
            (attention.query_key_value_dense.kernel, tensor("attn.c_attn.weight").reshape(hidden, 3 * heads, head_dim)),
            (attention.query_key_value_dense.bias, tensor("attn.c_attn.bias").reshape(3 * heads, head_dim)),
            (attention.output_dense.kernel, tensor("attn.c_proj.weight").reshape(heads, head_dim, hidden)),
            (attention.output_dense.bias, tensor("attn.c_proj.bias")),
            (block.feed_forward_norm.gamma, tensor("ln_2.weight")),
            (block.feed_forward_norm.beta, tensor("ln_2.bias")),
            (feed_forward.intermediate_dense.kernel, tensor("mlp.c_fc.weight")),
            (feed_forward.intermediate_dense.bias, tensor("mlp.c_fc.bias")),
            (feed_forward.output_dense.kernel, tensor("mlp.c_proj.weight")),
            (feed_forward.output_dense.bias, tensor("mlp.c_proj.bias")),
        ]
    _assign(pairs, decoder)


def _assign(pairs, layer):
    assigned = {id(variable) for variable, _ in pairs}
    left = [variable.path for variable in layer.weights if id(variable) not in assigned]
    if left:  # the layer grew a weight this converter does not know about
        raise RuntimeError(f"Weights without a checkpoint tensor: {', '.join(left)}.")
    for variable, value in pairs:
        if tuple(variable.shape) != value.shape:
            raise RuntimeError(f"{variable.path}: shape {tuple(variable.shape)}, converted tensor {value.shape}.")
        variable.assign(np.ascontiguousarray(value))


# -- BERT ----------------------------------------------------------------------------------------


def bert_config(encoder, architecture="BertModel", label_names=None, tokenizer=None):
    """The `config.json` of `encoder` as a BERT; ValueError naming the first field the layout
    cannot express."""
    layout = f"BERT ({architecture})"
    activation = _check_body(layout, encoder, BERT_ACTIVATIONS, norm_first=False)
    if encoder.norm_first:
        _fail(layout, "norm_first", True, "BERT is post-norm")
    config = {
        "architectures": [architecture],
        "model_type": "bert",
        "vocab_size": int(encoder.vocabulary_size),
        "hidden_size": int(encoder.hidden_dim),
        "num_hidden_layers": int(encoder.num_layers),
        "num_attention_heads": int(encoder.num_heads),
        "intermediate_size": int(encoder.intermediate_dim),
        "hidden_act": activation,
        "hidden_dropout_prob": float(encoder.dropout),
        "attention_probs_dropout_prob": float(encoder.dropout),
        "max_position_embeddings": int(encoder.sequence_length),
        # No segment table in the zoo model: one all-zero row, which adds nothing.
        "type_vocab_size": int(encoder.num_segments or 1),
        "initializer_range": 0.02,
        "layer_norm_eps": float(encoder.layer_norm_epsilon),
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }
    if tokenizer is not None:
        config["pad_token_id"] = int(tokenizer.token_to_id(hf_tokenizer.PAD))
    if label_names is not None:
        config["id2label"] = {str(index): str(name) for index, name in enumerate(label_names)}
        config["label2id"] = {str(name): index for index, name in enumerate(label_names)}
    return config


def bert_tensors(encoder, prefix=""):
    """{BertModel tensor name: float32 array} of a built `encoder` (`prefix`: "bert." in `BertFor*`)."""
    heads, hidden = encoder.num_heads, encoder.hidden_dim
    embeddings = encoder.embeddings
    segments = (
        _numpy(embeddings.segment_embedding.embeddings) if embeddings.segment_embedding is not None
        else np.zeros((1, hidden), np.float32)
    )
    tensors = {
        "embeddings.word_embeddings.weight": _numpy(embeddings.token_embedding.embeddings),
        "embeddings.position_embeddings.weight": _numpy(embeddings.position_embedding.position_embeddings),
        "embeddings.token_type_embeddings.weight": segments,
        "embeddings.LayerNorm.weight": _numpy(encoder.norm.gamma),
        "embeddings.LayerNorm.bias": _numpy(encoder.norm.beta),
    }
    for index, block in enumerate(encoder.blocks):
        layer = f"encoder.layer.{index}."
        attention, feed_forward = block.attention, block.feed_forward
        kernel = _numpy(attention.query_key_value_dense.kernel)  # [hidden, 3 x heads, head_dim]
        bias = _numpy(attention.query_key_value_dense.bias)  # [3 x heads, head_dim]
        for part, name in enumerate(("query", "key", "value")):
            rows = slice(part * heads, (part + 1) * heads)
            tensors[f"{layer}attention.self.{name}.weight"] = kernel[:, rows].reshape(hidden, hidden).T
            tensors[f"{layer}attention.self.{name}.bias"] = bias[rows].reshape(hidden)
        tensors.update({
            layer + "attention.output.dense.weight": _numpy(attention.output_dense.kernel).reshape(hidden, hidden).T,
            layer + "attention.output.dense.bias": _numpy(attention.output_dense.bias),
            layer + "attention.output.LayerNorm.weight": _numpy(block.attention_norm.gamma),
            layer + "attention.output.LayerNorm.bias": _numpy(block.attention_norm.beta),
            layer + "intermediate.dense.weight": _numpy(feed_forward.intermediate_dense.kernel).T,
            layer + "intermediate.dense.bias": _numpy(feed_forward.intermediate_dense.bias),
            layer + "output.dense.weight": _numpy(feed_forward.output_dense.kernel).T,
            layer + "output.dense.bias": _numpy(feed_forward.output_dense.bias),
            layer + "output.LayerNorm.weight": _numpy(block.feed_forward_norm.gamma),
            layer + "output.LayerNorm.bias": _numpy(block.feed_forward_norm.beta),
        })
    return {prefix + name: np.ascontiguousarray(value) for name, value in tensors.items()}


def masked_lm_head_tensors(head, encoder):
    """{`cls.predictions.*` tensor name: array} of a zoo `MaskedLMHead` tied to `encoder`'s token table."""
    layout = "BERT (BertForMaskedLM)"
    if head.output_projection is not None:
        _fail(layout, "output_projection", "untied", "BERT's masked-LM decoder is the token table")
    if head.activation != encoder.activation:
        _fail(layout, "mlm_head.activation", head.activation, f"BERT's head uses hidden_act ({encoder.activation})")
    if head.layer_norm_epsilon != encoder.layer_norm_epsilon:
        _fail(layout, "mlm_head.layer_norm_epsilon", head.layer_norm_epsilon,
              f"BERT's head uses layer_norm_eps ({encoder.layer_norm_epsilon})")
    return {
        "cls.predictions.transform.dense.weight": _numpy(head.transform.kernel).T,
        "cls.predictions.transform.dense.bias": _numpy(head.transform.bias),
        "cls.predictions.transform.LayerNorm.weight": _numpy(head.transform_norm.gamma),
        "cls.predictions.transform.LayerNorm.bias": _numpy(head.transform_norm.beta),
        "cls.predictions.bias": _numpy(head.output_bias),
    }


def export_bert(encoder, tokenizer, directory, masked_lm_head=None, classification_head=None, label_names=None,
                sequence_length=None, recipe=None, config=None, metrics=None):
    """Writes a zoo `Encoder` (and a head) with its WordPiece tokenizer as a BERT directory.

    Args:
        encoder, tokenizer: the encoder and its WordPiece tokenizer.
        directory: the directory to create (it must not exist).
        masked_lm_head: a masked LM's `MaskedLMHead`: the directory is `BertForMaskedLM`.
        classification_head: a classifier's `ClassificationHead`: `BertModel` plus the
            sentence-transformers modules of the head (module docstring); `label_names` go
            into `id2label` / `label2id`.
        sequence_length: the inputs' length in training (`tokenizer_config.json`'s
            `model_max_length`, sentence-transformers' `max_seq_length`); default the encoder's.
        recipe, config, metrics: recorded in `zoo_metadata.json`.

    Returns `directory`; ValueError (one line, naming the field) when the model has no BERT form.
    """
    from zoo.data.tokenizer import tokenizer_kind

    if masked_lm_head is not None and classification_head is not None:
        raise ValueError("export_bert takes a masked-LM head or a classification head, not both.")
    architecture = "BertForMaskedLM" if masked_lm_head is not None else "BertModel"
    if tokenizer_kind(tokenizer) != "wordpiece":
        _fail(f"BERT ({architecture})", "tokenizer", "bpe", "BERT models take WordPiece")
    if classification_head is not None and label_names is not None and len(label_names) != classification_head.num_classes:
        raise ValueError(f"{len(label_names)} label names for a head of {classification_head.num_classes} classes.")
    model_config = bert_config(encoder, architecture, label_names, tokenizer)
    sequence_length = int(sequence_length or encoder.sequence_length)
    if masked_lm_head is not None:
        tensors = {**bert_tensors(encoder, "bert."), **masked_lm_head_tensors(masked_lm_head, encoder)}
    else:
        tensors = bert_tensors(encoder)
    head_tensors = _classification_head_tensors(classification_head) if classification_head is not None else None
    with new_directory(directory) as temporary:
        write_json(os.path.join(temporary, CONFIG_FILE), model_config)
        _save_tensors(tensors, os.path.join(temporary, WEIGHTS_FILE))
        hf_tokenizer.write_tokenizer_files(tokenizer, temporary, model_max_length=sequence_length)
        if head_tensors is not None:
            _write_sentence_transformers_head(temporary, classification_head, head_tensors, encoder, sequence_length)
        _write_metadata(temporary, architecture if head_tensors is None else "BertModel+ClassificationHead",
                        recipe, config, metrics)
    return os.fspath(directory)


def _classification_head_tensors(head):
    if head.output_dense.quantization_mode is not None:
        _fail("BERT + sentence-transformers head", "quantization", head.output_dense.quantization_mode, "float weights only")
    return {"linear.weight": _numpy(head.output_dense.kernel).T, "linear.bias": _numpy(head.output_dense.bias)}


def _write_sentence_transformers_head(directory, head, tensors, encoder, sequence_length):
    write_json(os.path.join(directory, "modules.json"), list(SENTENCE_TRANSFORMERS_MODULES))
    write_json(os.path.join(directory, "sentence_bert_config.json"),
               {"max_seq_length": sequence_length, "do_lower_case": False})
    write_json(os.path.join(directory, POOLING_DIR, CONFIG_FILE), {
        "word_embedding_dimension": int(encoder.hidden_dim),
        "pooling_mode_cls_token": head.pooling == "cls",
        "pooling_mode_mean_tokens": head.pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    })
    write_json(os.path.join(directory, DENSE_DIR, CONFIG_FILE), {
        "in_features": int(encoder.hidden_dim), "out_features": int(head.num_classes), "bias": True,
        "activation_function": "torch.nn.modules.linear.Identity",
    })
    _save_tensors(tensors, os.path.join(directory, DENSE_DIR, WEIGHTS_FILE))


def import_bert_classifier(directory, dtype=None):
    """A zoo `TextClassifier` from a directory written by `export_bert(..., classification_head=...)`.

    Returns `(model, tokenizer, label_names)`: the encoder and tokenizer as
    `zoo.converters.hf_bert.load_encoder` loads them (the exported tokenizer back), the head
    from `1_Pooling` and `2_Dense`, the labels from `id2label`.
    """
    from safetensors.numpy import load_file

    from zoo.converters import hf_bert
    from zoo.models.text_classifier import TextClassifier

    directory = _strip_hf_prefix(directory)
    encoder, tokenizer, _ = hf_bert.load_encoder(directory, dtype=dtype)
    pooling_path = os.path.join(directory, POOLING_DIR, CONFIG_FILE)
    modes = {key for key, value in read_json(pooling_path).items() if key.startswith("pooling_mode_") and value}
    poolings = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean"}
    if len(modes) != 1 or not modes <= set(poolings):
        raise ValueError(f"{pooling_path}: the zoo's ClassificationHead pools with exactly one of CLS or mean tokens.")
    pooling = poolings[modes.pop()]
    dense_path = os.path.join(directory, DENSE_DIR, CONFIG_FILE)
    dense = read_json(dense_path)
    if dense.get("activation_function") != "torch.nn.modules.linear.Identity" or not dense.get("bias", True):
        raise ValueError(f"{dense_path}: the zoo's ClassificationHead is a linear layer with a bias and no activation.")
    tensors = load_file(os.path.join(directory, DENSE_DIR, WEIGHTS_FILE))
    weight, bias = tensors["linear.weight"], tensors["linear.bias"]
    config = read_json(os.path.join(directory, CONFIG_FILE))
    id2label = config.get("id2label") or {}
    label_names = [id2label[str(index)] for index in range(len(id2label))] if id2label else None
    model = TextClassifier(encoder, int(weight.shape[0]), pooling=pooling, name="classifier")
    output = model.head.output_dense
    _assign([(output.kernel, np.asarray(weight, np.float32).T), (output.bias, np.asarray(bias, np.float32))], output)
    return model, tokenizer, label_names

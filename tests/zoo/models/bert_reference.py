"""BERT written out in numpy from the paper's equations, and small synthetic Hugging Face BERT
checkpoints (random weights) to test the importer against it without downloading anything."""

import json
import math
import os

import numpy as np

# A vocabulary with BERT's special tokens (at other ids than BERT's 0/100-103, so nothing relies
# on those numbers) and a few words and word pieces.
VOCABULARY = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [
    "the", "a", "cat", "dog", "sat", "on", "mat", "and", "ran", "to", "park", "in", "sun", "is", "was",
    "big", "small", "red", "blue", "##s", "##ed", "##ing", "play", "jump", ".", ",", "!", "?",
]
# BertConfig fields of a tiny BERT; vocab_size is the vocabulary's.
TINY_CONFIG = {
    "model_type": "bert",
    "architectures": ["BertForMaskedLM"],
    "vocab_size": len(VOCABULARY),
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 24,
    "type_vocab_size": 2,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "position_embedding_type": "absolute",
}


def random_bert_weights(config, seed=0, head=True):
    """float32 tensors by their `BertModel` names (no `bert.` prefix), plus the masked-LM head's
    `cls.predictions.*` (without the tied decoder) when `head`. LayerNorm scales are near 1."""
    rng = np.random.default_rng(seed)
    hidden, inner, vocabulary = config["hidden_size"], config["intermediate_size"], config["vocab_size"]

    def normal(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def norm(name):
        weights[name + ".weight"] = 1.0 + normal(hidden, scale=0.1)
        weights[name + ".bias"] = normal(hidden, scale=0.1)

    weights = {
        "embeddings.word_embeddings.weight": normal(vocabulary, hidden, scale=0.5),
        "embeddings.position_embeddings.weight": normal(config["max_position_embeddings"], hidden),
        "embeddings.token_type_embeddings.weight": normal(config["type_vocab_size"], hidden),
        "embeddings.position_ids": np.arange(config["max_position_embeddings"], dtype=np.int64)[None],
    }
    norm("embeddings.LayerNorm")
    for index in range(config["num_hidden_layers"]):
        prefix = f"encoder.layer.{index}."
        for name, (out, in_) in {
            "attention.self.query": (hidden, hidden), "attention.self.key": (hidden, hidden),
            "attention.self.value": (hidden, hidden), "attention.output.dense": (hidden, hidden),
            "intermediate.dense": (inner, hidden), "output.dense": (hidden, inner),
        }.items():
            weights[prefix + name + ".weight"] = normal(out, in_, scale=1.0 / math.sqrt(in_))
            weights[prefix + name + ".bias"] = normal(out, scale=0.1)
        norm(prefix + "attention.output.LayerNorm")
        norm(prefix + "output.LayerNorm")
    if head:
        weights["cls.predictions.transform.dense.weight"] = normal(hidden, hidden, scale=1.0 / math.sqrt(hidden))
        weights["cls.predictions.transform.dense.bias"] = normal(hidden, scale=0.1)
        norm("cls.predictions.transform.LayerNorm")
        weights["cls.predictions.bias"] = normal(vocabulary, scale=0.5)
    return weights


def write_checkpoint(directory, weights, config=None, prefix="bert.", tied_decoder=False, vocabulary=VOCABULARY):
    """A Hugging Face checkpoint directory: config.json, model.safetensors (encoder names with
    `prefix`, `cls.*` as they are; with `tied_decoder`, also the decoder weight and bias HF
    ties to the word embeddings and `cls.predictions.bias`) and vocab.txt."""
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    tensors = {name if name.startswith("cls.") else prefix + name: value for name, value in weights.items()}
    if tied_decoder:
        tensors["cls.predictions.decoder.weight"] = weights["embeddings.word_embeddings.weight"].copy()
        tensors["cls.predictions.decoder.bias"] = weights["cls.predictions.bias"].copy()
    save_file(tensors, os.path.join(directory, "model.safetensors"))
    with open(os.path.join(directory, "config.json"), "w") as file:
        json.dump(config or TINY_CONFIG, file)
    with open(os.path.join(directory, "vocab.txt"), "w", encoding="utf-8") as file:
        file.write("\n".join(vocabulary) + "\n")
    return str(directory)


def reference_forward(weights, config, token_ids, padding_mask):
    """BERT in float64 numpy: embeddings + LayerNorm, then per layer post-norm self-attention
    (padded keys masked) and an erf-GELU feed-forward network. Returns `[batch, length, hidden]`."""
    weights = {name: value.astype(np.float64) for name, value in weights.items()}
    eps = config["layer_norm_eps"]
    heads = config["num_attention_heads"]
    batch, length = token_ids.shape
    head_dim = config["hidden_size"] // heads

    def layer_norm(x, name):
        return _layer_norm(x, weights, name, eps)

    def dense(x, name):
        return x @ weights[name + ".weight"].T + weights[name + ".bias"]

    def split_heads(x):
        return x.reshape(batch, length, heads, head_dim).transpose(0, 2, 1, 3)

    x = (
        weights["embeddings.word_embeddings.weight"][token_ids]
        + weights["embeddings.position_embeddings.weight"][:length]
        + weights["embeddings.token_type_embeddings.weight"][0]
    )
    x = layer_norm(x, "embeddings.LayerNorm")
    score_bias = np.where(padding_mask[:, None, None, :], 0.0, -1e30)
    for index in range(config["num_hidden_layers"]):
        prefix = f"encoder.layer.{index}."
        q, k, v = (split_heads(dense(x, prefix + "attention.self." + name)) for name in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head_dim) + score_bias
        probabilities = np.exp(scores - scores.max(-1, keepdims=True))
        probabilities /= probabilities.sum(-1, keepdims=True)
        context = (probabilities @ v).transpose(0, 2, 1, 3).reshape(batch, length, -1)
        x = layer_norm(x + dense(context, prefix + "attention.output.dense"), prefix + "attention.output.LayerNorm")
        inner = _gelu(dense(x, prefix + "intermediate.dense"))
        x = layer_norm(x + dense(inner, prefix + "output.dense"), prefix + "output.LayerNorm")
    return x


def reference_masked_lm_logits(weights, config, token_ids, padding_mask, mask_positions):
    """`BertForMaskedLM`'s logits at `mask_positions [batch, predictions]`: the encoder, then
    `cls.predictions`: dense -> erf GELU -> LayerNorm -> word embeddings^T + bias."""
    hidden = reference_forward(weights, config, token_ids, padding_mask)
    hidden = np.take_along_axis(hidden, mask_positions[..., None], axis=1)
    weights = {
        name: value.astype(np.float64) for name, value in weights.items() if name.startswith(("cls.", "embeddings.word"))
    }
    transform = "cls.predictions.transform."
    hidden = _gelu(hidden @ weights[transform + "dense.weight"].T + weights[transform + "dense.bias"])
    hidden = _layer_norm(hidden, weights, transform + "LayerNorm", config["layer_norm_eps"])
    return hidden @ weights["embeddings.word_embeddings.weight"].T + weights["cls.predictions.bias"]


def _layer_norm(x, weights, name, eps):
    mean = x.mean(-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + eps) * weights[name + ".weight"] + weights[name + ".bias"]


def _gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))

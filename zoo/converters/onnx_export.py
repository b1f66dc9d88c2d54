"""ONNX export: token ids in, logits out, through Keras' own `model.export(format="onnx")`.

A task's `onnx_model(model)` (zoo/tasks.py) gives a Keras model with named int32 inputs of
shape `[batch, length]` (both dynamic) and a dict of float32 outputs; `export_onnx` writes

    <directory>/model.onnx               the graph (tf2onnx on TensorFlow), outputs named as the dict's keys
    <directory>/tokenizer.json, ...      the tokenizer files of zoo.converters.hf_tokenizer (vocab.txt for WordPiece)
    <directory>/zoo_onnx.json            inputs, outputs, special token ids, label names, the recipe's config

The models of the recipes:

| model             | inputs                                            | outputs                                  |
|-------------------|---------------------------------------------------|------------------------------------------|
| causal LM         | token_ids                                         | logits `[B, T, vocabulary]`              |
| masked LM         | token_ids, padding_mask (1 at real tokens), mask_positions `[B, P]` | logits `[B, P, vocabulary]` |
| text classifier   | token_ids, padding_mask                         | logits, probabilities `[B, classes]`     |

Clients tokenize with `tokenizers.Tokenizer.from_file("tokenizer.json")`: `encode(text).ids`
is what the zoo's preprocessor packs (causal LM: `[SEP]` then the text; encoders: `[CLS] text
[SEP]`, truncated to the model's `sequence_length` by the client).

Two repairs of the converted graph, both with the `onnx` package: TensorFlow writes the exact
GELU with `Erfc`, which ONNX lacks (tf2onnx leaves the node as is and onnxruntime refuses the
file), so each `Erfc(x)` becomes `1 - Erf(x)` (the same to float32 rounding: at most 6e-8
apart, where erfc is near 2); and tf2onnx names the outputs `Identity:0`, `Identity_1:0`, so
they get the model's output names (and the inputs' dynamic axes the names batch and length).
"""

import contextlib
import logging
import os

import numpy as np

from zoo.converters import hf_tokenizer
from zoo.converters.files import new_directory, write_json

MODEL_FILE = "model.onnx"
METADATA_FILE = "zoo_onnx.json"
METADATA_FORMAT = "zoo.onnx/1"


def _ids_input(name):
    import keras

    return keras.Input(shape=(None,), dtype="int32", name=name)


def causal_lm_model(decoder):
    """`{"token_ids"}` -> `{"logits": [B, T, vocabulary]}` of a zoo `Decoder`."""
    import keras

    token_ids = _ids_input("token_ids")
    return keras.Model({"token_ids": token_ids}, {"logits": decoder(token_ids)}, name="causal_lm_onnx")


def masked_lm_model(masked_lm):
    """`{"token_ids", "padding_mask", "mask_positions"}` -> `{"logits": [B, P, vocabulary]}` of a zoo `MaskedLM`."""
    import keras

    inputs = {name: _ids_input(name) for name in ("token_ids", "padding_mask", "mask_positions")}
    logits = masked_lm({**inputs, "padding_mask": keras.ops.cast(inputs["padding_mask"], "bool")})
    return keras.Model(inputs, {"logits": logits}, name="masked_lm_onnx")


def classifier_model(classifier):
    """`{"token_ids", "padding_mask"}` -> `{"logits", "probabilities"}` `[B, classes]` of a zoo `TextClassifier`."""
    import keras

    inputs = {name: _ids_input(name) for name in ("token_ids", "padding_mask")}
    logits = classifier({**inputs, "padding_mask": keras.ops.cast(inputs["padding_mask"], "bool")})
    return keras.Model(inputs, {"logits": logits, "probabilities": keras.ops.softmax(logits, axis=-1)},
                       name="classifier_onnx")


def export_onnx(model, tokenizer, directory, opset=None, metadata=None):
    """Writes `model` (a task's `onnx_model`) as `model.onnx` with the tokenizer files into `directory`.

    Args:
        model: a Keras model with dict inputs of int32 `[batch, length]` ids and a dict of outputs.
        tokenizer: the model's zoo tokenizer (its files go beside the graph).
        directory: the directory to create (it must not exist).
        opset: the ONNX opset (default: the converter's).
        metadata: more fields for `zoo_onnx.json` (recipe, config, label names...).

    Returns `directory`. ValueError (one line) for a model that is not float32 (Keras' ONNX
    export needs the float32 policy) or whose inputs or outputs are not named dicts.
    """
    import keras

    for layer in _layers(model):
        if layer.dtype_policy.name != "float32":
            raise ValueError(f"ONNX export needs a float32 model; {layer.name}'s dtype policy is {layer.dtype_policy.name!r}.")
    inputs, outputs = model.input, model.output
    if not isinstance(inputs, dict) or not isinstance(outputs, dict):
        raise ValueError("ONNX export takes a model with a dict of named inputs and a dict of named outputs (Task.onnx_model).")
    output_names = list(keras.tree.flatten({name: name for name in outputs}))  # the order of the converted outputs
    signature = [{name: keras.InputSpec(shape=(None, None), dtype="int32", name=name) for name in inputs}]
    with new_directory(directory) as temporary:
        path = os.path.join(temporary, MODEL_FILE)
        with _quiet_converter():
            model.export(path, format="onnx", input_signature=signature, opset_version=opset, verbose=False)
        _repair(path, output_names)
        files = hf_tokenizer.write_tokenizer_files(tokenizer, temporary, model_max_length=(metadata or {}).get("sequence_length"))
        write_json(os.path.join(temporary, METADATA_FILE), {
            "format": METADATA_FORMAT,
            "inputs": {name: {"dtype": "int32", "shape": ["batch", "length"]} for name in inputs},
            "outputs": output_names,
            "special_token_ids": {token: int(tokenizer.token_to_id(token)) for token in
                                  (hf_tokenizer.PAD, hf_tokenizer.UNK, hf_tokenizer.CLS, hf_tokenizer.SEP, hf_tokenizer.MASK)},
            "tokenizer_files": files,
            **(metadata or {}),
        })
    return os.fspath(directory)


def _layers(layer):
    """`layer` and the layers reachable through `.layers` (models, the zoo's Encoder and Decoder)."""
    yield layer
    for sublayer in getattr(layer, "layers", None) or ():
        yield from _layers(sublayer)


@contextlib.contextmanager
def _quiet_converter():
    """tf2onnx logs every Erfc node as an unsupported op: `_repair` replaces them."""
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _repair(path, output_names):
    """Rewrites `Erfc` nodes as `1 - Erf` and names the graph's outputs (see the module docstring)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(path)
    graph = model.graph
    nodes, one = [], None
    for node in graph.node:
        if node.op_type != "Erfc":
            nodes.append(node)
            continue
        if one is None:
            one = "zoo_erfc_one"
            graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), one))
        erf = f"{node.output[0]}_erf"
        nodes.append(helper.make_node("Erf", [node.input[0]], [erf], name=f"{node.name}_erf"))
        nodes.append(helper.make_node("Sub", [one, erf], list(node.output), name=f"{node.name}_one_minus_erf"))
    del graph.node[:]
    graph.node.extend(nodes)
    if len(output_names) != len(graph.output):
        raise RuntimeError(f"The ONNX graph has {len(graph.output)} outputs, the Keras model {len(output_names)}.")
    renames = {output.name: name for output, name in zip(graph.output, output_names)}
    for node in graph.node:
        for index, name in enumerate(node.output):
            node.output[index] = renames.get(name, name)
        for index, name in enumerate(node.input):
            node.input[index] = renames.get(name, name)
    for output in graph.output:
        output.name = renames[output.name]
        _name_axes(output, ("batch",))
    for value in graph.input:  # tf2onnx names the dynamic axes unk__N
        _name_axes(value, ("batch", "length"))
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _name_axes(value, names):
    for dim, name in zip(value.type.tensor_type.shape.dim, names):
        if not dim.HasField("dim_value"):
            dim.dim_param = name

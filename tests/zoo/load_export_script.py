"""Calls SavedModel signatures in a fresh process that has only TensorFlow and tensorflow_text's ops.

Usage: python load_export_script.py REQUESTS.json RESULTS.json

REQUESTS.json is a list of {"export_dir", "signature", "inputs": {name: {"dtype", "value"}}}.
RESULTS.json gets {"results": [{output name: {"dtype", "value"}}, ...], "modules": [...]}: the
outputs of each call (strings decoded as UTF-8) and the names of all modules loaded at the end.

Keras, keras-hub and the project's packages are made unimportable before anything else, so
a call that needed them would fail here. This is stricter than `import tensorflow_text` in a
normal environment: TensorFlow 2.21 depends on keras and imports part of it at start-up when it
is installed, and tensorflow_text's Python package defines Keras layers on import. What a
SavedModel needs from tensorflow_text is only its kernels (RegexSplitWithOffsets,
FastWordpieceTokenizeWithOffsets, FastWordpieceDetokenize, ...), which are registered here
straight from the package's op libraries, as its modules do on import.
"""

import glob
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys

BLOCKED = {"keras", "keras_hub", "keras_nlp", "tf_keras", "zoo", "recipes", "trainers", "tests"}


class _Blocker(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the blocked packages, then fails to create them: they look installed but cannot load."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return importlib.machinery.ModuleSpec(name, self)  # origin None: TF's probes skip it
        return None

    def create_module(self, spec):
        raise ModuleNotFoundError(f"{spec.name} is blocked in this process", name=spec.name)

    def exec_module(self, module):
        raise ModuleNotFoundError(f"{module.__name__} is blocked in this process", name=module.__name__)


sys.meta_path.insert(0, _Blocker())

import tensorflow as tf  # noqa: E402


def register_tensorflow_text_ops():
    """Loads tensorflow_text's kernels without importing its Python package."""
    package = importlib.util.find_spec("tensorflow_text").submodule_search_locations[0]
    for library in sorted(glob.glob(os.path.join(package, "python", "ops", "*.so"))):
        tf.load_op_library(library)


def to_json(tensor):
    value = tensor.numpy().tolist()
    if tensor.dtype == tf.string:
        return {"dtype": "string", "value": tf.nest.map_structure(lambda b: b.decode("utf-8"), value)}
    return {"dtype": tensor.dtype.name, "value": value}


def main(requests_path, results_path):
    register_tensorflow_text_ops()
    with open(requests_path, encoding="utf-8") as f:
        requests = json.load(f)
    loaded = {}
    results = []
    for request in requests:
        directory = request["export_dir"]
        if directory not in loaded:
            loaded[directory] = tf.saved_model.load(directory)
        function = loaded[directory].signatures[request["signature"]]
        inputs = {name: tf.constant(spec["value"], dtype=spec["dtype"]) for name, spec in request["inputs"].items()}
        results.append({name: to_json(tensor) for name, tensor in function(**inputs).items()})
    with open(results_path, "w", encoding="utf-8") as f:
        json.dump({"results": results, "modules": sorted(sys.modules)}, f)


if __name__ == "__main__":
    main(*sys.argv[1:])

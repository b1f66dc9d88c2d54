"""int8 exports (Keras' own post-training quantization): smaller, the same labels, loadable anywhere."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import recipes
from zoo.export import read_metadata

SHAPE = dict(vocabulary_size=300, sequence_length=16, num_layers=2, hidden_dim=64, num_heads=2, intermediate_dim=128,
             batch_size=16, warmup_steps=0, learning_rate=3e-3)


def _variables_bytes(path):
    directory = os.path.join(path, "variables")
    return sum(os.path.getsize(os.path.join(directory, name)) for name in os.listdir(directory))


@pytest.mark.slow
def test_int8_export_keeps_the_labels_and_loads_in_a_fresh_process(classification_csv, tmp_path):
    recipe = recipes.get("classifier", data=classification_csv, **SHAPE)
    train, _ = recipe.datasets()
    model = recipe.build_model()
    model.fit(train.take(40), verbose=0)
    float_path = recipe.export(model, str(tmp_path / "float" / "1"))
    int8_path = recipe.export(model, str(tmp_path / "int8" / "1"), quantize="int8")
    assert read_metadata(int8_path)["quantization"] == "int8" and read_metadata(float_path)["quantization"] is None
    assert any(v.dtype == "int8" for v in model.weights)  # the model itself was quantized
    # The kernels shrink four-fold; embeddings, norms and biases stay float32.
    assert _variables_bytes(int8_path) < 0.6 * _variables_bytes(float_path)

    test = recipe.examples(split="test")
    script = (
        "import json, sys\n"
        "import tensorflow as tf, tensorflow_text\n"
        "texts = json.loads(sys.stdin.read())\n"
        "labels = {}\n"
        "for name, path in json.loads(sys.argv[1]).items():\n"
        "    classify = tf.saved_model.load(path).signatures['classify']\n"
        "    labels[name] = [int(i) for i in classify(text=tf.constant(texts))['label_id'].numpy()]\n"
        "print(json.dumps(labels))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, json.dumps({"float": float_path, "int8": int8_path})],
        input=json.dumps(test.texts), capture_output=True, text=True, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    labels = json.loads(run.stdout.strip().splitlines()[-1])
    agreement = np.mean(np.equal(labels["float"], labels["int8"]))
    print(f"int8 labels agree with float32 on {agreement:.4f} of {len(test.texts)} test texts")
    assert agreement >= 0.99
    assert np.mean(np.equal(labels["float"], test.labels)) > 0.9  # a trained model, not a constant one


def test_unknown_quantization_is_refused_before_anything_changes(classification_csv, tmp_path):
    recipe = recipes.get("classifier", data=classification_csv, **SHAPE)
    recipe.datasets()
    model = recipe.build_model()
    before = [w.numpy().copy() for w in model.weights]
    with pytest.raises(ValueError, match="Unknown quantization 'int3'; expected one of int8"):
        recipe.export(model, str(tmp_path / "x" / "1"), quantize="int3")
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(before, model.weights))
    assert not os.path.exists(tmp_path / "x")

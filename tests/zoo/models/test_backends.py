"""The same weights generate the same tokens on TensorFlow and on JAX, greedy and sampled."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from zoo.models import CausalLM, Decoder

PROMPTS = [[5, 9, 2, 7], [11, 3]]
SETTINGS = [
    {"temperature": 0.0},
    {"temperature": 0.9, "seed": 3},
    {"temperature": 0.8, "top_k": 12, "top_p": 0.9, "seed": 7},
]
SCRIPT = """
import json, sys
import keras
import zoo
model = keras.models.load_model(sys.argv[1])
settings = json.loads(sys.argv[2])
prompts = json.loads(sys.argv[3])
print(json.dumps({"backend": keras.backend.backend(),
                  "tokens": [model.generate(prompts, max_new_tokens=12, **s) for s in settings]}))
"""


def generate_all(model):
    return [model.generate(PROMPTS, max_new_tokens=12, **settings) for settings in SETTINGS]


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="the TensorFlow run compares both backends already (it runs JAX in a subprocess)")
def test_jax_generates_the_tokens_tensorflow_generates(tmp_path):
    keras.utils.set_random_seed(4)
    # Grouped-query attention and rotary positions: every path of the decoding step.
    model = CausalLM(Decoder(64, 32, 2, 32, 4, 64, num_key_value_heads=2, use_rotary=True,
                             position_embedding_type="none", kernel_initializer=keras.initializers.RandomNormal(stddev=0.3)))
    model(np.zeros((1, 4), "int32"))
    path = str(tmp_path / "model.keras")
    model.save(path)
    expected = generate_all(model)
    assert len({str(tokens) for tokens in expected}) == len(SETTINGS)  # greedy and samples differ
    environment = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, path, json.dumps(SETTINGS), json.dumps(PROMPTS)],
        capture_output=True, text=True, timeout=600, env=environment,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = json.loads(result.stdout.strip().splitlines()[-1])
    assert output["backend"] == "jax"
    assert output["tokens"] == expected

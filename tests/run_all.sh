#!/usr/bin/env bash
# The test command: the whole suite on the TensorFlow backend, then the layer tests on JAX
# (the layers must stay backend-agnostic). Extra arguments go to the first pytest run.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
export TF_CPP_MIN_LOG_LEVEL=2
"$python" -m pytest tests "$@"
KERAS_BACKEND=jax "$python" -m pytest -q tests/zoo/layers

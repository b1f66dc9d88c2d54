#!/usr/bin/env bash
# The test command: the whole suite on the TensorFlow backend, then the layers, models and
# generation on JAX (they must stay backend-agnostic; tests that drive TensorFlow itself skip
# there, see tests/zoo/models/conftest.py). Extra arguments go to the first pytest run.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
export TF_CPP_MIN_LOG_LEVEL=2
# Two pytest workers (pytest-xdist), each test file kept on one worker so that its module
# fixtures (trained tokenizers, exports, servers) are built once: much of the suite waits on
# subprocesses, servers and tracing rather than on the two cores. ZOO_TEST_WORKERS=0 runs in one process.
# --durations lists the slowest tests, so that a CI log shows where its time went.
workers=${ZOO_TEST_WORKERS:-2}
parallel=()
[ "$workers" != 0 ] && parallel=(-n "$workers" --dist loadfile)
"$python" -m pytest "${parallel[@]}" --durations=25 tests "$@"
KERAS_BACKEND=jax "$python" -m pytest "${parallel[@]}" -q --durations=10 tests/zoo/layers tests/zoo/models

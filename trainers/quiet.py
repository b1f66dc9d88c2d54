"""Start TensorFlow without the CUDA-probe noise it prints on a CPU-only machine.

TensorFlow 2.21 writes lines such as "Could not find cuda drivers on your machine" and
"failed call to cuInit" from C++ before absl logging is initialised, so TF_CPP_MIN_LOG_LEVEL
alone does not silence them. We capture file descriptor 2 while TensorFlow imports and probes
its devices, then pass through every line that is not known start-up noise: real errors stay
visible.
"""

import contextlib
import os
import re
import sys
import tempfile

_NOISE = re.compile(
    "|".join(
        [
            r"All log messages before absl::InitializeLog\(\) is called",
            r"cudart_stub\.cc",
            r"Could not find cuda drivers",
            r"failed call to cuInit",
            r"cuda_platform\.cc",
            r"cuda_executor\.cc",
            r"oneDNN custom operations are on",
            r"cpu_feature_guard\.cc",
            r"To enable the following instructions",
            r"rebuild TensorFlow with the appropriate compiler flags",
            r"Unable to register cu(DNN|FFT|BLAS) factory",
            r"computation placer already registered",
            r"oneDNN supports DT_INT64 only on platforms with AVX-512",
        ]
    )
)


def is_noise(line):
    return bool(_NOISE.search(line))


@contextlib.contextmanager
def filtered_native_stderr():
    """Within the block, fd 2 goes to a buffer; non-noise lines are written back afterwards."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace").splitlines(True) if not is_noise(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def import_tensorflow(probe_devices=True):
    """`import tensorflow` and keras without the start-up noise; returns tensorflow.

    With `probe_devices`, TensorFlow also initialises its devices here (the CUDA probe). Leave it
    off when a multi-worker strategy is still to be created: that must come before any device
    initialisation; create it inside `filtered_native_stderr()` instead.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with filtered_native_stderr():
        import keras  # noqa: F401 - imported here so its TensorFlow import is filtered too
        import tensorflow as tf

        if probe_devices:
            tf.config.list_physical_devices()
    return tf

"""On a backend other than TensorFlow (tests/run_all.sh runs these tests on JAX too), the
tests that drive TensorFlow itself (tf.function graphs, tf.distribute, tensors' `.numpy()`,
TensorFlow-only fast paths) are skipped, each module or test with its reason."""

import keras
import pytest

TENSORFLOW_ONLY = {
    "test_losses.py": "SparseCrossEntropy's tests trace tf.function graphs and use tf.distribute",
    "test_accuracy.py": "compares with Keras in tf.function graphs (eager, graph, XLA)",
    "test_perplexity.py": "checks the TensorFlow graph's loss sharing and runs MirroredStrategy",
    "test_adversarial.py": "adversarial and consistency training steps are written with tf.GradientTape",
}


def pytest_collection_modifyitems(config, items):
    if keras.backend.backend() == "tensorflow":
        return
    for item in items:
        reason = TENSORFLOW_ONLY.get(item.path.name)
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"TensorFlow only: {reason}"))

"""Building blocks of the zoo: layers, models, data pipelines and export.

`import zoo` imports Keras and registers every serialisable class of the zoo (layers, models,
losses, metrics, the optimizer and its learning-rate schedule), so that a checkpoint loads with
`keras.models.load_model(".../model.keras")` and nothing else: no `recipes`, no `trainers`.
`zoo.layers` and `zoo.models` use `keras.ops` only (backend-neutral); `zoo.data` and
`zoo.export` import TensorFlow and are loaded only when used. (The `zoo` command reads the
version without importing this package, so that its argument errors come before TensorFlow.)
"""

__version__ = "0.1.0"

from zoo import layers, models, optimization  # noqa: E402,F401  (registration; see the docstring)

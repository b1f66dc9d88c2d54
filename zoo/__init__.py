"""Building blocks of the zoo: layers, models, data pipelines and export.

Importing `zoo` is cheap and backend-neutral: `zoo.layers` and `zoo.models` use `keras.ops`
only; `zoo.data` and `zoo.export` import TensorFlow and are loaded only when used.
"""

__version__ = "0.1.0"

"""The language models' loss: sparse softmax cross-entropy from logits, fast on TensorFlow CPUs.

`SparseCrossEntropy` is `keras.losses.SparseCategoricalCrossentropy(from_logits=True)` with the
same values, the same gradient, the same reductions and sample weights. On the TensorFlow
backend it computes them another way: TensorFlow's fused `SparseSoftmaxCrossEntropyWithLogits`
kernel runs at about 5 ns a logit on a CPU core, where the oneDNN softmax it can be built on
runs at under 2. Over gpt-clm's `[32, 128, 8192]` logits that is 194 ms of a 590 ms training
step against 69 ms (`bench/`, one core).

The cross-entropy of a token is `-log softmax(z)[label]`, and its gradient `softmax(z) -
one_hot(label)`: one softmax serves both. The logarithm of a probability loses the loss's
precision only when that probability leaves float32's normal range; a batch where some
probability at a label is below 1e-30 (a loss above 69 nats) takes TensorFlow's kernel instead,
for the values only.

Under XLA (`jit_compile=True`) the loss keeps Keras' formula: XLA fuses it into a few loops
over the logits by itself, and the softmax-and-scatter form would only add passes (measured:
gpt-clm under XLA 20% slower with it).
"""

import keras

# Below this probability at the label, -log(p) is computed from the logits instead.
_SMALLEST_PROBABILITY = 1e-30


def in_xla_function():
    """True while tracing a `tf.function(jit_compile=True)` (e.g. Keras' train step with XLA on)."""
    try:
        import tensorflow as tf
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # a TensorFlow without that module: play safe, Keras' formula
        return True
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def _tf_sparse_cross_entropy(labels, logits):
    """Per-token cross-entropy `[...]` from int labels `[...]` and float logits `[..., vocabulary]`."""
    import tensorflow as tf

    vocabulary = logits.shape[-1]
    outer_shape = tf.shape(labels)
    labels = tf.reshape(tf.cast(labels, "int32"), (-1,))
    logits = tf.reshape(logits, (-1, vocabulary))
    indices = tf.stack([tf.range(tf.shape(labels)[0], dtype="int32"), labels], axis=1)

    @tf.custom_gradient
    def cross_entropy(logits):
        probabilities = tf.nn.softmax(logits)
        at_label = tf.gather_nd(probabilities, indices)
        losses = tf.cond(
            tf.reduce_all(at_label >= _SMALLEST_PROBABILITY),
            lambda: -tf.math.log(at_label),
            lambda: tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits),
        )

        def gradient(upstream):
            # upstream * (softmax - one_hot): one pass over the probabilities, then a scatter.
            return tf.tensor_scatter_nd_sub(probabilities * upstream[:, None], indices, upstream)

        return losses, gradient

    return tf.reshape(cross_entropy(logits), outer_shape)


@keras.saving.register_keras_serializable(package="zoo")
class SparseCrossEntropy(keras.losses.SparseCategoricalCrossentropy):
    """`keras.losses.SparseCategoricalCrossentropy`, `from_logits=True` by default, with a
    faster computation of the same values on TensorFlow (see the module's docstring).

    Other backends, XLA, `from_logits=False`, `ignore_class` or another `axis` use Keras' own
    computation.

    Example:
    >>> loss = SparseCrossEntropy()
    >>> round(float(loss(keras.ops.array([1]), keras.ops.array([[0.0, 0.0]]))), 4)
    0.6931
    """

    def __init__(self, from_logits=True, **kwargs):
        super().__init__(from_logits=from_logits, **kwargs)

    def _fast(self, y_pred):
        options = self._fn_kwargs
        return (
            keras.backend.backend() == "tensorflow"
            and options.get("from_logits")
            and options.get("ignore_class") is None
            and options.get("axis", -1) in (-1, len(y_pred.shape) - 1)
            and not in_xla_function()
        )

    def call(self, y_true, y_pred):
        if not self._fast(y_pred):
            return super().call(y_true, y_pred)
        y_true = keras.ops.convert_to_tensor(y_true)
        if len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == 1:
            y_true = keras.ops.squeeze(y_true, -1)
        return _tf_sparse_cross_entropy(y_true, y_pred)

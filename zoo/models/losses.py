"""The language models' loss: sparse softmax cross-entropy from logits, fast on TensorFlow CPUs.

`SparseCrossEntropy` is `keras.losses.SparseCategoricalCrossentropy(from_logits=True)` with the
same values, the same gradient, the same reductions and sample weights. On the TensorFlow
backend it computes them another way: TensorFlow's fused `SparseSoftmaxCrossEntropyWithLogits`
kernel runs at about 5 ns a logit on a CPU core, where the oneDNN softmax it can be built on
runs at under 2. Over the tiny causal LM's `[32, 128, 8192]` logits that is 194 ms of a 590 ms training
step against 69 ms (`bench/`, one core).

The cross-entropy of a token is `-log softmax(z)[label]`, and its gradient `softmax(z) -
one_hot(label)`: one softmax serves both. The logarithm of a probability loses the loss's
precision only when that probability leaves float32's normal range; a batch where some
probability at a label is below 1e-30 (a loss above 69 nats) takes TensorFlow's kernel instead,
for the values only.

Under XLA (`jit_compile=True`) the loss keeps Keras' formula: XLA fuses it into a few loops
over the logits by itself, and the softmax-and-scatter form would only add passes (measured:
the causal LM under XLA 20% slower with it). Which one is traced is said by `compiled_with_xla`,
which the language models (`TokenLossSharing`) open around their train and test steps from
their `jit_compile`; elsewhere the softmax form is used (right under XLA too, only slower).

Also here: `scale_for_replicas` / `unscale_for_replicas`, for models that reduce their own
losses under `tf.distribute`, and `recording_token_losses`, through which a model collects the
per-token values its `SparseCrossEntropy` computed (for `Perplexity`).
"""

import contextlib
import threading

import keras

# Below this probability at the label, -log(p) is computed from the logits instead.
_SMALLEST_PROBABILITY = 1e-30

# Per thread (MirroredStrategy traces each replica's step in its own thread): whether the code
# being traced is compiled by XLA, and the open token-loss recorders.
_state = threading.local()


def _replicas_in_sync():
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def scale_for_replicas(value):
    """`value` divided by the number of replicas of the current `tf.distribute` strategy (1 elsewhere).

    A model that reduces its own loss must do this, as Keras' loss objects do in their
    reduction: each replica's gradient is then its share of the global batch's, and the
    replicas' gradients sum to one device's.
    """
    replicas = _replicas_in_sync()
    return value if replicas == 1 else value * keras.ops.cast(1.0 / replicas, value.dtype)


def unscale_for_replicas(value):
    """The inverse of `scale_for_replicas` (to log the loss of the whole batch)."""
    replicas = _replicas_in_sync()
    return value if replicas == 1 else value * keras.ops.cast(replicas, value.dtype)


@contextlib.contextmanager
def compiled_with_xla(enabled=True):
    """Declares, for this thread, that what is traced inside will (or will not) be compiled by XLA.

    Keras offers no public way to ask while tracing; the model knows (`model.jit_compile`)."""
    previous = getattr(_state, "xla", False)
    _state.xla = bool(enabled)
    try:
        yield
    finally:
        _state.xla = previous


def in_xla_function():
    """True inside `compiled_with_xla(True)` in this thread."""
    return getattr(_state, "xla", False)


@contextlib.contextmanager
def recording_token_losses():
    """Yields a list to which every `SparseCrossEntropy` that computes plain per-token
    cross-entropy (from logits, no `ignore_class`, last axis) appends its unreduced values
    while the block runs in this thread."""
    recorders = getattr(_state, "recorders", None)
    if recorders is None:
        recorders = _state.recorders = []
    recorded = []
    recorders.append(recorded)
    try:
        yield recorded
    finally:
        recorders.remove(recorded)


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

    Other backends, XLA (see `compiled_with_xla`), `from_logits=False`, `ignore_class` or
    another `axis` use Keras' own computation. Inside `recording_token_losses` the per-token
    values are also handed to the recorder.

    Example:
    >>> loss = SparseCrossEntropy()
    >>> round(float(loss(keras.ops.array([1]), keras.ops.array([[0.0, 0.0]]))), 4)
    0.6931
    """

    def __init__(self, from_logits=True, ignore_class=None, axis=-1, **kwargs):
        super().__init__(from_logits=from_logits, ignore_class=ignore_class, axis=axis, **kwargs)
        self.from_logits = from_logits
        self.ignore_class = ignore_class
        self.axis = axis

    def plain_cross_entropy(self, y_pred):
        """Whether `call` gives every token's cross-entropy from logits over the last axis."""
        return self.from_logits and self.ignore_class is None and self.axis in (-1, len(y_pred.shape) - 1)

    def call(self, y_true, y_pred):
        plain = self.plain_cross_entropy(y_pred)
        if plain and keras.backend.backend() == "tensorflow" and not in_xla_function():
            y_true = keras.ops.convert_to_tensor(y_true)
            if len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == 1:
                y_true = keras.ops.squeeze(y_true, -1)
            losses = _tf_sparse_cross_entropy(y_true, y_pred)
        else:
            losses = super().call(y_true, y_pred)
        if plain:
            for recorded in getattr(_state, "recorders", ()):
                recorded.append(losses)
        return losses

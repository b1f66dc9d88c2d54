"""Metrics the recipes report: perplexity and macro precision / recall / F1.

`TokenLossSharing` is the model side of `Perplexity`: a language model that mixes it in hands
the per-token cross-entropy its loss computed to its `Perplexity` metrics, which then do not
compute it again over every logit.
"""

import threading

import keras
from keras import ops

from zoo.models.losses import SparseCrossEntropy, compiled_with_xla, in_xla_function, recording_token_losses

# Per thread, the (y_pred, per-token losses) a TokenLossSharing model's last `compute_loss`
# computed, until its `compute_metrics` ends. Per thread because MirroredStrategy traces each
# replica's step in its own thread and switches between them at the gradient all-reduce,
# between the two calls.
_shared = threading.local()


def shared_token_losses(y_pred):
    """The per-token cross-entropy of `y_pred` that the model's loss already computed, else None."""
    entry = getattr(_shared, "entry", None)
    return entry[1] if entry is not None and entry[0] is y_pred else None


@keras.saving.register_keras_serializable(package="zoo")
class Perplexity(keras.metrics.Metric):
    """`exp(mean token cross-entropy)` over everything seen, from integer labels and logits.

    Sample weights (e.g. MLM mask weights) weight each token; zero-weight tokens do not count.

    In a model that mixes in `TokenLossSharing` (`CausalLM`, `MaskedLM`) and is compiled with
    `zoo.models.SparseCrossEntropy()` (from logits), `fit` and `evaluate` hand this metric the
    per-token cross-entropy the loss already computed (`shared_token_losses`), so it costs two
    weighted sums instead of a second softmax over `[batch, sequence, vocabulary]` logits. The
    value is the same: the same op on the same labels and logits.
    """

    def __init__(self, name="perplexity", **kwargs):
        super().__init__(name=name, **kwargs)
        self.total_loss = self.add_variable(shape=(), initializer="zeros", name="total_loss")
        self.total_weight = self.add_variable(shape=(), initializer="zeros", name="total_weight")

    def update_state(self, y_true, y_pred, sample_weight=None):
        losses = shared_token_losses(y_pred)
        if losses is None:
            losses = keras.losses.sparse_categorical_crossentropy(y_true, ops.cast(y_pred, "float32"), from_logits=True)
        weights = ops.ones_like(losses) if sample_weight is None else ops.cast(sample_weight, "float32")
        weights = ops.broadcast_to(weights, ops.shape(losses))
        self.total_loss.assign_add(ops.sum(losses * weights))
        self.total_weight.assign_add(ops.sum(weights))

    def result(self):
        return ops.exp(self.total_loss / ops.maximum(self.total_weight, 1e-12))

    def reset_state(self):
        self.total_loss.assign(0.0)
        self.total_weight.assign(0.0)


def sparse_accuracy(y_true, y_pred):
    """1.0 where `argmax(y_pred, -1) == y_true`, else 0.0; `keras.metrics.sparse_categorical_accuracy`'s numbers.

    Written with a max instead of an argmax: a token is right when its logit is the row's
    maximum and no lower id reaches that maximum (argmax's first-index rule for ties). On
    `[32, 128, 8192]` logits this takes 6 ms on a CPU core where Keras' argmax (an
    index-carrying reduction, after a pass that turns -0.0 into -tiny) takes 56 ms with XLA
    and 77 ms without. (The one difference: a maximum of exactly 0.0 tied between -0.0 at a
    lower id and +0.0 at the label.) On TensorFlow without XLA, where each of those comparisons
    is a separate pass over the logits (33 ms in all), TensorFlow's own argmax is faster (16 ms)
    and has the same first-index rule.
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(ops.convert_to_tensor(y_true), "int32")
    if len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == 1:
        y_true = ops.squeeze(y_true, -1)
    if keras.backend.backend() == "tensorflow" and not in_xla_function():
        import tensorflow as tf

        predicted = tf.math.argmax(y_pred, axis=-1, output_type=tf.int32)
        return ops.cast(predicted == y_true, keras.backend.floatx())
    labels = y_true[..., None]
    best = ops.max(y_pred, axis=-1, keepdims=True)
    at_label = ops.take_along_axis(y_pred, labels, axis=-1)
    lower_ids = ops.arange(y_pred.shape[-1], dtype="int32") < labels
    tied_before = ops.any(ops.logical_and(y_pred == best, lower_ids), axis=-1)
    correct = ops.logical_and(at_label[..., 0] == best[..., 0], ops.logical_not(tied_before))
    return ops.cast(correct, keras.backend.floatx())


@keras.saving.register_keras_serializable(package="zoo")
class SparseAccuracy(keras.metrics.MeanMetricWrapper):
    """`keras.metrics.SparseCategoricalAccuracy` from integer labels and logits, computed by `sparse_accuracy`.

    Same numbers, several times cheaper over a large vocabulary (the causal LM recipe's
    accuracy over every position's logits).
    """

    def __init__(self, name="accuracy", dtype=None):
        super().__init__(fn=sparse_accuracy, name=name, dtype=dtype)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}


class TokenLossSharing:
    """Mixin for a single-output language model (before `keras.Model` in the bases): its
    `Perplexity` metrics reuse the per-token cross-entropy of the compiled loss, and its
    `SparseCrossEntropy` and `SparseAccuracy` know whether they are traced for XLA.

    Sharing applies on the TensorFlow backend when the model is compiled with a
    `SparseCrossEntropy` that gives plain per-token cross-entropy (from logits, no
    `ignore_class`) as its one loss: `compute_loss` records the loss's unreduced values (Keras
    still computes and reduces the loss itself) and publishes them until `compute_metrics`
    ends, for every `Perplexity` that is given the same `y_pred`. Otherwise (another loss,
    another backend, a custom train step) `Perplexity` computes the cross-entropy itself.
    Under MirroredStrategy each replica's metrics get that replica's losses, and the metric
    variables are summed across replicas as before.

    The train and test steps run inside `compiled_with_xla(model.jit_compile)`, so the loss and
    `sparse_accuracy` trace the form that is faster with or without XLA.
    """

    def _compiled_with_xla(self):
        return compiled_with_xla(bool(self.jit_compile) and not self.run_eagerly)

    def train_step(self, *args, **kwargs):
        with self._compiled_with_xla():
            return super().train_step(*args, **kwargs)

    def test_step(self, *args, **kwargs):
        with self._compiled_with_xla():
            return super().test_step(*args, **kwargs)

    def _shareable_loss(self):
        loss = getattr(self, "loss", None)
        if keras.backend.backend() != "tensorflow" or not isinstance(loss, SparseCrossEntropy):
            return None
        return loss

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        _shared.entry = None
        if self._shareable_loss() is None:
            return super().compute_loss(x, y, y_pred, sample_weight, training=training)
        with recording_token_losses() as recorded:
            loss = super().compute_loss(x, y, y_pred, sample_weight, training=training)
        if len(recorded) == 1:
            _shared.entry = (y_pred, recorded[0])
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        try:
            return super().compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        finally:
            _shared.entry = None


@keras.saving.register_keras_serializable(package="zoo")
class MacroClassificationMetric(keras.metrics.Metric):
    """Macro-averaged `precision`, `recall` or `f1` over `num_classes`, from integer labels and logits.

    Accumulates a confusion matrix; classes never predicted and never present count as 0 in the
    average only if they appear in neither (they are left out).
    """

    KINDS = ("precision", "recall", "f1")

    def __init__(self, num_classes, kind="f1", name=None, **kwargs):
        if kind not in self.KINDS:
            raise ValueError(f"Unknown kind {kind!r}; expected one of {', '.join(self.KINDS)}.")
        super().__init__(name=name or f"macro_{kind}", **kwargs)
        self.num_classes = num_classes
        self.kind = kind
        self.confusion = self.add_variable(shape=(num_classes, num_classes), initializer="zeros", name="confusion")

    def update_state(self, y_true, y_pred, sample_weight=None):
        true = ops.one_hot(ops.reshape(ops.cast(y_true, "int32"), (-1,)), self.num_classes)
        predicted = ops.one_hot(ops.argmax(ops.reshape(y_pred, (-1, self.num_classes)), axis=-1), self.num_classes)
        if sample_weight is not None:
            true = true * ops.reshape(ops.cast(sample_weight, "float32"), (-1, 1))
        self.confusion.assign_add(ops.matmul(ops.transpose(true), predicted))  # [true class, predicted class]

    def result(self):
        confusion = ops.convert_to_tensor(self.confusion)
        true_positives = ops.diagonal(confusion)
        predicted = ops.sum(confusion, axis=0)
        actual = ops.sum(confusion, axis=1)
        precision = true_positives / ops.maximum(predicted, 1e-12)
        recall = true_positives / ops.maximum(actual, 1e-12)
        if self.kind == "precision":
            values = precision
        elif self.kind == "recall":
            values = recall
        else:
            values = 2 * precision * recall / ops.maximum(precision + recall, 1e-12)
        present = ops.cast(ops.logical_or(predicted > 0, actual > 0), "float32")
        return ops.sum(values * present) / ops.maximum(ops.sum(present), 1.0)

    def reset_state(self):
        self.confusion.assign(ops.zeros((self.num_classes, self.num_classes)))

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, kind=self.kind)
        return config


def classification_metrics(num_classes):
    """The metrics of a text classifier: accuracy and macro precision, recall, F1."""
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")] + [
        MacroClassificationMetric(num_classes, kind) for kind in MacroClassificationMetric.KINDS
    ]

"""Metrics the recipes report: perplexity and macro precision / recall / F1."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="zoo")
class Perplexity(keras.metrics.Metric):
    """`exp(mean token cross-entropy)` over everything seen, from integer labels and logits.

    Sample weights (e.g. MLM mask weights) weight each token; zero-weight tokens do not count.
    """

    def __init__(self, name="perplexity", **kwargs):
        super().__init__(name=name, **kwargs)
        self.total_loss = self.add_variable(shape=(), initializer="zeros", name="total_loss")
        self.total_weight = self.add_variable(shape=(), initializer="zeros", name="total_weight")

    def update_state(self, y_true, y_pred, sample_weight=None):
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

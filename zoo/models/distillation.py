"""Knowledge distillation (Hinton et al., 2015): a small student learns from labels and a frozen teacher's softened logits."""

import keras
from keras import ops

from zoo.models.losses import scale_for_replicas


def distillation_losses(labels, student_logits, teacher_logits, alpha=0.5, temperature=2.0):
    """Per-example distillation loss `[batch]`, and its two parts.

    `alpha * CE(labels, softmax(student)) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))`.
    The T^2 factor keeps the soft term's gradients the same size as the hard term's when T
    changes (the gradient of the softened KL shrinks as 1 / T^2).

    Returns:
        (loss, hard, soft): `[batch]` float32 each, with `hard` the cross-entropy with the labels
        and `soft` the T^2-scaled KL divergence, so `loss = alpha * hard + (1 - alpha) * soft`.
    """
    labels = ops.convert_to_tensor(labels)
    student_logits = ops.cast(ops.convert_to_tensor(student_logits), "float32")
    teacher_logits = ops.cast(ops.convert_to_tensor(teacher_logits), "float32")
    hard = keras.losses.sparse_categorical_crossentropy(labels, student_logits, from_logits=True)
    teacher_log_probabilities = ops.log_softmax(teacher_logits / temperature, axis=-1)
    student_log_probabilities = ops.log_softmax(student_logits / temperature, axis=-1)
    kl = ops.sum(ops.exp(teacher_log_probabilities) * (teacher_log_probabilities - student_log_probabilities), axis=-1)
    soft = temperature**2 * kl
    return alpha * hard + (1.0 - alpha) * soft, hard, soft


def distillation_loss(labels, student_logits, teacher_logits, alpha=0.5, temperature=2.0):
    """The batch mean of `distillation_losses`: a float32 scalar.

    Args:
        labels: `[batch]` integer class ids.
        student_logits, teacher_logits: `[batch, num_classes]`.
        alpha: weight of the hard-label cross-entropy; 1 - alpha weighs the teacher term.
        temperature: T > 0; both logits are divided by it before the softmax of the KL term.

    Example:
    >>> float(distillation_loss([0], [[2.0, 0.0]], [[2.0, 0.0]], alpha=0.0, temperature=1.0))
    0.0
    """
    return ops.mean(distillation_losses(labels, student_logits, teacher_logits, alpha, temperature)[0])


@keras.saving.register_keras_serializable(package="zoo")
class DistillationModel(keras.Model):
    """A student classifier trained against a frozen teacher; called, it is the student.

    `model(inputs)` returns the student's logits, so compiled metrics (accuracy, macro F1, ...)
    measure the student. The teacher runs inside `compute_loss` on the same inputs, every step,
    with `training=False` and no gradient (it is frozen: `teacher.trainable = False`). Both
    must read the same token ids: give the student the teacher's tokenizer.

    Logs `loss` (the distillation loss), `hard_loss` (cross-entropy with the labels) and
    `soft_loss` (T^2 x KL to the teacher). With `alpha=1` the teacher is never run and training
    is exactly plain cross-entropy training of the student: the "student alone" baseline.

    A label of -1 marks a transfer-set text (Hinton et al.'s unlabelled transfer set): it gets the
    teacher term only, and weight 0 in the metrics (compile them as `weighted_metrics` to leave
    it out of them).

    Args:
        student: a classifier model, `{"token_ids", "padding_mask"}` to logits (e.g. `TextClassifier`).
        teacher: a classifier with the same inputs and number of classes.
        alpha: weight of the label cross-entropy (see `distillation_loss`).
        temperature: softmax temperature of the teacher term.

    Example:
    >>> from zoo.models import Encoder, TextClassifier
    >>> make = lambda hidden: TextClassifier(Encoder(50, 8, 1, hidden, 2, 2 * hidden), num_classes=3)
    >>> model = DistillationModel(make(8), make(16), alpha=0.5, temperature=2.0)
    >>> tuple(model({"token_ids": keras.ops.ones((2, 8), "int32"), "padding_mask": keras.ops.ones((2, 8), "bool")}).shape)
    (2, 3)
    """

    def __init__(self, student, teacher, alpha=0.5, temperature=2.0, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.student = student
        self.teacher = teacher
        self.teacher.trainable = False
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.hard_loss_tracker = keras.metrics.Mean(name="hard_loss")
        self.soft_loss_tracker = keras.metrics.Mean(name="soft_loss")
        self.built = student.built and teacher.built

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        # Label -1: a transfer-set text without a label, which gets the teacher term only.
        labelled = ops.cast(ops.greater_equal(y, 0), "float32")
        y = ops.maximum(y, 0)
        if self.alpha >= 1.0:
            hard = keras.losses.sparse_categorical_crossentropy(y, y_pred, from_logits=True) * labelled
            loss, soft = hard, ops.zeros_like(hard)
        else:
            teacher_logits = ops.stop_gradient(self.teacher(x, training=False))
            _, hard, soft = distillation_losses(y, y_pred, teacher_logits, self.alpha, self.temperature)
            hard = hard * labelled
            loss = self.alpha * hard + (1.0 - self.alpha) * soft
        weights = ops.ones_like(loss) if sample_weight is None else ops.reshape(ops.cast(sample_weight, loss.dtype), ops.shape(loss))
        total_weight = ops.maximum(ops.sum(weights), 1e-9)
        # Weighted by batch size, as Keras weights the `loss` it logs: the three stay comparable.
        batch_size = ops.shape(loss)[0]
        labelled_weight = ops.maximum(ops.sum(weights * labelled), 1e-9)  # the label term's mean is over labelled texts
        self.hard_loss_tracker.update_state(ops.sum(hard * weights) / labelled_weight, sample_weight=batch_size)
        self.soft_loss_tracker.update_state(ops.sum(soft * weights) / total_weight, sample_weight=batch_size)
        # A model that reduces its own loss scales it for tf.distribute, as Keras' losses do.
        return scale_for_replicas(ops.sum(loss * weights) / total_weight)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        # Transfer-set texts (label -1) have no label to score: weight 0 (`weighted_metrics` see it).
        labelled = ops.cast(ops.greater_equal(y, 0), "float32")
        weights = labelled if sample_weight is None else ops.reshape(ops.cast(sample_weight, "float32"), ops.shape(labelled)) * labelled
        return super().compute_metrics(x, ops.maximum(y, 0), y_pred, sample_weight=weights)

    def get_config(self):
        return {
            "student": keras.saving.serialize_keras_object(self.student),
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "alpha": self.alpha,
            "temperature": self.temperature,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["student"] = keras.saving.deserialize_keras_object(config["student"])
        config["teacher"] = keras.saving.deserialize_keras_object(config["teacher"])
        return cls(**config)

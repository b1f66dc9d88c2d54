"""Sequence classification task: an Encoder and a ClassificationHead, with optional robust training.

Robust training (`TextClassifier.configure_training`, TensorFlow backend) adds terms to the
classification loss in a custom `train_step`; evaluation, prediction and saving are unchanged:

- adversarial training on the embeddings (`adversarial="fgm"`, Miyato et al. 2017, or `"pgd"`,
  Madry et al. 2018): the embedding sum (`Encoder.embed`) is pushed, per example, by a
  perturbation of L2 norm `adversarial_epsilon` in the direction that raises the loss, and
  `loss = clean + adversarial_weight * adversarial`.
- consistency regularisation (`consistency="rdrop"`, Liang et al. 2021: two dropout passes pulled
  together by a symmetric KL; or `"augment"`: the prediction on a corrupted copy of each text,
  `augmented_token_ids` / `augmented_padding_mask` in the batch, pulled towards the clean one).
"""

import keras
from keras import ops

from zoo.layers.classification_head import ClassificationHead
from zoo.layers.initializers import clone_initializer
from zoo.models.losses import scale_for_replicas, unscale_for_replicas

ADVERSARIAL_METHODS = ("none", "fgm", "pgd")
CONSISTENCY_METHODS = ("none", "rdrop", "augment")
AUGMENTED_INPUTS = ("augmented_token_ids", "augmented_padding_mask")


@keras.saving.register_keras_serializable(package="zoo")
class TextClassifier(keras.Model):
    """Maps `{"token_ids", "padding_mask"}` (`[batch, sequence]` each) to float32 class logits `[batch, num_classes]`.

    Args:
        encoder: a `zoo.models.Encoder`. The head's weights follow its `kernel_initializer`.
        num_classes: number of labels.
        pooling: "cls" or "mean" (see `ClassificationHead`).
        dropout: dropout before the output layer.
    """

    def __init__(self, encoder, num_classes, pooling="cls", dropout=0.1, **kwargs):
        inputs = {
            "token_ids": keras.Input(shape=(None,), dtype="int32", name="token_ids"),
            "padding_mask": keras.Input(shape=(None,), dtype="bool", name="padding_mask"),
        }
        sequence = encoder(inputs["token_ids"], padding_mask=inputs["padding_mask"])
        head = ClassificationHead(
            num_classes, pooling=pooling, dropout=dropout, dtype=encoder.dtype_policy, name="classification_head",
            kernel_initializer=clone_initializer(encoder.kernel_initializer, "classification_head"),
        )
        logits = head(sequence, padding_mask=inputs["padding_mask"])
        super().__init__(inputs=inputs, outputs=logits, **kwargs)
        self.encoder = encoder
        self.head = head
        self.num_classes = num_classes
        self.pooling = pooling
        self.dropout = dropout
        self.adversarial = "none"
        self.consistency = "none"

    # -- robust training -----------------------------------------------------------------

    def configure_training(
        self,
        adversarial="none",
        adversarial_epsilon=0.3,
        adversarial_steps=3,
        adversarial_weight=1.0,
        consistency="none",
        consistency_weight=1.0,
    ):
        """Turns on adversarial training and/or consistency regularisation for `fit` (call after `compile`).

        Args:
            adversarial: "none", "fgm" (one gradient step of norm epsilon) or "pgd"
                (`adversarial_steps` normalised steps of 2 x epsilon / steps, each projected
                back onto the L2 ball of radius epsilon; one step is FGM).
            adversarial_epsilon: the L2 norm of each example's perturbation of the embedding
                sum (`Encoder.embed`, over all its real tokens and hidden units). Absolute: keep
                it well below the norm of the embedding sums themselves.
            adversarial_steps: PGD's steps (>= 1); each beyond the first costs one forward and
                one backward pass to the embeddings.
            adversarial_weight: loss = clean + weight x adversarial (the same compiled loss).
            consistency: "none", "rdrop" (loss = the mean of two dropout passes' losses +
                weight x (KL(p1 || p2) + KL(p2 || p1)) / 2) or "augment" (loss = clean loss +
                weight x KL(p_clean || p_augmented), the clean prediction held fixed; the batch
                must carry `augmented_token_ids` and `augmented_padding_mask`).
            consistency_weight: the weight of the KL term.

        Logs `adversarial_loss` and `consistency_loss` (unweighted) beside `loss` (the total).
        TensorFlow backend only (a custom `train_step`); XLA, mixed precision (the
        optimizer's loss scaling) and tf.distribute strategies work as with plain training.
        """
        if adversarial not in ADVERSARIAL_METHODS:
            raise ValueError(f"Unknown adversarial {adversarial!r}; expected one of {', '.join(ADVERSARIAL_METHODS)}.")
        if consistency not in CONSISTENCY_METHODS:
            raise ValueError(f"Unknown consistency {consistency!r}; expected one of {', '.join(CONSISTENCY_METHODS)}.")
        if not adversarial_epsilon > 0:
            raise ValueError(f"adversarial_epsilon must be > 0, got {adversarial_epsilon}.")
        if int(adversarial_steps) < 1:
            raise ValueError(f"adversarial_steps must be >= 1, got {adversarial_steps}.")
        if adversarial_weight < 0 or consistency_weight < 0:
            raise ValueError(f"adversarial_weight and consistency_weight must be >= 0, got {adversarial_weight}, {consistency_weight}.")
        if (adversarial, consistency) != ("none", "none") and keras.backend.backend() != "tensorflow":
            raise ValueError(
                f"adversarial and consistency training have a TensorFlow train_step only; the backend is "
                f"{keras.backend.backend()!r} (set KERAS_BACKEND=tensorflow)."
            )
        self.adversarial, self.consistency = adversarial, consistency
        self.adversarial_epsilon = float(adversarial_epsilon)
        self.adversarial_steps = 1 if adversarial == "fgm" else int(adversarial_steps)
        self.adversarial_weight = float(adversarial_weight)
        self.consistency_weight = float(consistency_weight)
        if adversarial != "none" and not hasattr(self, "adversarial_loss_tracker"):
            self.adversarial_loss_tracker = keras.metrics.Mean(name="adversarial_loss")
        if consistency != "none" and not hasattr(self, "consistency_loss_tracker"):
            self.consistency_loss_tracker = keras.metrics.Mean(name="consistency_loss")
        self.train_function = None  # traced again with the new step

    @property
    def _training_trackers(self):
        names = ("adversarial_loss_tracker", "consistency_loss_tracker")
        return [getattr(self, name) for name in names if hasattr(self, name)]

    def logits_from_embeddings(self, embeddings, padding_mask, training=None):
        """The logits from `encoder.embed`'s output (the model's forward pass from the embedding sum on)."""
        sequence = self.encoder.encode_embeddings(embeddings, padding_mask=padding_mask, training=training)
        return self.head(sequence, padding_mask=padding_mask, training=training)

    def adversarial_perturbation(self, x, y, sample_weight=None, training=True):
        """The perturbation of `encoder.embed(x["token_ids"])` that adversarial training adds: float32
        `[batch, sequence, hidden]`, zero at padding, each example's L2 norm `adversarial_epsilon`
        (FGM; at most that for PGD). Needs `compile` (the loss) and `configure_training`."""
        import tensorflow as tf

        embeddings = self.encoder.embed(x["token_ids"])
        with tf.GradientTape() as tape:
            tape.watch(embeddings)
            logits = self.logits_from_embeddings(embeddings, x["padding_mask"], training=training)
            loss = self.compute_loss(x, y, logits, sample_weight, training=training)
        gradient = tape.gradient(loss, embeddings)
        return self._perturbation(x, y, sample_weight, embeddings, gradient, training)

    def _perturbation(self, x, y, sample_weight, embeddings, gradient, training):
        import tensorflow as tf

        mask = tf.cast(x["padding_mask"], tf.float32)[:, :, None]
        epsilon = self.adversarial_epsilon

        def unit(direction):  # per example, over its real tokens
            direction = tf.cast(direction, tf.float32) * mask
            norm = tf.sqrt(tf.reduce_sum(tf.square(direction), axis=[1, 2], keepdims=True))
            return direction / tf.maximum(norm, 1e-12)

        def project(delta):  # onto the L2 ball of radius epsilon
            norm = tf.sqrt(tf.reduce_sum(tf.square(delta), axis=[1, 2], keepdims=True))
            return delta * tf.minimum(1.0, epsilon / tf.maximum(norm, 1e-12))

        step = 2.0 * epsilon / self.adversarial_steps
        delta = project(step * unit(gradient))
        fixed = tf.stop_gradient(embeddings)
        for _ in range(self.adversarial_steps - 1):
            with tf.GradientTape() as tape:
                tape.watch(delta)
                logits = self.logits_from_embeddings(fixed + tf.cast(delta, fixed.dtype), x["padding_mask"], training=training)
                loss = self._scale(self.compute_loss(x, y, logits, sample_weight, training=training))
            delta = project(delta + step * unit(tape.gradient(loss, delta)))
        return tf.stop_gradient(delta)

    def consistency_losses(self, logits, other_logits):
        """Per-example consistency term `[batch]` (float32) of the configured kind, >= 0.

        "rdrop": (KL(p || q) + KL(q || p)) / 2 of two dropout passes; "augment": KL(p_clean ||
        p_augmented) with the clean prediction `logits` held fixed (no gradient)."""
        logits, other_logits = ops.cast(logits, "float32"), ops.cast(other_logits, "float32")
        log_p, log_q = ops.log_softmax(logits, axis=-1), ops.log_softmax(other_logits, axis=-1)
        if self.consistency == "augment":
            log_p = ops.stop_gradient(log_p)
            return ops.sum(ops.exp(log_p) * (log_p - log_q), axis=-1)
        return 0.5 * ops.sum((ops.exp(log_p) - ops.exp(log_q)) * (log_p - log_q), axis=-1)

    def _scale(self, loss):
        return self.optimizer.scale_loss(loss) if self.optimizer is not None else loss

    def train_step(self, *args):
        # JAX's trainer calls train_step(state, data); the remedies (TensorFlow only) take data.
        if (self.adversarial == "none" and self.consistency == "none") or keras.backend.backend() != "tensorflow":
            return super().train_step(*args)
        (data,) = args
        import tensorflow as tf

        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        inputs = {"token_ids": x["token_ids"], "padding_mask": x["padding_mask"]}
        batch_size = tf.shape(x["token_ids"])[0]
        variables = self.trainable_variables
        with tf.GradientTape() as tape:
            embeddings = self.encoder.embed(inputs["token_ids"])
            y_pred = self.logits_from_embeddings(embeddings, inputs["padding_mask"], training=True)
            # Keras' compiled loss, already divided by the number of replicas (summed across them).
            loss = self.compute_loss(inputs, y, y_pred, sample_weight, training=True)
            if self.consistency != "none":
                other = self._consistency_logits(x, inputs)
                term = _weighted_mean(self.consistency_losses(y_pred, other), sample_weight)
                self.consistency_loss_tracker.update_state(term, sample_weight=batch_size)
                if self.consistency == "rdrop":
                    loss = 0.5 * (loss + self.compute_loss(inputs, y, other, sample_weight, training=True))
                loss = loss + self.consistency_weight * scale_for_replicas(term)
            scaled = self._scale(loss)
        if self.adversarial == "none":
            gradients = tape.gradient(scaled, variables)
        else:
            gradients, embedding_gradient = tape.gradient(scaled, [variables, embeddings])
            delta = self._perturbation(inputs, y, sample_weight, embeddings, embedding_gradient, training=True)
            with tf.GradientTape() as adversarial_tape:
                perturbed = self.encoder.embed(inputs["token_ids"]) + tf.cast(delta, embeddings.dtype)
                adversarial_logits = self.logits_from_embeddings(perturbed, inputs["padding_mask"], training=True)
                adversarial = self.compute_loss(inputs, y, adversarial_logits, sample_weight, training=True)
                adversarial_scaled = self._scale(self.adversarial_weight * adversarial)
            adversarial_gradients = adversarial_tape.gradient(adversarial_scaled, variables)
            gradients = [_add_gradients(a, b) for a, b in zip(gradients, adversarial_gradients)]
            self.adversarial_loss_tracker.update_state(unscale_for_replicas(adversarial), sample_weight=batch_size)
            loss = loss + self.adversarial_weight * adversarial
        self.optimizer.apply_gradients(zip(gradients, variables))
        # Keras' `loss` metric (the first of `metrics`), updated as its own train_step does.
        loss_metric = next(metric for metric in self.metrics if metric.name == "loss")
        loss_metric.update_state(unscale_for_replicas(loss), sample_weight=batch_size)
        return self.compute_metrics(inputs, y, y_pred, sample_weight=sample_weight)

    def _consistency_logits(self, x, inputs):
        if self.consistency == "rdrop":
            return self(inputs, training=True)  # new dropout masks
        missing = [name for name in AUGMENTED_INPUTS if name not in x]
        if missing:
            raise ValueError(
                f"consistency='augment' needs the batch's {' and '.join(missing)} (a pipeline with augmentation adds them "
                "when augment is set)."
            )
        return self({"token_ids": x["augmented_token_ids"], "padding_mask": x["augmented_padding_mask"]}, training=True)

    def test_step(self, *args):
        # The training-only trackers stay out of evaluation logs. JAX's trainer passes the state
        # first and gets (logs, state) back.
        result = super().test_step(*args)
        hidden = {tracker.name for tracker in self._training_trackers}
        if isinstance(result, tuple):
            logs, state = result
            return {name: value for name, value in logs.items() if name not in hidden}, state
        return {name: value for name, value in result.items() if name not in hidden}

    def summary(self, line_length=None, positions=None, print_fn=None, expand_nested=True, **kwargs):
        """Keras' summary, by default with the encoder's embeddings, norms and blocks listed."""
        return super().summary(line_length, positions, print_fn, expand_nested=expand_nested, **kwargs)

    # -- serialisation -------------------------------------------------------------------

    def get_config(self):
        return {
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "num_classes": self.num_classes,
            "pooling": self.pooling,
            "dropout": self.dropout,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)


def _weighted_mean(values, sample_weight=None):
    if sample_weight is None:
        return ops.mean(values)
    weights = ops.reshape(ops.cast(sample_weight, values.dtype), ops.shape(values))
    return ops.sum(values * weights) / ops.maximum(ops.sum(weights), 1e-9)


def _add_gradients(a, b):
    """a + b for gradients that may be None (a variable one loss does not reach) or IndexedSlices."""
    import tensorflow as tf

    if a is None or b is None:
        return b if a is None else a
    if isinstance(a, tf.IndexedSlices) or isinstance(b, tf.IndexedSlices):
        a, b = tf.convert_to_tensor(a), tf.convert_to_tensor(b)
    return a + b

"""Multi-task model: one shared Encoder, a tied masked-LM head and a classification head, with PCGrad.

Both tasks come from one batch of labelled texts: the MLM head predicts the masked tokens of
the texts, the classification head their labels. The total loss is
`mlm_weight * mlm_loss + classification_weight * classification_loss`; with
`gradient_surgery="pcgrad"` the two tasks' gradients on the shared encoder are de-conflicted
first (Yu et al., 2020, "Gradient Surgery for Multi-Task Learning").
"""

import math

import keras
from keras import ops

# Keras scales a loss by 1 / replicas inside a tf.distribute replica (its Loss objects do it
# in their reduction) and unscales it for logging; a model that reduces its own losses must
# do the same to train identically under MirroredStrategy.
from keras.src.losses.loss import scale_loss_for_distribution, unscale_loss_for_distribution

from zoo.layers.classification_head import ClassificationHead
from zoo.layers.initializers import clone_initializer
from zoo.layers.masked_lm_head import MaskedLMHead
from zoo.models.encoder import Encoder
from zoo.models.text_classifier import TextClassifier

TASKS = ("mlm", "classification")
GRADIENT_SURGERIES = ("none", "pcgrad")
CLASSIFICATION_INPUTS = ("clean", "masked")


def pcgrad_project(gradients_per_task):
    """PCGrad's projection: each task's gradient loses its component along any task it conflicts with.

    For every task i, starting from g_i and for each other task j in list order: if
    g_i . g_j < 0, then g_i <- g_i - (g_i . g_j / ||g_j||^2) g_j. The g_j are always the
    ORIGINAL gradients (never another task's projected one); the dot product uses g_i as
    projected so far, as in Algorithm 1 of the paper. The paper visits the other tasks in a
    random order; here the order is fixed (list order), so a training step is deterministic.
    With two tasks, as in the multitask recipe, there is only one other task and the order
    does not matter. Non-conflicting gradients (dot product >= 0) are returned unchanged.

    Args:
        gradients_per_task: a list of 1-D tensors (or arrays) of equal length, one flattened
            gradient per task.

    Returns:
        A list of the projected gradients, in the same order. Each has a non-negative dot
        product with every other task's original gradient it conflicted with (up to rounding).

    Example:
    >>> [keras.ops.convert_to_numpy(g).tolist() for g in pcgrad_project([[1.0, 0.0], [-1.0, 1.0]])]
    [[0.5, 0.5], [0.0, 1.0]]
    """
    originals = [ops.convert_to_tensor(g, dtype="float32") for g in gradients_per_task]
    squared_norms = [ops.sum(g * g) for g in originals]
    projected = []
    for i, gradient in enumerate(originals):
        for j, other in enumerate(originals):
            if i == j:
                continue
            # minimum(dot, 0): only a conflict (negative dot product) is projected away; a zero
            # gradient of the other task has dot 0 and changes nothing.
            conflict = ops.minimum(ops.sum(gradient * other), 0.0)
            gradient = gradient - conflict / ops.maximum(squared_norms[j], 1e-30) * other
        projected.append(gradient)
    return projected


@keras.saving.register_keras_serializable(package="zoo")
class MultiTaskModel(keras.Model):
    """An Encoder shared by a masked-LM head (tied to the token embedding) and a classification head.

    Inputs (a dict): `token_ids [batch, sequence]` with some tokens masked, `padding_mask
    [batch, sequence]` (true at real tokens), `mask_positions [batch, predictions]`, and with
    `classification_input="clean"` also `clean_token_ids [batch, sequence]`, the same texts
    unmasked. Outputs (a dict): `"mlm"` float32 logits `[batch, predictions, vocabulary]` and
    `"classification"` float32 logits `[batch, num_classes]`.

    Which ids the classifier reads is `classification_input`:
      - "clean" (default): the unmasked texts, in a second pass through the same encoder. The
        classification head then trains on exactly what it meets at inference (never a
        [MASK] token), and with `mlm_weight=0` the model is the `classifier` recipe. Costs
        one more encoder pass per step.
      - "masked": the masked texts of the MLM pass (one pass, cheaper). The classifier trains
        on text with ~15% of tokens hidden, a train/test mismatch that acts as noise
        augmentation.

    Train with `y = {"mlm": original ids at the masked positions, "classification": labels}`
    and `sample_weight = {"mlm": mask weights, "classification": ...}`. `compile()` takes
    `loss_weights={"mlm": w1, "classification": w2}` and `gradient_surgery`; the losses
    themselves are built in: sparse cross-entropy from logits, the MLM one averaged over the
    real masked tokens only (padding prediction slots do not dilute it). A task of weight 0 is
    switched off: its loss is still logged, but its head is frozen (no gradient and no weight
    decay), so only the shared encoder and the other head train.

    Logs: `loss` (the weighted total), `mlm_loss` and `classification_loss` (unweighted), and
    the compiled metrics per output (`mlm_accuracy`, `classification_accuracy`, ...).

    Args:
        encoder: a `zoo.models.Encoder`.
        num_classes: number of labels.
        pooling: "cls" or "mean" (see `ClassificationHead`).
        dropout: dropout before the classification output layer.
        classification_input: "clean" or "masked", see above.

    Example:
    >>> encoder = Encoder(100, 16, num_layers=1, hidden_dim=8, num_heads=2, intermediate_dim=16)
    >>> model = MultiTaskModel(encoder, num_classes=3)
    >>> outputs = model({"token_ids": keras.ops.ones((2, 16), "int32"), "padding_mask": keras.ops.ones((2, 16), "bool"),
    ...                  "mask_positions": keras.ops.zeros((2, 4), "int32"), "clean_token_ids": keras.ops.ones((2, 16), "int32")})
    >>> tuple(outputs["mlm"].shape), tuple(outputs["classification"].shape)
    ((2, 4, 100), (2, 3))
    """

    def __init__(self, encoder, num_classes, pooling="mean", dropout=0.1, classification_input="clean", **kwargs):
        if classification_input not in CLASSIFICATION_INPUTS:
            raise ValueError(
                f"Unknown classification_input {classification_input!r}; expected one of {', '.join(CLASSIFICATION_INPUTS)}."
            )
        inputs = {
            "token_ids": keras.Input(shape=(None,), dtype="int32", name="token_ids"),
            "padding_mask": keras.Input(shape=(None,), dtype="bool", name="padding_mask"),
            "mask_positions": keras.Input(shape=(None,), dtype="int32", name="mask_positions"),
        }
        if classification_input == "clean":
            inputs["clean_token_ids"] = keras.Input(shape=(None,), dtype="int32", name="clean_token_ids")
        masked_sequence = encoder(inputs["token_ids"], padding_mask=inputs["padding_mask"])
        mlm_head = MaskedLMHead(
            encoder.vocabulary_size, token_embedding=encoder.token_embedding, activation=encoder.activation,
            layer_norm_epsilon=encoder.layer_norm_epsilon, dtype=encoder.dtype_policy, name="mlm_head",
            kernel_initializer=clone_initializer(encoder.kernel_initializer, "mlm_head"),
        )
        mlm_logits = mlm_head(masked_sequence, mask_positions=inputs["mask_positions"])
        if classification_input == "clean":
            sequence = encoder(inputs["clean_token_ids"], padding_mask=inputs["padding_mask"])
        else:
            sequence = masked_sequence
        classification_head = ClassificationHead(
            num_classes, pooling=pooling, dropout=dropout, dtype=encoder.dtype_policy, name="classification_head",
            kernel_initializer=clone_initializer(encoder.kernel_initializer, "classification_head"),
        )
        classification_logits = classification_head(sequence, padding_mask=inputs["padding_mask"])
        super().__init__(inputs=inputs, outputs={"mlm": mlm_logits, "classification": classification_logits}, **kwargs)
        self.encoder = encoder
        self.mlm_head = mlm_head
        self.classification_head = classification_head
        self.num_classes = num_classes
        self.pooling = pooling
        self.dropout = dropout
        self.classification_input = classification_input
        self.task_weights = {task: 1.0 for task in TASKS}
        self.gradient_surgery = "none"
        self.mlm_loss_tracker = keras.metrics.Mean(name="mlm_loss")
        self.classification_loss_tracker = keras.metrics.Mean(name="classification_loss")

    # -- training configuration ----------------------------------------------------------

    def compile(self, optimizer="adamw", loss=None, loss_weights=None, gradient_surgery="none", **kwargs):
        """`keras.Model.compile` with built-in losses: pass `loss_weights` and `gradient_surgery`, not `loss`.

        Args:
            loss_weights: {"mlm": float, "classification": float}, each >= 0, not both 0
                (missing tasks weigh 1.0).
            gradient_surgery: "none" (plain weighted sum) or "pcgrad" (TensorFlow backend).
            Other arguments: as `keras.Model.compile` (metrics may be dicts keyed by task).
        """
        if loss is not None:
            raise ValueError(
                "MultiTaskModel has its own losses (sparse cross-entropy per task): pass loss_weights="
                "{'mlm': ..., 'classification': ...} instead of loss."
            )
        weights = {task: 1.0 for task in TASKS}
        unknown = sorted(set(loss_weights or {}) - set(TASKS))
        if unknown:
            raise ValueError(f"Unknown task(s) {unknown} in loss_weights; the tasks are {', '.join(TASKS)}.")
        weights.update({task: float(weight) for task, weight in (loss_weights or {}).items()})
        if any(weight < 0 for weight in weights.values()) or not any(weight > 0 for weight in weights.values()):
            raise ValueError(f"loss_weights must be >= 0 with at least one > 0, got {weights}.")
        if gradient_surgery not in GRADIENT_SURGERIES:
            raise ValueError(
                f"Unknown gradient_surgery {gradient_surgery!r}; expected one of {', '.join(GRADIENT_SURGERIES)}."
            )
        if gradient_surgery == "pcgrad" and keras.backend.backend() != "tensorflow":
            raise ValueError(f"gradient_surgery='pcgrad' has a TensorFlow train_step only; the backend is {keras.backend.backend()!r}.")
        self.task_weights = weights
        self.gradient_surgery = gradient_surgery
        # Trainable variables are fixed at compile time: a switched-off task's head is frozen here.
        self._set_head_trainable(self.mlm_head, weights["mlm"] > 0)
        self._set_head_trainable(self.classification_head, weights["classification"] > 0)
        super().compile(optimizer=optimizer, loss=None, loss_weights=weights, **kwargs)
        self._compile_config.config["gradient_surgery"] = gradient_surgery  # so a reloaded model compiles the same

    def _set_head_trainable(self, head, trainable):
        # Variable by variable, not `head.trainable`: the MLM head tracks the token embedding it
        # is tied to, and freezing the layer would freeze that encoder table too.
        shared = {id(variable) for variable in self.encoder.weights}
        for variable in head.weights:
            if id(variable) not in shared:
                variable.trainable = trainable

    def compile_from_config(self, config):
        # Keras skips compile() on load for models that override it unless they provide this.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    @property
    def active_tasks(self):
        return [task for task in TASKS if self.task_weights[task] > 0]

    # -- losses --------------------------------------------------------------------------

    def task_losses(self, y, y_pred, sample_weight=None):
        """The weighted loss of every active task, as a dict (scaled for tf.distribute replicas).

        Updates the `mlm_loss` and `classification_loss` trackers with the unweighted losses
        of both tasks, active or not.
        """
        sample_weight = sample_weight if isinstance(sample_weight, dict) else {}
        trackers = {"mlm": self.mlm_loss_tracker, "classification": self.classification_loss_tracker}
        losses = {}
        for task in TASKS:
            per_item = keras.losses.sparse_categorical_crossentropy(y[task], y_pred[task], from_logits=True)
            weights = sample_weight.get(task)
            weights = ops.ones_like(per_item) if weights is None else ops.reshape(ops.cast(weights, per_item.dtype), ops.shape(per_item))
            # MLM: the mean over real masked tokens (weight 1); padding slots (weight 0) do not count.
            # Classification: the mean over examples (weighted, when sample weights are given).
            loss = ops.sum(per_item * weights) / ops.maximum(ops.sum(weights), 1e-9)
            # Weighted by batch size, as Keras weights the `loss` it logs.
            trackers[task].update_state(loss, sample_weight=ops.shape(y[task])[0])
            if self.task_weights[task] > 0:
                losses[task] = scale_loss_for_distribution(self.task_weights[task] * loss)
        return losses

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        losses = list(self.task_losses(y, y_pred, sample_weight).values())
        losses += [self._aggregate_additional_loss(loss) for loss in self.losses]
        return ops.sum(ops.stack(losses)) if len(losses) > 1 else losses[0]

    # -- training step -------------------------------------------------------------------

    def train_step(self, *args, **kwargs):
        if self.gradient_surgery == "pcgrad" and len(self.active_tasks) > 1:
            return self._pcgrad_train_step(*args, **kwargs)
        return super().train_step(*args, **kwargs)

    def _pcgrad_train_step(self, data):
        """PCGrad over the shared encoder's parameters (TensorFlow backend).

        Each active task's weighted loss is differentiated separately. The gradients on the
        encoder's variables (all of them flattened into one vector per task, the tied token
        embedding included) go through `pcgrad_project` and are summed; each head's variables
        get their own task's gradient unchanged. Under a tf.distribute strategy the projection
        uses each replica's local gradients before they are summed across replicas.
        """
        import tensorflow as tf

        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        variables = self.trainable_variables
        with tf.GradientTape(persistent=True) as tape:
            y_pred = self(x, training=True)
            losses = list(self.task_losses(y, y_pred, sample_weight).values())
            total = tf.add_n(losses)
            self._loss_tracker.update_state(
                unscale_loss_for_distribution(total), sample_weight=tf.shape(x["token_ids"])[0]
            )
            scaled = [self.optimizer.scale_loss(loss) for loss in losses]
        per_task = []
        for loss in scaled:
            gradients = tape.gradient(loss, variables)
            # A variable a task does not reach (the other task's head) gets a zero gradient from it.
            per_task.append([tf.zeros(v.shape, v.dtype) if g is None else tf.convert_to_tensor(g) for g, v in zip(gradients, variables)])
        del tape
        shared_ids = {id(variable) for variable in self.encoder.trainable_variables}
        shared = [index for index, variable in enumerate(variables) if id(variable) in shared_ids]
        # (convert_to_tensor above: embedding lookups give IndexedSlices; the projection needs dense vectors.)
        flat = [tf.concat([tf.reshape(gradients[k], [-1]) for k in shared], axis=0) for gradients in per_task]
        combined_shared = tf.add_n(pcgrad_project(flat))
        gradients = [tf.add_n([g[k] for g in per_task]) for k in range(len(variables))]
        offset = 0
        for k in shared:
            size = math.prod(variables[k].shape)
            gradients[k] = tf.reshape(combined_shared[offset : offset + size], variables[k].shape)
            offset += size
        self.optimizer.apply_gradients(zip(gradients, variables))
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    # -- views and serialisation ---------------------------------------------------------

    def to_classifier(self):
        """A `TextClassifier` with a copy of this model's encoder and classification head weights.

        A snapshot (later training of this model does not reach it): for evaluation on plain
        `{"token_ids", "padding_mask"}` inputs, `classifier` checkpoints and SavedModel export.
        """
        encoder = Encoder.from_config(self.encoder.get_config())
        classifier = TextClassifier(encoder, self.num_classes, pooling=self.pooling, dropout=self.dropout, name="classifier")
        encoder.set_weights(self.encoder.get_weights())
        classifier.head.set_weights(self.classification_head.get_weights())
        return classifier

    def get_config(self):
        return {
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "num_classes": self.num_classes,
            "pooling": self.pooling,
            "dropout": self.dropout,
            "classification_input": self.classification_input,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)

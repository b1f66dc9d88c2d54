"""Multi-task model: one shared Encoder, a tied masked-LM head and a classification head, with
fixed or learned task weights and PCGrad.

Both tasks come from one batch of labelled texts: the MLM head predicts the masked tokens of
the texts, the classification head their labels. The total loss weighs the two task losses:
with fixed weights (`mlm_weight * mlm_loss + classification_weight * classification_loss`), or
with weights learned during training (`loss_weighting="uncertainty"`, Kendall, Gal and
Cipolla, 2018, "Multi-Task Learning Using Uncertainty to Weigh Losses"; or `"gradnorm"`, Chen
et al., 2018, "GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep Multitask
Networks"). With `gradient_surgery="pcgrad"` the two tasks' gradients on the shared encoder are
de-conflicted first (Yu et al., 2020, "Gradient Surgery for Multi-Task Learning").
"""

import math

import keras
from keras import ops

from zoo.layers.classification_head import ClassificationHead
from zoo.layers.initializers import clone_initializer
from zoo.layers.masked_lm_head import MaskedLMHead
from zoo.models.encoder import Encoder
from zoo.models.losses import scale_for_replicas, unscale_for_replicas
from zoo.models.text_classifier import TextClassifier

TASKS = ("mlm", "classification")
GRADIENT_SURGERIES = ("none", "pcgrad")
CLASSIFICATION_INPUTS = ("clean", "masked")
LOSS_WEIGHTINGS = ("fixed", "uncertainty", "gradnorm")
# A GradNorm weight never falls below this (before the weights are renormalised), so no task is
# switched off by a run of large steps.
_SMALLEST_GRADNORM_WEIGHT = 0.01


def pcgrad_project(gradients_per_task):
    """PCGrad's projection: each task's gradient loses its component along any task it conflicts with.

    For every task i, starting from g_i and for each other task j in list order: if
    g_i . g_j < 0, then g_i <- g_i - (g_i . g_j / ||g_j||^2) g_j. The g_j are always the
    ORIGINAL gradients (never another task's projected one); the dot product uses g_i as
    projected so far, as in Algorithm 1 of the paper. The paper visits the other tasks in a
    random order; here the order is fixed (list order), so a training step is deterministic.
    With two tasks, as here (masked LM and classification), there is only one other task and the order
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


class TaskWeighting(keras.layers.Layer):
    """The state of `MultiTaskModel`'s learned loss weighting, one entry per task of `TASKS`.

    Float32 variables of the model (saved and restored with its weights), not trainable by the
    optimizer: the model updates them in its train step (see `MultiTaskModel.compile`).
      - `log_variances`: `uncertainty`'s s_i = log sigma_i^2; a task's loss weight is exp(-s_i).
      - `gradnorm_weights`: `gradnorm`'s w_i, summing to the number of tasks.
      - `initial_losses`: `gradnorm`'s L_i(0), each task's loss at the first step (0 until then).
    """

    def __init__(self, num_tasks, **kwargs):
        super().__init__(**kwargs)
        self.num_tasks = num_tasks

        def state(name, initializer):
            # Every replica computes the same new value: "only_first_replica" lets a replica assign it.
            return self.add_weight(shape=(num_tasks,), initializer=initializer, dtype="float32", trainable=False,
                                   autocast=False, aggregation="only_first_replica", name=name)

        self.log_variances = state("log_variances", "zeros")
        self.gradnorm_weights = state("gradnorm_weights", "ones")
        self.initial_losses = state("initial_losses", "zeros")
        self.built = True

    def call(self, inputs):
        return inputs

    def load_own_variables(self, store):
        # Checkpoints saved before this state existed have none: it keeps its starting values.
        if len(store.keys()) == 0:
            return
        super().load_own_variables(store)

    def summary(self, line_length=None, positions=None, print_fn=None, expand_nested=True, **kwargs):
        """Keras' summary, by default with the encoder's embeddings, norms and blocks listed."""
        return super().summary(line_length, positions, print_fn, expand_nested=expand_nested, **kwargs)

    def get_config(self):
        return {**super().get_config(), "num_tasks": self.num_tasks}


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
    `loss_weights={"mlm": w1, "classification": w2}`, `loss_weighting` and `gradient_surgery`;
    the losses themselves are built in: sparse cross-entropy from logits, the MLM one averaged
    over the real masked tokens only (padding prediction slots do not dilute it). A task of
    weight 0 is switched off: its loss is still logged, but its head is frozen (no gradient and
    no weight decay), so only the shared encoder and the other head train.

    Logs: `loss` (the weighted total), `mlm_loss` and `classification_loss` (unweighted), the
    compiled metrics per output (`mlm_accuracy`, `classification_accuracy`, ...) and, with a
    learned weighting, `weight_mlm` and `weight_classification` (the weights after the step).

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
        self.loss_weighting = "fixed"
        self.gradnorm_alpha = 1.5
        self.weighting_learning_rate = 0.025
        self.weighting = TaskWeighting(len(TASKS), name="task_weighting")
        self.mlm_loss_tracker = keras.metrics.Mean(name="mlm_loss")
        self.classification_loss_tracker = keras.metrics.Mean(name="classification_loss")

    # -- training configuration ----------------------------------------------------------

    def compile(
        self, optimizer="adamw", loss=None, loss_weights=None, gradient_surgery="none", loss_weighting="fixed",
        gradnorm_alpha=1.5, weighting_learning_rate=0.025, **kwargs,
    ):
        """`keras.Model.compile` with built-in losses: pass `loss_weights`, `loss_weighting` and
        `gradient_surgery`, not `loss`.

        Args:
            loss_weights: {"mlm": float, "classification": float}, each >= 0, not both 0
                (missing tasks weigh 1.0). With a learned weighting, the starting weights (all > 0).
            gradient_surgery: "none" (plain weighted sum) or "pcgrad" (TensorFlow backend).
            loss_weighting: how the task losses L_i are weighed (the learned ones on the
                TensorFlow backend, with both tasks on):
                - "fixed": loss = sum_i w_i L_i with `loss_weights`.
                - "uncertainty" (Kendall et al., 2018): loss = sum_i exp(-s_i) L_i + s_i / 2,
                  s_i = log sigma_i^2 learned. Both tasks are softmax likelihoods, whose
                  negative log-likelihood with a temperature sigma^2 is about L / sigma^2 +
                  log sigma (the paper's eq. 10): hence exp(-s) without the 1/2 of a Gaussian
                  and s / 2 (= log sigma). The optimum is exp(-s_i) = 1 / (2 L_i): the weights
                  follow the inverse of the losses. Starts at s_i = -log(w_i).
                - "gradnorm" (Chen et al., 2018): loss = sum_i w_i L_i, with the w_i moved at
                  every step so that each task's gradient norm on the last shared layer (the
                  encoder's last block), G_i = w_i ||grad L_i||, approaches G_avg * r_i^alpha,
                  r_i being task i's loss ratio L_i / L_i(0) relative to the mean ratio; then
                  renormalised to sum to the number of tasks. Starts from `loss_weights` so
                  renormalised.
            gradnorm_alpha: GradNorm's alpha (restoring force towards equal training rates).
            weighting_learning_rate: the step size of the learned weights, which the model
                updates itself by plain gradient descent (not with the optimizer, whose
                schedule, clipping and weight decay are the network's): s -= lr * dloss/ds;
                w -= lr * dL_grad/dw with GradNorm's L_grad = sum_i |G_i - target_i| divided by
                G_avg (the paper's objective scaled by a constant, so that the step does not
                depend on the size of the gradients).
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
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"Unknown loss_weighting {loss_weighting!r}; expected one of {', '.join(LOSS_WEIGHTINGS)}.")
        for name, value in (("gradient_surgery", gradient_surgery), ("loss_weighting", loss_weighting)):
            if value not in ("none", "fixed") and keras.backend.backend() != "tensorflow":
                raise ValueError(f"{name}={value!r} has a TensorFlow train_step only; the backend is {keras.backend.backend()!r}.")
        if loss_weighting != "fixed":
            if min(weights.values()) <= 0:
                raise ValueError(f"loss_weighting={loss_weighting!r} learns the weights of both tasks: loss_weights must all be > 0, got {weights}.")
            if gradnorm_alpha < 0 or not weighting_learning_rate > 0:
                raise ValueError(
                    f"gradnorm_alpha must be >= 0 and weighting_learning_rate > 0, got {gradnorm_alpha} and {weighting_learning_rate}."
                )
        self.task_weights = weights
        self.gradient_surgery = gradient_surgery
        self.loss_weighting = loss_weighting
        self.gradnorm_alpha = float(gradnorm_alpha)
        self.weighting_learning_rate = float(weighting_learning_rate)
        # The learned weighting starts from loss_weights (a reloaded model's state is loaded after this).
        start = ops.convert_to_tensor([weights[task] for task in TASKS], "float32")
        if loss_weighting == "uncertainty":
            self.weighting.log_variances.assign(-ops.log(start))
        if loss_weighting == "gradnorm":
            self.weighting.gradnorm_weights.assign(start * len(TASKS) / ops.sum(start))
            self.weighting.initial_losses.assign(ops.zeros((len(TASKS),), "float32"))
        # Trainable variables are fixed at compile time: a switched-off task's head is frozen here.
        self._set_head_trainable(self.mlm_head, weights["mlm"] > 0)
        self._set_head_trainable(self.classification_head, weights["classification"] > 0)
        super().compile(optimizer=optimizer, loss=None, loss_weights=weights, **kwargs)

    def get_compile_config(self):
        # Keras records compile()'s arguments it knows; ours are added so a reloaded model compiles the same.
        config = super().get_compile_config()
        if config:
            config = dict(config)
            config.update(
                gradient_surgery=self.gradient_surgery, loss_weighting=self.loss_weighting,
                gradnorm_alpha=self.gradnorm_alpha, weighting_learning_rate=self.weighting_learning_rate,
            )
        return config

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
        """The unweighted loss of each task, as a dict (not scaled for tf.distribute replicas).

        Updates the `mlm_loss` and `classification_loss` trackers with them.
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
            losses[task] = ops.sum(per_item * weights) / ops.maximum(ops.sum(weights), 1e-9)
            # Weighted by batch size, as Keras weights the `loss` it logs.
            trackers[task].update_state(losses[task], sample_weight=ops.shape(y[task])[0])
        return losses

    def current_weights(self):
        """{task: the weight of its loss now}: `loss_weights`, exp(-s_i) or the GradNorm w_i."""
        if self.loss_weighting == "uncertainty":
            values = ops.exp(-ops.convert_to_tensor(self.weighting.log_variances))
        elif self.loss_weighting == "gradnorm":
            values = ops.convert_to_tensor(self.weighting.gradnorm_weights)
        else:
            return {task: self.task_weights[task] for task in TASKS}
        return {task: values[index] for index, task in enumerate(TASKS)}

    def weighted_losses(self, losses, log_variances=None):
        """{task: its term of the total loss} for the active tasks, by `loss_weighting`.

        fixed: w_i L_i; uncertainty: exp(-s_i) L_i + s_i / 2 (`log_variances`: a tensor of the
        s_i to differentiate against; the variable's value by default); gradnorm: w_i L_i.
        """
        if self.loss_weighting == "uncertainty":
            if log_variances is None:
                log_variances = ops.convert_to_tensor(self.weighting.log_variances)
            return {
                task: ops.exp(-log_variances[index]) * losses[task] + 0.5 * log_variances[index]
                for index, task in enumerate(TASKS) if task in self.active_tasks
            }
        weights = self.current_weights()
        return {task: weights[task] * losses[task] for task in self.active_tasks}

    def _additional_loss(self):
        """The sum of the layers' own losses (`add_loss`, regularisers), as Keras adds them; None if none."""
        extra = [ops.sum(ops.cast(loss, "float32")) for loss in self.losses]
        return ops.sum(ops.stack(extra)) if extra else None

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        terms = list(self.weighted_losses(self.task_losses(y, y_pred, sample_weight)).values())
        total = scale_for_replicas(ops.sum(ops.stack(terms)) if len(terms) > 1 else terms[0])
        extra = self._additional_loss()
        return total if extra is None else total + extra

    # -- training step -------------------------------------------------------------------

    def train_step(self, *args, **kwargs):
        if self.loss_weighting != "fixed" or (self.gradient_surgery == "pcgrad" and len(self.active_tasks) > 1):
            return self._tf_train_step(*args, **kwargs)
        return super().train_step(*args, **kwargs)

    def _tf_train_step(self, data):
        """The train step of PCGrad and of the learned weightings (TensorFlow backend).

        PCGrad: each active task's weighted loss is differentiated separately. The gradients on
        the encoder's variables (all of them flattened into one vector per task, the tied token
        embedding included) go through `pcgrad_project` and are summed; each head's variables
        get their own task's gradient unchanged. Under a tf.distribute strategy the projection
        uses each replica's local gradients before they are summed across replicas.

        Learned weights: the network's gradient is that of the weighted total (at this step's
        weights); then the weights take one step of their own (see `compile`), computed from
        quantities summed across replicas, so every replica makes the same step.
        """
        import tensorflow as tf

        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        variables = self.trainable_variables
        active = self.active_tasks
        surgery = self.gradient_surgery == "pcgrad" and len(active) > 1
        log_variances = tf.convert_to_tensor(self.weighting.log_variances)
        shared_layer = self.encoder.blocks[-1].trainable_variables if self.loss_weighting == "gradnorm" else []
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(log_variances)
            y_pred = self(x, training=True)
            losses = self.task_losses(y, y_pred, sample_weight)
            terms = self.weighted_losses(losses, log_variances=log_variances)
            total = scale_for_replicas(tf.add_n(list(terms.values())))
            extra = self._additional_loss()
            if extra is not None:
                total = total + extra
            if surgery:
                scaled = [self.optimizer.scale_loss(scale_for_replicas(terms[task])) for task in active]
            else:
                scaled = [self.optimizer.scale_loss(total)]
            shared_losses = [self.optimizer.scale_loss(scale_for_replicas(losses[task])) for task in active if shared_layer]
        self._total_loss_tracker().update_state(unscale_for_replicas(total), sample_weight=tf.shape(x["token_ids"])[0])
        if surgery:
            gradients = self._pcgrad_gradients(tape, scaled, variables)
            if extra is not None:
                gradients = [g + _dense(e) if e is not None else g
                             for g, e in zip(gradients, tape.gradient(self.optimizer.scale_loss(extra), variables))]
        else:
            gradients = tape.gradient(scaled[0], variables)
        if self.loss_weighting == "uncertainty":
            self._uncertainty_step(tape.gradient(total, log_variances))
        elif self.loss_weighting == "gradnorm":
            self._gradnorm_step(
                [losses[task] for task in active], [tape.gradient(loss, shared_layer) for loss in shared_losses]
            )
        del tape
        self.optimizer.apply_gradients(zip(gradients, variables))
        logs = self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        if self.loss_weighting != "fixed":
            weights = self.current_weights()
            logs.update({f"weight_{task}": weights[task] for task in TASKS})
        return logs

    def _total_loss_tracker(self):
        """Keras' `loss` metric (the first of `self.metrics` once compiled)."""
        return next(metric for metric in self.metrics if metric.name == "loss")

    def _pcgrad_gradients(self, tape, task_losses, variables):
        """The summed gradients of `task_losses` with PCGrad applied to the encoder's variables."""
        import tensorflow as tf

        per_task = []
        for loss in task_losses:
            gradients = tape.gradient(loss, variables)
            # A variable a task does not reach (the other task's head) gets a zero gradient from it.
            per_task.append([tf.zeros(v.shape, v.dtype) if g is None else _dense(g) for g, v in zip(gradients, variables)])
        shared_ids = {id(variable) for variable in self.encoder.trainable_variables}
        shared = [index for index, variable in enumerate(variables) if id(variable) in shared_ids]
        flat = [tf.concat([tf.reshape(gradients[k], [-1]) for k in shared], axis=0) for gradients in per_task]
        combined_shared = tf.add_n(pcgrad_project(flat))
        gradients = [tf.add_n([g[k] for g in per_task]) for k in range(len(variables))]
        offset = 0
        for k in shared:
            size = math.prod(variables[k].shape)
            gradients[k] = tf.reshape(combined_shared[offset : offset + size], variables[k].shape)
            offset += size
        return gradients

    def _uncertainty_step(self, gradient):
        """s <- s - lr * dloss/ds, with the gradient of the whole batch (summed over replicas)."""
        gradient = _sum_over_replicas([gradient])[0]
        current = ops.convert_to_tensor(self.weighting.log_variances)
        updated = current - self.weighting_learning_rate * gradient
        self.weighting.log_variances.assign(ops.where(ops.all(ops.isfinite(updated)), updated, current))

    def _gradnorm_step(self, task_losses, shared_gradients):
        """One GradNorm step of the weights, then their renormalisation to sum to the number of tasks.

        `task_losses`: the unweighted L_i of this replica; `shared_gradients`: per task, the
        gradients of its loss-scaled, replica-scaled L_i on the last shared layer's variables.
        """
        count = len(task_losses)
        # The whole batch's losses and gradients: sums over replicas of the replica-scaled values.
        flat = _sum_over_replicas(
            [scale_for_replicas(ops.stack(task_losses))]
            + [ops.zeros(v.shape, "float32") if g is None else _dense(g)
               for grads in shared_gradients for g, v in zip(grads, self.encoder.blocks[-1].trainable_variables)]
        )
        losses, flat = flat[0], flat[1:]
        per_task = len(flat) // count
        loss_scale = self.optimizer.scale_loss(ops.convert_to_tensor(1.0, "float32"))
        norms = ops.stack([
            ops.sqrt(sum(ops.sum(ops.square(ops.cast(g, "float32"))) for g in flat[i * per_task : (i + 1) * per_task]))
            for i in range(count)
        ]) / loss_scale
        state = self.weighting
        initial = ops.convert_to_tensor(state.initial_losses)
        initial = ops.where(initial > 0, initial, losses)
        state.initial_losses.assign(initial)
        weights = ops.convert_to_tensor(state.gradnorm_weights)
        ratios = losses / initial
        relative = ratios / ops.mean(ratios)
        gradient_norms = weights * norms  # G_i
        average = ops.mean(gradient_norms)
        targets = average * relative**self.gradnorm_alpha  # constants, as in the paper
        gradient = ops.sign(gradient_norms - targets) * norms / ops.maximum(average, 1e-12)
        updated = ops.maximum(weights - self.weighting_learning_rate * gradient, _SMALLEST_GRADNORM_WEIGHT)
        updated = updated * count / ops.sum(updated)
        state.gradnorm_weights.assign(ops.where(ops.all(ops.isfinite(updated)), updated, weights))

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


def _dense(gradient):
    """A TensorFlow gradient as a dense tensor (embedding lookups give IndexedSlices)."""
    import tensorflow as tf

    return tf.convert_to_tensor(gradient)


def _sum_over_replicas(values):
    """`values` (a list of tensors) summed over the replicas of the current tf.distribute step."""
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return list(values)
    return context.all_reduce("sum", list(values))

"""AdamW with linear warmup then cosine or linear decay, as every recipe trains."""

import math

import keras
from keras import ops

DECAYS = ("cosine", "linear", "constant")

# Biases, LayerNorm gamma/beta, RMSNorm scale and every embedding table take no weight decay
# (matched against variable names, as keras.optimizers.AdamW.exclude_from_weight_decay does).
NO_WEIGHT_DECAY = ["bias", "gamma", "beta", "scale", "embeddings"]


@keras.saving.register_keras_serializable(package="zoo")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `peak_learning_rate` over `warmup_steps`, then decay to
    `final_fraction * peak_learning_rate` at `total_steps` (cosine or linear), then constant.

    Keras' CosineDecay has a warmup but no linear variant; one schedule covers both so the
    recipe config can switch with one key.
    """

    def __init__(self, peak_learning_rate, warmup_steps, total_steps, decay="cosine", final_fraction=0.1):
        if decay not in DECAYS:
            raise ValueError(f"Unknown decay {decay!r}; expected one of {', '.join(DECAYS)}.")
        self.peak_learning_rate = peak_learning_rate
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.decay = decay
        self.final_fraction = final_fraction

    def __call__(self, step):
        step = ops.cast(step, "float32")
        peak = self.peak_learning_rate
        warmup = peak * step / max(self.warmup_steps, 1)
        progress = ops.clip((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 0.0, 1.0)
        if self.decay == "cosine":
            shape = 0.5 * (1.0 + ops.cos(math.pi * progress))
        elif self.decay == "linear":
            shape = 1.0 - progress
        else:
            shape = ops.ones_like(progress)
        decayed = peak * (self.final_fraction + (1.0 - self.final_fraction) * shape)
        return ops.where(step < self.warmup_steps, warmup, decayed)

    def get_config(self):
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "decay": self.decay,
            "final_fraction": self.final_fraction,
        }


@keras.saving.register_keras_serializable(package="zoo")
class AdamW(keras.optimizers.AdamW):
    """Keras' AdamW with global-norm clipping of the gradient summed over replicas, and gradient statistics.

    `global_clipnorm` clips the gradient that every replica's gradients sum to, as one device
    would. (Keras 3 clips in each replica before the all-reduce, so under a MirroredStrategy or
    between workers each replica clipped its own partial gradient and the update differed from
    one device's whenever clipping was active: tf.keras 2.2 refused clipping under distribution
    strategies for this reason, tensorflow/tensorflow#33929.) Here `apply` measures the norm of
    the summed gradient (one more all-reduce of the gradients per step, only with several
    replicas) and scales each replica's gradient by the common factor before Keras sums them.
    The base class is given no clipping of its own.

    `gradient_accumulation_steps` is implemented here too (the clipping must see the averaged
    gradient, which Keras forms after its own clipping hook): every call adds the gradients to
    accumulators, and every `gradient_accumulation_steps`-th call applies their mean. The
    optimizer state has the layout of Keras' own accumulation (accumulators before the moments),
    `iterations` counts updates and the learning-rate schedule counts calls, as in Keras. On
    TensorFlow this needs a single replica (Keras' accumulation fails under MirroredStrategy
    too).

    Statistics, float32 variables of the optimizer state (saved with it), updated at every
    applied update (not at accumulation-only calls, not at steps a LossScaleOptimizer skips):
      - `gradient_norm_sum`: the sum of the global norms of the update's gradient before
        clipping (summed over replicas, averaged over accumulated calls, loss scale removed);
      - `clipped_steps`: the number of updates whose norm exceeded `global_clipnorm`;
      - `last_gradient_norm`: the latest of those norms.
    They exist once the optimizer is built (None before).
    """

    STATISTICS = ("gradient_norm_sum", "clipped_steps", "last_gradient_norm")

    def __init__(self, *args, global_clipnorm=None, gradient_accumulation_steps=None, **kwargs):
        super().__init__(*args, **kwargs)
        if global_clipnorm is not None and global_clipnorm < 0:
            raise ValueError(f"global_clipnorm must be >= 0 (0 or None: no clipping), got {global_clipnorm}.")
        if global_clipnorm and (self.clipnorm is not None or self.clipvalue is not None):
            raise ValueError("Only one of clipnorm, clipvalue and global_clipnorm can be set.")
        if gradient_accumulation_steps is not None and not (
            isinstance(gradient_accumulation_steps, int) and gradient_accumulation_steps >= 2
        ):
            raise ValueError(
                f"gradient_accumulation_steps must be an integer >= 2 or None, got {gradient_accumulation_steps!r}."
            )
        self.max_gradient_norm = float(global_clipnorm) if global_clipnorm else None
        self.accumulation_steps = gradient_accumulation_steps
        self.accumulators = None  # one per trainable variable, with accumulation, once built
        self.variable_positions = {}  # id(trainable variable) -> its position in the build list
        self.built_for = _Untracked([])  # the trainable variables of the build
        for name in self.STATISTICS:
            setattr(self, name, None)

    def build(self, variables):
        if self.built:
            return
        # Accumulators first, then Keras' moments: the order of Keras' own accumulation, so
        # optimizer states saved before this class accumulated itself still load in place.
        if self.accumulation_steps:
            self.accumulators = [self.add_variable_from_reference(v, name="gradient_accumulator") for v in variables]
        self.variable_positions = {id(v): i for i, v in enumerate(variables)}
        self.built_for = _Untracked(variables)
        super().build(variables)
        # Last, so that states saved before they existed load into the variables before them.
        for name in self.STATISTICS:
            setattr(self, name, self.add_variable(
                shape=(), initializer="zeros", dtype="float32", aggregation="only_first_replica", name=name,
            ))

    @property
    def iterations(self):
        calls = super().iterations
        if getattr(self, "accumulation_steps", None):
            return ops.floor_divide(calls, self.accumulation_steps)
        return calls

    def apply(self, grads, trainable_variables=None):
        grads = list(grads)
        if not grads:
            return
        if not self.built:
            if trainable_variables is None:
                raise ValueError("Pass trainable_variables on the first apply (the optimizer is not built yet).")
            self.build(list(trainable_variables))
        if not self.accumulation_steps:
            return super().apply(self._clip_and_record(grads), trainable_variables)
        if _replica_count() > 1:
            raise ValueError(
                "gradient_accumulation_steps needs a single replica: use a larger per-replica batch under a "
                "distribution strategy instead."
            )
        self._accumulate_or_apply(grads, trainable_variables)

    def get_config(self):
        config = super().get_config()
        config["global_clipnorm"] = self.max_gradient_norm
        config["gradient_accumulation_steps"] = self.accumulation_steps
        return config

    def load_own_variables(self, store):
        """Keras' loading, also of a state saved before the gradient statistics existed (they stay 0)."""
        if self.built and len(store.keys()) == len(self.variables) - len(self.STATISTICS):
            for i, variable in enumerate(self.variables[: len(store.keys())]):
                variable.assign(store[str(i)])
            return
        super().load_own_variables(store)

    # -- clipping, statistics and accumulation ---------------------------------------------

    def _clip_and_record(self, grads):
        """`grads` scaled by the common clipping factor; records the statistics."""
        grads = [None if g is None else _dense(g) for g in grads]
        present = [g for g in grads if g is not None]
        if _replica_count() > 1:
            import tensorflow as tf

            present = tf.distribute.get_replica_context().all_reduce("sum", present)
        norm = ops.sqrt(sum(ops.sum(ops.square(ops.cast(g, "float32"))) for g in present))
        if self.loss_scale_factor is not None:  # Keras divides the gradients by it after this
            norm = norm / self.loss_scale_factor
        self.gradient_norm_sum.assign_add(norm)
        self.last_gradient_norm.assign(norm)
        if not self.max_gradient_norm:
            return grads
        limit = self.max_gradient_norm
        self.clipped_steps.assign_add(ops.cast(norm > limit, "float32"))
        scale = limit / ops.maximum(norm, limit)
        return [None if g is None else g * ops.cast(scale, g.dtype) for g in grads]

    def _accumulate_or_apply(self, grads, trainable_variables):
        """Adds `grads` to the accumulators; every `accumulation_steps`-th call applies their mean."""
        if trainable_variables is None:
            accumulators = self.accumulators
        else:
            accumulators = [self.accumulators[self.variable_positions[id(v)]] for v in trainable_variables]
        steps = self.accumulation_steps
        calls = super().iterations
        is_update = ops.equal((calls + 1) % steps, 0)
        apply = super().apply

        def update():
            averaged = [None if g is None else (_dense(g) + acc) / steps for g, acc in zip(grads, accumulators)]
            apply(self._clip_and_record(averaged), trainable_variables)
            for g, acc in zip(grads, accumulators):
                if g is not None:
                    acc.assign(ops.zeros(acc.shape, acc.dtype))

        def accumulate():
            for g, acc in zip(grads, accumulators):
                if g is not None:
                    acc.assign_add(_dense(g))
            calls.assign_add(1)

        if keras.backend.backend() == "tensorflow":
            ops.cond(is_update, update, accumulate)
            return
        # Elsewhere (JAX's stateless training step) branches cannot assign: run the update,
        # then keep its results only at an update step.
        model_variables = self.built_for.variables if trainable_variables is None else list(trainable_variables)
        state = [v for v in self.variables if v is not calls] + model_variables
        before = [ops.convert_to_tensor(v) for v in state]
        count = ops.convert_to_tensor(calls)
        update()
        for variable, old in zip(state, before):
            variable.assign(ops.where(is_update, ops.convert_to_tensor(variable), old))
        for g, acc in zip(grads, accumulators):
            if g is not None:
                current = ops.convert_to_tensor(acc)
                acc.assign(ops.where(is_update, current, current + g))
        calls.assign(count + 1)


class _Untracked:
    """Holds the model's variables out of reach of the optimizer's variable tracking (a list
    attribute would add them to `optimizer.variables`)."""

    def __init__(self, variables):
        self.variables = list(variables)


def _replica_count():
    """How many replicas compute this step: TensorFlow's replicas in sync inside a distribution
    strategy's replica context, else 1."""
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    context = tf.distribute.get_replica_context() if tf.distribute.has_strategy() else None
    return context.num_replicas_in_sync if context is not None else 1


def _dense(gradient):
    """A gradient as a dense tensor (TensorFlow gives embedding lookups IndexedSlices, whose
    repeated rows must be summed before a norm is taken)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if isinstance(gradient, tf.IndexedSlices):
            return tf.convert_to_tensor(gradient)
    return gradient


def make_optimizer(
    learning_rate,
    total_steps,
    warmup_steps=0,
    decay="cosine",
    weight_decay=0.01,
    clipnorm=1.0,
    gradient_accumulation_steps=1,
    final_fraction=0.1,
):
    """AdamW on the WarmupDecay schedule, global-norm clipping, optional gradient accumulation."""
    schedule = WarmupDecay(learning_rate, warmup_steps, total_steps, decay=decay, final_fraction=final_fraction)
    optimizer = AdamW(
        learning_rate=schedule,
        weight_decay=weight_decay,
        global_clipnorm=clipnorm or None,
        gradient_accumulation_steps=gradient_accumulation_steps if gradient_accumulation_steps > 1 else None,
    )
    optimizer.exclude_from_weight_decay(var_names=NO_WEIGHT_DECAY)
    return optimizer

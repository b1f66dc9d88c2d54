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
    """Keras' AdamW whose `global_clipnorm` measures the gradient that every replica's gradients
    sum to, as one device would.

    Keras 3 clips in each replica before the gradients are summed across replicas (the clipping
    step precedes the all-reduce in its TensorFlow optimizer), so under a MirroredStrategy or
    between workers each replica clipped its own partial gradient: the update differed from one
    device's whenever clipping was active (measured: losses 2e-4 apart after 12 steps of a
    1-layer gpt-clm, equal to 6e-8 without clipping). Here the replicas first sum their
    gradients to measure the norm, then each scales its own by the common factor, so the sum
    that Keras then forms is the clipped total. It costs one more all-reduce of the gradients
    per step, only with several replicas and clipping on. (tf.keras 2.2 refused clipping under
    distribution strategies for this reason: tensorflow/tensorflow#33929.)
    """

    def _clip_gradients(self, grads):  # Keras' hook between the gradients and the update
        replica = _replica_context()
        if not (self.global_clipnorm and self.global_clipnorm > 0) or replica is None or replica.num_replicas_in_sync < 2:
            return super()._clip_gradients(grads)
        present = [g for g in grads if g is not None]
        total = replica.all_reduce("sum", present)
        norm = ops.sqrt(sum(ops.sum(ops.square(ops.cast(g, "float32"))) for g in total))
        scale = self.global_clipnorm / ops.maximum(norm, self.global_clipnorm)
        return [None if g is None else g * ops.cast(scale, g.dtype) for g in grads]


def _replica_context():
    """TensorFlow's replica context inside a distribution strategy's step, else None."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    return tf.distribute.get_replica_context() if tf.distribute.has_strategy() else None


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

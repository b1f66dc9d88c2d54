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
    optimizer = keras.optimizers.AdamW(
        learning_rate=schedule,
        weight_decay=weight_decay,
        global_clipnorm=clipnorm or None,
        gradient_accumulation_steps=gradient_accumulation_steps if gradient_accumulation_steps > 1 else None,
    )
    optimizer.exclude_from_weight_decay(var_names=NO_WEIGHT_DECAY)
    return optimizer

"""Trains a tiny regression model for a few steps and prints its per-step losses as JSON.

Launched as a subprocess by tests/trainers/test_strategy.py, because both distributed set-ups
must be configured before TensorFlow initialises: 2 logical CPUs for `MirroredStrategy`, and
`MultiWorkerMirroredStrategy` (which reads `TF_CONFIG` from the environment).

    TF_CONFIG=... python tests/trainers/multi_worker_script.py --strategy multi_worker [--fix off]
    python tests/trainers/multi_worker_script.py --strategy mirrored --logical-cpus 2

The last line of stdout is
`{"losses": [...], "val_loss": float, "num_replicas": N, "is_chief": bool}`.
Every run uses the same initial weights, the same data in the same order, the same global batch
and plain SGD, so every strategy must produce the same losses as a single device.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Importing these runs no TensorFlow op, so devices and the strategy can still be configured.
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from trainers import multi_worker_fix  # noqa: E402
from trainers import strategy as strategy_lib  # noqa: E402

NUM_FEATURES = 8
HIDDEN_UNITS = 16
LEARNING_RATE = 0.02


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--strategy", choices=("default", "mirrored", "multi_worker"), default="default"
    )
    parser.add_argument("--logical-cpus", type=int, default=0, help="split the CPU first")
    parser.add_argument(
        "--fix", choices=("default", "on", "off", "symbolic-build-only"), default="default",
        help="default: whatever get_strategy does; on: apply trainers.multi_worker_fix first, "
        "whatever the strategy; off: build MultiWorkerMirroredStrategy without it; "
        "symbolic-build-only: install only the first half of the fix (shows the second half "
        "is needed too)",
    )
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--global-batch-size", type=int, default=16)
    return parser.parse_args()


def make_strategy(args):
    # Strategy (and logical devices) before any other TensorFlow op: see trainers/strategy.py.
    if args.logical_cpus:
        strategy_lib.use_logical_cpus(args.logical_cpus)
    if args.fix == "on":
        multi_worker_fix.apply()
    if args.strategy == "multi_worker" and args.fix in ("off", "symbolic-build-only"):
        if args.fix == "symbolic-build-only":
            keras_tf_trainer = multi_worker_fix.tf_trainer
            keras_tf_trainer.TensorFlowTrainer._maybe_symbolic_build = (
                multi_worker_fix._maybe_symbolic_build
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    if args.strategy == "default":
        return tf.distribute.get_strategy()
    return strategy_lib.get_strategy(args.strategy)


def initial_weights():
    rng = np.random.RandomState(0)
    return [
        rng.normal(0.0, 0.5, (NUM_FEATURES, HIDDEN_UNITS)).astype("float32"),
        np.zeros(HIDDEN_UNITS, "float32"),
        rng.normal(0.0, 0.5, (HIDDEN_UNITS, 1)).astype("float32"),
        np.zeros(1, "float32"),
    ]


def make_arrays(num_examples, seed=1):
    """Deterministic regression data: a fixed linear function of Gaussian features."""
    rng = np.random.RandomState(seed)
    features = rng.normal(size=(num_examples, NUM_FEATURES)).astype("float32")
    true_weights = np.random.RandomState(2).normal(size=(NUM_FEATURES, 1))
    targets = (features @ true_weights + 0.1).astype("float32")
    return features, targets


def make_dataset(num_examples, global_batch_size, seed=1):
    dataset = tf.data.Dataset.from_tensor_slices(make_arrays(num_examples, seed))
    dataset = dataset.batch(global_batch_size)
    return dataset.with_options(strategy_lib.distribute_dataset_options())


class PerBatchLoss(keras.callbacks.Callback):
    """Records each batch's own loss.

    Keras 3 puts the *running mean* of the loss since the start of the epoch into `logs`.
    Resetting the metrics before each batch makes `logs["loss"]` the mean loss of that batch
    alone, which is the number a per-step comparison across strategies needs.
    """

    def __init__(self):
        super().__init__()
        self.losses = []

    def on_train_batch_begin(self, batch, logs=None):
        self.model.reset_metrics()

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))


def build_model():
    """A 2-layer MLP (161 parameters) with fixed initial weights, compiled with plain SGD."""
    model = keras.Sequential(
        [
            keras.Input((NUM_FEATURES,)),
            keras.layers.Dense(HIDDEN_UNITS, activation="relu"),
            keras.layers.Dense(1),
        ]
    )
    model.set_weights(initial_weights())
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss="mse")
    return model


def train(strategy, steps=5, global_batch_size=16):
    """Fits one epoch of `steps` global batches; returns per-step losses and the val loss."""
    with strategy.scope():
        model = build_model()
    recorder = PerBatchLoss()
    history = model.fit(
        make_dataset(steps * global_batch_size, global_batch_size),
        validation_data=make_dataset(2 * global_batch_size, global_batch_size, seed=3),
        epochs=1,
        shuffle=False,
        callbacks=[recorder],
        verbose=0,
    )
    return {
        "losses": recorder.losses,
        "val_loss": float(history.history["val_loss"][-1]),
        "num_replicas": strategy.num_replicas_in_sync,
        "is_chief": strategy_lib.is_chief(strategy),
    }


def main():
    args = parse_args()
    strategy = make_strategy(args)
    result = train(strategy, args.steps, args.global_batch_size)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

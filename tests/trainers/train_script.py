"""Runs one small gpt-clm training for the fault-tolerance and multi-worker tests.

    python train_script.py RUN_DIR CORPUS OUT.npz [--strategy S] [--crash-at-step N] [--no-xla] [--dropout R] [--logical-cpus N]

Writes the final weights to OUT.npz and prints one JSON line with the run's summary. With
--crash-at-step N the process SIGKILLs itself (kill -9) right after its N-th training step.
"""

import argparse
import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

parser = argparse.ArgumentParser()
parser.add_argument("run_dir")
parser.add_argument("corpus")
parser.add_argument("out")
parser.add_argument("--strategy", default="auto")
parser.add_argument("--crash-at-step", type=int, default=0)
parser.add_argument("--no-xla", action="store_true")
parser.add_argument("--dropout", type=float, default=0.1)
parser.add_argument("--logical-cpus", type=int, default=0, help="split the CPU into N logical devices first")
args = parser.parse_args()

from trainers.quiet import import_tensorflow  # noqa: E402

import_tensorflow(probe_devices=False)
from trainers.strategy import get_strategy, use_logical_cpus  # noqa: E402

if args.logical_cpus:
    use_logical_cpus(args.logical_cpus)
strategy = get_strategy(args.strategy)  # first: a multi-worker strategy must precede other TF ops

import keras  # noqa: E402
import numpy as np  # noqa: E402

import recipes  # noqa: E402
from trainers.trainer import Trainer, TrainOptions  # noqa: E402


class CrashAt(keras.callbacks.Callback):
    def __init__(self, step):
        super().__init__()
        self.step, self.seen = step, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


recipe = recipes.get(
    "gpt-clm", data=args.corpus, vocabulary_size=400, sequence_length=32, num_layers=1, hidden_dim=32,
    num_heads=2, intermediate_dim=64, batch_size=8, warmup_steps=2, learning_rate=3e-3, dropout=args.dropout,
)
options = TrainOptions(
    epochs=2, steps_per_epoch=6, validation_steps=2, log_every=2, backup_every=2, jit_compile=not args.no_xla, verbose=0
)
extra = [CrashAt(args.crash_at_step)] if args.crash_at_step else []
result = Trainer(recipe, args.run_dir, options=options, strategy=strategy, callbacks=extra).train()
np.savez(args.out, *[np.asarray(w) for w in result.model.get_weights()])
print(json.dumps({
    "final_step": result.final_step,
    "resumed_from_step": result.resumed_from_step,
    "history": {k: [float(x) for x in v] for k, v in result.history.items()},
    "jit_compile": bool(result.model.jit_compile),
}))

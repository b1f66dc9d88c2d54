"""Makes Keras 3's `model.fit` / `evaluate` work under `tf.distribute.MultiWorkerMirroredStrategy`.

Upstream bug: https://github.com/keras-team/keras/issues/20585 (still present in keras 3.15.1).
Two spots in `keras/src/backend/tensorflow/trainer.py` break as soon as more than one worker
takes part (reproduced here with 2 processes on 127.0.0.1, see tests/trainers/):

1. `TensorFlowTrainer._maybe_symbolic_build` (called by `fit` and `evaluate` before the first
   step) takes the first distributed batch, a tuple of `PerReplica` values, and calls
   `strategy.reduce("MEAN", batch, axis=None)` on it, eagerly, only to learn the batch's shapes
   and dtypes. `CollectiveAllReduceExtended` cannot reduce a *structure* of `PerReplica` values
   and fails with
       ValueError: Attempt to convert a value (PerReplica:{...}) with an unsupported type
       (<class 'tensorflow.python.distribute.values.PerReplica'>) to a Tensor.
   Fix: take this worker's first local replica's batch instead.
   Shapes and dtypes are all the symbolic build needs, and every replica's batch has the same
   ones; no cross-worker collective is needed for that.

2. `reduce_per_replica` (applied to the outputs of every train/test step, i.e. the scalar logs)
   reduces with `strategy.reduce("MEAN", v, axis=0)` in multi-worker mode. `axis=0` asks to
   reduce *along* the first dimension as well, which a scalar does not have, so tracing the
   train function fails. Fix: `axis=None`, a mean *across replicas*, which is what the
   single-worker branch of the same function computes (`tf.reduce_mean(local_results, axis=0)`
   over the stacked replica values).

The same `strategy.reduce("MEAN", batch)` of point 1 also fails under a single-worker
`MirroredStrategy` when the batch holds booleans (the encoder models' `padding_mask`): "Value
for attr 'T' of bool is not in the list of allowed values" (AddN). So the first local replica's
batch is taken under every strategy with more than one replica.

The patch wraps those two functions at runtime (no file in site-packages is edited); the
reduction of the logs changes only for a `MultiWorkerMirroredStrategy` in multi-worker mode, the
symbolic build only with several replicas; everything else goes straight to Keras' original
code. `apply()` is idempotent.

These are Keras' private internals (the only ones the project touches), checked against
`TESTED_KERAS`: on another Keras version `apply()` still patches if the names exist, and says so
in one warning line; if they do not exist it patches nothing and says that instead.
"""

import sys

import keras
import tensorflow as tf

# The Keras releases this patch was written for and tested with (setup.py allows keras>=3.15,<4).
TESTED_KERAS = ("3.15.",)

try:
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    _original_maybe_symbolic_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build
    _original_reduce_per_replica = tf_trainer.reduce_per_replica
    tf_trainer._collective_all_reduce_multi_worker  # noqa: B018 - used below; checked here
    _UNAVAILABLE = None
except (ImportError, AttributeError) as error:  # a Keras whose internals moved
    tf_trainer = None
    _UNAVAILABLE = f"{type(error).__name__}: {error}"

_applied = False
_warned = False


def _is_multi_worker(strategy):
    # Keras' own test for "collective all-reduce across several workers".
    return tf_trainer._collective_all_reduce_multi_worker(strategy)


def _first_local_replica(value, strategy):
    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value


def _maybe_symbolic_build(self, iterator=None, data_batch=None):
    strategy = self._distribute_strategy
    if iterator is not None and strategy is not None and strategy.num_replicas_in_sync > 1:
        for _, _, distributed_iterator in iterator:
            data_batch = tree.map_structure(
                lambda value: _first_local_replica(value, strategy), next(distributed_iterator)
            )
            break
        iterator = None
    return _original_maybe_symbolic_build(self, iterator=iterator, data_batch=data_batch)


def _reduce_per_replica(values, strategy, reduction):
    if reduction in ("auto", "mean") and _is_multi_worker(strategy):
        # "auto" means "mean" for every strategy but TPUStrategy.
        return tree.map_structure(lambda value: strategy.reduce("MEAN", value, axis=None), values)
    return _original_reduce_per_replica(values, strategy, reduction)


def _warn_once(message):
    global _warned
    if not _warned:
        print(f"Warning: {message}", file=sys.stderr)
        _warned = True


def apply():
    """Installs the patch into Keras' TensorFlow trainer. Safe to call more than once.

    On a Keras outside `TESTED_KERAS` it warns (one line on stderr) that the patch may not
    apply, or, when the internals it replaces are gone, that it was not applied.
    """
    global _applied
    if _applied:
        return
    if _UNAVAILABLE is not None:
        _warn_once(
            f"trainers.multi_worker_fix was not applied: Keras {keras.__version__} lacks the internals it patches "
            f"({_UNAVAILABLE}); multi-worker and mirrored fit may fail (keras-team/keras#20585)."
        )
        return
    if not keras.__version__.startswith(TESTED_KERAS):
        _warn_once(
            f"trainers.multi_worker_fix was written for Keras {' or '.join(v + 'x' for v in TESTED_KERAS)}; applied to "
            f"Keras {keras.__version__}, it may not apply (check keras-team/keras#20585 and tests/trainers/test_strategy.py)."
        )
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    # `_make_function` looks `reduce_per_replica` up in the module at trace time.
    tf_trainer.reduce_per_replica = _reduce_per_replica
    _applied = True


def is_applied():
    """Whether `apply()` has installed the patch in this process."""
    return _applied

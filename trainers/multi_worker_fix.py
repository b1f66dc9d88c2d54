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
   Fix: for a multi-worker strategy, take this worker's first local replica's batch instead.
   Shapes and dtypes are all the symbolic build needs, and every replica's batch has the same
   ones; no cross-worker collective is needed for that.

2. `reduce_per_replica` (applied to the outputs of every train/test step, i.e. the scalar logs)
   reduces with `strategy.reduce("MEAN", v, axis=0)` in multi-worker mode. `axis=0` asks to
   reduce *along* the first dimension as well, which a scalar does not have, so tracing the
   train function fails. Fix: `axis=None`, a mean *across replicas*, which is what the
   single-worker branch of the same function computes (`tf.reduce_mean(local_results, axis=0)`
   over the stacked replica values).

The patch wraps those two functions at runtime (no file in site-packages is edited) and only
changes what happens when the strategy is a `MultiWorkerMirroredStrategy` in multi-worker mode;
every other strategy goes straight to Keras' original code. `apply()` is idempotent.
"""

import tensorflow as tf
from keras.src import tree
from keras.src.backend.tensorflow import trainer as tf_trainer

_applied = False
_original_maybe_symbolic_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build
_original_reduce_per_replica = tf_trainer.reduce_per_replica


def _is_multi_worker(strategy):
    # Keras' own test for "collective all-reduce across several workers".
    return tf_trainer._collective_all_reduce_multi_worker(strategy)


def _first_local_replica(value, strategy):
    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value


def _maybe_symbolic_build(self, iterator=None, data_batch=None):
    strategy = self._distribute_strategy
    if iterator is not None and strategy is not None and _is_multi_worker(strategy):
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


def apply():
    """Installs the patch into Keras' TensorFlow trainer. Safe to call more than once."""
    global _applied
    if _applied:
        return
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    # `_make_function` looks `reduce_per_replica` up in the module at trace time.
    tf_trainer.reduce_per_replica = _reduce_per_replica
    _applied = True


def is_applied():
    """Whether `apply()` has installed the patch in this process."""
    return _applied

"""Choosing a tf.distribute strategy, and the small rules every trainer must follow with it.

One factory, `get_strategy(name)`, in the spirit of the Model Garden's
`distribute_utils.get_distribution_strategy`. Everything else in `trainers/` receives a strategy
object and never inspects the hardware itself.

Constraints the trainer must respect:

- **Create the strategy first.** `MultiWorkerMirroredStrategy` configures TensorFlow's collective
  ops and starts a gRPC server for this process; TensorFlow only accepts that before its eager
  context is initialised, i.e. before any other TF op, tensor or device listing has run.
  `use_logical_cpus` has the same constraint. So: parse flags, call `get_strategy`, then build
  the data and the model.
- **Build the model and compile it inside `strategy.scope()`**, so that variables are mirrored.
- **Feed global batches.** The `Trainer` hands every worker the same stream of global batches
  and gives each replica its slice (`trainers/distributed_data.py`), which also makes a resumed
  run's `skip(step)` count global batches. When calling `model.fit` directly on a dataset
  batched with the *global* batch size, apply `distribute_dataset_options()` (DATA sharding)
  instead, and build the dataset with a fixed shuffle order per pass.
- **Only the chief writes** (TensorBoard, checkpoints, exports): ask `is_chief(strategy)`.
"""

import json
import os

import tensorflow as tf

from trainers import multi_worker_fix

STRATEGY_NAMES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")


def _tf_config_num_workers():
    """Number of tasks (chief + workers) in the `TF_CONFIG` cluster; 0 when it is unset."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error}): {raw!r}") from None
    return len(cluster.get("chief", [])) + len(cluster.get("worker", []))


def _multi_worker_strategy():
    # Keras 3's TF trainer cannot `fit` under this strategy without the patch
    # (keras-team/keras#20585); see trainers/multi_worker_fix.py.
    multi_worker_fix.apply()
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as error:
        # TensorFlow says "Collective ops must be configured at program startup".
        raise RuntimeError(
            "MultiWorkerMirroredStrategy must be created before any other TensorFlow op, "
            "tensor or device listing runs in this process: call get_strategy() first thing. "
            f"TensorFlow said: {error}"
        ) from None


def _tpu_strategy():
    # Best effort, untested here (no TPU on the machines this project is tested on). This is the
    # documented sequence for Cloud TPU VMs; `tpu=""` lets the resolver find the local TPU.
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu="")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def get_strategy(name="auto"):
    """Returns the `tf.distribute.Strategy` to train with.

    Args:
        name: one of `STRATEGY_NAMES`:
            - `"auto"`: `multi_worker` when `TF_CONFIG` describes a cluster of more than one
              task; else `MirroredStrategy` over all GPUs when there are several;
              `OneDeviceStrategy("/gpu:0")` with one GPU; else the default strategy (plain
              single-device execution on the CPU, which keeps Keras on its undistributed path).
            - `"one_device"`: `OneDeviceStrategy` on the first GPU, or the CPU without one.
            - `"mirrored"`: `MirroredStrategy` over all GPUs, or over all logical CPUs (see
              `use_logical_cpus`) when there is no GPU.
            - `"multi_worker"`: `MultiWorkerMirroredStrategy`, configured from `TF_CONFIG`.
              Applies `trainers.multi_worker_fix` first. Must be called before any other
              TensorFlow op runs in the process (TensorFlow's collective ops can only be
              configured at start-up).
            - `"tpu"`: `TPUStrategy` on the local Cloud TPU. Best effort: untested here.

    Raises:
        ValueError: for an unknown name.

    Example:
        >>> strategy = get_strategy("one_device")
        >>> strategy.num_replicas_in_sync
        1
    """
    if name not in STRATEGY_NAMES:
        raise ValueError(
            f"Unknown strategy {name!r}. Expected one of: {', '.join(STRATEGY_NAMES)}."
        )
    if name == "auto":
        if _tf_config_num_workers() > 1:
            return _multi_worker_strategy()
        gpus = tf.config.list_logical_devices("GPU")
        if len(gpus) > 1:
            multi_worker_fix.apply()  # Keras 3.15's symbolic build fails on boolean inputs with >1 replica
            return tf.distribute.MirroredStrategy()
        if len(gpus) == 1:
            return tf.distribute.OneDeviceStrategy("/gpu:0")
        return tf.distribute.get_strategy()
    if name == "one_device":
        device = "/gpu:0" if tf.config.list_logical_devices("GPU") else "/cpu:0"
        return tf.distribute.OneDeviceStrategy(device)
    if name == "mirrored":
        # Keras 3.15's symbolic build reduces a batch across replicas, which fails on boolean
        # inputs (padding masks) with more than one replica: trainers.multi_worker_fix covers it.
        multi_worker_fix.apply()
        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            return tf.distribute.MirroredStrategy()
        cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(cpus)
    if name == "multi_worker":
        return _multi_worker_strategy()
    return _tpu_strategy()


def use_logical_cpus(num_devices):
    """Splits the physical CPU into `num_devices` logical devices, to test `MirroredStrategy`.

    Must run before TensorFlow initialises its devices (before any op, tensor or strategy).
    Calling it again with the same number after initialisation is a no-op.

    Raises:
        RuntimeError: when TensorFlow has already initialised its devices differently.
    """
    if num_devices < 1:
        raise ValueError(f"num_devices must be >= 1, got {num_devices}.")
    cpu = tf.config.list_physical_devices("CPU")[0]
    # Without a configuration, TensorFlow makes one logical device per physical CPU.
    configured = tf.config.get_logical_device_configuration(cpu)
    if (len(configured) if configured else 1) == num_devices:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)]
        )
    except RuntimeError as error:
        raise RuntimeError(
            f"use_logical_cpus({num_devices}) was called after TensorFlow initialised its "
            f"devices ({len(tf.config.list_logical_devices('CPU'))} logical CPU(s) exist). "
            "Call it at the very start of the program, before any TensorFlow op, tensor or "
            f"strategy is created. TensorFlow said: {error}"
        ) from None


def is_chief(strategy):
    """Whether this process is the one that writes TensorBoard logs, checkpoints and exports.

    True for every single-worker strategy. In a multi-worker cluster: the task of type
    `chief`, or worker 0 when the cluster has no chief (the `TF_CONFIG` convention).
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return True
    if resolver.task_type == "chief":
        return True
    cluster = resolver.cluster_spec().as_dict()
    return "chief" not in cluster and resolver.task_type == "worker" and resolver.task_id == 0


def per_replica_batch_size(global_batch_size, strategy):
    """The batch each replica sees when the datasets are batched with `global_batch_size`.

    Raises:
        ValueError: when the global batch does not split evenly across the replicas.
    """
    num_replicas = strategy.num_replicas_in_sync
    if global_batch_size % num_replicas:
        raise ValueError(
            f"Global batch size {global_batch_size} is not divisible by the "
            f"{num_replicas} replicas in sync. Use a multiple of {num_replicas}."
        )
    return global_batch_size // num_replicas


def distribute_dataset_options():
    """`tf.data.Options` the trainer applies to every dataset it gives to `model.fit`.

    Usage: `dataset = dataset.with_options(distribute_dataset_options())`.
    """
    options = tf.data.Options()
    # Set explicitly rather than AUTO. AUTO tries FILE sharding first whenever the pipeline
    # reads files: each worker then reads a disjoint subset of the files, which fails when there
    # are fewer files than workers (TensorFlow's own error message advises DATA or OFF) and
    # gives workers unequal numbers of batches when the files differ in size; generated or
    # in-memory data cannot be file-sharded at all (AUTO falls back with a warning). DATA
    # sharding makes every worker build the whole pipeline and keep every N-th piece after
    # tf.distribute has split each global batch per replica: the replicas together consume
    # exactly the global batches the user asked for, in order, so a multi-worker run sees the
    # same data as one process (tests/trainers/test_strategy.py fails with OFF instead).
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options

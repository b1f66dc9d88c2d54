"""Strategies give the same training as one device: MirroredStrategy and 2-worker MWMS.

Both distributed set-ups run in subprocesses (tests/trainers/multi_worker_script.py), because
they must be configured before TensorFlow initialises. The single-device reference runs here,
with the same model, initial weights, data order, global batch and SGD, so every per-step loss
must agree.

Per-step losses: Keras 3 puts the running mean of the loss since the epoch began into
`logs["loss"]`. The script's callback resets the metrics before each batch, so each recorded
number is that batch's own loss: a step that went wrong shows up at that step instead of being
averaged away, and the first one can be checked against a NumPy computation.
"""

import json
import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests.trainers import multi_worker_script
from trainers import multi_worker_fix, strategy as strategy_lib

SCRIPT = Path(__file__).with_name("multi_worker_script.py")
REPO_ROOT = Path(__file__).resolve().parents[2]
# A hung collective (one worker died, a port was taken) must fail the test, not hang CI.
TIMEOUT_S = 120
# Float32 losses around 1-20; different reduction orders across replicas cost ~1e-6.
ATOL = 1e-5
STEPS = 5
GLOBAL_BATCH_SIZE = 16


def _subprocess_env(**extra):
    env = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    # CPU only, so that "mirrored" spreads over the 2 logical CPUs even on a machine with a GPU.
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.update(extra)
    return env


def _script_command(*args):
    return [
        sys.executable, str(SCRIPT), "--steps", str(STEPS),
        "--global-batch-size", str(GLOBAL_BATCH_SIZE), *args,
    ]


def _result(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


def _free_ports(count):
    # Bind all sockets before closing any, so the ports differ. Another process could take a
    # port between close() and TensorFlow's bind: unlikely enough on a test machine.
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _run_two_workers(*args):
    """Runs the script as worker 0 and 1 of a localhost cluster; returns (rc, stdout, stderr)s."""
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    try:
        for index in range(2):
            tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
            processes.append(
                subprocess.Popen(
                    _script_command("--strategy", "multi_worker", *args),
                    env=_subprocess_env(TF_CONFIG=json.dumps(tf_config)),
                    cwd=REPO_ROOT,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        outputs = []
        for process in processes:
            try:
                stdout, stderr = process.communicate(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"a worker did not finish within {TIMEOUT_S} s (hung collective?)")
            outputs.append((process.returncode, stdout, stderr))
        return outputs
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def single_device():
    """The reference: the same training on one device, in this process, without a strategy."""
    return multi_worker_script.train(tf.distribute.get_strategy(), STEPS, GLOBAL_BATCH_SIZE)


def test_reference_records_each_batch_loss(single_device):
    features, targets = multi_worker_script.make_arrays(STEPS * GLOBAL_BATCH_SIZE)
    kernel_1, bias_1, kernel_2, bias_2 = multi_worker_script.initial_weights()
    first = slice(0, GLOBAL_BATCH_SIZE)
    hidden = np.maximum(features[first] @ kernel_1 + bias_1, 0.0)
    first_loss = np.mean((hidden @ kernel_2 + bias_2 - targets[first]) ** 2)

    assert len(single_device["losses"]) == STEPS
    np.testing.assert_allclose(single_device["losses"][0], first_loss, rtol=1e-5)
    # The recorded numbers are per batch, not the running mean: batch 2 alone differs from
    # the mean of batches 1-2.
    assert not np.isclose(single_device["losses"][1], np.mean(single_device["losses"][:2]))


@pytest.mark.slow
def test_mirrored_on_two_logical_cpus_matches_single_device(single_device):
    # --fix on: the multi-worker patch is installed too, and must not change a single worker.
    completed = subprocess.run(
        _script_command("--strategy", "mirrored", "--logical-cpus", "2", "--fix", "on"),
        env=_subprocess_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=TIMEOUT_S,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    mirrored = _result(completed.stdout)

    assert mirrored["num_replicas"] == 2
    assert mirrored["is_chief"]
    np.testing.assert_allclose(mirrored["losses"], single_device["losses"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(mirrored["val_loss"], single_device["val_loss"], rtol=0, atol=ATOL)


@pytest.mark.slow
def test_two_workers_match_each_other_and_single_device(single_device):
    (rc_0, out_0, err_0), (rc_1, out_1, err_1) = _run_two_workers()
    assert rc_0 == 0, err_0[-3000:]
    assert rc_1 == 0, err_1[-3000:]
    worker_0, worker_1 = _result(out_0), _result(out_1)

    assert worker_0["num_replicas"] == worker_1["num_replicas"] == 2
    assert (worker_0["is_chief"], worker_1["is_chief"]) == (True, False)
    np.testing.assert_allclose(worker_0["losses"], worker_1["losses"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(worker_0["losses"], single_device["losses"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(worker_0["val_loss"], single_device["val_loss"], rtol=0, atol=ATOL)


@pytest.mark.slow
@pytest.mark.parametrize(
    "fix, expected_error",
    [
        # keras 3.15.1, TensorFlowTrainer._maybe_symbolic_build: strategy.reduce on PerReplica.
        ("off", "unsupported type (<class 'tensorflow.python.distribute.values.PerReplica'>)"),
        # keras 3.15.1, reduce_per_replica: strategy.reduce("MEAN", scalar_log, axis=0).
        ("symbolic-build-only", "Invalid reduction dimension 0 for input with 0 dimensions"),
    ],
    ids=["fix-off", "symbolic-build-fix-only"],
)
def test_two_workers_fail_without_each_half_of_the_fix(fix, expected_error):
    # If a Keras upgrade makes this test fail, the upstream bug (keras-team/keras#20585) may be
    # fixed: check, then drop that half of trainers/multi_worker_fix.py.
    for returncode, stdout, stderr in _run_two_workers("--fix", fix):
        assert returncode != 0, stdout
        assert expected_error in stderr, stderr[-3000:]


def test_fix_apply_is_idempotent():
    from keras.src.backend.tensorflow import trainer as tf_trainer

    multi_worker_fix.apply()
    patched = (tf_trainer.TensorFlowTrainer._maybe_symbolic_build, tf_trainer.reduce_per_replica)
    multi_worker_fix.apply()

    assert multi_worker_fix.is_applied()
    assert patched == (
        tf_trainer.TensorFlowTrainer._maybe_symbolic_build, tf_trainer.reduce_per_replica
    )
    # The wrappers call Keras' originals, never themselves.
    assert multi_worker_fix._original_reduce_per_replica is not tf_trainer.reduce_per_replica


def test_get_strategy_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as error:
        strategy_lib.get_strategy("horovod")
    for name in ("horovod", "auto", "one_device", "mirrored", "multi_worker", "tpu"):
        assert name in str(error.value)


def test_get_strategy_auto_and_one_device_on_cpu(monkeypatch):
    if tf.config.list_logical_devices("GPU"):
        pytest.skip("checks the CPU-only choice")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert strategy_lib.get_strategy("auto") is tf.distribute.get_strategy()
    one_device = strategy_lib.get_strategy("one_device")
    assert isinstance(one_device, tf.distribute.OneDeviceStrategy)
    assert one_device.num_replicas_in_sync == 1


def test_tf_config_worker_count(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert strategy_lib._tf_config_num_workers() == 0
    cluster = {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2", "127.0.0.1:3"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster}))
    assert strategy_lib._tf_config_num_workers() == 3


def test_per_replica_batch_size():
    four_replicas = types.SimpleNamespace(num_replicas_in_sync=4)
    assert strategy_lib.per_replica_batch_size(32, four_replicas) == 8
    assert strategy_lib.per_replica_batch_size(32, tf.distribute.get_strategy()) == 32
    with pytest.raises(ValueError, match=r"30 .*4 replicas"):
        strategy_lib.per_replica_batch_size(30, four_replicas)


def test_is_chief():
    assert strategy_lib.is_chief(tf.distribute.get_strategy())
    assert strategy_lib.is_chief(tf.distribute.OneDeviceStrategy("/cpu:0"))

    def as_task(cluster, task_type, task_id):
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id
        )
        return types.SimpleNamespace(cluster_resolver=resolver)

    workers_only = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    assert strategy_lib.is_chief(as_task(workers_only, "worker", 0))
    assert not strategy_lib.is_chief(as_task(workers_only, "worker", 1))
    with_chief = {"chief": ["127.0.0.1:0"], **workers_only}
    assert strategy_lib.is_chief(as_task(with_chief, "chief", 0))
    assert not strategy_lib.is_chief(as_task(with_chief, "worker", 0))


def test_dataset_options_shard_by_data():
    options = strategy_lib.distribute_dataset_options()
    assert (
        options.experimental_distribute.auto_shard_policy
        == tf.data.experimental.AutoShardPolicy.DATA
    )


def test_use_logical_cpus_after_initialisation_raises():
    tf.constant(0.0)  # make sure TensorFlow has initialised its devices in this process
    count = len(tf.config.list_logical_devices("CPU"))
    strategy_lib.use_logical_cpus(count)  # asking for what exists is fine
    with pytest.raises(RuntimeError, match="before any TensorFlow op"):
        strategy_lib.use_logical_cpus(count + 1)


@pytest.mark.slow
def test_multi_worker_strategy_created_after_a_tf_op_fails_clearly():
    # The trainer must call get_strategy() before anything else touches TensorFlow.
    code = (
        "import tensorflow as tf\n"
        "tf.constant(1.0)\n"
        "from trainers.strategy import get_strategy\n"
        "get_strategy('multi_worker')\n"
    )
    tf_config = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                 "task": {"type": "worker", "index": 0}}
    completed = subprocess.run(
        [sys.executable, "-c", code], env=_subprocess_env(TF_CONFIG=json.dumps(tf_config)),
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=TIMEOUT_S,
    )
    assert completed.returncode != 0
    assert "must be created before any other TensorFlow op" in completed.stderr

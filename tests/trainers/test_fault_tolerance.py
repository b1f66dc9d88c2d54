"""Distributed training through the Trainer, and kill -9 mid-training: a restart resumes from the
step backup and ends with the weights of a run that was never interrupted. One process, 2
replicas on logical CPUs (mirrored), and 2 workers on 127.0.0.1 (multi-worker)."""

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "train_script.py")
TIMEOUT = 600  # generous: a loaded machine is slow, only a hang should fail


def run(run_dir, corpus, out, *extra, env=None):
    process = subprocess.run(
        [sys.executable, SCRIPT, str(run_dir), corpus, str(out), *extra],
        capture_output=True, text=True, timeout=TIMEOUT, env=env,
    )
    return process


def summary(process):
    assert process.returncode == 0, process.stderr[-3000:]
    return json.loads(process.stdout.strip().splitlines()[-1])


def weights(path):
    with np.load(path) as data:
        return [data[k] for k in data.files]


def assert_same_weights(a, b, atol=1e-5):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=atol)


@pytest.fixture(scope="module")
def uninterrupted(lm_corpus, tmp_path_factory):
    directory = tmp_path_factory.mktemp("uninterrupted")
    result = summary(run(directory / "run", lm_corpus, directory / "w.npz"))
    assert result["final_step"] == 12 and result["resumed_from_step"] == 0
    return result, weights(directory / "w.npz")


@pytest.fixture(scope="module")
def without_dropout(lm_corpus, tmp_path_factory):
    """One process, no dropout: the reference of the distributed runs (shared by their tests)."""
    directory = tmp_path_factory.mktemp("without_dropout")
    result = summary(run(directory / "run", lm_corpus, directory / "w.npz", "--dropout", "0"))
    return result, weights(directory / "w.npz")


@pytest.mark.slow
def test_single_process_killed_mid_epoch_resumes_exactly(lm_corpus, tmp_path, uninterrupted):
    reference, reference_weights = uninterrupted
    assert reference["jit_compile"] is True  # the trainer turns XLA on explicitly
    crashed = run(tmp_path / "run", lm_corpus, tmp_path / "w.npz", "--crash-at-step", "9")
    assert crashed.returncode == -signal.SIGKILL
    backup = json.load(open(tmp_path / "run" / "backup" / "worker-0" / "backup.json"))
    assert backup["step"] == 8  # backups every 2 steps: 9 died before its backup at 10
    resumed = summary(run(tmp_path / "run", lm_corpus, tmp_path / "w.npz"))
    assert resumed["resumed_from_step"] == 8 and resumed["final_step"] == 12
    assert_same_weights(weights(tmp_path / "w.npz"), reference_weights)
    # Running the finished command again trains nothing and changes nothing.
    again = summary(run(tmp_path / "run", lm_corpus, tmp_path / "w2.npz"))
    assert again["resumed_from_step"] == 12 and again["history"] == {}
    assert_same_weights(weights(tmp_path / "w2.npz"), reference_weights, atol=0)


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start_workers(run_dir, corpus, out_dir, crash=None):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
                   CUDA_VISIBLE_DEVICES="")
        # No dropout: each replica draws its own masks, so only a dropout-free run can equal one process.
        extra = ["--strategy", "multi_worker", "--dropout", "0"]
        if crash and crash[0] == index:
            extra += ["--crash-at-step", str(crash[1])]
        processes.append(subprocess.Popen(
            [sys.executable, SCRIPT, str(run_dir), corpus, str(out_dir / f"w{index}.npz"), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        ))
    return processes


def _finish(processes):
    outputs = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=TIMEOUT)
            outputs.append((process.returncode, stdout, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    return outputs


@pytest.mark.slow
def test_two_workers_match_one_process_and_survive_kill_9(lm_corpus, tmp_path, without_dropout):
    reference, reference_weights = without_dropout
    # Uninterrupted: both workers end with the single-process weights (same global batch).
    clean = _finish(_start_workers(tmp_path / "clean", lm_corpus, tmp_path / "clean"))
    for code, stdout, stderr in clean:
        assert code == 0, stderr[-3000:]
        assert "XLA is off" in stderr  # XLA cannot compile collectives on CPU
        losses = json.loads(stdout.strip().splitlines()[-1])["history"]["loss"]
        np.testing.assert_allclose(losses, reference["history"]["loss"], atol=1e-5)
    assert_same_weights(weights(tmp_path / "clean" / "w0.npz"), reference_weights)
    assert_same_weights(weights(tmp_path / "clean" / "w1.npz"), reference_weights)
    assert os.path.exists(tmp_path / "clean" / "checkpoints" / "last" / "model.keras")
    assert os.path.isdir(tmp_path / "clean" / "backup" / "worker-1")  # each worker has its own backups

    # Worker 1 is killed with SIGKILL after its 7th step; worker 0 then blocks in a collective and
    # is killed too (as a cluster manager would). Restarting both resumes from the backup.
    (tmp_path / "fault").mkdir()
    processes = _start_workers(tmp_path / "fault", lm_corpus, tmp_path / "fault", crash=(1, 7))
    try:
        assert processes[1].wait(timeout=TIMEOUT) == -signal.SIGKILL
    finally:
        processes[0].kill()
        processes[0].wait()
    steps = [json.load(open(tmp_path / "fault" / "backup" / f"worker-{i}" / "backup.json"))["step"] for i in range(2)]
    assert steps == [6, 6]
    resumed = _finish(_start_workers(tmp_path / "fault", lm_corpus, tmp_path / "fault"))
    for code, stdout, stderr in resumed:
        assert code == 0, stderr[-3000:]
        assert json.loads(stdout.strip().splitlines()[-1])["resumed_from_step"] == 6
    assert_same_weights(weights(tmp_path / "fault" / "w0.npz"), reference_weights)


@pytest.mark.slow
def test_mirrored_over_two_logical_cpus_matches_one_device(lm_corpus, tmp_path, without_dropout):
    single, single_weights = without_dropout
    mirrored = run(
        tmp_path / "mirrored", lm_corpus, tmp_path / "mirrored.npz", "--dropout", "0", "--strategy", "mirrored",
        "--logical-cpus", "2",
    )
    result = summary(mirrored)
    assert "XLA is off" in mirrored.stderr
    np.testing.assert_allclose(result["history"]["loss"], single["history"]["loss"], atol=1e-5)
    assert_same_weights(weights(tmp_path / "mirrored.npz"), single_weights)

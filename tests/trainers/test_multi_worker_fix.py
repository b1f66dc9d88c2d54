"""`trainers.multi_worker_fix` checks the Keras version it was written for and says, in one line,
when it meets another or cannot patch at all. (Its effect on training: tests/trainers/test_strategy.py.)"""

import keras
import pytest

from trainers import multi_worker_fix


@pytest.fixture
def fresh_fix(monkeypatch):
    """The fix as if never applied in this process; Keras' trainer is restored afterwards."""
    trainer = multi_worker_fix.tf_trainer
    monkeypatch.setattr(trainer.TensorFlowTrainer, "_maybe_symbolic_build", trainer.TensorFlowTrainer._maybe_symbolic_build)
    monkeypatch.setattr(trainer, "reduce_per_replica", trainer.reduce_per_replica)
    monkeypatch.setattr(multi_worker_fix, "_applied", False)
    monkeypatch.setattr(multi_worker_fix, "_warned", False)
    return trainer


def test_the_tested_version_applies_silently(fresh_fix, monkeypatch, capsys):
    monkeypatch.setattr(keras, "__version__", "3.15.1")
    multi_worker_fix.apply()
    assert multi_worker_fix.is_applied() and capsys.readouterr().err == ""
    assert fresh_fix.reduce_per_replica is multi_worker_fix._reduce_per_replica


def test_another_version_is_patched_with_one_warning_line(fresh_fix, monkeypatch, capsys):
    monkeypatch.setattr(keras, "__version__", "3.99.0")
    multi_worker_fix.apply()
    multi_worker_fix.apply()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "written for Keras 3.15.x" in err and "3.99.0" in err and "may not apply" in err
    assert multi_worker_fix.is_applied() and fresh_fix.reduce_per_replica is multi_worker_fix._reduce_per_replica


def test_missing_internals_patch_nothing_and_say_so(fresh_fix, monkeypatch, capsys):
    monkeypatch.setattr(multi_worker_fix, "_UNAVAILABLE", "AttributeError: no reduce_per_replica")
    before = fresh_fix.reduce_per_replica
    multi_worker_fix.apply()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was not applied" in err and "no reduce_per_replica" in err
    assert not multi_worker_fix.is_applied() and fresh_fix.reduce_per_replica is before

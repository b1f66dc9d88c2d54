"""Training under faults (issue #17, the training half): each test provokes one fault a tester
reported and checks what happens now. Runs are tiny (a 1-layer gpt-clm of width 32 on 30
standard-library files, no XLA, a few steps) and in process: `trainers.cli.main` for what the
command prints and returns, the `Trainer` where a test needs to reach inside a run."""

import dataclasses
import errno
import json
import os
import shutil
import types

import keras
import numpy as np
import pytest

import recipes
from trainers import backup as backup_lib
from trainers.cli import main
from trainers.errors import BackupWriteError, CheckpointWriteError, RunSetupError, TrainingDiverged
from trainers import trainer as trainer_module
from trainers.trainer import RecipeCheckpoint, Trainer, TrainOptions

# The same config from the command line (TINY_ARGS) and in Python (TINY): runs made either way
# share run directories. WordPiece where the recipe offers a choice: these tests are about faults,
# and it tokenizes in tf.data faster than the graph BPE (about half the CPU time of these tests).
_FIELDS = {field.name for field in dataclasses.fields(recipes.get_class("gpt-clm").config_class)}
_TOKENIZER = {"tokenizer": "wordpiece"} if "tokenizer" in _FIELDS else {}
TINY = dict(vocabulary_size=400, num_layers=1, hidden_dim=32, num_heads=2, intermediate_dim=64, validation_steps=2,
            sequence_length=32, batch_size=8, **_TOKENIZER)
TINY_ARGS = [
    "--set", "vocabulary_size=400", "--set", "num_layers=1", "--set", "hidden_dim=32", "--set", "num_heads=2",
    "--set", "intermediate_dim=64", "--set", "validation_steps=2", "--seq-len", "32", "--batch-size", "8",
    "--no-xla", "--verbose", "0", *[arg for key, value in _TOKENIZER.items() for arg in ("--set", f"{key}={value}")],
]


def tiny_recipe(data, name="gpt-clm", **overrides):
    return recipes.get(name, data=data, **{**TINY, **overrides})


def options(**overrides):
    return TrainOptions(**{"steps_per_epoch": 6, "backup_every": 2, "jit_compile": False, "verbose": 0, **overrides})


def zoo(capsys, *args):
    """`zoo ARGS` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit:  # argparse rejects an argument
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err):
    """The one `zoo train: error:` line; no traceback anywhere."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def backup_arrays(directory):
    """{file: [arrays]} of every backup file in a backup directory."""
    found = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(".npz"):
            with np.load(os.path.join(directory, name)) as data:
                found[name] = [data[key] for key in data.files]
    return found


def assert_all_finite(arrays_by_file):
    for name, arrays in arrays_by_file.items():
        for array in arrays:
            if np.issubdtype(array.dtype, np.floating):
                assert np.isfinite(array).all(), name


@pytest.fixture(scope="module")
def healthy_run(lm_corpus, tmp_path_factory):
    """A finished 6-step run with backups every 2 steps (the two newest, 6 and 4, are kept)."""
    run_dir = tmp_path_factory.mktemp("healthy") / "run"
    result = Trainer(tiny_recipe(lm_corpus), str(run_dir), options=options()).train()
    assert result.final_step == 6
    return run_dir


@pytest.fixture
def copied_run(healthy_run, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(healthy_run, target)
    return target


# -- the NaN guard ----------------------------------------------------------------------------


def test_a_huge_learning_rate_stops_with_exit_1_and_saves_no_nan(lm_corpus, tmp_path, capsys):
    """The tester's run: learning_rate=1e6, exit 0 and NaN backups before. With a backup every step,
    one is attempted right after the update that breaks the weights, while that step's loss
    (computed before the update) is still finite: only the weight check refuses it."""
    run_dir = tmp_path / "run"
    code, _, err = zoo(capsys, "train", "gpt-clm", "--data", lm_corpus, "--run-dir", run_dir, "--steps", "6",
                       "--backup-every", "1", *TINY_ARGS, "--set", "learning_rate=1e6", "--set", "warmup_steps=0")
    assert code == 1
    line = error_line(err)
    assert "Training diverged at global step" in line and "--set learning_rate=100000" in line
    stopped = int(line.split("global step ")[1].split(":")[0])
    last_good = backup_lib.read_step(run_dir / "backup" / "worker-0")
    assert last_good < stopped
    assert (f"resume from the backup of step {last_good}" if last_good else "start again from step 0") in line
    assert_all_finite(backup_arrays(run_dir / "backup" / "worker-0"))
    assert not (run_dir / "checkpoints" / "last").exists()  # the epoch never ended well


class PoisonAfter(keras.callbacks.Callback):
    """Makes the weights NaN after the `step`-th update, as a diverging update would."""

    def __init__(self, step):
        super().__init__()
        self.step, self.seen = step, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.step:
            weight = self.model.trainable_weights[0]
            weight.assign(np.full(weight.shape, np.nan, dtype="float32"))


def test_nan_at_an_epoch_end_writes_no_checkpoint_and_a_lower_rate_resumes(lm_corpus, tmp_path, capsys):
    """The update of the epoch's last step breaks the weights: its loss is finite, so only the
    weight check stops `checkpoints/last` and `best` from being written. The rerun with a lower
    learning rate is accepted, recorded, and resumes from the last good backup."""
    run_dir = str(tmp_path / "run")
    run_options = options(epochs=2, steps_per_epoch=3)
    with pytest.raises(TrainingDiverged, match="weights are not finite") as diverged:
        Trainer(tiny_recipe(lm_corpus), run_dir, options=run_options, callbacks=[PoisonAfter(3)]).train()
    assert (diverged.value.step, diverged.value.last_good_step) == (3, 2)
    assert not os.path.exists(os.path.join(run_dir, "checkpoints", "last"))
    assert not os.path.exists(os.path.join(run_dir, "checkpoints", "best"))
    assert_all_finite(backup_arrays(os.path.join(run_dir, "backup", "worker-0")))

    # Shape and data fields still may not change on resume.
    with pytest.raises(RunSetupError, match=r"another config \(hidden_dim: 32 -> 64\)"):
        Trainer(tiny_recipe(lm_corpus, hidden_dim=64), run_dir, options=run_options).train()

    capsys.readouterr()
    rate = tiny_recipe(lm_corpus).config.learning_rate
    result = Trainer(tiny_recipe(lm_corpus, learning_rate=rate / 10), run_dir, options=run_options).train()
    assert (result.resumed_from_step, result.final_step) == (2, 6)
    assert f"at step 2 with changed settings: learning_rate {rate!r} -> {rate / 10!r}" in capsys.readouterr().err
    with open(os.path.join(run_dir, "config_history.jsonl")) as f:
        (entry,) = [json.loads(line) for line in f]
    assert entry["step"] == 2 and entry["changed"] == {"learning_rate": {"from": rate, "to": rate / 10}}
    assert json.load(open(os.path.join(run_dir, "config.json")))["learning_rate"] == rate / 10
    assert all(np.isfinite(w).all() for w in result.model.get_weights())
    assert os.path.exists(os.path.join(run_dir, "checkpoints", "best", "model.keras"))


# -- two backups, verified on load ----------------------------------------------------------------


def test_a_truncated_latest_backup_falls_back_to_the_previous_one(healthy_run, copied_run, capsys):
    backup_dir = copied_run / "backup" / "worker-0"
    latest = backup_dir / "step-6.npz"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    capsys.readouterr()
    result = Trainer(tiny_recipe(str(json.load(open(copied_run / "config.json"))["data"])), str(copied_run),
                     options=options()).train()
    err = capsys.readouterr().err
    assert "the backup of step 6 is unusable" in err and "truncated" in err
    assert "Resuming from the older backup of step 4" in err
    assert (result.resumed_from_step, result.final_step) == (4, 6)
    # Step-exact resume: steps 5 and 6 again give the weights the uninterrupted run saved at 6.
    original = backup_arrays(healthy_run / "backup" / "worker-0")["step-6.npz"]
    for again, before in zip(backup_arrays(backup_dir)["step-6.npz"], original):
        np.testing.assert_allclose(again, before, atol=1e-5)


def _small_model():
    keras.utils.set_random_seed(0)
    layers = [keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dropout(0.1), keras.layers.Dense(1)]
    model = keras.Sequential(layers)
    model.compile(keras.optimizers.AdamW(1e-3), loss="mse")
    model.fit(np.ones((8, 4)), np.ones((8, 1)), verbose=0)
    return model


def test_no_usable_backup_is_one_error_naming_both(tmp_path):
    model = _small_model()
    for step in (2, 4):
        backup_lib.save(model, str(tmp_path), step)
    (tmp_path / "step-4.npz").write_bytes(b"")
    (tmp_path / "step-2.npz").unlink()
    with pytest.raises(RunSetupError, match=r"No usable backup in .*step 4.*step 2"):
        backup_lib.restore(_small_model(), str(tmp_path))


# -- a full disk ------------------------------------------------------------------------------


def test_disk_full_during_a_backup_is_one_line_and_the_rerun_resumes(copied_run, capsys, monkeypatch):
    """The write fails half way with ENOSPC (as on a full disk): one line, exit 1, the partial file
    gone, the step-6 backup intact; once space is back, the same command resumes from it."""
    data = json.load(open(copied_run / "config.json"))["data"]
    command = ["train", "gpt-clm", "--data", data, "--run-dir", copied_run, "--steps", "8", *TINY_ARGS]
    real_write = np.lib.format.write_array

    def write_until_full(member, array, **kwargs):
        member.write(b"\0" * 100)  # some bytes reach the disk, then it is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np.lib.format, "write_array", write_until_full)
    code, _, err = zoo(capsys, *command)
    assert code == 1
    line = error_line(err)
    assert "Could not write the step-8 backup" in line and "No space left on device" in line
    assert "The backup of step 6 is intact" in line
    backup_dir = copied_run / "backup" / "worker-0"
    assert sorted(os.listdir(backup_dir)) == ["backup.json", "step-4.npz", "step-6.npz"]
    assert backup_lib.read_step(backup_dir) == 6

    monkeypatch.setattr(np.lib.format, "write_array", real_write)
    code, out, err = zoo(capsys, *command)
    assert code == 0, err
    assert "Finished step 8 (resumed from 6)" in out


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path):
    class FillsTheDisk:
        def save(self, model, directory):
            os.makedirs(directory)
            (tmp_path / "last.partial" / "model.keras").write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    (tmp_path / "last").mkdir()
    (tmp_path / "last" / "model.keras").write_bytes(b"previous")
    with pytest.raises(CheckpointWriteError, match=r"Could not write the checkpoint .*last: No space left on device"):
        RecipeCheckpoint(FillsTheDisk(), str(tmp_path))._save("last", {"loss": 1.0})
    assert sorted(os.listdir(tmp_path)) == ["last"]
    assert (tmp_path / "last" / "model.keras").read_bytes() == b"previous"

def test_too_little_free_space_is_refused_before_writing(tmp_path, monkeypatch):
    model = _small_model()
    backup_lib.save(model, str(tmp_path), 2)
    nearly_full = types.SimpleNamespace(total=10**9, used=10**9 - 1000, free=1000)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: nearly_full)
    with pytest.raises(BackupWriteError, match=r"Not enough disk space for the step-4 backup .* step 2 is intact"):
        backup_lib.save(model, str(tmp_path), 4)
    assert sorted(os.listdir(tmp_path)) == ["backup.json", "step-2.npz"]


def test_partial_files_of_a_crashed_save_are_removed(tmp_path):
    model = _small_model()
    backup_lib.save(model, str(tmp_path), 2)
    (tmp_path / "partial-step-4.npz").write_bytes(b"\0" * 1000)  # what a killed process leaves
    assert backup_lib.restore(_small_model(), str(tmp_path)) == 2
    assert sorted(os.listdir(tmp_path)) == ["backup.json", "step-2.npz"]


# -- bad input is refused -------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--steps", "-5"], "argument --steps: expected an integer >= 1, got '-5'"),
    (["--epochs", "-1"], "argument --epochs: expected an integer >= 1, got '-1'"),
    (["--set", "learning_rate=-1"], "learning_rate must be a finite number > 0, got -1.0"),
    (["--set", "learning_rate=nan"], "learning_rate must be a finite number > 0, got nan"),
    (["--set", "dropout=1"], "dropout must be a number in [0, 1), got 1.0"),
    (["--backup-every", "-1"], "argument --backup-every: expected an integer >= 0"),
])
def test_bad_numbers_exit_2_before_training(args, message, lm_corpus, tmp_path, capsys):
    code, _, err = zoo(capsys, "train", "gpt-clm", "--data", lm_corpus, "--run-dir", tmp_path / "run", *args)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_train_options_are_checked(lm_corpus, tmp_path):
    with pytest.raises(ValueError, match="TrainOptions.epochs must be an integer >= 1, got -1"):
        Trainer(tiny_recipe(lm_corpus), str(tmp_path), options=TrainOptions(epochs=-1))


def test_one_class_is_refused_and_leaves_no_config_behind(classification_csv, tmp_path, capsys):
    one_class = tmp_path / "one.csv"
    with open(classification_csv) as f:
        rows = f.read().splitlines()
    one_class.write_text("\n".join([rows[0]] + [row for row in rows[1:] if row.endswith(",tool")]) + "\n")
    run_dir = tmp_path / "run"
    common = ["train", "classifier", "--run-dir", run_dir, "--steps", "2", *TINY_ARGS, "--set", "validation_steps=1"]
    code, _, err = zoo(capsys, *common, "--data", one_class)
    assert code == 2
    line = error_line(err)
    assert str(one_class) in line and "1 class (tool)" in line and "at least two" in line
    assert not run_dir.exists()  # nothing written: the corrected command is not refused
    code, out, err = zoo(capsys, *common, "--data", classification_csv)
    assert code == 0, err
    assert "Finished step 2" in out


# -- setup errors: one line naming the file, exit 2 -----------------------------------------------


def test_garbage_config_json(lm_corpus, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{ not json")
    code, _, err = zoo(capsys, "train", "gpt-clm", "--data", lm_corpus, "--run-dir", tmp_path / "run", *TINY_ARGS)
    assert code == 2
    line = error_line(err)
    assert f"{tmp_path / 'run' / 'config.json'} is not readable JSON" in line and "delete" in line


def test_empty_backup_json(copied_run, capsys):
    path = copied_run / "backup" / "worker-0" / "backup.json"
    path.write_text("")
    data = json.load(open(copied_run / "config.json"))["data"]
    code, _, err = zoo(capsys, "train", "gpt-clm", "--data", data, "--run-dir", copied_run, "--steps", "8", *TINY_ARGS)
    assert code == 2
    line = error_line(err)
    assert f"{path} is empty" in line and "Delete the directory" in line


def test_empty_corpus_directory(tmp_path, capsys):
    (tmp_path / "corpus").mkdir()
    code, _, err = zoo(capsys, "train", "gpt-clm", "--data", tmp_path / "corpus", "--run-dir", tmp_path / "run",
                       *TINY_ARGS)
    assert code == 2
    line = error_line(err)
    assert str(tmp_path / "corpus") in line and "no text" in line
    assert not (tmp_path / "run").exists()


def test_too_few_documents(lm_corpus, tmp_path, capsys):
    # Three files: files go 90/5/5 by a hash of their name, and none of these is a validation file.
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("argparse.py", "bisect.py", "calendar.py"):
        shutil.copy(os.path.join(lm_corpus, name), corpus / name)
    code, _, err = zoo(capsys, "train", "gpt-clm", "--data", corpus, "--run-dir", tmp_path / "run", *TINY_ARGS)
    assert code == 2
    line = error_line(err)
    assert f"{corpus}: its validation split is empty" in line and "add data" in line


def test_run_dir_that_is_a_file(lm_corpus, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    for run_dir, message in ((tmp_path / "file", "is a file, not a directory"),
                             (tmp_path / "file" / "run", f"({tmp_path / 'file'} is a file)")):
        code, _, err = zoo(capsys, "train", "gpt-clm", "--data", lm_corpus, "--run-dir", run_dir, *TINY_ARGS)
        assert code == 2
        line = error_line(err)
        assert str(run_dir) in line and message in line


def test_read_only_run_dir(lm_corpus, tmp_path, capsys, monkeypatch):
    parent = tmp_path / "read-only"
    parent.mkdir()
    parent.chmod(0o555)
    if os.access(parent, os.W_OK):  # root writes anyway: the trainer's write probe fails as on a read-only mount
        def refuse(*args, **kwargs):
            raise PermissionError(errno.EROFS, os.strerror(errno.EROFS))

        monkeypatch.setattr(trainer_module, "tempfile", types.SimpleNamespace(TemporaryFile=refuse))
    try:
        code, _, err = zoo(capsys, "train", "gpt-clm", "--data", lm_corpus, "--run-dir", parent / "run", *TINY_ARGS)
    finally:
        parent.chmod(0o755)
    assert code == 2
    line = error_line(err)
    assert f"Cannot write the run directory {parent / 'run'}" in line and "another --run-dir" in line


# -- files the run writes ---------------------------------------------------------------------


def _strict_json(path):
    def reject(constant):
        raise ValueError(f"{path}: {constant} is not JSON")

    with open(path) as f:
        return json.load(f, parse_constant=reject)


def test_metrics_json_is_strict_json(healthy_run, tmp_path):
    assert _strict_json(healthy_run / "checkpoints" / "best" / "metrics.json")["loss"] > 0

    class NoSave:
        def save(self, model, directory):
            os.makedirs(directory)

    checkpoint = RecipeCheckpoint(NoSave(), str(tmp_path))
    checkpoint._save("last", {"loss": 1.5, "val_loss": float("nan"), "val_perplexity": float("inf")})
    assert _strict_json(tmp_path / "last" / "metrics.json") == {"loss": 1.5, "val_loss": None, "val_perplexity": None}


def test_tokenizer_files_are_world_readable(healthy_run):
    for directory in (healthy_run / "tokenizer", healthy_run / "checkpoints" / "last" / "tokenizer"):
        names = sorted(os.listdir(directory))
        assert "tokenizer.json" in names
        for name in names:
            assert (directory / name).stat().st_mode & 0o777 == 0o644, directory / name


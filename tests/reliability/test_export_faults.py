"""Export-side faults (issue #17): abandoned temporaries, file modes, strict metadata, and broken
or conflicting export directories reported in one line with exit status 2.

Uses the tiny shared exports (tests/zoo/test_export.py: shared_exports()) and one fresh
classifier export; corrupt copies live in tmp directories.
"""

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from tests.reliability.serving_helpers import ZOO
from tests.zoo.test_export import shared_exports
from trainers import cli
from zoo import export


@pytest.fixture(scope="module")
def exports():
    return shared_exports()[1]


@pytest.fixture(scope="module")
def fresh_export(exports, tmp_path_factory):
    """A classifier exported (under umask 022, with non-finite metrics) into a model directory
    holding the temporaries of killed, abandoned, recent and running exports."""
    recipe, model, _ = exports["classifier"]
    model_dir = tmp_path_factory.mktemp("faults") / "classifier"
    model_dir.mkdir()
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()  # its pid now names a process that has ended: a killed export's
    host = export._host_id()
    temporaries = {
        "killed": f".1.tmp-{host}-{finished.pid}-{'a' * 12}",
        "abandoned, older naming": ".2.tmp-0123456789ab",
        "recent, older naming": ".3.tmp-ba9876543210",
        "running": f".4.tmp-{host}-{os.getpid()}-{'b' * 12}",
        "another host's, recent": f".4.tmp-0badcafe-1-{'c' * 12}",
    }
    for name in temporaries.values():
        (model_dir / name / "variables").mkdir(parents=True)
        (model_dir / name / "saved_model.pb").write_bytes(b"half")
    two_days_ago = os.path.getmtime(model_dir) - 2 * 24 * 3600
    for root, _, files in os.walk(model_dir / temporaries["abandoned, older naming"]):
        for path in [root] + [os.path.join(root, f) for f in files]:
            os.utime(path, (two_days_ago, two_days_ago))
    umask = os.umask(0o022)
    try:
        path = recipe.export(
            model, str(model_dir / "5"), metrics={"loss": float("nan"), "perplexity": float("inf"), "accuracy": 0.5}
        )
    finally:
        os.umask(umask)
    return model_dir, path, temporaries


def test_temporaries_of_killed_exports_are_removed_by_the_next_export(fresh_export):
    model_dir, path, temporaries = fresh_export
    left = set(os.listdir(model_dir))
    assert left == {"5"} | {temporaries[k] for k in ("recent, older naming", "running", "another host's, recent")}
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))


def test_export_files_are_readable_by_everyone(fresh_export):
    _, path, _ = fresh_export
    modes = {}
    for root, directories, files in os.walk(path):
        for name in directories + files:
            full = os.path.join(root, name)
            modes[os.path.relpath(full, path)] = stat.S_IMODE(os.stat(full).st_mode)
    assert {"assets/vocab.txt", "assets/tokenizer.json", "assets/zoo_metadata.json", "saved_model.pb"} <= set(modes)
    wrong = {name: oct(mode) for name, mode in modes.items() if mode != (0o755 if os.path.isdir(os.path.join(path, name)) else 0o644)}
    assert not wrong


def test_export_metadata_is_strict_json(fresh_export):
    _, path, _ = fresh_export

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    with open(os.path.join(path, "assets", "zoo_metadata.json"), encoding="utf-8") as f:
        metadata = json.loads(f.read(), parse_constant=refuse)
    assert metadata["metrics"] == {"loss": None, "perplexity": None, "accuracy": 0.5}


def _copy(exports, name, tmp_path):
    return shutil.copytree(exports[name][2], tmp_path / name / "1")


def _one_error_line(text, command):
    lines = [line for line in text.splitlines() if line.strip()]
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in lines if line.startswith(f"zoo {command}: error: ")]
    assert len(errors) == 1, text[-3000:]
    return errors[0]


@pytest.mark.parametrize("content,problem", [(b'{"recipe": "gpt-clm", ', "is not valid JSON"), (b"[1, 2]", "not an object")])
def test_a_malformed_metadata_file_is_one_line_naming_it(exports, tmp_path, capsys, content, problem):
    copy = _copy(exports, "gpt-clm", tmp_path)
    metadata = copy / "assets" / "zoo_metadata.json"
    metadata.write_bytes(content)
    assert cli.main(["generate", str(copy), "def "]) == 2
    line = _one_error_line(capsys.readouterr().err, "generate")
    assert str(metadata) in line and problem in line and "re-export" in line
    with pytest.raises(ValueError, match="zoo_metadata.json"):
        export.read_metadata(str(copy))


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
def test_export_to_an_existing_version_directory_is_one_line(exports, tmp_path, capsys):
    recipe, model, _ = exports["classifier"]
    run_dir = tmp_path / "runs" / "classifier-tiny"
    recipe.save(model, str(run_dir / "checkpoints" / "best"))
    existing = tmp_path / "saved_models" / "classifier-tiny" / "1"
    existing.mkdir(parents=True)
    (existing / "keep.txt").write_text("mine")
    assert cli.main(["export", str(run_dir), "--out", str(existing)]) == 2
    line = _one_error_line(capsys.readouterr().err, "export")
    assert str(existing) in line and "already exists" in line and "--out" in line
    assert os.listdir(existing) == ["keep.txt"]


def test_a_truncated_saved_model_pb_is_one_line_naming_it(exports, tmp_path):
    copy = _copy(exports, "gpt-clm", tmp_path)
    graph = copy / "saved_model.pb"
    with open(graph, "r+b") as f:
        f.truncate(graph.stat().st_size // 2)
    result = subprocess.run([ZOO, "generate", str(copy), "def "], capture_output=True, text=True, timeout=180)
    assert result.returncode == 2, result.stderr[-3000:]
    line = _one_error_line(result.stderr, "generate")
    assert f"{graph}: is truncated or corrupt; re-export the model" in line


@pytest.mark.parametrize("file", ["variables/variables.data-00000-of-00001", "variables/variables.index"])
def test_a_truncated_variables_file_is_one_line_naming_it(exports, tmp_path, capsys, file):
    copy = _copy(exports, "gpt-clm", tmp_path)
    with open(copy / file, "r+b") as f:
        f.truncate(os.path.getsize(copy / file) // 2)
    assert cli.main(["generate", str(copy), "def "]) == 2
    line = _one_error_line(capsys.readouterr().err, "generate")
    assert f"{copy}/variables/: is truncated, corrupt or missing" in line and "re-export" in line

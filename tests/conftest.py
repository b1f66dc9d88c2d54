"""Shared fixtures. Tokenizers are cached in a per-session directory, so tests never depend on
(or write to) the user's ~/.cache/zoo; subprocesses inherit it through ZOO_CACHE_DIR."""

import os
import shutil
import sysconfig
import tempfile

import pytest

_CACHE = tempfile.mkdtemp(prefix="zoo-test-cache-")
os.environ["ZOO_CACHE_DIR"] = _CACHE
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# A small, fixed slice of the standard library: a real corpus that trains a tokenizer in seconds.
_LM_FILES = [
    "argparse.py", "bisect.py", "calendar.py", "colorsys.py", "copy.py", "csv.py", "dataclasses.py",
    "difflib.py", "fnmatch.py", "fractions.py", "functools.py", "glob.py", "heapq.py", "keyword.py",
    "linecache.py", "locale.py", "numbers.py", "operator.py", "pprint.py", "queue.py", "random.py",
    "sched.py", "shlex.py", "statistics.py", "string.py", "textwrap.py", "token.py", "types.py",
    "uuid.py", "weakref.py",
]


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def lm_corpus(tmp_path_factory):
    """A directory of 30 standard-library modules (a local-files LM source)."""
    directory = tmp_path_factory.mktemp("lm_corpus")
    stdlib = sysconfig.get_paths()["stdlib"]
    for name in _LM_FILES:
        shutil.copy(os.path.join(stdlib, name), directory / name)
    return str(directory)


@pytest.fixture(scope="session")
def classification_csv(tmp_path_factory):
    """A CSV with an easy 2-class task: function-word texts vs number texts."""
    import csv
    import random

    rng = random.Random(0)
    animals = ["cat", "dog", "horse", "sheep", "goat", "lion", "tiger", "bear", "wolf", "fox"]
    tools = ["hammer", "saw", "drill", "wrench", "chisel", "pliers", "spanner", "file", "plane", "vise"]
    path = tmp_path_factory.mktemp("classification") / "data.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for index in range(600):
            label = "animal" if index % 2 else "tool"
            words = rng.sample(animals if label == "animal" else tools, 3)
            writer.writerow([f"the {words[0]} and a {words[1]} near {words[2]}", label])
    return str(path)

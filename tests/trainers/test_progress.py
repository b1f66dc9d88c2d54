"""Status lines, progress modes and the live stderr filter; `zoo train` into a pipe end to end."""

import io
import os
import re
import subprocess
import sys
import time

import pytest

from trainers import progress
from trainers.quiet import import_tensorflow, live_filtered_stderr

DONE = re.compile(r"^\[zoo\] (.+) \.\.\. done in (\d+\.\d) s$")


def test_a_phase_prints_its_start_and_its_duration(capsys):
    with progress.phase("preparing data") as current:
        time.sleep(0.05)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "[zoo] preparing data ..."
    name, seconds = DONE.match(lines[1]).groups()
    assert name == "preparing data" and len(lines) == 2
    assert float(seconds) == pytest.approx(current.seconds, abs=0.051) and current.seconds >= 0.05


def test_a_failed_phase_says_so_and_the_error_propagates(capsys):
    with pytest.raises(KeyError):
        with progress.phase("building the model"):
            raise KeyError("x")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "[zoo] building the model ..."
    assert lines[1].startswith("[zoo] building the model ... stopped after ")


def test_a_disabled_phase_is_silent_but_still_timed(capsys):
    with progress.phase("validation", enabled=False) as current:
        pass
    assert capsys.readouterr().err == "" and current.seconds >= 0


def test_a_status_can_start_below_an_unfinished_line(capsys):
    progress.Phase("validation").start(new_line=True)
    assert capsys.readouterr().err == "\n[zoo] validation ...\n"


class _Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_auto_progress_is_the_bar_on_a_terminal_and_lines_elsewhere():
    assert progress.resolve_progress("auto", _Stream(True)) == "bar"
    assert progress.resolve_progress("auto", _Stream(False)) == "lines"
    closed = io.StringIO()
    closed.close()  # isatty() raises on a closed stream
    assert progress.resolve_progress("auto", closed) == "lines"
    assert progress.resolve_progress("bar", _Stream(False)) == "bar"
    assert progress.resolve_progress("lines", _Stream(True)) == "lines"
    with pytest.raises(ValueError, match="auto, bar, lines"):
        progress.resolve_progress("dots")


@pytest.mark.parametrize("seconds, text", [(0.04, "0.0 s"), (3.21, "3.2 s"), (59.94, "59.9 s"), (125, "2 min 05 s"),
                                           (3725, "1 h 02 min")])
def test_durations(seconds, text):
    assert progress.format_duration(seconds) == text


@pytest.mark.parametrize("seconds, text", [(7.9, "0:07"), (247, "4:07"), (3723, "1:02:03")])
def test_elapsed_clock(seconds, text):
    assert progress.format_elapsed(seconds) == text


def test_the_live_filter_drops_native_noise_and_forwards_the_rest(capfd):
    with live_filtered_stderr():
        os.write(2, b"E0000 util.cc:131] oneDNN supports DT_INT64 only on platforms with AVX-512. Falling back\n")
        os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on. You may see slightly different\n")
        # TensorFlow 2.21's CUDA probe on a machine without a GPU, as it prints it.
        os.write(2, b"E0000 00:00:1796255602.569335   14891 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
                    b"CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n")
        os.write(2, b"a real error from C++\n")
        # One write with its newline: under capfd, sys.stderr writes straight to pytest's file
        # (print would make two writes), while the native lines reach it from the forwarder
        # thread, which may land between them. Outside pytest the block's stderr is
        # line-buffered, so a line is one write there too.
        sys.stderr.write("a Python message\n")
    os.write(2, b"after the block\n")
    err = capfd.readouterr().err
    assert "oneDNN" not in err and "cuInit" not in err
    for line in ("a real error from C++", "a Python message", "after the block"):
        assert line in err.splitlines()


def test_the_live_filter_forwards_a_partial_line_while_the_block_runs(capfd):
    with live_filtered_stderr():
        os.write(2, b"waiting for input")
        time.sleep(0.6)  # the forwarder passes a partial line on after 0.2 s of quiet
        assert capfd.readouterr().err == "waiting for input"
        os.write(2, b" ... done\n")
    assert capfd.readouterr().err == " ... done\n"


def test_importing_tensorflow_again_prints_nothing(capsys):
    """The status lines are for the wait of the first import (checked in a new process by
    `test_zoo_train_into_a_pipe_prints_lines_and_status`); a command run in a process that has
    TensorFlow already (the in-process CLI tests) prints no empty phase."""
    import tensorflow as tf

    assert import_tensorflow() is tf
    assert capsys.readouterr().err == ""


# The tokenizer trained as in `zoo train`: inside the live stderr filter, which holds fd 2 (a
# pipe) and points sys.stderr at the real stderr.
_TRAIN_A_TOKENIZER = """
from trainers.quiet import live_filtered_stderr
from zoo.data.tokenizer import train_tokenizer

texts = [f"def f{i}(x):\\n    return x * {i} + {i % 7}\\n" for i in range(3000)]
with live_filtered_stderr():
    train_tokenizer(texts, 400, kind="bpe")
print("the end")
"""


@pytest.mark.slow
def test_tokenizer_training_draws_its_progress_bars_on_a_terminal():
    """stderr a terminal (a pseudo-terminal here), stdout a pipe: the `tokenizers` bars reach the
    terminal between the `[zoo]` status lines, through the live filter, and none of their
    newlines lands on stdout. (Into a file or a pipe there are no bars: test_tokenizer.py.)"""
    import pty
    import select

    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-c", _TRAIN_A_TOKENIZER], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=terminal)
    os.close(terminal)
    shown, deadline = b"", time.monotonic() + 300
    while time.monotonic() < deadline:
        if not select.select([controller], [], [], 1.0)[0]:
            continue
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    out = process.stdout.read()
    assert process.wait(timeout=60) == 0, shown[-3000:]
    assert out == b"the end\n"
    text = shown.decode(errors="replace").replace("\r\n", "\n")
    phase = r"\[zoo\] training a byte-level BPE vocabulary \(400 tokens\) on \d+\.\d MB of text"
    start = re.search(phase + r" \.\.\.\n", text)
    assert start, text[-3000:]
    bars = text.index("Compute merges", start.end())  # the last of the BPE trainer's bars
    assert re.search(phase + r" \.\.\. done in \d+\.\d s\n", text[bars:]), text[-3000:]


TINY = [
    "--set", "vocabulary_size=400", "--set", "num_layers=1", "--set", "hidden_dim=32", "--set", "num_heads=2",
    "--set", "intermediate_dim=64", "--set", "validation_steps=2", "--seq-len", "32", "--batch-size", "8",
]


@pytest.mark.slow
def test_zoo_train_into_a_pipe_prints_lines_and_status(lm_corpus, tmp_path):
    """stdout to a pipe (as in CI or nohup): one line per --log-every steps and one per epoch
    instead of progress-bar redraws; every slow phase, the TensorFlow import and the tokenizer
    included, has its status lines on stderr; no oneDNN notes."""
    command = [sys.executable, "-c", "import sys; from trainers.cli import main; sys.exit(main())", "train", "gpt-clm",
               "--data", lm_corpus, "--epochs", "2", "--set", "steps_per_epoch=6", "--log-every", "2",
               "--run-dir", str(tmp_path / "run"), *TINY]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out, err = result.stdout, result.stderr
    assert "\r" not in out and "\b" not in out and "━" not in out
    training = out[: out.index("\nFinished step")].splitlines()
    assert [line.split(" - ")[0] for line in training] == [
        "step 2/12", "step 4/12", "step 6/12", "epoch 1/2", "step 8/12", "step 10/12", "step 12/12", "epoch 2/2",
    ]
    assert all(" - loss: " in line and " - elapsed: " in line for line in training)
    for line in training:
        fields = ("learning_rate", "grad_norm") if line.startswith("step") else ("val_loss", "val_bits_per_byte")
        assert all(f" - {field}: " in line for field in fields), line

    lines = err.splitlines()
    # The tokenizer's own status, within "preparing data": trained (start and end lines), or
    # found in the session's cache when an earlier test trained the same one (one line).
    tokenizer = [index for index, line in enumerate(lines)
                 if re.match(r"\[zoo\] (training a|loaded the) byte-level BPE vocabulary \(400 tokens\)", line)]
    assert len(tokenizer) in (1, 2), err
    assert lines.index("[zoo] preparing data ...") < tokenizer[0] <= tokenizer[-1] < next(
        index for index, line in enumerate(lines) if line.startswith("[zoo] preparing data ... done in "))
    lines = [line for index, line in enumerate(lines) if index not in tokenizer]
    finished = [DONE.match(line).group(1) for line in lines if DONE.match(line)]
    for name in set(finished):
        assert f"[zoo] {name} ..." in lines  # each phase also says when it starts
    # "(tracing)" without XLA (--xla auto on a CPU), "(tracing and XLA compilation)" with it.
    finished = [re.sub(r" \(tracing.*\)$", "", name) for name in finished]
    epoch = ["validation", "saving checkpoints/last", "saving checkpoints/best"]
    # The TensorFlow import first: the longest silence of the start before it had its lines.
    start = ["importing TensorFlow", "preparing data", "building the model", "first training step"]
    # The second epoch's validation loss need not improve (then no new best checkpoint).
    assert finished in (start + epoch + epoch, start + epoch + epoch[:2])
    for noise in ("oneDNN", "cuInit", "cuda drivers", "absl::InitializeLog", "Traceback"):
        assert noise not in err
    assert "never reaches its peak" in err  # the warm-up warning (warmup_steps=100 > 12 steps) stays

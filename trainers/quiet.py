"""Start and run TensorFlow without the native log noise it prints on a CPU-only machine.

TensorFlow 2.21 writes lines such as "Could not find cuda drivers on your machine", "failed
call to cuInit" and "oneDNN custom operations are on" from C++ before absl logging is
initialised, so TF_CPP_MIN_LOG_LEVEL alone does not silence them, and at error level (which
that variable must keep showing) "oneDNN supports DT_INT64 only on platforms with AVX-512"
when a pipeline first runs. Two filters on file descriptor 2 pass through every line that is
not known noise, so real errors stay visible:

- `filtered_native_stderr()` buffers what is written during a short block (import, device
  probe) and writes the kept lines afterwards;
- `live_filtered_stderr()` forwards the kept lines as they come, for a long block such as a
  training run, where status lines and real errors must not wait for the end. Python's own
  writes to `sys.stderr` bypass it (they are never native noise) and keep their order with
  stdout.

Neither changes what TensorFlow computes: oneDNN stays on, only its notes are dropped.

`import_tensorflow()` also says what the command is waiting for: TensorFlow's import took
5-9 s on a shared 2-core machine (`bench/cli_startup.py`), the longest silence of a command's
start, so it prints status lines around it (`trainers.progress.phase`).
"""

import contextlib
import io
import os
import re
import select
import sys
import tempfile
import threading

from trainers.progress import phase

_NOISE = re.compile(
    "|".join(
        [
            r"All log messages before absl::InitializeLog\(\) is called",
            r"cudart_stub\.cc",
            r"Could not find cuda drivers",
            r"failed call to cuInit",
            r"cuda_platform\.cc",
            r"cuda_executor\.cc",
            r"oneDNN custom operations are on",
            r"cpu_feature_guard\.cc",
            r"To enable the following instructions",
            r"rebuild TensorFlow with the appropriate compiler flags",
            r"Unable to register cu(DNN|FFT|BLAS) factory",
            r"computation placer already registered",
            r"oneDNN supports DT_INT64 only on platforms with AVX-512",
        ]
    )
)


def is_noise(line):
    return bool(_NOISE.search(line))


@contextlib.contextmanager
def filtered_native_stderr():
    """Within the block, fd 2 goes to a buffer; non-noise lines are written back afterwards."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace").splitlines(True) if not is_noise(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def _write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


def _kept(lines):
    return b"".join(line for line in lines if not is_noise(line.decode(errors="replace")))


def _forward(read_fd, write_fd, idle_seconds=0.2):
    """Copies the lines read from `read_fd` to `write_fd`, without the noise, until end of file.
    A partial line (no newline yet) is passed on once nothing more has come for `idle_seconds`:
    native log lines arrive whole, so it cannot be the start of one."""
    pending = b""
    try:
        while True:
            if not select.select([read_fd], [], [], idle_seconds)[0]:
                if pending:
                    _write_all(write_fd, pending)
                    pending = b""
                continue
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            _write_all(write_fd, _kept(line + b"\n" for line in lines))
        _write_all(write_fd, _kept([pending]))
    except OSError:  # the destination was closed: nothing left to forward to
        pass


@contextlib.contextmanager
def live_filtered_stderr():
    """Within the block, native writes to fd 2 pass through a thread that drops the noise lines
    and forwards the rest at once. `sys.stderr`, when it is the process's own stderr, is pointed
    at the real destination for the block, so Python's messages are not delayed or reordered."""
    sys.stderr.flush()
    saved = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    forwarder = threading.Thread(target=_forward, args=(read_fd, saved), name="stderr-filter", daemon=True)
    forwarder.start()
    python_stderr = sys.stderr
    direct = None
    if python_stderr is sys.__stderr__ and python_stderr is not None:
        direct = io.TextIOWrapper(
            io.FileIO(os.dup(saved), "w"), encoding=python_stderr.encoding, errors="backslashreplace",
            line_buffering=True,
        )
        sys.stderr = direct
    try:
        yield
    finally:
        if direct is not None:
            # Left open: a logging handler created in the block may hold it (it writes to a
            # duplicate of the real stderr, so it stays right).
            direct.flush()
            sys.stderr = python_stderr
        os.dup2(saved, 2)  # closes the pipe's write end: the thread reads to the end and stops
        forwarder.join(timeout=5)
        if not forwarder.is_alive():  # else a subprocess still holds the pipe: leave both fds to the thread
            os.close(read_fd)
            os.close(saved)


def import_tensorflow(probe_devices=True, status=True):
    """`import tensorflow` and keras without the start-up noise; returns tensorflow.

    With `probe_devices`, TensorFlow also initialises its devices here (the CUDA probe). Leave it
    off when a multi-worker strategy is still to be created: that must come before any device
    initialisation; create it inside `filtered_native_stderr()` instead.

    With `status`, a status line on stderr when the import starts and one with its duration
    (`[zoo] importing TensorFlow ... done in 7.9 s`), unless TensorFlow is imported already
    (then there is nothing to wait for). The lines are written outside the filter's buffer, so
    the first one shows at once.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with phase("importing TensorFlow", enabled=status and "tensorflow" not in sys.modules):
        with filtered_native_stderr():
            import keras  # noqa: F401 - imported here so its TensorFlow import is filtered too
            import tensorflow as tf

            if probe_devices:
                tf.config.list_physical_devices()
    return tf

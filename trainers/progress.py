"""Status lines for the slow phases of a run, and how `zoo train` shows its progress.

A phase (importing TensorFlow, preparing the data, building the model, the first training step,
a validation pass, saving a checkpoint, an export) prints one line on stderr when it starts and
one with its duration when it ends, so a run is never silent for long and a log file says where
the time went:

    [zoo] preparing data ...
    [zoo] preparing data ... done in 3.2 s

Two lines rather than one growing line: other output (the tokenizer's own status lines and
progress bars, warnings) can come between them without garbling either. Nothing here imports
TensorFlow. `zoo.data.tokenizer` writes its status lines in the same style without importing
this module (the `zoo` package does not import `trainers`).

Progress modes (`--progress`): `bar` is Keras' progress bar, redrawn in place, for a terminal;
`lines` is one line per logging interval and one per epoch (`callbacks.ProgressLines`), for a
file or a pipe, where the bar's redraws would only pile up; `auto` picks `bar` when stdout is a
terminal and `lines` otherwise.
"""

import contextlib
import sys
import time

PREFIX = "[zoo]"
PROGRESS_MODES = ("auto", "bar", "lines")


def resolve_progress(mode, stream=None):
    """`bar` or `lines`: `mode` itself, or for `auto` whether `stream` (stdout) is a terminal."""
    if mode not in PROGRESS_MODES:
        raise ValueError(f"Unknown progress mode {mode!r}; expected one of {', '.join(PROGRESS_MODES)}.")
    if mode != "auto":
        return mode
    stream = sys.stdout if stream is None else stream
    try:
        return "bar" if stream.isatty() else "lines"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return "lines"


def format_duration(seconds):
    """A duration for a status line: `0.4 s`, `12.3 s`, `2 min 05 s`, `1 h 02 min`."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    seconds = int(round(seconds))
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def format_elapsed(seconds):
    """Wall time since a run began, as a clock: `0:07`, `4:07`, `1:02:03`."""
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def status(message, new_line=False):
    """Writes `[zoo] message` as one line on stderr (`sys.stderr` as it is now) and flushes it.

    `new_line`: end the current line first, for a status printed while Keras' progress bar
    holds an unfinished line on the same terminal."""
    stream = sys.stderr
    stream.write(("\n" if new_line else "") + f"{PREFIX} {message}\n")
    stream.flush()


class Phase:
    """One phase with a start line and an end line; `phase()` is the usual way to use it.

    `start()` prints `[zoo] <name> ...`; `done()` prints `[zoo] <name> ... done in <duration>`
    and returns the seconds; `failed()` says how long it ran before an error. With `enabled`
    False nothing is printed, but `seconds` is still measured.
    """

    def __init__(self, name, enabled=True):
        self.name = name
        self.enabled = enabled
        self.seconds = None
        self._start = None

    def start(self, new_line=False):
        self._start = time.perf_counter()
        self.seconds = None
        if self.enabled:
            status(f"{self.name} ...", new_line=new_line)
        return self

    @property
    def running(self):
        return self._start is not None

    def done(self, note=""):
        self.seconds = time.perf_counter() - self._start
        self._start = None
        if self.enabled:
            status(f"{self.name} ... done in {format_duration(self.seconds)}{note}")
        return self.seconds

    def failed(self):
        self.seconds = time.perf_counter() - self._start
        self._start = None
        if self.enabled:
            status(f"{self.name} ... stopped after {format_duration(self.seconds)}")
        return self.seconds


@contextlib.contextmanager
def phase(name, enabled=True, new_line=False):
    """Status lines around a block: `with phase("saving checkpoints/last"): ...`.

    Yields the `Phase` (its `seconds` hold the duration afterwards). An exception, including
    KeyboardInterrupt, prints `... stopped after <duration>` and propagates.
    """
    current = Phase(name, enabled).start(new_line=new_line)
    try:
        yield current
    except BaseException:
        current.failed()
        raise
    current.done()

"""Errors of a training run, split by what the user has to do about them.

`RunSetupError` (a ValueError, so `zoo` prints it as one line and exits 2, like a bad argument):
something in the command or the run directory must be fixed before training can start: an
unreadable `config.json` or `backup.json`, a run directory that cannot be written, data with too
few examples. `TrainingError`: training started and could not go on (the loss diverged, a backup
could not be written); `zoo` prints one line and exits 1. Both messages name the file or step and
say what to do next.
"""


class RunSetupError(ValueError):
    """The run cannot start: a file of the run directory, or its data, must be fixed first."""


class TrainingError(RuntimeError):
    """Training stopped on a fault; the message says what was saved and how to resume."""


class TrainingDiverged(TrainingError):
    """The loss or the weights became NaN or infinite; nothing after `last_good_step` was saved.

    Attributes:
        step: the global step at which the fault was seen.
        last_good_step: the step of the newest backup, which a rerun resumes from (0: none).
    """

    def __init__(self, message, step, last_good_step):
        super().__init__(message)
        self.step = step
        self.last_good_step = last_good_step


class BackupWriteError(TrainingError):
    """A step backup could not be written (disk full, I/O error); the previous one is intact."""


class CheckpointWriteError(TrainingError):
    """An epoch checkpoint could not be written; the previous one is intact."""

"""Errors raised by the data layer, each naming what went wrong and how to fix it."""

import os


class MissingCorpusError(FileNotFoundError):
    """A built-in corpus is not installed on this machine.

    Args:
        source: the corpus name, e.g. `"python-docs"`.
        path: the file or directory that was expected.
        install_command: the exact shell command that installs the corpus.
    """

    def __init__(self, source, path, install_command):
        self.source = source
        self.path = str(path)
        self.install_command = install_command
        super().__init__(
            f"The '{source}' corpus is not installed: {self.path} does not exist. "
            f"Install it with: {install_command}"
        )

    def __reduce__(self):
        return (type(self), (self.source, self.path, self.install_command))


class DataFormatError(ValueError):
    """A row of a user's data file is malformed.

    The message reads like a compiler error, `data.csv:17: expected columns text,label,
    got id,body`, so editors and terminals can jump to the line.

    Args:
        path: the file that holds the bad row.
        line: 1-based line number of the row (for CSV, the line on which the record
            ends, which is the line itself unless a quoted field spans lines).
        detail: what is wrong with the row.
    """

    def __init__(self, path, line, detail):
        self.path = os.fspath(path)
        self.line = int(line)
        self.detail = detail
        super().__init__(f"{self.path}:{self.line}: {detail}")

    def __reduce__(self):
        return (type(self), (self.path, self.line, self.detail))


class NotEnoughDataError(ValueError):
    """A split holds no document or example to build a dataset from.

    Raised by the pipelines, which do not know the source: callers that do (the trainer) re-raise
    it naming the source and split.
    """

"""Writing an export directory all at once: a hidden sibling, renamed into place when complete."""

import contextlib
import json
import math
import os
import shutil
import uuid


@contextlib.contextmanager
def new_directory(path):
    """Yields a temporary directory beside `path` that becomes `path` when the block ends.

    `path` must not exist (FileExistsError): exports are never overwritten. If the block
    raises, the temporary directory is removed and `path` is left absent.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.lexists(path):
        raise FileExistsError(f"Export directory {path!r} already exists; exports are never overwritten: give another --out.")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    temporary = os.path.join(parent, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:12]}")
    os.makedirs(temporary)
    try:
        yield temporary
        if os.path.lexists(path):  # another export took the name meanwhile
            raise FileExistsError(f"Export directory {path!r} appeared while exporting; nothing was overwritten.")
        os.rename(temporary, path)
    finally:
        if os.path.isdir(temporary):
            shutil.rmtree(temporary, ignore_errors=True)


def write_json(path, value):
    """`value` as indented, strict JSON (a non-finite float is written as null), with a final newline."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as file:
        json.dump(_finite(value), file, indent=2, ensure_ascii=False, allow_nan=False)
        file.write("\n")


def _finite(value):
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_json(path):
    """A JSON file's value; ValueError naming the file when it is missing or not JSON."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing.")
    with open(path, encoding="utf-8") as file:
        try:
            return json.load(file)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error.msg}, line {error.lineno}).") from None

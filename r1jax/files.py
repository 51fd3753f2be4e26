"""Files that a kill must never leave half-written (summaries, findings, data chunks, provenance)."""
from __future__ import annotations

import json
import os
import pathlib

import numpy as np


def write_json_atomically(path: str | os.PathLike, data, *, indent: int | None = None) -> None:
    """Write JSON to a temporary name, then rename: a reader (or a resumed run) never sees half a file.

    numpy scalars are written as numbers.
    """
    path = pathlib.Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w") as file:
        json.dump(data, file, ensure_ascii=False, indent=indent, default=_to_builtin)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def _to_builtin(value):
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")

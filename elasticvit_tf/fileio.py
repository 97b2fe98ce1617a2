"""Crash-safe file writes: every JSON report, state file and table this project writes goes
through here, so a process killed mid-write never leaves a truncated file behind.

A write goes to a temporary file in the destination's folder, is flushed (and fsync'ed where
asked), then renamed over the destination with ``os.replace`` (atomic on POSIX and Windows).
No TensorFlow import.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import IO, Any, Callable, Optional, Union

PathLike = Union[str, os.PathLike]


def write_atomic(
    path: PathLike, write: Callable[[IO], Any], binary: bool = False, fsync: bool = False
) -> None:
    """Calls ``write(f)`` on a temporary file next to ``path`` (its folder created when
    missing), then renames it over ``path``; on any error the temporary file is removed and
    ``path`` is left as it was."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path), suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path: PathLike, text: str, fsync: bool = False) -> None:
    """Writes ``text`` to ``path`` atomically."""
    write_atomic(path, lambda f: f.write(text), fsync=fsync)


def write_json_atomic(
    path: PathLike,
    obj: Any,
    indent: Optional[int] = 2,
    sort_keys: bool = False,
    default: Optional[Callable[[Any], Any]] = None,
    fsync: bool = False,
) -> None:
    """Writes ``obj`` as JSON (a trailing newline when indented) to ``path`` atomically. The
    text is built with one ``json.dumps`` (several times faster than ``json.dump`` to a file)."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=default)
    write_text_atomic(path, text + "\n" if indent is not None else text, fsync=fsync)

"""Writing batch outputs: failures become one-line errors, checked before hours of prediction."""

from __future__ import annotations

import os
from pathlib import Path

from core.config import atomic_write_bytes
from core.errors import InferenceError


def _cannot_write(path: Path, exc: OSError) -> InferenceError:
    return InferenceError(f"Cannot write {path}: {exc.strerror or exc}; choose a folder you may write to "
                          "on a disk with free space.")


def write_output(path: Path, data: bytes) -> None:
    """Atomically write an output file (the folder is created)."""
    try:
        atomic_write_bytes(Path(path), data)
    except OSError as exc:
        raise _cannot_write(Path(path), exc) from exc


def check_writable(path: Path, *, folder: bool = False) -> None:
    """Create the folder that will hold ``path`` (or ``path`` itself for a folder) and check it can be
    written, so a batch does not fail at the very end."""
    path = Path(path)
    target = path if folder else path.parent
    try:
        if not folder and path.is_dir():
            raise IsADirectoryError(21, "it is a folder, not a file")
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cannot_write(path, exc) from exc
    if not os.access(target, os.W_OK | os.X_OK):
        raise InferenceError(f"Cannot write {path}: the folder {target} is read-only for you; choose another.")

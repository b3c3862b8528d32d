"""Which files a batch prediction runs on: explicit files as given, folders searched recursively."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from core.data.images import is_image_file
from core.errors import DataError


def find_images(inputs: Iterable[Path]) -> list[Path]:
    """Image files under ``inputs``, in a stable order, without duplicates.

    A file named explicitly is always included (a broken one is then reported by the batch); inside
    folders only files with an image suffix or a DICOM marker are taken, hidden files and folders are
    skipped, and symbolic links to folders are not followed.
    """
    found: list[Path] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            found.append(path)

    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            for folder, subfolders, names in os.walk(path, followlinks=False):
                subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
                for name in sorted(names):
                    candidate = Path(folder) / name
                    if not name.startswith(".") and candidate.is_file() and is_image_file(candidate):
                        add(candidate)
        elif path.is_file():
            add(path)
        else:
            raise DataError(f"{path}: no such file or folder; check the path.")
    return found

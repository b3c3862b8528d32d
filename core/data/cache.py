"""Preprocessed-image cache: decode and resize each image once, then reuse it across runs.

An entry is keyed by the SHA-256 of the file's bytes, the frame (multi-frame DICOM) and the settings
that shape the uint8 tensor (resize, crop size, fundus crop, local contrast, pipeline version), so a
changed file or changed settings simply miss. Mean and std
are applied later by ``normalize`` and are deliberately not part of the key. Entries are plain ``.npy``
arrays read with ``allow_pickle=False``; an entry that is unreadable or has the wrong shape is rebuilt.
Hashing a file costs far less than decoding it, which is what makes a warm cache fast.

The entries are decoded copies of patient images, so they live only where the caller says: the hospital
home's image cache (``HospitalHome.image_cache``) for a hospital, a federation's own folder for a
coordinator. There is no default folder: ``cache_dir=None`` keeps nothing on disk. Measuring and clearing
a cache folder (core.home.image_cache_usage, clear_image_cache) needs no torch, so the app can do it.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from core.data.dataset import Sample
from core.data.images import ImageFile, ImageReadError, open_image
from core.data.preprocess import Preprocessing, resize_crop
from core.errors import DataError
from core.jobs import NEVER_CANCELLED, CancelToken, ProgressFn, no_progress

CACHE_VERSION = 2
"""Bump when decoding or resizing changes, so old entries are not reused. 2: VOI LUT and palette
decoding, frames of multi-frame files, the fundus crop."""

UNLABELLED = -1
"""Label stored for samples without one (e.g. images to diagnose)."""


def cache_key(content_sha256: str, spec: Preprocessing, frame: int | None = None) -> str:
    settings = f"v{CACHE_VERSION}|{spec.cache_settings()}"
    if frame is not None:
        settings += f"|frame={frame}"
    return hashlib.sha256(f"{content_sha256}|{settings}".encode()).hexdigest()


def load_tensors(samples: list[Sample], spec: Preprocessing, *, cache_dir: Path | None = None,
                 progress: ProgressFn = no_progress,
                 cancel: CancelToken = NEVER_CANCELLED) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, 3, S, S] and int64 labels [N] (UNLABELLED where a sample has none).

    A file that cannot be decoded raises DataError naming it: callers pass the validated samples
    (``ValidationReport.usable_samples``), in which every file decoded once already. ``cache_dir``:
    where decoded copies are kept and reused (the hospital home's image cache); None keeps none.
    """
    folder = Path(cache_dir) if cache_dir is not None else None
    size = spec.size
    images = torch.empty((len(samples), 3, size, size), dtype=torch.uint8)
    labels = torch.tensor([UNLABELLED if s.label is None else int(s.label) for s in samples], dtype=torch.int64)
    done_this_run: dict[str, int] = {}  # the same content twice is decoded once
    hits = 0
    # The frames of one file are consecutive samples: its bytes, hash and parsed header are kept for the
    # next frame instead of being read again.
    last: tuple[Path, bytes, str] | None = None
    opened: ImageFile | None = None
    for index, sample in enumerate(samples):
        cancel.check()
        progress(index / max(len(samples), 1), f"Loading {sample.name}")
        path = Path(sample.path)
        if last is None or last[0] != path:
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise DataError(f"{path.name}: cannot be read ({exc.strerror or exc}); run "
                                "'dopamine inspect' on the dataset.") from exc
            last, opened = (path, data, hashlib.sha256(data).hexdigest()), None
        _, data, digest = last
        key = cache_key(digest, spec, sample.frame)
        if key in done_this_run:
            images[index] = images[done_this_run[key]]
            continue
        entry = folder / key[:2] / f"{key}.npy" if folder is not None else None
        cached = _read_entry(entry, size) if entry is not None else None
        if cached is not None:
            images[index] = cached
            hits += 1
        else:
            try:
                if opened is None:
                    opened = open_image(data, path.name)
                tensor = resize_crop(opened.frame(sample.frame or 0), spec)
            except ImageReadError as exc:
                raise DataError(f"{exc} Run 'dopamine inspect' on the dataset to list every bad file.") from exc
            images[index] = tensor
            if entry is not None:
                _write_entry(entry, tensor.numpy())
        done_this_run[key] = index
    progress(1.0, f"Loaded {len(samples)} images ({hits} from cache)")
    return images, labels


def _read_entry(entry: Path, size: int) -> torch.Tensor | None:
    try:
        array = np.load(entry, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None  # missing, truncated or corrupt: rebuild it
    if array.dtype != np.uint8 or array.shape != (3, size, size):
        return None
    return torch.from_numpy(np.ascontiguousarray(array))


def _write_entry(entry: Path, array: np.ndarray) -> None:
    """Temp file + rename, so readers never see half an entry; no fsync, since a lost entry is rebuilt."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(buffer.getvalue())
            os.replace(tmp, entry)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError:
        pass  # a read-only or full disk only costs speed; the tensor is already in memory

"""Decode and resize images into uint8 rows [3, S, S], in this process or in a small pool of processes.

The first pass over a large collection is decode-bound (a 256 px PNG costs about 4 ms here, hashing it
0.05 ms), so ``core.data.cache`` hands chunks of files to a ``ProcessPoolExecutor`` of
``decode_workers()`` processes. The workers run only this module's ``decode_chunk``: numpy, Pillow and
core.data.images/preprocess (whose torch import is lazy), never torch, so a worker starts in a fraction
of a second and costs tens of MB, not hundreds. Processes are started with "spawn": the caller may be a
training process with torch's thread pools or a GUI process with Qt threads, which a fork would copy
half-locked.

A worker reads its files itself (checking each still has the content its cache key was made from), writes
the per-image cache entries and, when the collection goes to a stack file, its rows there by positional
writes: the calling process only hashes, hands out chunks and waits, so the workers get the cores. A file
that does not decode comes back as (sample index, message) and not as an exception: the caller raises the
DataError naming the file, the same as when it decodes in its own process.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import tempfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.data.images import ImageInfo, ImageReadError, open_image
from core.data.preprocess import Preprocessing, prepare
from core.errors import DataError
from core.jobs import NEVER_CANCELLED, CancelToken

MAX_WORKERS = 4
"""More decode processes than this buys little on a desktop and costs memory (each holds a chunk)."""

CHUNK_FILES = 16
CHUNK_BYTES = 16 << 20
"""A chunk is at most this many files or encoded bytes: small enough that cancelling waits a fraction of a
second for the chunks in flight, large enough that the pool's per-task overhead (about 1 ms) is noise."""
POOL_MIN_FILES = 64
"""Fewer files than this are decoded in the calling process: starting the pool costs about 0.2-0.5 s."""
POOL_WAIT_S = 0.2
"""How often a pool's caller looks at the cancel token while it waits for results."""


def decode_workers() -> int:
    """How many decode processes a large first pass uses: the cores this process may run on, at most
    MAX_WORKERS."""
    try:
        cores = len(os.sched_getaffinity(0))  # a container or taskset may allow fewer than cpu_count
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_WORKERS))


def image_rows(image, spec: Preprocessing) -> np.ndarray:  # image: PIL.Image.Image
    """The preprocessed image as a C-contiguous uint8 array [3, S, S]: the bytes of resize_crop's tensor."""
    array = np.asarray(prepare(image, spec).image, dtype=np.uint8)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


@dataclass(frozen=True)
class DecodeTask:
    """One file to decode: its frames, the sample index (row) each fills, and each frame's cache key. The
    worker reads the file itself and checks it still has the content the keys were made from."""

    path: str
    digest: str
    frames: tuple[int, ...]
    rows: tuple[int, ...]
    keys: tuple[str, ...]

    @property
    def name(self) -> str:
        return Path(self.path).name


@dataclass(frozen=True)
class ChunkOutput:
    """Where a worker puts what it decodes: per-image entries into ``cache_dir`` (None: none), rows into
    the stack being written at ``stack`` (rows of ``row_bytes`` after ``offset`` bytes), or, without a stack,
    back to the caller."""

    cache_dir: str | None = None
    stack: str | None = None
    offset: int = 0
    row_bytes: int = 0


def decode_error_message(exc: Exception) -> str:
    return f"{exc} Run 'dopamine inspect' on the dataset to list every bad file."


def read_checked(path: Path, digest: str) -> bytes:
    """The file's bytes, which must still be those its cache key was made from."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path.name}: cannot be read ({exc.strerror or exc}); run "
                        "'dopamine inspect' on the dataset.") from exc
    if hashlib.sha256(data).hexdigest() != digest:
        raise DataError(f"{path.name} changed while the images were being loaded; start again.")
    return data


def decode_chunk(spec: Preprocessing, tasks: list[DecodeTask],
                 output: ChunkOutput) -> tuple[list[tuple[int, np.ndarray | None]], tuple[int, str] | None]:
    """Decode ``tasks`` in order (in a worker process): ([(row, image or None when written to the stack)],
    None), or the rows done before the first bad file and (its row, the message naming it)."""
    done: list[tuple[int, np.ndarray | None]] = []
    fd = os.open(output.stack, os.O_WRONLY | getattr(os, "O_BINARY", 0)) if output.stack is not None else -1
    try:
        for task in tasks:
            try:
                opened = open_image(read_checked(Path(task.path), task.digest), task.name)
                for frame, row, key in zip(task.frames, task.rows, task.keys, strict=True):
                    array = image_rows(opened.frame(frame), spec)
                    if output.cache_dir is not None:
                        write_entry(entry_path(Path(output.cache_dir), key), array)
                    if fd >= 0:
                        write_at(fd, array, output.offset + row * output.row_bytes)
                        done.append((row, None))
                    else:
                        done.append((row, array))
            except ImageReadError as exc:
                return done, (task.rows[0], decode_error_message(exc))
            except DataError as exc:  # unreadable, changed, or found by the preprocessing (no pixels)
                message = str(exc)
                return done, (task.rows[0], message if task.name in message else f"{task.name}: {message}")
    finally:
        if fd >= 0:
            os.close(fd)
    return done, None


# -- files ------------------------------------------------------------------------------------------

def entry_path(folder: Path, key: str) -> Path:
    """A per-image cache entry: <2 hex digits>/<key>.npy."""
    return folder / key[:2] / f"{key}.npy"


def write_entry(entry: Path, array: np.ndarray) -> None:
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
        pass  # a read-only or full disk only costs speed; the image is already in hand


def write_at(fd: int, array: np.ndarray, position: int) -> None:
    """Write ``array``'s bytes at ``position`` of the open file ``fd`` (positional: safe beside other writers)."""
    data = np.ascontiguousarray(array, dtype=np.uint8).reshape(-1).data
    written = 0
    while written < len(data):
        if hasattr(os, "pwrite"):
            written += os.pwrite(fd, data[written:], position + written)
        else:  # Windows: this fd is this process's own, so seek + write does not interleave
            os.lseek(fd, position + written, os.SEEK_SET)
            written += os.write(fd, data[written:])


# -- validation: check files in order ---------------------------------------------------------------

@dataclass(frozen=True)
class FileCheck:
    """What validation learns from fully decoding one file (core.data.validation.validate): its SHA-256,
    or why it could not be read; its header and frame sizes, or the decode error; and per frame decoded,
    the fundus disc search when asked."""

    digest: str | None = None
    read_error: str | None = None
    info: ImageInfo | None = None
    sizes: tuple[tuple[int, int], ...] = ()
    searches: tuple[Any, ...] = ()  # core.data.fundus.DiscSearch per frame, in order
    error_kind: str | None = None
    error: str | None = None


def check_file(path: str, *, max_frames: int, fundus: bool, skip: set[str] | None = None,
               cancel: CancelToken = NEVER_CANCELLED) -> FileCheck:
    """Read, hash and fully decode ``path``; a file whose digest is in ``skip`` is only hashed."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return FileCheck(read_error=str(exc.strerror or exc))
    digest = hashlib.sha256(data).hexdigest()
    if skip is not None and digest in skip:
        return FileCheck(digest)
    sizes: list[tuple[int, int]] = []
    searches: list[Any] = []
    try:
        opened = open_image(data, Path(path).name, max_frames=max_frames)
        for image in opened.frames():
            cancel.check()
            if fundus:
                from core.data.fundus import find_disc

                searches.append(find_disc(image))
            sizes.append(image.size)
    except ImageReadError as exc:
        return FileCheck(digest, searches=tuple(searches), error_kind=exc.kind, error=str(exc))
    return FileCheck(digest, info=opened.info, sizes=tuple(sizes), searches=tuple(searches))


def check_files(paths: list[str], max_frames: int, fundus: bool) -> list[FileCheck]:
    """check_file for each of ``paths`` (in a worker process)."""
    return [check_file(path, max_frames=max_frames, fundus=fundus) for path in paths]


def checked_in_pool(paths: list[str], *, max_frames: int, fundus: bool, workers: int,
                    cancel: CancelToken) -> Iterator[FileCheck]:
    """check_file of every path, in order, from ``workers`` processes (at most two chunks each in flight).
    Close the iterator (contextlib.closing) to stop the pool early; cancelling stops it too."""
    import multiprocessing

    chunks = iter([paths[start:start + CHUNK_FILES] for start in range(0, len(paths), CHUNK_FILES)])
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    queue: deque[tuple[list[str], Future]] = deque()
    try:
        for chunk in itertools.islice(chunks, 2 * workers):
            queue.append((chunk, executor.submit(check_files, chunk, max_frames, fundus)))
        while queue:
            chunk, future = queue.popleft()
            while True:
                cancel.check()
                try:
                    results = future.result(timeout=POOL_WAIT_S)
                    break
                except TimeoutError:
                    continue
                except BrokenProcessPool as exc:
                    names = ", ".join(Path(p).name for p in chunk)
                    raise DataError(f"The image checker stopped while reading one of {names}; move these files "
                                    "aside and check them one by one.") from exc
            following = next(chunks, None)
            if following is not None:
                queue.append((following, executor.submit(check_files, following, max_frames, fundus)))
            yield from results
    finally:
        executor.shutdown(wait=True, cancel_futures=True)

"""Preprocessed-image cache: decode and resize each image once, then reuse it across runs.

Two layers, both in the folder the caller names:

- per image: ``<2 hex>/<key>.npy``, keyed by the SHA-256 of the file's bytes, the frame (multi-frame DICOM)
  and the settings that shape the uint8 tensor (resize, crop size, fundus crop, local contrast, pipeline
  version), so a changed file or changed settings simply miss and an added image costs one decode. Mean
  and std are applied later by ``normalize`` and are deliberately not part of the key. Entries are plain
  ``.npy`` arrays read with ``allow_pickle=False``; an entry that is unreadable or has the wrong shape is
  rebuilt. Hashing a file costs far less than decoding it, which is what makes a warm cache fast.
- per data set, for collections of at least STACK_MIN_BYTES decoded: ``stacks/<key>.stack``, one uint8
  ``.npy``-format file [N, 3, S, S] keyed by the ordered list of the samples' keys. A warm start opens it
  and reads nothing else; training reads it a batch at a time (core.data.store.ImageStore), so a 35,000-image
  hospital trains in bounded memory. It is written under a temporary name, synced, then renamed, so a
  reader never sees half of one; a stack whose header or length is wrong is rebuilt (from the per-image
  entries: no decoding). Only the MAX_STACKS most recently used are kept (a new split makes a new stack).

The first pass decodes in a small process pool (core.data.decode) when there are at least POOL_MIN_IMAGES
images to decode; fewer are decoded here, where pool start-up would cost more than it saves.

The entries are decoded copies of patient images, so they live only where the caller says: the hospital
home's image cache (``HospitalHome.image_cache``) for a hospital, a federation's own folder for a
coordinator. There is no default folder: ``cache_dir=None`` keeps nothing on disk (then the images are held
in memory). Measuring and clearing a cache folder (core.home.image_cache_usage, clear_image_cache) needs
no torch, so the app can do it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import torch

from core.data.dataset import Sample
from core.data.decode import (
    CHUNK_BYTES,
    CHUNK_FILES,
    POOL_MIN_FILES,
    POOL_WAIT_S,
    ChunkOutput,
    DecodeTask,
    decode_chunk,
    decode_error_message,
    decode_workers,
    entry_path,
    image_rows,
    read_checked,
    write_at,
    write_entry,
)
from core.data.images import ImageFile, ImageReadError, open_image
from core.data.preprocess import Preprocessing
from core.data.store import ImageStore
from core.errors import DataError
from core.jobs import NEVER_CANCELLED, CancelToken, ProgressFn, no_progress

log = logging.getLogger("dopamine.data")

CACHE_VERSION = 2
"""Bump when decoding or resizing changes, so old entries are not reused. 2: VOI LUT and palette
decoding, frames of multi-frame files, the fundus crop."""

UNLABELLED = -1
"""Label stored for samples without one (e.g. images to diagnose)."""

STACKS = "stacks"
STACK_SUFFIX = ".stack"
STACK_MIN_BYTES = 128 << 20
"""Collections smaller than this decoded (about 890 images at 224 px) are held in memory, as they always
were; larger ones, given a cache folder, are read from a stack file a batch at a time."""
MAX_STACKS = 4
"""Stacks kept per cache folder (a training run makes two: training and validation)."""
STALE_TEMP_S = 6 * 3600
"""A stack's temporary file this old belongs to a build that died; newer ones may be another process's."""

POOL_MIN_IMAGES = POOL_MIN_FILES
"""Fewer images to decode than this are decoded in this process: starting the pool costs more than it saves."""


def cache_key(content_sha256: str, spec: Preprocessing, frame: int | None = None) -> str:
    settings = f"v{CACHE_VERSION}|{spec.cache_settings()}"
    if frame is not None:
        settings += f"|frame={frame}"
    return hashlib.sha256(f"{content_sha256}|{settings}".encode()).hexdigest()


def stack_key(keys: list[str], spec: Preprocessing) -> str:
    """The key of the stack holding exactly these entries, in this order."""
    digest = hashlib.sha256(f"stack|v{CACHE_VERSION}|{spec.cache_settings()}|{len(keys)}".encode())
    for key in keys:
        digest.update(key.encode())
    return digest.hexdigest()


def load_tensors(samples: list[Sample], spec: Preprocessing, *, cache_dir: Path | None = None,
                 progress: ProgressFn = no_progress, cancel: CancelToken = NEVER_CANCELLED,
                 workers: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, 3, S, S] and int64 labels [N] (UNLABELLED where a sample has none), all in memory.

    A file that cannot be decoded raises DataError naming it: callers pass the validated samples
    (``ValidationReport.usable_samples``), in which every file decoded once already. ``cache_dir``:
    where decoded copies are kept and reused (the hospital home's image cache); None keeps none.
    ``workers``: decode processes (None: decode_workers() for a large first pass; 1: this process).
    Training code uses ``load_images``, which does not hold a large collection in memory.
    """
    images, labels = load_images(samples, spec, cache_dir=cache_dir, progress=progress, cancel=cancel,
                                 workers=workers)
    try:
        return images.to_tensor(), labels
    finally:
        images.close()


def load_images(samples: list[Sample], spec: Preprocessing, *, cache_dir: Path | None = None,
                progress: ProgressFn = no_progress, cancel: CancelToken = NEVER_CANCELLED,
                workers: int | None = None, on_disk: bool | None = None) -> tuple[ImageStore, torch.Tensor]:
    """``load_tensors``'s images as an ImageStore: read a batch at a time from a stack file in ``cache_dir``
    (``on_disk``: None when the collection is at least STACK_MIN_BYTES decoded, True always, False never;
    never without a cache folder), otherwise held in memory. ``store.decoded`` says how many were decoded."""
    folder = Path(cache_dir) if cache_dir is not None else None
    count, size = len(samples), spec.size
    labels = torch.tensor([UNLABELLED if s.label is None else int(s.label) for s in samples], dtype=torch.int64)
    keys, digests = _sample_keys(samples, spec, progress, cancel)
    stack_path = None
    wanted = on_disk if on_disk is not None else count * 3 * size * size >= STACK_MIN_BYTES
    if folder is not None and wanted and count > 0:
        stack_path = folder / STACKS / f"{stack_key(keys, spec)}{STACK_SUFFIX}"
        found = _open_stack(stack_path, count, size)
        if found is not None:
            progress(1.0, f"Loaded {count} images (all from cache)")
            return found, labels
    target = _target(stack_path, count, size)
    try:
        decoded, hits = _fill(target, samples, spec, keys, digests, folder, workers, progress, cancel)
        store = target.finish()
    except BaseException:
        target.abort()
        raise
    if stack_path is not None and store.on_disk:
        _evict_stacks(stack_path.parent, keep=stack_path)
    store.decoded = decoded
    progress(1.0, f"Loaded {count} images ({hits} from cache)")
    return store, labels


# -- keys -------------------------------------------------------------------------------------------

def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path.name}: cannot be read ({exc.strerror or exc}); run "
                        "'dopamine inspect' on the dataset.") from exc


def _sample_keys(samples: list[Sample], spec: Preprocessing, progress: ProgressFn,
                 cancel: CancelToken) -> tuple[list[str], list[str]]:
    """Each sample's cache key and its file's SHA-256 (the frames of one file are consecutive: read once)."""
    keys: list[str] = []
    digests: list[str] = []
    last: tuple[Path, str] | None = None
    for index, sample in enumerate(samples):
        cancel.check()
        path = Path(sample.path)
        if last is None or last[0] != path:
            if index % 64 == 0:
                progress(0.1 * index / max(len(samples), 1), f"Reading {sample.name}")
            last = (path, hashlib.sha256(_read(path)).hexdigest())
        digests.append(last[1])
        keys.append(cache_key(last[1], spec, sample.frame))
    return keys, digests


# -- filling the images -----------------------------------------------------------------------------

def _fill(target: _Target, samples: list[Sample], spec: Preprocessing, keys: list[str], digests: list[str],
          folder: Path | None, workers: int | None, progress: ProgressFn, cancel: CancelToken) -> tuple[int, int]:
    """Put every sample's image into ``target``: from the per-image cache, else decoded. (decoded, hits)."""
    size = spec.size
    first_of: dict[str, int] = {}  # the same content twice is decoded once
    copies: list[tuple[int, int]] = []
    todo: list[int] = []
    hits = 0
    total = max(len(samples), 1)
    for index, key in enumerate(keys):
        if key in first_of:
            copies.append((index, first_of[key]))
            continue
        first_of[key] = index
        cached = _read_entry(entry_path(folder, key), size) if folder is not None else None
        if cached is not None:
            target.put(index, cached)
            hits += 1
            if hits % 64 == 0:
                cancel.check()
                progress(0.1 + 0.9 * index / total, f"Loading {samples[index].name}")
        else:
            todo.append(index)

    def store(index: int, array: np.ndarray) -> None:
        target.put(index, array)
        if folder is not None:
            write_entry(entry_path(folder, keys[index]), array)

    def report(done: int) -> None:
        progress(0.1 + 0.9 * (hits + done) / total, f"Decoded {done} of {len(todo)} images")

    tasks = list(_tasks(samples, todo))
    pool_size = workers if workers is not None else decode_workers()
    if pool_size > 1 and (len(todo) >= POOL_MIN_IMAGES or (workers is not None and todo)):
        output = target.output(folder)
        _decode_in_pool(_chunks(tasks, samples, digests, keys), spec, output, pool_size, target.put, report, cancel)
    else:
        _decode_here(tasks, samples, spec, digests, store, report, cancel)
    for index, source in copies:
        target.copy(index, source)
    return len(todo), hits


def _tasks(samples: list[Sample], todo: list[int]) -> Iterator[tuple[Path, list[int]]]:
    """The samples to decode grouped by file (its frames are consecutive samples): (path, sample indices)."""
    group: list[int] = []
    for index in todo:
        if group and Path(samples[group[0]].path) != Path(samples[index].path):
            yield Path(samples[group[0]].path), group
            group = []
        group.append(index)
    if group:
        yield Path(samples[group[0]].path), group


def _decode_here(tasks: list[tuple[Path, list[int]]], samples: list[Sample], spec: Preprocessing,
                 digests: list[str], store, report, cancel: CancelToken) -> None:
    done = 0
    for path, indices in tasks:
        data = read_checked(path, digests[indices[0]])
        opened: ImageFile | None = None
        for index in indices:
            cancel.check()
            try:
                if opened is None:
                    opened = open_image(data, path.name)
                array = image_rows(opened.frame(samples[index].frame or 0), spec)
            except ImageReadError as exc:
                raise DataError(decode_error_message(exc)) from exc
            except DataError as exc:  # found by the preprocessing (e.g. no pixels): name the file
                raise DataError(f"{path.name}: {exc}") from exc
            store(index, array)
            done += 1
            if done % 16 == 0:
                report(done)


def _chunks(tasks: list[tuple[Path, list[int]]], samples: list[Sample], digests: list[str],
            keys: list[str]) -> Iterator[list[DecodeTask]]:
    """Chunks of at most CHUNK_FILES files and (by their size on disk) CHUNK_BYTES."""
    chunk: list[DecodeTask] = []
    held = 0
    for path, indices in tasks:
        chunk.append(DecodeTask(str(path), digests[indices[0]], tuple(samples[i].frame or 0 for i in indices),
                                tuple(indices), tuple(keys[i] for i in indices)))
        try:
            held += path.stat().st_size
        except OSError:
            pass  # the worker reports it
        if len(chunk) >= CHUNK_FILES or held >= CHUNK_BYTES:
            yield chunk
            chunk, held = [], 0
    if chunk:
        yield chunk


def _decode_in_pool(chunks: Iterator[list[DecodeTask]], spec: Preprocessing, output: ChunkOutput, workers: int,
                    put, report, cancel: CancelToken) -> None:
    """Decode ``chunks`` in ``workers`` processes; at most two chunks per worker are in flight. Rows the
    workers did not write to the stack themselves come back and go to ``put``. Cancelling or a bad file
    stops the pool: the chunks not started are dropped and the ones running (a fraction of a second each)
    are waited for, so no worker writes to the stack after this returns."""
    import multiprocessing

    executor = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    chunk_of: dict[Future, list[DecodeTask]] = {}
    pending: set[Future] = set()
    done = 0
    try:
        while True:
            cancel.check()
            for chunk in chunks:
                future = executor.submit(decode_chunk, spec, chunk, output)
                chunk_of[future] = chunk
                pending.add(future)
                if len(pending) >= 2 * workers:
                    break
            if not pending:
                break
            finished, pending = wait(pending, timeout=POOL_WAIT_S, return_when=FIRST_COMPLETED)
            for future in finished:
                chunk = chunk_of.pop(future)
                try:
                    rows, error = future.result()
                except BrokenProcessPool as exc:
                    names = ", ".join(task.name for task in chunk)
                    raise DataError(f"The image decoder stopped while decoding one of {names}; run "
                                    "'dopamine inspect' on the dataset.") from exc
                for index, array in rows:
                    if array is not None:
                        put(index, array)
                done += len(rows)
                if error is not None:
                    raise DataError(error[1])
            report(done)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


# -- where the images go ----------------------------------------------------------------------------

class _Target:
    def put(self, index: int, array: np.ndarray) -> None:
        raise NotImplementedError

    def output(self, cache_dir: Path | None) -> ChunkOutput:
        """What decode workers write themselves (entries into ``cache_dir``; rows, where a file takes them)."""
        return ChunkOutput(cache_dir=str(cache_dir) if cache_dir is not None else None)

    def copy(self, index: int, source: int) -> None:
        raise NotImplementedError

    def finish(self) -> ImageStore:
        raise NotImplementedError

    def abort(self) -> None:
        """Drop what was written (nothing for memory)."""


class _InMemory(_Target):
    def __init__(self, count: int, size: int) -> None:
        self.images = torch.empty((count, 3, size, size), dtype=torch.uint8)

    def put(self, index: int, array: np.ndarray) -> None:
        self.images[index] = torch.from_numpy(array)

    def copy(self, index: int, source: int) -> None:
        self.images[index] = self.images[source]

    def finish(self) -> ImageStore:
        return ImageStore.in_memory(self.images)


class _StackFile(_Target):
    """A stack being written: rows go to a temporary file by positional writes (never mapped, so writing
    5 GB does not make this process 5 GB), which is synced and renamed into place by finish()."""

    def __init__(self, path: Path, count: int, size: int) -> None:
        self.path, self.count, self.size = path, count, size
        self.row_bytes = 3 * size * size
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
        os.close(fd)
        self.tmp = Path(tmp)
        try:
            # The header (and the file's full length) from numpy itself; no page of the map is touched.
            header = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.uint8, shape=(count, 3, size, size))
            self.offset = int(header.offset)
            del header
            self.fd = os.open(self.tmp, os.O_RDWR | getattr(os, "O_BINARY", 0))
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise

    def put(self, index: int, array: np.ndarray) -> None:
        assert array.nbytes == self.row_bytes
        write_at(self.fd, array, self.offset + index * self.row_bytes)

    def output(self, cache_dir: Path | None) -> ChunkOutput:
        return ChunkOutput(cache_dir=str(cache_dir) if cache_dir is not None else None, stack=str(self.tmp),
                           offset=self.offset, row_bytes=self.row_bytes)

    def copy(self, index: int, source: int) -> None:
        row = np.empty((3, self.size, self.size), dtype=np.uint8)
        view = row.reshape(-1).data
        position = self.offset + source * self.row_bytes
        got = 0
        while got < len(view):
            if hasattr(os, "preadv"):
                got += os.preadv(self.fd, [view[got:]], position + got)
            else:
                os.lseek(self.fd, position + got, os.SEEK_SET)
                chunk = os.read(self.fd, len(view) - got)
                view[got:got + len(chunk)] = chunk
                got += len(chunk)
        self.put(index, row)

    def finish(self) -> ImageStore:
        # Synced before the rename: after a crash the name holds a whole stack or nothing (an unsynced
        # file can survive a power cut at full length with zeros inside, which no header check would see).
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        try:
            os.replace(self.tmp, self.path)
        except OSError as exc:  # Windows: another process has the old stack open; train from this copy
            log.warning("image cache: cannot replace %s (%s); using its new copy", self.path.name, exc)
            return ImageStore.from_file(self.tmp, offset=self.offset, count=self.count, size=self.size)
        return ImageStore.from_file(self.path, offset=self.offset, count=self.count, size=self.size)

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.tmp.unlink(missing_ok=True)


def _target(stack_path: Path | None, count: int, size: int) -> _Target:
    if stack_path is not None:
        try:
            return _StackFile(stack_path, count, size)
        except OSError as exc:  # a read-only or full disk: train from memory, as before
            log.warning("image cache: cannot write %s (%s); holding the images in memory", stack_path.name, exc)
    return _InMemory(count, size)


def _open_stack(path: Path, count: int, size: int) -> ImageStore | None:
    """The stack at ``path`` if it is whole and holds [count, 3, size, size] uint8; None to rebuild it."""
    try:
        header = np.load(path, mmap_mode="r", allow_pickle=False)  # parses and checks the header only
    except (OSError, ValueError, EOFError):
        return None  # missing, truncated or corrupt
    try:
        if (not isinstance(header, np.memmap) or header.dtype != np.uint8 or header.shape != (count, 3, size, size)
                or not header.flags.c_contiguous):
            return None
        offset = int(header.offset)
    finally:
        del header
    try:
        if path.stat().st_size != offset + count * 3 * size * size:
            return None
        store = ImageStore.from_file(path, offset=offset, count=count, size=size)
        os.utime(path)  # most recently used: the last to be evicted
    except OSError:
        return None
    return store


def _remove_stale_temps(folder: Path) -> None:
    now = time.time()
    for tmp in folder.glob(".*.tmp"):
        try:
            if now - tmp.stat().st_mtime > STALE_TEMP_S:
                tmp.unlink()
        except OSError:
            continue


def _evict_stacks(folder: Path, *, keep: Path) -> None:
    """Keep the MAX_STACKS most recently used stacks (``keep`` among them). A stack open elsewhere stays
    readable where it is open (POSIX); where the system refuses, it is left for next time."""
    stacks = []
    for path in folder.glob(f"*{STACK_SUFFIX}"):
        try:
            stacks.append((path.stat().st_mtime, path))
        except OSError:
            continue
    stacks.sort(reverse=True)
    for _, path in [s for s in stacks if s[1] != keep][MAX_STACKS - 1:]:
        try:
            path.unlink()
        except OSError:
            continue


# -- per-image entries ------------------------------------------------------------------------------

def _read_entry(entry: Path, size: int) -> np.ndarray | None:
    try:
        array = np.load(entry, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None  # missing, truncated or corrupt: rebuild it
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.shape != (3, size, size):
        return None
    return np.ascontiguousarray(array)

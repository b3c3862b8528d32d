"""uint8 images [N, 3, S, S] that training reads a batch at a time: in memory, or rows of a file on disk.

A hospital with 35,000 images at 224 px holds 5.3 GB of decoded pixels. Mapping that file and indexing
the map would be simple, but every page an epoch touches stays in the process's resident set: after one
epoch the process is as large as the data set. ``ImageStore`` reads the rows a batch needs with
positional reads (``preadv``) into a fresh buffer instead, so what stays resident is the batch; the
operating system's page cache still makes a second epoch read from memory, without it counting against
the process (the kernel reclaims it under pressure).

The file is a plain ``.npy`` (uint8, C order, no pickle; ``np.load(path, mmap_mode="r")`` opens it too),
written and validated by ``core.data.cache``. A store in memory wraps the tensor ``load_tensors`` would
return and indexes it exactly as the tensor would, so small collections train as before, bit for bit.

A store answers what the training code asks of an image tensor: ``len``, ``shape``, ``dtype`` and
indexing by an int, a slice, or an index tensor/array/list (a uint8 tensor comes back), plus ``subset``
(a view on some rows, nothing read) and ``dataset(labels)`` for a DataLoader.
"""

from __future__ import annotations

import os
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

READ_CHUNK_ROWS = 256
"""Rows per read when a whole store is copied into memory (to_tensor)."""


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


class _RowFile:
    """An open file of fixed-size rows after a header; reads are positional and thread-safe."""

    def __init__(self, path: Path, offset: int, row_bytes: int) -> None:
        self.path, self.offset, self.row_bytes = Path(path), offset, row_bytes
        self.fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self._lock = threading.Lock()  # only where there is no preadv (seek + read must not interleave)
        self._finalizer = weakref.finalize(self, _close_quietly, self.fd)

    def read_into(self, out: np.ndarray, first_row: int) -> None:
        """Fill ``out`` (C-contiguous, a whole number of rows) from row ``first_row`` on."""
        view = out.reshape(-1).data  # out is C-contiguous: a view, not a copy
        position = self.offset + first_row * self.row_bytes
        done = 0
        while done < len(view):
            if hasattr(os, "preadv"):
                count = os.preadv(self.fd, [view[done:]], position + done)
            else:  # Windows: no positional reads
                with self._lock:
                    os.lseek(self.fd, position + done, os.SEEK_SET)
                    chunk = os.read(self.fd, len(view) - done)
                view[done:done + len(chunk)] = chunk
                count = len(chunk)
            if count <= 0:
                raise OSError(f"{self.path.name} ended before row {first_row + done // self.row_bytes}; "
                              "clear the image cache in Settings and start again.")
            done += count

    def close(self) -> None:
        self._finalizer()


class ImageStore:
    """uint8 images [N, 3, S, S]; see the module docstring."""

    def __init__(self, tensor: torch.Tensor | None = None, *, file: _RowFile | None = None,
                 rows: np.ndarray | None = None, count: int = 0, size: int = 0) -> None:
        self._tensor = tensor
        self._file = file
        self._rows = rows  # file rows of this view, None: 0..count-1
        if tensor is not None:
            self._shape = torch.Size(tensor.shape)
        else:
            self._shape = torch.Size((count, 3, size, size))
        self.decoded = 0
        """How many images the load that made this store decoded (the rest came from the cache)."""

    @classmethod
    def in_memory(cls, tensor: torch.Tensor) -> ImageStore:
        if tensor.dtype != torch.uint8 or tensor.dim() != 4 or tensor.shape[1] != 3:
            raise ValueError(f"expected uint8 images [N, 3, S, S], got {tensor.dtype} {tuple(tensor.shape)}")
        return cls(tensor)

    @classmethod
    def from_file(cls, path: Path, *, offset: int, count: int, size: int) -> ImageStore:
        """Rows [3, size, size] of uint8 at byte ``offset`` of ``path`` (the file is opened now and kept open,
        so the name may be replaced or removed meanwhile)."""
        return cls(file=_RowFile(path, offset, 3 * size * size), count=count, size=size)

    # -- what a tensor answers ----------------------------------------------------------------------

    @property
    def shape(self) -> torch.Size:
        return self._shape

    @property
    def dtype(self) -> torch.dtype:
        return torch.uint8

    @property
    def on_disk(self) -> bool:
        return self._file is not None

    @property
    def path(self) -> Path | None:
        return self._file.path if self._file is not None else None

    def __len__(self) -> int:
        return int(self._shape[0])

    def __getitem__(self, index: Any) -> torch.Tensor:
        if self._tensor is not None:
            return self._tensor[index]
        if isinstance(index, int | np.integer) and not isinstance(index, bool):
            position = int(index)
            if not -len(self) <= position < len(self):
                raise IndexError(f"index {position} is out of range for {len(self)} images")
            return self._read(np.array([position % len(self)], dtype=np.int64))[0]
        if isinstance(index, slice):
            return self._read(np.arange(*index.indices(len(self)), dtype=np.int64))
        return self._read(self._positions(index))

    def subset(self, indices: Any) -> ImageStore:
        """The images at ``indices``, in that order. On disk a view (nothing is read); in memory a copy, as
        indexing the tensor was."""
        if self._tensor is not None:
            return ImageStore(self._tensor[indices])
        positions = self._positions(indices)
        rows = positions if self._rows is None else self._rows[positions]
        view = ImageStore(file=self._file, rows=rows, count=len(rows), size=int(self._shape[-1]))
        return view

    def to_tensor(self) -> torch.Tensor:
        """All the images in memory (as load_tensors returns them)."""
        if self._tensor is not None:
            return self._tensor
        out = torch.empty(tuple(self._shape), dtype=torch.uint8)
        for start in range(0, len(self), READ_CHUNK_ROWS):
            out[start:start + READ_CHUNK_ROWS] = self[start:start + READ_CHUNK_ROWS]
        return out

    def dataset(self, labels: torch.Tensor) -> Dataset[Any]:
        """(image, label) pairs for a DataLoader; one read per batch when on disk."""
        if self._tensor is not None:
            return TensorDataset(self._tensor, labels)
        return _StoreDataset(self, labels)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    # -- reading ----------------------------------------------------------------------------------

    def _positions(self, index: Any) -> np.ndarray:
        if isinstance(index, torch.Tensor):
            index = index.detach().cpu().numpy()
        positions = np.asarray(index)
        if positions.dtype == np.bool_:
            if positions.shape != (len(self),):
                raise IndexError(f"a mask of shape {positions.shape} does not fit {len(self)} images")
            return np.flatnonzero(positions).astype(np.int64)
        if positions.size == 0:
            return np.zeros(0, dtype=np.int64)
        if positions.ndim != 1 or not np.issubdtype(positions.dtype, np.integer):
            raise IndexError(f"images are indexed by an int, a slice or a 1-D list of ints, not {index!r:.80}")
        positions = positions.astype(np.int64)
        if positions.min() < -len(self) or positions.max() >= len(self):
            raise IndexError(f"an index is out of range for {len(self)} images")
        return positions % max(len(self), 1)

    def _read(self, positions: np.ndarray) -> torch.Tensor:
        assert self._file is not None
        size = int(self._shape[-1])
        out = np.empty((len(positions), 3, size, size), dtype=np.uint8)
        rows = positions if self._rows is None else self._rows[positions]
        # One read per run of consecutive rows: a slice or a sorted Poisson sample reads few times.
        start = 0
        while start < len(rows):
            end = start + 1
            while end < len(rows) and rows[end] == rows[end - 1] + 1:
                end += 1
            self._file.read_into(out[start:end], int(rows[start]))
            start = end
        return torch.from_numpy(out)


class _StoreDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """TensorDataset's (image, label) pairs over a store on disk; DataLoader fetches a batch with one call."""

    def __init__(self, images: ImageStore, labels: torch.Tensor) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        batch = self.images[np.asarray(indices, dtype=np.int64)]
        labels = self.labels[torch.as_tensor(indices, dtype=torch.int64)]
        return list(zip(batch.unbind(0), labels.unbind(0), strict=True))


ImageSource = torch.Tensor | ImageStore
"""What the training and evaluation code accepts as images: a uint8 tensor or a store."""

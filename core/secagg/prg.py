"""Mask expansion: AES-256-CTR keystreams from 32-byte seeds, added to ring vectors in place.

Every seed is used for exactly one stream (pairwise seeds are derived per round and pair, self
seeds are fresh per round), so a fixed all-zero initial counter block is safe. numpy's unsigned add
and subtract wrap modulo 2^bits, which is exactly the ring arithmetic we need.

Expansion and accumulation are fused: the vector is cut into cache-sized chunks, and for each chunk
every seed's keystream chunk is expanded into one small buffer and added to (or subtracted from) its
targets at once, so neither the keystream nor the target leaves the core's cache between the two and
nothing vector-sized is allocated. The chunks are split into contiguous ranges, one per core: a seed's
keystream at byte offset o (a multiple of 16) is AES-CTR started at counter block o / 16, so each
worker thread starts its own streams where its range begins. `cryptography` and numpy release the GIL
while they work, and addition mod 2^bits commutes, so the result is bit for bit that of one thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from core.errors import SecAggError
from core.secagg import cores

SEED_BYTES = 32
_AES_BLOCK = 16
# Keystream chunk: with the target chunks it touches it stays in a core's L2 cache.
CHUNK_BYTES = 1 << 17

# (seed, [(target vector, True to add the seed's mask / False to subtract it), ...])
MaskUse = tuple[bytes, Sequence[tuple[np.ndarray, bool]]]


def keystream(seed: bytes, offset: int = 0) -> CipherContext:
    """A streaming AES-256-CTR encryptor whose output on zero input is the mask for ``seed``,
    starting ``offset`` bytes (a multiple of 16) into it."""
    if len(seed) != SEED_BYTES:
        raise SecAggError("Mask seed must be 32 bytes; this is a software error.")
    if offset < 0 or offset % _AES_BLOCK:
        raise SecAggError("A keystream can only start at a whole AES block; this is a software error.")
    counter = (offset // _AES_BLOCK).to_bytes(_AES_BLOCK, "big")
    return Cipher(algorithms.AES(bytes(seed)), modes.CTR(counter)).encryptor()


class MaskExpander:
    """Adds and subtracts seed-expanded masks to ring vectors of one length and dtype, in place."""

    def __init__(self, length: int, dtype: np.dtype | type, *, workers: int | None = None) -> None:
        self.dtype = np.dtype(dtype)
        self.length = length
        self.workers = workers  # None: every core this process may use
        self._chunk = CHUNK_BYTES // self.dtype.itemsize  # elements; CHUNK_BYTES is a multiple of 16

    def apply(
        self,
        target: np.ndarray,
        add: Iterable[bytes] = (),
        subtract: Iterable[bytes] = (),
        *,
        start: np.ndarray | None = None,
    ) -> None:
        """target += mask(s) for s in add; target -= mask(s) for s in subtract (mod 2^bits, in place).

        With ``start``, target is first set to start, so it may begin uninitialised (np.empty).
        """
        uses: list[MaskUse] = [(seed, ((target, True),)) for seed in add]
        uses += [(seed, ((target, False),)) for seed in subtract]
        self.apply_many(uses, starts=() if start is None else ((target, start),))

    def apply_many(
        self, uses: Sequence[MaskUse], *, starts: Sequence[tuple[np.ndarray, np.ndarray]] = ()
    ) -> None:
        """For each (seed, targets): expand the seed's mask once and add or subtract it to each target.

        ``starts``: (target, source) pairs; each such target is first set to its source, chunk by chunk
        in the same pass (a fresh target's pages are then touched on every core, not by one copy).
        """
        for array in [target for _, targets in uses for target, _ in targets] + [a for pair in starts for a in pair]:
            if (
                not isinstance(array, np.ndarray)
                or array.dtype != self.dtype
                or array.shape != (self.length,)
                or not array.flags.c_contiguous
            ):
                raise SecAggError("Mask vector has the wrong size, type or layout; this is a software error.")
        if not all(target.flags.writeable for target in [t for _, ts in uses for t, _ in ts] + [t for t, _ in starts]):
            raise SecAggError("Mask target is read-only; this is a software error.")
        if uses or starts:
            chunks = -(-self.length // self._chunk)
            cores.split(
                lambda first, end: self._apply_range(uses, starts, first, end), chunks, workers=self.workers
            )

    def _apply_range(
        self,
        uses: Sequence[MaskUse],
        starts: Sequence[tuple[np.ndarray, np.ndarray]],
        first_chunk: int,
        end_chunk: int,
    ) -> None:
        chunk, itemsize = self._chunk, self.dtype.itemsize
        zeros = np.zeros(chunk * itemsize, np.uint8)
        buffer = np.empty(chunk * itemsize + _AES_BLOCK, np.uint8)  # update_into wants one spare block
        streams = [keystream(seed, first_chunk * chunk * itemsize) for seed, _ in uses]
        for index in range(first_chunk, end_chunk):
            start = index * chunk
            stop = min(start + chunk, self.length)
            nbytes = (stop - start) * itemsize
            mask = buffer[:nbytes].view(self.dtype)
            for target, source in starts:
                np.copyto(target[start:stop], source[start:stop])
            for stream, (_, targets) in zip(streams, uses, strict=True):
                # .data: cryptography types its buffers as bytes/bytearray/memoryview; the memory is the same.
                stream.update_into(zeros[:nbytes].data, buffer.data)
                for target, add in targets:
                    part = target[start:stop]
                    (np.add if add else np.subtract)(part, mask, out=part)

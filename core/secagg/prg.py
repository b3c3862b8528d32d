"""Mask expansion: AES-256-CTR keystreams from 32-byte seeds, added to ring vectors in place.

Every seed is used for exactly one stream (pairwise seeds are derived per round and pair, self
seeds are fresh per round), so a fixed all-zero counter block is safe. One keystream buffer is
reused for all masks, viewed as uint32/uint64 without copying; numpy's unsigned add and
subtract wrap modulo 2^bits, which is exactly the ring arithmetic we need.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from core.errors import SecAggError

SEED_BYTES = 32
_ZERO_COUNTER = bytes(16)
_AES_BLOCK = 16


def keystream(seed: bytes):
    """A streaming AES-256-CTR encryptor whose output on zero input is the mask for ``seed``."""
    if len(seed) != SEED_BYTES:
        raise SecAggError("Mask seed must be 32 bytes; this is a software error.")
    return Cipher(algorithms.AES(bytes(seed)), modes.CTR(_ZERO_COUNTER)).encryptor()


class MaskExpander:
    """Adds and subtracts seed-expanded masks to ring vectors of one length and dtype.

    Holds one zero input and one output buffer, so expanding K masks allocates nothing new.
    """

    def __init__(self, length: int, dtype: np.dtype | type) -> None:
        self.dtype = np.dtype(dtype)
        self.length = length
        nbytes = length * self.dtype.itemsize
        self._zeros = np.zeros(nbytes, np.uint8)  # calloc'd: costs no memory traffic
        self._buffer = np.empty(nbytes + _AES_BLOCK, np.uint8)  # update_into wants one spare block
        self._view = self._buffer[:nbytes].view(self.dtype)

    def expand(self, seed: bytes) -> np.ndarray:
        """The mask for ``seed``, valid until the next call (a view of the shared buffer)."""
        keystream(seed).update_into(self._zeros, self._buffer)
        return self._view

    def apply(self, target: np.ndarray, add: Iterable[bytes] = (), subtract: Iterable[bytes] = ()) -> None:
        """target += mask(s) for s in add; target -= mask(s) for s in subtract (mod 2^bits, in place)."""
        if target.dtype != self.dtype or target.shape != (self.length,):
            raise SecAggError("Mask target has the wrong size or type; this is a software error.")
        for seed in add:
            np.add(target, self.expand(seed), out=target)
        for seed in subtract:
            np.subtract(target, self.expand(seed), out=target)

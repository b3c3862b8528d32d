"""The one source of DP randomness: Poisson sampling, Gaussian noise and the augmentation tied to a
sampled batch, all from a cryptographic keystream.

Why not a seeded torch or numpy generator: torch's CPU generator (Mersenne Twister) keeps only the
low 32 bits of its seed, so whatever os.urandom supplied, a coordinator that knows the model can
try all 2^32 streams against a released sum and subtract the noise (issue #10, point 1). Here every
draw comes from AES-256-CTR keyed with 32 bytes from os.urandom: recovering the noise means
breaking AES-256, and seeing some outputs (a hospital's own flips, say) says nothing about others.
Each DPRandom uses one key for one stream (its counter runs from zero and only ever advances), so
the counter never repeats under a key.

Gaussian noise and the floating-point attack. A Gaussian sampled and added in floating point is
not the Gaussian the analysis assumes: which outputs x + z can take depends on the bits of x, and
an output that only one of two neighbouring inputs can produce gives the input away (Mironov 2012;
Jin et al. 2022). Opacus's answer (four Gaussians in the gradient's dtype, summed and halved)
makes that set denser but comes with no bound, and where x + z nearly cancels the result still
sits on a grid set by x's exponent. Here instead:

1. z is drawn in float64 by Box-Muller, the radius from a 63-bit uniform u1 in (0, 1] (finite
   log; the radius reaches 9.35 std) and the angle from a 53-bit one;
2. ``add_normal_`` forms x + z in float64, rounds it to a multiple of snap_grid(std) =
   2^(floor(log2 std) - 20), a power of two set by std alone (Mironov's snapping), and only then
   to the tensor's dtype.

The ideal mechanism, exact x plus an exact Gaussian rounded to that grid, is post-processing of
the Gaussian mechanism, so exactly as private, and its outputs carry nothing of x's bits. The
computed one differs from it only where a float64 error carries x + z across a cell boundary:
the sum's rounding (at most 2^-53 |x + z|) and Box-Muller's (a few ulps of z) stay below 2^-16
of a cell while |x + z| < 2^16 std (a sum of B clipped gradients has |x| / std <= B sqrt(m - t) /
sigma: inside for any realistic batch), so each output's probability is within a factor 1 +- 2^-15
of the ideal one. That holds while the radius grid is fine next to the Gaussian's mass, up to about 7.3 std
(all but 3e-13 of draws); the factor passes 1.3 only beyond about 8.5 std, mass 2e-17 per
coordinate (1e-11 per SqueezeNet step), which belongs in delta. The snapping itself moves a value
by at most std / 2^21, a millionth of the noise.

One DPRandom is not safe to share between threads (its stream position is state).
"""

from __future__ import annotations

import math
import os
from typing import NoReturn

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from core.errors import PrivacyError

KEY_BYTES = 32
# Noise is snapped to multiples of 2^(floor(log2 std) - SNAP_BITS) before the dtype's rounding.
SNAP_BITS = 20
_CHUNK_WORDS = 1 << 20  # 8 MiB of keystream per cipher call bounds the scratch memory
_AES_BLOCK = 16
_TWO_POW_M53 = 2.0**-53
_RADIUS_BITS = 63
_TWO_POW_M63 = 2.0**-63


def snap_grid(std: float) -> float:
    """The output grid of ``add_normal_`` for noise ``std`` (a power of two, std / 2^21 to std / 2^20)."""
    return math.ldexp(1.0, math.frexp(std)[1] - 1 - SNAP_BITS)


class DPRandom:
    """A cryptographically secure generator for everything differential privacy depends on.

    ``key``: 32 bytes; by default a fresh one from os.urandom. Pass one only in tests (the same
    key reproduces the same draws). Arrays returned are new (never views of internal buffers).
    """

    def __init__(self, key: bytes | None = None) -> None:
        if key is None:
            key = os.urandom(KEY_BYTES)
        if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
            raise PrivacyError("A DPRandom key must be 32 bytes; this is a software error.")
        self._encryptor = Cipher(algorithms.AES(bytes(key)), modes.CTR(bytes(_AES_BLOCK))).encryptor()
        self._zeros = np.zeros(0, np.uint8)
        self._buffer = np.empty(_AES_BLOCK, np.uint8)
        # Scratch tensors kept between draws: fresh multi-megabyte buffers cost page faults.
        self._scratch: dict[str, torch.Tensor] = {}

    def __repr__(self) -> str:
        return "DPRandom(<secret key>)"

    def __reduce__(self) -> NoReturn:
        # A copied generator would repeat the noise: refuse pickling (and so multiprocessing copies).
        raise TypeError("DPRandom cannot be pickled or copied: a copy would repeat its draws.")

    def _words(self, count: int) -> np.ndarray:
        """The next ``count`` (<= _CHUNK_WORDS) 64-bit keystream words, as a view of a shared buffer."""
        nbytes = 8 * count
        if self._zeros.size < nbytes:
            self._zeros = np.zeros(nbytes, np.uint8)  # calloc'd: no memory traffic
            self._buffer = np.empty(nbytes + _AES_BLOCK, np.uint8)  # update_into wants a spare block
        # .data: cryptography types its buffers as bytes/bytearray/memoryview; the arrays' memory is the same.
        self._encryptor.update_into(self._zeros.data[:nbytes], self._buffer.data)
        return self._buffer[:nbytes].view(np.uint64)

    def _buffer_for(self, name: str, size: int) -> torch.Tensor:
        buffer = self._scratch.get(name)
        if buffer is None or buffer.numel() < size:
            buffer = self._scratch[name] = torch.empty(size, dtype=torch.float64)
        return buffer[:size]

    def _integers(self, out: torch.Tensor, bits: int = 53) -> torch.Tensor:
        """Fill ``out`` (float64) with k uniform in [0, 2^bits), from the keystream's low ``bits``
        bits (rounded to float64's 53 bits when ``bits`` > 53)."""
        mask = (1 << bits) - 1
        count = out.numel()
        for start in range(0, count, _CHUNK_WORDS):
            size = min(_CHUNK_WORDS, count - start)
            words = torch.from_numpy(self._words(size).view(np.int64))
            out[start : start + size].copy_(words.bitwise_and_(mask))
        return out

    def uniform(self, n: int) -> np.ndarray:
        """``n`` float64 in [0, 1), each a multiple of 2^-53 with 53 random bits."""
        out = torch.empty(_count(n), dtype=torch.float64)
        return self._integers(out).mul_(_TWO_POW_M53).numpy()

    def _normal(self, n: int, std: float, out: torch.Tensor) -> torch.Tensor:
        """``out`` (float64, length n) filled with N(0, std^2) draws by Box-Muller; returns it."""
        pairs = (n + 1) // 2
        k = self._buffer_for("integers", 2 * pairs)
        # u1 = (k + 1) 2^-63 lies in (0, 1]: log(u1) <= 0 is finite, the radius at most 9.35 std,
        # and 63 bits (exact where u1 is small) keep the radius fine-grained far into the tail.
        radius = self._integers(k[:pairs], _RADIUS_BITS).add_(1.0).mul_(_TWO_POW_M63)
        radius.log_().mul_(-2.0).sqrt_().mul_(std)  # std**2 under the root could overflow
        angle = self._integers(k[pairs:]).mul_(2.0 * math.pi * _TWO_POW_M53)
        half = n - pairs  # the sine half is one shorter when n is odd
        torch.mul(torch.cos(angle, out=out[:pairs]), radius, out=out[:pairs])
        torch.mul(angle[:half].sin_(), radius[:half], out=out[pairs:])
        return out

    def normal(self, n: int, std: float) -> np.ndarray:
        """``n`` independent float64 N(0, std^2) draws."""
        n, std = _count(n), _std(std)
        if std == 0:
            return np.zeros(n)
        return self._normal(n, std, torch.empty(n, dtype=torch.float64)).numpy()

    def normal_like(self, t: torch.Tensor, std: float) -> torch.Tensor:
        """N(0, std^2) noise shaped like ``t`` (same dtype and device), drawn in float64.

        To noise a value, use add_normal_: it adds in float64 and snaps (module docstring).
        """
        std = _std(std)
        if std == 0:
            return torch.zeros_like(t)
        noise = self._normal(t.numel(), std, self._buffer_for("noised", t.numel()))
        return noise.view(t.shape).to(device=t.device, dtype=t.dtype, copy=True)

    def add_normal_(self, t: torch.Tensor, std: float) -> torch.Tensor:
        """``t += N(0, std^2)`` per coordinate, in place; returns ``t``.

        The sum is formed in float64 and rounded to multiples of snap_grid(std) before it is
        rounded to ``t``'s dtype, so the output's bits do not depend on ``t``'s (module docstring).
        """
        std = _std(std)
        if not t.is_floating_point():
            raise PrivacyError("Noise can only be added to floating-point tensors; this is a software error.")
        if std == 0 or t.numel() == 0:
            return t
        noised = self._normal(t.numel(), std, self._buffer_for("noised", t.numel()))
        noised.add_(t.detach().reshape(-1).cpu())  # float32 values are exact in float64
        grid = snap_grid(std)
        # Multiplying by a power of two is exact; round() picks the cell.
        noised.mul_(1.0 / grid).round_().mul_(grid)
        with torch.no_grad():
            t.copy_(noised.view(t.shape))
        return t

    def bernoulli(self, n: int, p: float) -> np.ndarray:
        """``n`` independent booleans, each True with probability ``p`` (to 2^-53)."""
        if not (isinstance(p, int | float) and 0 <= p <= 1):
            raise PrivacyError(f"A probability must be between 0 and 1 (got {p!r}).")
        return self.uniform(n) < p

    def poisson_sample(self, n: int, rate: float) -> torch.Tensor:
        """Indices (int64, ascending) of a Poisson sample of range(n): each kept with probability ``rate``."""
        if not (isinstance(rate, int | float) and 0 <= rate <= 1):
            raise PrivacyError(f"The sample rate must be between 0 and 1 (got {rate!r}).")
        keep = self.bernoulli(n, float(rate))
        return torch.from_numpy(np.flatnonzero(keep).astype(np.int64))


def _count(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise PrivacyError(f"The number of draws must be a whole number >= 0 (got {n!r}).")
    return int(n)


def _std(std: float) -> float:
    if isinstance(std, bool) or not isinstance(std, int | float) or not math.isfinite(std) or std < 0:
        raise PrivacyError(f"The noise standard deviation must be a number >= 0 (got {std!r}).")
    return float(std)

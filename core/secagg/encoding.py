"""Fixed-point encoding of float vectors in the ring Z_(2^bits), with stochastic rounding.

A value v is clipped to [-bound, bound], scaled by ``scale`` and rounded to floor(v*scale) or
floor(v*scale)+1 at random, with the probability that makes the rounding unbiased (up to the
2^-32 resolution of the random offsets and float64 spacing). The
randomness is an AES-256-CTR stream keyed by os.urandom, never numpy's or Python's generators.

No wrap-around: an encoded value has |e| <= bound*scale + 1, so the sum of K of them has
magnitude at most K*(bound*scale + 1) <= 2^(bits-1) - 1 whenever K <= spec.max_hospitals().
The signed reading of the ring sum is then the true integer sum, and decode() returns
sum/scale, within K quantization steps (K/scale) of the exact float sum (clipped values aside).

Choosing the bound for one DP-SGD step (see derive_encoding): the clipped gradient sum of B
examples, each clipped to L2 norm C, has every coordinate within C*B; Gaussian noise of std
sigma exceeds tail_sigmas*sigma with probability 2*Phi(-tail_sigmas) per coordinate (about 2.6e-12
at 7 sigma). Values past the bound are clipped (post-processing, so DP is unaffected) and counted.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import SecAggError
from core.secagg.prg import keystream

BITS = (32, 64)
# With 64 bits the float64 product v*scale must keep a fractional part for stochastic rounding
# to be meaningful: at 2^42 the float64 spacing is 2^-10 of a quantization step.
MAX_SCALED_BOUND_64 = 2.0**42


def ring_dtype(bits: int) -> np.dtype:
    return np.dtype(np.uint32 if bits == 32 else np.uint64)


@dataclass(frozen=True)
class FixedPoint:
    """How floats map to the ring: per-coordinate ``bound`` (clip) and ``scale`` (steps per unit)."""

    scale: float
    bound: float
    bits: int = 32

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or self.bits not in BITS:
            raise SecAggError(f"Secure aggregation supports 32 or 64 bits, not {self.bits!r}.")
        for name in ("scale", "bound"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise SecAggError(f"Fixed-point {name} must be a positive number, not {value!r}.")
        if self.max_hospitals() < 1:
            raise SecAggError(
                "Fixed-point scale is too large for the bound: one value would overflow the ring; "
                "use derive_encoding()."
            )

    @property
    def dtype(self) -> np.dtype:
        return ring_dtype(self.bits)

    def max_hospitals(self) -> int:
        """The most encoded vectors whose ring sum cannot wrap around."""
        return int((2 ** (self.bits - 1) - 1) // (self.bound * self.scale + 1))

    def to_dict(self) -> dict[str, Any]:
        return {"bits": self.bits, "scale": float(self.scale), "bound": float(self.bound)}

    @classmethod
    def from_dict(cls, data: Any) -> FixedPoint:
        if not isinstance(data, dict) or set(data) != {"bits", "scale", "bound"}:
            raise SecAggError("Invalid fixed-point encoding: expected exactly bits, scale and bound.")
        return cls(scale=data["scale"], bound=data["bound"], bits=data["bits"])


def derive_encoding(
    *,
    max_grad_norm: float,
    max_batch_size: int,
    noise_std: float,
    num_hospitals: int,
    bits: int = 32,
    tail_sigmas: float = 7.0,
) -> FixedPoint:
    """The bound and scale for summing K noised clipped-gradient sums without wrap-around.

    bound = C*B + tail_sigmas*noise_std per coordinate; scale = (2^(bits-1) - 1 - K) / (K*bound),
    so K*(bound*scale + 1) <= 2^(bits-1) - 1. With 64 bits the scale is also capped so that
    bound*scale <= 2^42 (float64 precision for stochastic rounding).
    """
    values = {"max_grad_norm": max_grad_norm, "noise_std": noise_std, "tail_sigmas": tail_sigmas}
    for name, value in values.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise SecAggError(f"{name} must be a non-negative number, not {value!r}.")
    for name, value in {"max_batch_size": max_batch_size, "num_hospitals": num_hospitals}.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SecAggError(f"{name} must be a positive whole number, not {value!r}.")
    bound = float(max_grad_norm) * max_batch_size + float(tail_sigmas) * float(noise_std)
    return fixed_point_for_bound(bound, num_hospitals, bits)


def fixed_point_for_bound(bound: float, num_hospitals: int, bits: int = 32) -> FixedPoint:
    """The finest encoding of values within +-bound whose sum over ``num_hospitals`` cannot wrap."""
    if isinstance(bits, bool) or bits not in BITS:
        raise SecAggError(f"Secure aggregation supports 32 or 64 bits, not {bits!r}.")
    if not math.isfinite(bound) or bound <= 0:
        raise SecAggError("The encoding bound must be positive: set a positive max_grad_norm or noise.")
    # The tiny shrink absorbs float rounding, so the no-wrap inequality holds exactly.
    scale = (2 ** (bits - 1) - 1 - num_hospitals) / (num_hospitals * bound) * (1 - 1e-12)
    if bits == 64:
        scale = min(scale, MAX_SCALED_BOUND_64 / bound)
    if scale * bound < 1:
        raise SecAggError(
            f"{num_hospitals} hospitals cannot be summed in {bits} bits at useful precision; use 64 bits."
        )
    return FixedPoint(scale=scale, bound=bound, bits=bits)


def _random_offsets(length: int) -> np.ndarray:
    """``length`` floats uniform in [-1/2, 1/2) (steps of 2^-32) from AES-256-CTR keyed by os.urandom."""
    raw = np.empty(length * 4 + 16, np.uint8)
    keystream(os.urandom(32)).update_into(np.zeros(length * 4, np.uint8).data, raw.data)  # .data: see prg
    # Signed view: int32 -> float64 converts several times faster than uint32 -> float64.
    return np.multiply(raw[: length * 4].view(np.int32), 2.0**-32)


def encode(values: np.ndarray, spec: FixedPoint) -> tuple[np.ndarray, int]:
    """(ring vector, number of clipped coordinates) for a 1-D float vector."""
    array = np.asarray(values)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.floating):
        raise SecAggError("Only a 1-D float vector can be encoded for secure aggregation.")
    with np.errstate(over="ignore", invalid="ignore"):  # huge values become inf, then get clipped
        scaled = np.multiply(array, spec.scale, dtype=np.float64)
        total = float(scaled.sum())
    # A single reduction catches NaN/inf cheaply; only then look closer (huge finite values are fine).
    if not math.isfinite(total) and not np.isfinite(array).all():
        raise SecAggError(
            "The update contains NaN or infinite values; training diverged, lower the learning rate."
        )
    limit = spec.bound * spec.scale
    clipped = int(np.count_nonzero(scaled > limit)) + int(np.count_nonzero(scaled < -limit))
    np.clip(scaled, -limit, limit, out=scaled)
    # rint(x + u) with u ~ U[-1/2, 1/2) rounds x up with probability frac(x): unbiased.
    scaled += _random_offsets(array.shape[0])
    np.rint(scaled, out=scaled)
    # |scaled| < 2^(bits-1) here, so the signed cast is exact and the unsigned view is the ring element.
    signed = np.int32 if spec.bits == 32 else np.int64
    return scaled.astype(signed).view(spec.dtype), clipped


def decode(ring_sum: np.ndarray, spec: FixedPoint) -> np.ndarray:
    """The float sum from a ring sum (read as signed, then divided by the scale)."""
    ring = np.asarray(ring_sum)
    if ring.dtype != spec.dtype or ring.ndim != 1:
        raise SecAggError("Ring sum has the wrong type for this encoding; this is a software error.")
    signed = ring.view(np.int32 if spec.bits == 32 else np.int64)
    return signed.astype(np.float64) / spec.scale

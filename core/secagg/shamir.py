"""Shamir secret sharing of 32-byte secrets over the prime field GF(2^256 + 297).

The prime is the smallest above 2^256, so every 32-byte value (an X25519 private key, a mask
seed) is a field element. Coefficients come from os.urandom. Pure Python is fast enough: a
share is one Horner evaluation of a degree (threshold - 1) polynomial.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

from core.errors import SecAggError

PRIME = 2**256 + 297
SECRET_BYTES = 32
SHARE_BYTES = 33  # field elements are < 2^257


def random_field_element() -> int:
    """A uniform element of GF(PRIME) by rejection sampling 257-bit values from os.urandom."""
    while True:
        value = int.from_bytes(os.urandom(SHARE_BYTES), "big") & ((1 << 257) - 1)
        if value < PRIME:
            return value


def _check_points(xs: Iterable[int]) -> list[int]:
    points = list(xs)
    if len(set(points)) != len(points):
        raise SecAggError("Secret sharing failed: share positions repeat; this is a software error.")
    for x in points:
        if isinstance(x, bool) or not isinstance(x, int) or not 0 < x < PRIME:
            raise SecAggError("Secret sharing failed: a share position is out of range.")
    return points


def evaluate(coefficients: Sequence[int], x: int) -> int:
    """The polynomial sum(c_i x^i) at x, mod PRIME (Horner)."""
    result = 0
    for coefficient in reversed(coefficients):
        result = (result * x + coefficient) % PRIME
    return result


def split(secret: bytes, threshold: int, xs: Iterable[int]) -> dict[int, int]:
    """Shares of ``secret`` at positions ``xs``: any ``threshold`` of them rebuild it, fewer reveal nothing."""
    if not isinstance(secret, bytes | bytearray) or len(secret) != SECRET_BYTES:
        raise SecAggError("Secret sharing failed: the secret must be 32 bytes.")
    points = _check_points(xs)
    if not 1 <= threshold <= len(points):
        raise SecAggError(
            f"Secret sharing failed: threshold {threshold} needs between 1 and {len(points)} holders."
        )
    coefficients = [int.from_bytes(secret, "big")] + [random_field_element() for _ in range(threshold - 1)]
    return {x: evaluate(coefficients, x) for x in points}


@lru_cache(maxsize=256)
def lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Coefficients l_i with f(0) = sum(l_i f(x_i)) for any polynomial of degree < len(xs)."""
    coefficients = []
    for i, xi in enumerate(xs):
        numerator, denominator = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                numerator = numerator * xj % PRIME
                denominator = denominator * (xj - xi) % PRIME
        coefficients.append(numerator * pow(denominator, -1, PRIME) % PRIME)
    return tuple(coefficients)


def reconstruct(shares: Mapping[int, int], threshold: int) -> bytes:
    """The 32-byte secret from at least ``threshold`` shares (position -> value)."""
    if len(shares) < threshold or threshold < 1:
        raise SecAggError(f"Secret sharing failed: {len(shares)} share(s) given, {threshold} needed.")
    xs = tuple(sorted(_check_points(shares))[:threshold])
    for x in xs:
        y = shares[x]
        if isinstance(y, bool) or not isinstance(y, int) or not 0 <= y < PRIME:
            raise SecAggError("Secret sharing failed: a share value is out of range.")
    secret = sum(coef * shares[x] for coef, x in zip(lagrange_at_zero(xs), xs, strict=True)) % PRIME
    if secret >= 1 << (8 * SECRET_BYTES):
        raise SecAggError("Secret sharing failed: the shares are inconsistent (corrupted or mixed rounds).")
    return secret.to_bytes(SECRET_BYTES, "big")

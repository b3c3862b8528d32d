"""Shamir secret sharing over GF(2^256 + 297): known answers and properties."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import SecAggError
from core.secagg import shamir
from core.secagg.shamir import PRIME, reconstruct, split


def _bytes(value: int) -> bytes:
    return value.to_bytes(32, "big")


def _is_probable_prime(n: int) -> bool:
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71):
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def test_prime_is_the_smallest_prime_above_2_256():
    assert PRIME > 2**256
    assert _is_probable_prime(PRIME)
    assert not any(_is_probable_prime(2**256 + k) for k in range(1, 297))


def test_known_answer_quadratic():
    # f(x) = 42 + 7x + 3x^2: f(1)=52, f(2)=68, f(3)=90.
    assert reconstruct({1: 52, 2: 68, 3: 90}, 3) == _bytes(42)
    assert shamir.evaluate([42, 7, 3], 3) == 90


def test_known_answer_with_modular_wrap():
    # f(x) = (2^256 - 1) + (p - 1) x  =>  f(1) = 2^256 - 2, f(2) = 2^256 - 3 (mod p).
    top = 2**256 - 1
    assert reconstruct({1: top - 1, 2: top - 2}, 2) == _bytes(top)


def test_known_answer_needs_inverses():
    # f(x) = 5 + 11x + 13x^2 at x = 2, 5, 7 (no wrap): 79, 385, 719.
    assert reconstruct({2: 79, 5: 385, 7: 719}, 3) == _bytes(5)
    # Any 3 of 4 points of the same polynomial give the same answer; the 4th is x = 10: 1415.
    assert reconstruct({2: 79, 7: 719, 10: 1415}, 3) == _bytes(5)


@settings(max_examples=40, deadline=None)
@given(
    secret=st.binary(min_size=32, max_size=32),
    holders=st.integers(min_value=1, max_value=12),
    data=st.data(),
)
def test_any_threshold_shares_reconstruct(secret, holders, data):
    threshold = data.draw(st.integers(min_value=1, max_value=holders))
    xs = data.draw(st.lists(st.integers(1, 10**6), min_size=holders, max_size=holders, unique=True))
    shares = split(secret, threshold, xs)
    subset = data.draw(st.lists(st.sampled_from(xs), min_size=threshold, max_size=holders, unique=True))
    assert reconstruct({x: shares[x] for x in subset}, threshold) == secret


@settings(max_examples=40, deadline=None)
@given(
    secret=st.binary(min_size=32, max_size=32),
    other=st.binary(min_size=32, max_size=32),
    threshold=st.integers(min_value=2, max_value=8),
    data=st.data(),
)
def test_fewer_than_threshold_shares_fit_every_secret(secret, other, threshold, data):
    """m-1 shares are consistent with any secret: completing them to `other` is always possible."""
    xs = list(range(1, threshold + 1))
    shares = split(secret, threshold, xs)
    missing = data.draw(st.sampled_from(xs))
    seen = {x: y for x, y in shares.items() if x != missing}
    # The polynomial through (0, other) and the m-1 seen shares, evaluated at the missing position.
    points = {0: int.from_bytes(other, "big"), **seen}
    value = 0
    for xi, yi in points.items():
        term = yi
        for xj in points:
            if xj != xi:
                term = term * (missing - xj) * pow(xi - xj, -1, PRIME) % PRIME
        value = (value + term) % PRIME
    assert reconstruct({**seen, missing: value}, threshold) == other
    with pytest.raises(SecAggError):
        reconstruct(seen, threshold)


def test_single_share_low_byte_does_not_depend_on_the_secret():
    """With threshold 2 one share is uniform: its low byte looks the same for secrets 0 and 2^256-1."""
    from scipy.stats import chi2_contingency

    counts = []
    for secret in (_bytes(0), _bytes(2**256 - 1)):
        histogram = [0] * 16
        for _ in range(1600):
            histogram[split(secret, 2, [1, 2])[1] & 15] += 1
        counts.append(histogram)
    assert chi2_contingency(counts).pvalue > 1e-6


def test_inconsistent_shares_are_detected_or_refused():
    shares = split(_bytes(7), 2, [1, 2, 3])
    with pytest.raises(SecAggError):
        reconstruct({1: shares[1]}, 2)  # one share only
    with pytest.raises(SecAggError):
        reconstruct({1: PRIME, 2: 0}, 2)
    with pytest.raises(SecAggError):
        split(b"short", 2, [1, 2])
    with pytest.raises(SecAggError):
        split(_bytes(1), 3, [1, 2])
    with pytest.raises(SecAggError):
        split(_bytes(1), 2, [0, 1])


def test_random_field_elements_cover_the_field():
    values = [shamir.random_field_element() for _ in range(200)]
    assert all(0 <= v < PRIME for v in values)
    assert len(set(values)) == 200
    assert max(values) > 2**255  # would fail if only 255 bits were drawn

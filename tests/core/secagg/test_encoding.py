"""Fixed-point encoding: round trip within one step, unbiased rounding, no wrap at the bound."""

import numpy as np
import pytest

from core.errors import SecAggError
from core.secagg import FixedPoint, decode, derive_encoding, encode, fixed_point_for_bound


@pytest.mark.parametrize("bits", [32, 64])
def test_round_trip_within_one_quantization_step(bits):
    spec = fixed_point_for_bound(4.0, 10, bits)
    values = np.random.default_rng(1).uniform(-4, 4, 50_000)
    ring, clipped = encode(values, spec)
    assert ring.dtype == (np.uint32 if bits == 32 else np.uint64)
    assert clipped == 0
    error = np.abs(decode(ring, spec) - values)
    assert error.max() < 1 / spec.scale
    assert error.max() > 0  # the test would pass vacuously for an exact encoding


def test_stochastic_rounding_is_unbiased():
    spec = FixedPoint(scale=1.0, bound=10.0)
    ring, _ = encode(np.full(200_000, 0.3), spec)
    decoded = decode(ring, spec)
    assert set(np.unique(decoded)) == {0.0, 1.0}
    # Mean 0.3, std of the mean ~0.001: deterministic rounding would give 0.
    assert abs(decoded.mean() - 0.3) < 0.006


def test_derive_encoding_follows_the_documented_rule():
    spec = derive_encoding(
        max_grad_norm=1.0, max_batch_size=64, noise_std=2.0, num_hospitals=10, tail_sigmas=7.0
    )
    assert spec.bound == pytest.approx(1.0 * 64 + 7.0 * 2.0)
    assert 10 * (spec.bound * spec.scale + 1) <= 2**31 - 1
    assert 10 * (spec.bound * spec.scale + 1) > 0.99 * 2**31  # and it uses the range
    assert spec.max_hospitals() >= 10
    wide = derive_encoding(max_grad_norm=1.0, max_batch_size=64, noise_std=2.0, num_hospitals=10, bits=64)
    assert wide.bound * wide.scale <= 2**42


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_no_overflow_at_the_bound_with_the_most_hospitals(bits, sign):
    spec = derive_encoding(max_grad_norm=1.5, max_batch_size=32, noise_std=0.7, num_hospitals=50, bits=bits)
    # Every hospital at the bound (and past it: clipped to it) in every coordinate.
    values = np.full(1000, sign * spec.bound)
    values[::2] *= 1.5
    total = np.zeros(1000, spec.dtype)
    clipped_total = 0
    for _ in range(50):
        ring, clipped = encode(values, spec)
        clipped_total += clipped
        np.add(total, ring, out=total)
    assert clipped_total == 50 * 500
    decoded = decode(total, spec)
    assert np.all(np.abs(decoded - sign * 50 * spec.bound) <= 50 / spec.scale)


def test_a_naive_scale_would_wrap():
    """Control for the test above: twice the derived scale does wrap, so the check can fail."""
    spec = derive_encoding(max_grad_norm=1.5, max_batch_size=32, noise_std=0.7, num_hospitals=50)
    doubled = FixedPoint(scale=spec.scale * 2, bound=spec.bound)
    total = np.zeros(10, np.uint32)
    for _ in range(50):
        np.add(total, encode(np.full(10, spec.bound), doubled)[0], out=total)
    assert np.all(decode(total, doubled) < 0)


def test_clipping_counts_and_bad_values():
    spec = FixedPoint(scale=100.0, bound=1.0)
    ring, clipped = encode(np.array([0.5, 2.0, -3.0, 1.0, -1.0], np.float32), spec)
    assert clipped == 2
    assert np.allclose(decode(ring, spec), [0.5, 1.0, -1.0, 1.0, -1.0], atol=0.01)
    huge, clipped = encode(np.array([1e308, -1e308]), spec)
    assert clipped == 2 and np.allclose(decode(huge, spec), [1.0, -1.0])
    for bad in (np.array([np.nan, 1.0]), np.array([np.inf]), np.zeros((2, 2)), np.arange(3)):
        with pytest.raises(SecAggError):
            encode(bad, spec)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scale": 0.0, "bound": 1.0},
        {"scale": 1.0, "bound": -1.0},
        {"scale": float("nan"), "bound": 1.0},
        {"scale": 1.0, "bound": 1.0, "bits": 16},
        {"scale": 2.0**31, "bound": 1.0},
        {"scale": True, "bound": 1.0},
    ],
)
def test_invalid_fixed_point_is_refused(kwargs):
    with pytest.raises(SecAggError):
        FixedPoint(**kwargs)


def test_fixed_point_dict_round_trip_is_strict():
    spec = fixed_point_for_bound(3.0, 7)
    assert FixedPoint.from_dict(spec.to_dict()) == spec
    with pytest.raises(SecAggError):
        FixedPoint.from_dict({**spec.to_dict(), "extra": 1})
    with pytest.raises(SecAggError):
        derive_encoding(max_grad_norm=1.0, max_batch_size=0, noise_std=1.0, num_hospitals=3)
    with pytest.raises(SecAggError):
        derive_encoding(max_grad_norm=0.0, max_batch_size=4, noise_std=0.0, num_hospitals=3)

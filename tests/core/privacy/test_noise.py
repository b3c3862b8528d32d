"""DPRandom: the distributions DP assumes, a keyed stream, and noise whose bits do not depend on the data."""

import copy
import pickle

import numpy as np
import pytest
import torch
from scipy import stats

from core.errors import PrivacyError
from core.privacy.noise import SNAP_BITS, DPRandom, snap_grid

KEY = bytes(range(32))


def test_uniform_has_53_random_bits_in_the_unit_interval():
    u = DPRandom(KEY).uniform(200_000)
    assert u.dtype == np.float64 and u.shape == (200_000,)
    assert u.min() >= 0.0 and u.max() < 1.0
    k = u * 2.0**53
    assert np.array_equal(k, np.floor(k))  # multiples of 2^-53
    # the lowest of the 53 bits is random too (a float32 or 32-bit source would leave it 0)
    low_bit = (k.astype(np.uint64) & np.uint64(1)).astype(bool)
    assert stats.binomtest(int(low_bit.sum()), low_bit.size, 0.5).pvalue > 1e-4
    assert stats.kstest(u, "uniform").pvalue > 1e-4


def test_normal_is_gaussian_with_the_asked_std():
    std = 0.7
    z = DPRandom(KEY).normal(1_000_001, std)  # odd: Box-Muller pairs cut at the end
    assert z.dtype == np.float64 and z.shape == (1_000_001,)
    n = z.size
    assert abs(z.mean()) < 4 * std / n**0.5
    statistic = (n - 1) * z.var(ddof=1) / std**2
    assert 2 * min(stats.chi2.cdf(statistic, n - 1), stats.chi2.sf(statistic, n - 1)) > 1e-4
    assert stats.kstest(z, "norm", args=(0, std)).pvalue > 1e-4
    # the tests have the power to see a 2% error in the std
    assert stats.kstest(z, "norm", args=(0, std * 1.02)).pvalue < 1e-6
    # the tails hold the Gaussian's mass (P(|Z| > 4) = 6.33e-5)
    tail = int((np.abs(DPRandom(KEY).normal(4_000_000, 1.0)) > 4.0).sum())
    assert stats.binomtest(tail, 4_000_000, 2 * stats.norm.sf(4.0)).pvalue > 1e-4
    # Box-Muller's two halves (cos and sin) are independent of each other
    half = n // 2
    assert abs(stats.pearsonr(z[:half], z[half : 2 * half]).statistic) < 4 / half**0.5
    assert abs(stats.pearsonr(z[:half] ** 2, z[half : 2 * half] ** 2).statistic) < 4 / half**0.5


def test_same_key_reproduces_and_other_keys_differ():
    a, b, c = DPRandom(KEY), DPRandom(KEY), DPRandom(KEY[:-1] + b"\x00")
    draws = [(r.normal(1000, 1.0), r.uniform(10), r.poisson_sample(1000, 0.5)) for r in (a, b, c)]
    assert all(np.array_equal(x, y) for x, y in zip(draws[0][:2], draws[1][:2], strict=True))
    assert torch.equal(draws[0][2], draws[1][2])
    assert not np.array_equal(draws[0][0], draws[2][0])
    # the stream advances: two draws from one generator differ
    assert not np.array_equal(a.normal(1000, 1.0), draws[0][0])
    # default keys come from os.urandom
    assert not np.array_equal(DPRandom().normal(1000, 1.0), DPRandom().normal(1000, 1.0))


def test_draws_do_not_depend_on_how_they_are_chunked():
    # A draw larger than one keystream chunk is the same stream as smaller draws of it.
    one = DPRandom(KEY).uniform((1 << 20) + 5)
    rng = DPRandom(KEY)
    pieces = np.concatenate([rng.uniform(1 << 20), rng.uniform(5)])
    assert np.array_equal(one, pieces)


def test_normal_like_and_add_normal_keep_shape_dtype_and_device():
    rng = DPRandom(KEY)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        t = torch.ones(3, 4, 5, dtype=dtype).transpose(0, 2)  # not contiguous
        noise = rng.normal_like(t, 2.0)
        assert noise.shape == t.shape and noise.dtype == dtype and noise.device == t.device
        assert noise.float().std() > 0.5
        before = t.clone()
        out = rng.add_normal_(t, 2.0)
        assert out is t and not torch.equal(t, before)
    zeros = torch.zeros(10)
    assert torch.equal(rng.normal_like(zeros, 0.0), zeros)
    assert torch.equal(rng.add_normal_(zeros.clone(), 0.0), zeros)


def test_add_normal_is_gaussian_around_the_value():
    std = 0.3
    t = torch.full((500_000,), 2.5, dtype=torch.float32)
    noise = (DPRandom(KEY).add_normal_(t, std).double() - 2.5).numpy()
    assert stats.kstest(noise, "norm", args=(0, std)).pvalue > 1e-4


def test_noised_values_lie_on_a_grid_set_by_std_alone():
    # The floating-point attack reads the input from the low bits of x + z. Whatever x's
    # exponent, every output is a multiple of snap_grid(std): its bits carry nothing of x.
    std = 0.5
    grid = snap_grid(std)
    assert grid == 2.0 ** (-1 - SNAP_BITS)
    x = torch.tensor([0.0, 2.0**-40, 3.0, -1e-3, 1e-7, 1234.5678, 2.0**-126], dtype=torch.float32).repeat(2000)
    for t in (x.clone(), x.double()):
        cells = DPRandom().add_normal_(t, std).double() / grid
        assert torch.equal(cells, cells.round())


def test_near_cancellation_reveals_nothing(monkeypatch):
    # The rare draw z ~ -x: computed plainly, x + z keeps the grid of x's exponent (here a
    # multiple of 2^-51 for x = 3, any tiny float for x = 0), which tells the two inputs apart.
    std = 1.0
    x0, x1 = torch.tensor([0.0]), torch.tensor([3.0])
    crafted = {0: torch.tensor([2.0**-60], dtype=torch.float64), 3: torch.tensor([-3.0 + 2.0**-51], dtype=torch.float64)}
    plain = [(x.double() + crafted[int(x)]).float() for x in (x0, x1)]
    assert plain[0] != plain[1]  # the unprotected mechanism
    outputs = []
    for x in (x0, x1):
        monkeypatch.setattr(DPRandom, "_normal", lambda self, n, s, out, z=crafted[int(x)]: out.copy_(z))
        outputs.append(DPRandom().add_normal_(x.clone(), std))
    assert torch.equal(outputs[0], outputs[1])  # both snapped to the same cell


def test_bernoulli_and_poisson_sample_rates():
    rng = DPRandom(KEY)
    flips = rng.bernoulli(100_000, 0.5)
    assert flips.dtype == bool and stats.binomtest(int(flips.sum()), flips.size, 0.5).pvalue > 1e-4
    assert not rng.bernoulli(1000, 0.0).any() and rng.bernoulli(1000, 1.0).all()
    n, q = 200_000, 0.03
    indices = rng.poisson_sample(n, q)
    assert indices.dtype == torch.int64
    assert torch.equal(indices, indices.unique(sorted=True))
    assert stats.binomtest(len(indices), n, q).pvalue > 1e-4
    assert len(rng.poisson_sample(0, 0.5)) == 0


@pytest.mark.parametrize(
    "call",
    [
        lambda r: r.normal(10, -1.0),
        lambda r: r.normal(10, float("nan")),
        lambda r: r.uniform(-1),
        lambda r: r.bernoulli(10, 1.5),
        lambda r: r.poisson_sample(10, -0.1),
        lambda r: r.add_normal_(torch.zeros(3, dtype=torch.int64), 1.0),
    ],
)
def test_bad_arguments_are_refused(call):
    with pytest.raises(PrivacyError):
        call(DPRandom(KEY))


def test_keys_are_32_bytes_and_generators_cannot_be_copied():
    with pytest.raises(PrivacyError, match="32 bytes"):
        DPRandom(b"short")
    rng = DPRandom()
    for copier in (pickle.dumps, copy.deepcopy, copy.copy):
        with pytest.raises(TypeError, match="repeat its draws"):
            copier(rng)
    assert "secret" in repr(rng) and KEY.hex() not in repr(DPRandom(KEY))

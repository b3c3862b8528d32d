"""DP-SGD: the private step is the clipped step plus the right noise; the FSCDP building blocks."""

import copy

import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from core.errors import PrivacyError
from core.models import build_model
from core.privacy.dpsgd import (
    GRAD_SAMPLE_MODES,
    PoissonDataLoader,
    add_gaussian_noise,
    clipped_gradient_sum,
    make_private,
    noise_only_step,
    poisson_sample,
)
from core.privacy.noise import DPRandom


def data(n=16, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=generator), torch.randint(0, 5, (n,), generator=generator)


def per_example_grads(model, x, y):
    grads = []
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        grads.append({k: p.grad.detach().clone() for k, p in model.named_parameters()})
    model.zero_grad()
    return grads


def manual_clipped_sum(model, x, y, bound):
    total = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    for grads in per_example_grads(model, x, y):
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads.values()))
        factor = min(1.0, bound / (norm.item() + 1e-6))
        for k, g in grads.items():
            total[k] += factor * g
    return total


def median_norm(model, x, y):
    norms = [torch.sqrt(sum(g.pow(2).sum() for g in grads.values())) for grads in per_example_grads(model, x, y)]
    return float(torch.stack(norms).median())


def private_step(model, x, y, *, noise, bound, mode="fused", rng=None, lr=0.5, batch=8):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=False)
    wrapped, dp_optimizer, loader = make_private(
        model, optimizer, loader, noise_multiplier=noise, max_grad_norm=bound,
        poisson_sampling=False, grad_sample_mode=mode, rng=rng,
    )
    xb, yb = next(iter(loader))
    dp_optimizer.zero_grad()
    F.cross_entropy(wrapped(xb), yb).backward()
    dp_optimizer.step()
    return wrapped


@pytest.mark.parametrize("mode", GRAD_SAMPLE_MODES)
def test_zero_noise_private_step_is_the_clipped_step(mode):
    torch.manual_seed(0)
    model = build_model("small_cnn")
    x, y = data()
    bound = median_norm(model, x[:8], y[:8])  # half the examples are clipped
    expected = copy.deepcopy(model)
    clipped = manual_clipped_sum(expected, x[:8], y[:8], bound)
    with torch.no_grad():
        for k, p in expected.named_parameters():
            p -= 0.5 * clipped[k] / 8
    private_step(model, x, y, noise=0.0, bound=bound, mode=mode)
    for (name, p), q in zip(model.named_parameters(), expected.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)


def test_noise_has_the_right_standard_deviation():
    torch.manual_seed(0)
    model = build_model("small_cnn")
    x, y = data()
    clean, noisy = copy.deepcopy(model), copy.deepcopy(model)
    private_step(clean, x, y, noise=0.0, bound=0.5, lr=1.0)
    private_step(noisy, x, y, noise=2.0, bound=0.5, lr=1.0, rng=DPRandom(bytes(range(32))))
    difference = torch.cat([(p - q).flatten() for p, q in zip(noisy.parameters(), clean.parameters(), strict=True)])
    # noise N(0, (sigma C)^2) on the sum, divided by the batch size of 8
    expected_std = 2.0 * 0.5 / 8
    assert difference.numel() > 50_000
    assert abs(difference.std().item() / expected_std - 1) < 0.02
    assert abs(difference.mean().item()) < 4 * expected_std / difference.numel() ** 0.5


@pytest.mark.parametrize("mode", GRAD_SAMPLE_MODES)
def test_the_dp_random_controls_the_noise_in_every_mode(mode):
    x, y = data()
    results = []
    for rng in (DPRandom(b"k" * 32), DPRandom(b"k" * 32), None, None):
        torch.manual_seed(0)
        model = build_model("small_cnn")
        private_step(model, x, y, noise=1.0, bound=1.0, mode=mode, rng=rng)
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(results[0], results[1])  # one key, one stream
    assert not torch.equal(results[2], results[3])  # fresh os.urandom keys by default


def test_make_private_draws_poisson_batches():
    torch.manual_seed(0)
    model = build_model("small_cnn")
    x, y = data(n=40)
    loader = DataLoader(TensorDataset(x, y), batch_size=10)
    wrapped, optimizer, private_loader = make_private(
        model, torch.optim.SGD(model.parameters(), lr=0.1), loader, noise_multiplier=1.0, max_grad_norm=1.0
    )
    assert isinstance(private_loader, PoissonDataLoader)
    assert private_loader.sample_rate == pytest.approx(0.25)
    assert optimizer.expected_batch_size == 10
    sizes = []
    for _ in range(3):
        batches = list(private_loader)
        assert len(batches) == 4  # one pass is len(loader) batches
        for xb, yb in batches:
            sizes.append(len(xb))
            optimizer.zero_grad()
            F.cross_entropy(wrapped(xb), yb).backward()
            optimizer.step()
    assert len(set(sizes)) > 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_poisson_batches_come_from_the_dp_random():
    x, y = data(n=40)
    loader = DataLoader(TensorDataset(x, y), batch_size=10)

    def batches(rng):
        model = build_model("small_cnn")
        _, _, private = make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), loader,
                                     noise_multiplier=1.0, max_grad_norm=1.0, rng=rng)
        return [yb.tolist() for _ in range(3) for _, yb in private]

    assert batches(DPRandom(b"b" * 32)) == batches(DPRandom(b"b" * 32))
    assert batches(DPRandom(b"b" * 32)) != batches(DPRandom(b"c" * 32))


def test_empty_poisson_batches_are_collated_with_the_right_shapes():
    # 4 examples, one per batch: a batch is empty with probability 0.75^4 = 0.32
    x, y = data(n=4, size=8)
    model = build_model("small_cnn")
    _, _, private = make_private(model, torch.optim.SGD(model.parameters(), lr=0.1),
                                 DataLoader(TensorDataset(x, y), batch_size=1), noise_multiplier=1.0,
                                 max_grad_norm=1.0, rng=DPRandom(b"e" * 32))
    shapes = {(tuple(xb.shape), tuple(yb.shape), yb.dtype) for _ in range(10) for xb, yb in private}
    assert ((0, 3, 8, 8), (0,), torch.int64) in shapes


@pytest.mark.parametrize("mode", GRAD_SAMPLE_MODES)
def test_an_empty_batch_takes_a_noise_only_step(mode):
    # The step of an empty Poisson batch is noise alone, divided by the expected batch size like
    # any other step (never skipped: the accountant's analysis has every step release noise).
    torch.manual_seed(0)
    model = build_model("small_cnn")
    before = copy.deepcopy(model)
    x, y = data(n=32)
    sigma, bound, lr = 2.0, 0.5, 1.0
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    _, dp_optimizer, _ = make_private(model, optimizer, DataLoader(TensorDataset(x, y), batch_size=8),
                                      noise_multiplier=sigma, max_grad_norm=bound, grad_sample_mode=mode)
    calls = []
    dp_optimizer.attach_step_hook(lambda opt: calls.append(1))  # the accountant's hook sees the step
    dp_optimizer.zero_grad()
    noise_only_step(dp_optimizer)
    change = torch.cat([(p - q).detach().flatten() for p, q in zip(model.parameters(), before.parameters(),
                                                                   strict=True)])
    expected_std = lr * sigma * bound / 8
    assert calls == [1]
    assert abs(change.std().item() / expected_std - 1) < 0.03
    assert abs(change.mean().item()) < 5 * expected_std / change.numel() ** 0.5
    # a second step after zero_grad works (nothing left over from the empty one)
    dp_optimizer.zero_grad()
    noise_only_step(dp_optimizer)


def test_make_private_refuses_batchnorm_and_bad_settings():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 3, 8, 8))
    loader = DataLoader(TensorDataset(*data(n=4, size=8)), batch_size=2)
    with pytest.raises(PrivacyError, match="cannot be trained with DP-SGD"):
        make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, noise_multiplier=1.0, max_grad_norm=1.0)
    small = build_model("small_cnn")
    optimizer = torch.optim.SGD(small.parameters(), lr=0.1)
    with pytest.raises(PrivacyError, match="noise multiplier"):
        make_private(small, optimizer, loader, noise_multiplier=-1.0, max_grad_norm=1.0)
    with pytest.raises(PrivacyError, match="clipping bound"):
        make_private(small, optimizer, loader, noise_multiplier=1.0, max_grad_norm=0.0)
    with pytest.raises(PrivacyError, match="grad_sample_mode"):
        make_private(small, optimizer, loader, noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode="ghost")


@pytest.mark.parametrize(
    ("name", "mode", "n"),
    [
        ("small_cnn", "fused", 6),
        ("small_cnn", "hooks", 6),
        ("small_cnn", "ew", 6),
        ("squeezenet1_1", "fused", 3),
        ("resnet18_gn", "fused", 3),
    ],
)
def test_clipped_gradient_sum_equals_manual_clipping(name, mode, n):
    torch.manual_seed(0)
    model = build_model(name).eval()  # no dropout, so examples can be replayed one by one
    x, y = data(n=n)
    bound = median_norm(model, x, y)
    expected = manual_clipped_sum(model, x, y, bound)
    if mode == "hooks":
        model.train()  # Opacus's hooks only record activations in training mode
    result = clipped_gradient_sum(model, x, y, max_grad_norm=bound, grad_sample_mode=mode, chunk_size=4)
    assert set(result) == {k for k, _ in model.named_parameters()}
    for key in expected:
        # float32 sums in another order: compare to the tensor's own scale
        scale = float(expected[key].abs().max())
        torch.testing.assert_close(result[key], expected[key], rtol=1e-4, atol=1e-5 * scale, msg=key)
    norms = torch.sqrt(sum(v.pow(2).sum() for v in result.values()))
    assert norms <= n * bound * (1 + 1e-5)


def test_clipped_gradient_sum_leaves_the_model_alone():
    torch.manual_seed(0)
    model = build_model("small_cnn")
    x, y = data(n=4)
    F.cross_entropy(model(x), y).backward()
    before = {k: p.grad.clone() for k, p in model.named_parameters()}
    clipped_gradient_sum(model, x, y, max_grad_norm=1.0)
    assert all(torch.equal(p.grad, before[k]) for k, p in model.named_parameters())
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_clipped_gradient_sum_of_nothing_is_zero():
    model = build_model("small_cnn")
    result = clipped_gradient_sum(model, torch.zeros(0, 3, 32, 32), torch.zeros(0, dtype=torch.long), max_grad_norm=1.0)
    assert all(not v.any() for v in result.values())


def test_clipped_gradient_sum_chunking_gives_the_same_sum():
    torch.manual_seed(0)
    model = build_model("small_cnn").eval()
    x, y = data(n=10)
    whole = clipped_gradient_sum(model, x, y, max_grad_norm=0.3, chunk_size=10)
    pieces = clipped_gradient_sum(model, x, y, max_grad_norm=0.3, chunk_size=3)
    for key in whole:
        torch.testing.assert_close(pieces[key], whole[key], rtol=1e-5, atol=1e-6)


def test_gaussian_noise_distribution():
    std = 0.7
    grads = {"w": torch.full((400, 500), 3.0), "b": torch.zeros(7)}
    noised = add_gaussian_noise(grads, std, rng=DPRandom(bytes(32)))
    assert torch.equal(grads["w"], torch.full((400, 500), 3.0))  # inputs untouched
    noise = (noised["w"] - 3.0).flatten().double().numpy()
    n = noise.size
    # variance: (n - 1) s^2 / std^2 follows chi-square(n - 1)
    statistic = (n - 1) * noise.var(ddof=1) / std**2
    chi2_p = 2 * min(stats.chi2.cdf(statistic, n - 1), stats.chi2.sf(statistic, n - 1))
    assert chi2_p > 1e-3
    assert stats.kstest(noise, "norm", args=(0, std)).pvalue > 1e-3
    assert abs(noise.mean()) < 4 * std / n**0.5
    # a wrong standard deviation is caught by the same tests
    assert stats.kstest(noise, "norm", args=(0, std * 1.02)).pvalue < 1e-3
    assert noised["b"].shape == (7,) and noised["b"].abs().sum() > 0


def test_gaussian_noise_options():
    grads = {"w": torch.ones(1000)}
    assert torch.equal(add_gaussian_noise(grads, 0.0)["w"], grads["w"])
    assert not torch.equal(add_gaussian_noise(grads, 1.0)["w"], add_gaussian_noise(grads, 1.0)["w"])
    with pytest.raises(PrivacyError):
        add_gaussian_noise(grads, -1.0)


def test_poisson_sample_rate():
    n, q = 200_000, 0.03
    indices = poisson_sample(n, q, rng=DPRandom(b"p" * 32))
    assert indices.dtype == torch.int64
    assert torch.equal(indices, indices.unique(sorted=True))
    assert 0 <= indices.min() and indices.max() < n
    assert stats.binomtest(len(indices), n, q).pvalue > 1e-3
    # both halves are sampled at the same rate (no positional bias)
    first_half = int((indices < n // 2).sum())
    assert stats.binomtest(first_half, len(indices), 0.5).pvalue > 1e-3
    assert len(poisson_sample(100, 0.0)) == 0
    assert torch.equal(poisson_sample(100, 1.0), torch.arange(100))
    with pytest.raises(PrivacyError):
        poisson_sample(100, 1.5)


def test_physical_batches_add_up_to_the_logical_step():
    # Opacus's BatchMemoryManager splits a Poisson batch by skipping the step on all but the
    # last physical batch; the clipped sums must add up before the one noised step.
    torch.manual_seed(0)
    model = build_model("small_cnn")
    x, y = data()
    bound = median_norm(model, x[:8], y[:8])
    expected = copy.deepcopy(model)
    private_step(expected, x, y, noise=0.0, bound=bound)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    wrapped, dp_optimizer, _ = make_private(
        model, optimizer, loader, noise_multiplier=0.0, max_grad_norm=bound, poisson_sampling=False
    )
    for start, skip in ((0, True), (4, False)):
        F.cross_entropy(wrapped(x[start : start + 4]), y[start : start + 4]).backward()
        dp_optimizer.signal_skip_step(do_skip=skip)
        dp_optimizer.step()
        dp_optimizer.zero_grad()
    for (name, p), q in zip(model.named_parameters(), expected.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)

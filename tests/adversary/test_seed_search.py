"""Issue #10, point 1: the noise must not rest on a small seed.

torch's CPU generator keeps only the low 32 bits of its seed, so noise drawn from a generator
seeded with os.urandom, however many bytes, has at most 2^32 streams, and a coordinator that knows
the model can try them all against the released sum and subtract the noise. Played here against
the real code: two runs whose operating-system randomness agrees in the first 4 bytes of every
draw (the rest random), then in the last 4 bytes, must still draw different noise. A run of
every DP step must also leave seeded torch and numpy generators alone.
"""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from core.data.preprocess import Preprocessing
from core.federation.local_work import fscdp_step, train_delta
from core.federation.plan import FederationPlan
from core.federation.weights import ParameterLayout
from core.models import build_model
from core.privacy.dpsgd import add_gaussian_noise, make_private

REAL_URANDOM = os.urandom
SPEC = Preprocessing(size=16)


def tiny_data(n=6):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=generator)
    return images, torch.randint(0, 5, (n,), generator=generator)


def plan(mode, **values):
    return FederationPlan(name="t", federation_id="f", mode=mode, rounds=1, hospitals=4, threshold=3,
                          noise_multiplier=1.0, max_grad_norm=1.0, **values)


def fresh_model():
    torch.manual_seed(0)  # the initial model is public: both runs start from the same one
    return build_model("small_cnn", num_classes=5)


# Each scenario builds the public inputs (model, data, plan) and returns the DP step itself.


def fscdp_noise():
    # Nobody sampled: the vector is the hospital's noise alone.
    model, (images, labels) = fresh_model(), tiny_data()
    layout, empty = ParameterLayout(model), plan("fscdp", sample_rate=0.0)
    return lambda: fscdp_step(model, layout, images, labels, SPEC, empty).vector


def gaussian_noise():
    zeros = {"w": torch.zeros(20_000)}
    return lambda: add_gaussian_noise(zeros, 1.0)["w"].numpy().astype(np.float64)


def local_dp_sgd_step():
    model, (images, labels) = fresh_model(), tiny_data()
    loader = DataLoader(TensorDataset(images.float() / 255, labels), batch_size=6)

    def step():
        # The step's change to the weights: both runs start from the same public model, so the weights
        # themselves agree in their initial values (a correlation near 0.2 whatever the noise) - the
        # change is the noise plus one clipped gradient, which both runs share and which is small beside it.
        before = torch.cat([p.detach().flatten() for p in model.parameters()]).double().numpy()
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        wrapped, dp_optimizer, private = make_private(model, optimizer, loader, noise_multiplier=1.0,
                                                      max_grad_norm=1.0, poisson_sampling=False)
        xb, yb = next(iter(private))
        dp_optimizer.zero_grad()
        F.cross_entropy(wrapped(xb), yb).backward()
        dp_optimizer.step()
        return torch.cat([p.detach().flatten() for p in model.parameters()]).double().numpy() - before

    return step


def fpdp_delta():
    model, (images, labels) = fresh_model(), tiny_data()
    layout, fpdp = ParameterLayout(model), plan("fpdp", batch_size=3, local_epochs=1, lr=0.5, momentum=0.0)
    return lambda: train_delta(model, layout, images, labels, SPEC, fpdp).vector


DP_STEPS = {"fscdp": fscdp_noise, "add_gaussian_noise": gaussian_noise, "make_private": local_dp_sgd_step,
            "fpdp": fpdp_delta}


def agreeing_urandom(shared: bytes, where: str):
    """os.urandom whose every draw has ``shared``'s bytes in its first (or last) 4 places."""

    def urandom(n: int) -> bytes:
        out = bytearray(REAL_URANDOM(n))
        k = min(4, n)
        if where == "first":
            out[:k] = shared[:k]
        else:
            out[n - k :] = shared[len(shared) - k :]
        return bytes(out)

    return urandom


@pytest.mark.parametrize("where", ["first", "last"])
@pytest.mark.parametrize("step", sorted(DP_STEPS))
def test_runs_agreeing_in_4_bytes_of_os_randomness_draw_different_noise(monkeypatch, step, where):
    shared = REAL_URANDOM(4)
    runs = []
    for _ in range(2):
        run = DP_STEPS[step]()
        monkeypatch.setattr(os, "urandom", agreeing_urandom(shared, where))
        runs.append(run())
        monkeypatch.setattr(os, "urandom", REAL_URANDOM)
    first, second = runs
    assert first.shape == second.shape
    # Not merely different: unrelated. With a 32-bit seed search the noise would be identical.
    different = first != second
    assert different.mean() > 0.99
    assert abs(np.corrcoef(first, second)[0, 1]) < 0.2


class _Forbidden:
    def __init__(self, name):
        self.name = name

    def __call__(self, *args, **kwargs):
        raise AssertionError(f"a DP step called {self.name}: DP randomness must come from DPRandom")


@pytest.mark.parametrize("step", sorted(DP_STEPS))
def test_a_dp_step_uses_no_seeded_or_global_torch_and_numpy_generator(monkeypatch, step):
    run = DP_STEPS[step]()
    forbidden = {
        torch: ["manual_seed", "seed", "Generator", "rand", "randn", "randint", "randperm", "normal", "bernoulli"],
        torch.random: ["manual_seed", "seed"],
        torch.Tensor: ["normal_", "uniform_", "bernoulli_", "exponential_", "geometric_"],
        np.random: ["seed", "default_rng", "RandomState", "Generator", "rand", "randn", "normal", "random"],
    }
    for owner, names in forbidden.items():
        for name in names:
            monkeypatch.setattr(owner, name, _Forbidden(f"{owner.__name__}.{name}"))
    state = torch.get_rng_state()
    result = run()
    assert np.isfinite(result).all() and result.any()
    if step in ("fscdp", "add_gaussian_noise"):
        # No DataLoader involved (whose iterator reads a worker seed): the global generator was
        # not even touched.
        assert torch.equal(torch.get_rng_state(), state)

"""The injection hook: a gradient canary's clipped gradient is exactly -C e_j, through the product's own
per-example clipping; fillers and real images leave the canary weights alone; the model is unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.data.preprocess import Preprocessing, normalize
from core.models.registry import build_model
from core.privacy.dpsgd import clipped_gradient_sum
from core.privacy.per_sample import check_per_example_safe
from core.privacy_audit.canaries import (
    CanaryHarness,
    filler_images,
    gradient_canary_images,
    input_canaries,
)

SPEC = Preprocessing(size=16)


def _harness(canaries: int = 300, max_grad_norm: float = 0.7) -> CanaryHarness:
    torch.manual_seed(0)
    return CanaryHarness(build_model("small_cnn", 5), canaries=canaries, num_classes=5, spec=SPEC,
                         max_grad_norm=max_grad_norm)


def test_canaries_are_recognised_through_flips_and_normalisation():
    harness = _harness()
    canaries = gradient_canary_images(300, 16)
    x = normalize(canaries, SPEC)
    assert torch.equal(harness.canary_index(x), torch.arange(300))
    assert torch.equal(harness.canary_index(x.flip(-1)), torch.arange(300))
    assert (harness.canary_index(normalize(filler_images(4, 16), SPEC)) == -2).all()
    noise, _ = input_canaries(8, 16, 5, np.random.default_rng(0))
    assert (harness.canary_index(normalize(noise, SPEC)) == -1).all()
    check_per_example_safe(harness)  # the allow-list accepts the harness (declared) and its layers


def test_a_canary_contributes_exactly_minus_c_along_its_own_direction():
    harness = _harness(max_grad_norm=0.7)
    idx = torch.tensor([3, 250, 17])
    images = torch.cat([gradient_canary_images(300, 16)[idx], filler_images(2, 16)])
    labels = torch.zeros(5, dtype=torch.int64)
    sums = clipped_gradient_sum(harness, normalize(images, SPEC), labels, max_grad_norm=0.7)
    expected = torch.zeros(300)
    expected[idx] = -0.7
    assert torch.allclose(sums["canary.weight"][0], expected, atol=1e-6)
    # The model's own parameters get nothing from canaries or fillers: exactly zero, not just small.
    assert all(float(t.abs().max()) == 0.0 for name, t in sums.items() if name != "canary.weight")


def test_real_images_see_the_model_unchanged_and_never_move_a_canary_weight():
    harness = _harness()
    with torch.no_grad():
        harness.canary.weight.normal_()
    real = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    x = normalize(real, SPEC)
    harness.eval()
    with torch.no_grad():
        assert torch.equal(harness(x), harness.model(x))
    sums = clipped_gradient_sum(harness, x, torch.randint(0, 5, (6,)), max_grad_norm=1.0)
    assert float(sums["canary.weight"].abs().max()) == 0.0
    assert any(float(t.abs().max()) > 0 for name, t in sums.items() if name != "canary.weight")


def test_the_harness_refuses_what_it_cannot_encode():
    with pytest.raises(ValueError):
        CanaryHarness(build_model("small_cnn", 5), canaries=0, num_classes=5, spec=SPEC, max_grad_norm=1.0)
    with pytest.raises(ValueError):
        gradient_canary_images(70_000, 16)

"""Issue #18: the privacy audit's power checks, played every time against the product's real code.

An audit is only worth running if it would catch a broken mechanism. Each test here runs the audit
(core.privacy_audit: canaries through train_local / make_private, or through fscdp_step and the
secure-aggregation state machines) and checks:

- without noise it reaches at least 90% of the most its number of guesses can show;
- noise a quarter of what the accountant is told (claimed epsilon 1.39) is caught: epsilon_lower
  above the claim, whether the audit is told to run it, the noise code has that bug (DPRandom adds
  std/4) or the clipping code clips at 4C;
- with the real sigma, at a confidence corrected for the number of configurations, the lower
  bound stays at or under the accountant's epsilon.
"""

from __future__ import annotations

import math

import pytest

from core.privacy.noise import DPRandom
from core.privacy_audit.audit import AuditConfig, run

SMALL = {"input_canaries": 0, "real_images": 4, "image_size": 16}
# One full-batch step of sigma = 3: RDP claims epsilon = 1.39 at delta = 1e-5 (in the 1-2).
CLAIM = {"noise_multiplier": 3.0, "sample_rate": 1.0, "steps": 1, "delta": 1e-5, "gradient_canaries": 2000, **SMALL}


@pytest.mark.parametrize("mode", ["cdp", "fscdp"])
def test_without_noise_the_audit_reaches_nine_tenths_of_its_cap(mode):
    result = run(AuditConfig(mode=mode, noise_multiplier=0.0, sample_rate=0.5, steps=20, gradient_canaries=300,
                             **SMALL))
    bound = result.bounds["gradient"]
    assert math.isinf(result.epsilon)
    assert bound.epsilon_lower >= 0.9 * bound.max_epsilon_lower > 3.0


@pytest.mark.parametrize("mode", ["cdp", "fscdp"])
def test_a_quarter_of_the_claimed_noise_is_caught(mode):
    result = run(AuditConfig(mode=mode, broken_noise_factor=0.25, **CLAIM))
    assert 1.0 <= result.epsilon <= 2.0
    assert result.epsilon_lower > result.epsilon
    assert result.exceeds_claim


@pytest.mark.parametrize("mode", ["cdp", "fscdp"])
def test_a_noise_bug_in_the_product_is_caught(monkeypatch, mode):
    # The bug an accountant cannot see: the noise code adds std/4 while everything reports sigma.
    real_add = DPRandom.add_normal_
    monkeypatch.setattr(DPRandom, "add_normal_", lambda self, t, std: real_add(self, t, std / 4))
    result = run(AuditConfig(mode=mode, **CLAIM))
    assert result.epsilon_lower > result.epsilon


def test_a_clipping_bug_in_the_product_is_caught(monkeypatch):
    from core.privacy import dpsgd, per_sample

    real_clip = per_sample.clip_and_sum

    def clip_at_four_c(params, max_grad_norm, out=None):
        return real_clip(params, 4 * max_grad_norm, out=out)

    monkeypatch.setattr(per_sample, "clip_and_sum", clip_at_four_c)  # FusedDPOptimizer's
    monkeypatch.setattr(dpsgd, "clip_and_sum", clip_at_four_c)  # clipped_gradient_sum's (FSCDP)
    result = run(AuditConfig(mode="cdp", **CLAIM))
    assert result.epsilon_lower > result.epsilon


def test_with_the_real_noise_the_bound_stays_under_the_claim():
    configs = [AuditConfig(mode="cdp", **CLAIM), AuditConfig(mode="fscdp", **CLAIM),
               AuditConfig(mode="cdp", noise_multiplier=1.0, sample_rate=0.5, steps=10, gradient_canaries=500, **SMALL)]
    for config in configs:
        config.confidence = 1 - 0.05 / len(configs)
        result = run(config)
        assert result.epsilon_lower <= result.epsilon, (config.mode, result.summary())
        assert not result.exceeds_claim

"""The one-run lower bound (Steinke, Nasr, Jagielski 2023) against worked examples and simulations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.errors import PrivacyError
from core.privacy_audit.bound import (
    epsilon_lower,
    guess_counts,
    max_epsilon_lower,
    one_run_bound,
    p_value,
)


def test_one_hundred_correct_guesses_show_about_3_5_at_95_percent():
    # The paper's (and the issue's) example: with delta = 0 and every guess right the bound is
    # P[Binomial(r, p) >= r] = p^r = 0.05, so epsilon = log(p / (1 - p)) with p = 0.05^(1/r).
    p = 0.05 ** (1 / 100)
    assert math.log(p / (1 - p)) == pytest.approx(3.493, abs=1e-3)
    assert epsilon_lower(100, 100, 100, delta=0.0, significance=0.05) == pytest.approx(math.log(p / (1 - p)), abs=1e-5)
    assert max_epsilon_lower(1000, 1000, delta=0.0, significance=0.05) == pytest.approx(5.809, abs=1e-3)


@pytest.mark.parametrize("guesses", [10, 50, 400])
def test_all_correct_matches_the_closed_form(guesses):
    p = 0.01 ** (1 / guesses)
    assert epsilon_lower(guesses, guesses, guesses, delta=0.0, significance=0.01) == pytest.approx(
        math.log(p / (1 - p)), abs=1e-5)


def test_p_value_with_delta_by_hand():
    # m = 10 canaries, r = 4 guesses, v = 3 right, epsilon = 0 (p = 1/2), delta = 0.01:
    # beta = P[Bin(4, 1/2) >= 3] = 5/16; alpha = max(P[Bin = 2] / 1, P[Bin in 1..2] / 2, P[Bin in 0..2] / 3)
    #      = max(6/16, 10/32, 11/48) = 6/16; p = 5/16 + 6/16 * 0.01 * 2 * 10 = 0.3875.
    assert p_value(10, 4, 3, 0.0, 0.01) == pytest.approx(0.3875, abs=1e-12)
    assert p_value(10, 4, 3, 0.0, 0.0) == pytest.approx(5 / 16, abs=1e-12)
    assert p_value(10, 4, 0, 1.0, 0.5) == 1.0  # zero right is certain
    # Larger epsilon, larger delta: both make v right more plausible, so the p-value grows.
    assert p_value(1000, 200, 150, 1.0, 1e-5) < p_value(1000, 200, 150, 1.5, 1e-5) < p_value(1000, 200, 150, 1.5, 1e-3)


def test_delta_and_fewer_right_guesses_lower_the_bound():
    strict = epsilon_lower(1000, 400, 380, delta=0.0, significance=0.05)
    assert 0 < epsilon_lower(1000, 400, 380, delta=1e-4, significance=0.05) < strict
    assert epsilon_lower(1000, 400, 300, delta=0.0, significance=0.05) < strict
    assert epsilon_lower(1000, 400, 200, delta=0.0, significance=0.05) == 0.0  # chance level rejects nothing
    # The returned epsilon is rejected (p <= significance); a little more is not.
    eps = epsilon_lower(1000, 400, 380, delta=1e-5, significance=0.05)
    assert p_value(1000, 400, 380, eps, 1e-5) <= 0.05 < p_value(1000, 400, 380, eps + 1e-3, 1e-5)


def test_refuses_impossible_counts():
    with pytest.raises(PrivacyError):
        p_value(10, 4, 5, 1.0, 0.0)
    with pytest.raises(PrivacyError):
        epsilon_lower(10, 4, 3, delta=0.0, significance=1.5)
    with pytest.raises(PrivacyError):
        one_run_bound(np.array([1.0, np.nan]), np.array([True, False]), delta=1e-5)


def _randomized_response(rng, canaries: int, epsilon: float):
    """Each canary's score is its inclusion bit, flipped with probability 1 / (1 + e^eps): exactly eps-DP."""
    included = rng.random(canaries) < 0.5
    flip = rng.random(canaries) < 1 / (1 + math.exp(epsilon))
    return (included ^ flip).astype(float), included


def test_never_above_a_mechanisms_true_epsilon_more_often_than_the_confidence_allows():
    # Randomized response at epsilon 1 is exactly 1-DP: the audit may exceed 1 in at most 5% of runs
    # (ties between equal scores are broken at random, so they help no guess).
    rng = np.random.default_rng(7)
    above = sum(one_run_bound(*_randomized_response(rng, 1000, 1.0), delta=0.0, confidence=0.95).epsilon_lower > 1.0
                for _ in range(60))
    assert above <= 6


def test_finds_a_leaky_mechanism_and_reports_its_counts():
    rng = np.random.default_rng(8)
    scores, included = _randomized_response(rng, 1000, 4.0)
    bound = one_run_bound(scores, included, delta=1e-5, confidence=0.95)
    assert 2.5 < bound.epsilon_lower <= 4.0 + 0.5
    assert bound.candidates == len(guess_counts(1000)) and bound.correct <= bound.guesses <= 800
    assert bound.included == int(included.sum()) and bound.max_epsilon_lower >= bound.epsilon_lower

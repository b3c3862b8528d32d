"""Epsilon equals Opacus's accountants; calibration never overshoots; delta is checked against N."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant

from core.errors import PrivacyError
from core.privacy.accountant import (
    PRV_MAX_EPSILON,
    calibrate_noise_multiplier,
    check_delta,
    compute_epsilon,
    compute_epsilon_history,
)

OPACUS = {"rdp": RDPAccountant, "prv": PRVAccountant}


def opacus_epsilon(accountant, history, delta):
    engine = OPACUS[accountant]()
    engine.history = list(history)
    return engine.get_epsilon(delta)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
@pytest.mark.parametrize(
    ("q", "sigma", "steps", "delta"),
    [(0.01, 1.0, 1000, 1e-5), (0.05, 0.8, 300, 1e-5), (0.2, 2.0, 50, 1e-4), (0.004, 1.1, 1, 1e-6), (1.0, 3.0, 10, 1e-5)],
)
def test_equals_opacus(accountant, q, sigma, steps, delta):
    ours = compute_epsilon(sample_rate=q, noise_multiplier=sigma, steps=steps, delta=delta, accountant=accountant)
    assert ours == opacus_epsilon(accountant, [(sigma, q, steps)], delta)
    assert isinstance(ours, float)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_history_equals_opacus(accountant):
    history = [(1.0, 0.01, 200), (1.5, 0.02, 50), (0.9, 0.01, 10)]
    assert compute_epsilon_history(history, delta=1e-5, accountant=accountant) == opacus_epsilon(
        accountant, history, 1e-5
    )


def test_prv_is_tighter_than_rdp():
    args = dict(sample_rate=0.01, noise_multiplier=1.0, steps=1000, delta=1e-5)
    assert compute_epsilon(**args, accountant="prv") < compute_epsilon(**args, accountant="rdp")


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_degenerate_histories(accountant):
    kwargs = dict(delta=1e-5, accountant=accountant)
    assert compute_epsilon_history([], **kwargs) == 0.0
    assert compute_epsilon(sample_rate=0.1, noise_multiplier=1.0, steps=0, **kwargs) == 0.0
    assert compute_epsilon(sample_rate=0.0, noise_multiplier=1.0, steps=10, **kwargs) == 0.0
    assert compute_epsilon(sample_rate=0.1, noise_multiplier=0.0, steps=1, **kwargs) == math.inf


@pytest.mark.parametrize(("q", "sigma", "steps"), [(1e-4, 1.0, 1), (0.5, 50.0, 1), (0.001, 8.0, 2), (1.0, 0.5, 1)])
def test_prv_edge_cases_do_not_crash(q, sigma, steps):
    value = compute_epsilon(sample_rate=q, noise_multiplier=sigma, steps=steps, delta=1e-5, accountant="prv")
    assert 0 <= value < math.inf


def test_prv_with_no_meaningful_privacy_answers_with_the_rdp_bound_without_running_prv(monkeypatch):
    # Opacus's PRV needs minutes here (its domain grows with epsilon); RDP is also a valid bound.
    from opacus.accountants import PRVAccountant

    def never(*args, **kwargs):
        raise AssertionError("the PRV accountant was run for an epsilon above PRV_MAX_EPSILON")

    monkeypatch.setattr(PRVAccountant, "get_epsilon", never)
    args = dict(sample_rate=1.0, noise_multiplier=0.1, steps=100, delta=1e-5)
    value = compute_epsilon(**args, accountant="prv")
    assert value == compute_epsilon(**args, accountant="rdp") > PRV_MAX_EPSILON


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(sample_rate=1.5, noise_multiplier=1.0, steps=1, delta=1e-5),
        dict(sample_rate=0.1, noise_multiplier=-1.0, steps=1, delta=1e-5),
        dict(sample_rate=0.1, noise_multiplier=1.0, steps=1.5, delta=1e-5),
        dict(sample_rate=0.1, noise_multiplier=1.0, steps=1, delta=0.0),
        dict(sample_rate=0.1, noise_multiplier=1.0, steps=1, delta=1.0),
        dict(sample_rate=0.1, noise_multiplier=float("nan"), steps=1, delta=1e-5),
        dict(sample_rate=0.1, noise_multiplier=1.0, steps=1, delta=1e-5, accountant="gdp"),
    ],
)
def test_invalid_inputs(kwargs):
    with pytest.raises(PrivacyError):
        compute_epsilon(**kwargs)


@settings(max_examples=15, deadline=None)
@given(
    target=st.sampled_from([0.5, 1.0, 2.0, 4.0, 8.0, 20.0]),
    q=st.sampled_from([0.001, 0.01, 0.05, 0.2, 1.0]),
    steps=st.sampled_from([1, 10, 100, 1000]),
    delta=st.sampled_from([1e-4, 1e-5, 1e-6]),
)
def test_rdp_calibration_never_overshoots_and_is_tight(target, q, steps, delta):
    try:
        sigma = calibrate_noise_multiplier(target_epsilon=target, sample_rate=q, steps=steps, delta=delta)
    except PrivacyError as exc:
        assert "cannot be reached" in str(exc)
        # Unreachable only when even the largest noise is over the target.
        assert compute_epsilon(sample_rate=q, noise_multiplier=1e4, steps=steps, delta=delta) > target
        return
    epsilon = compute_epsilon(sample_rate=q, noise_multiplier=sigma, steps=steps, delta=delta)
    assert epsilon <= target
    # Epsilon falls as the noise rises, and the bracket is 0.1% wide: a little less noise overshoots.
    if sigma > 1e-3:
        assert compute_epsilon(sample_rate=q, noise_multiplier=sigma * (1 - 1.5e-3), steps=steps, delta=delta) > target


@settings(max_examples=4, deadline=None)
@given(
    target=st.sampled_from([0.5, 1.0, 3.0, 8.0]),
    q=st.sampled_from([0.005, 0.02, 0.1]),
    steps=st.sampled_from([1, 50, 400]),
)
def test_prv_calibration_never_overshoots(target, q, steps):
    sigma = calibrate_noise_multiplier(target_epsilon=target, sample_rate=q, steps=steps, delta=1e-5, accountant="prv")
    assert compute_epsilon(sample_rate=q, noise_multiplier=sigma, steps=steps, delta=1e-5, accountant="prv") <= target


def test_calibration_matches_known_value():
    # Opacus's get_noise_multiplier (epsilon tolerance 0.01) for the same setting lands in [sigma, 1.01 sigma].
    from opacus.accountants.utils import get_noise_multiplier

    ours = calibrate_noise_multiplier(target_epsilon=3.0, sample_rate=0.05, steps=500, delta=1e-5)
    theirs = get_noise_multiplier(target_epsilon=3.0, target_delta=1e-5, sample_rate=0.05, steps=500, accountant="rdp")
    assert abs(ours - theirs) / theirs < 0.01


def test_calibration_without_any_step_needs_no_noise():
    assert calibrate_noise_multiplier(target_epsilon=1.0, sample_rate=0.01, steps=0, delta=1e-5) == 0.0
    assert calibrate_noise_multiplier(target_epsilon=1.0, sample_rate=0.0, steps=10, delta=1e-5) == 0.0


def test_unreachable_and_invalid_targets():
    # RDP over Opacus's orders cannot certify less than about 0.1 at delta=1e-5.
    with pytest.raises(PrivacyError, match="cannot be reached"):
        calibrate_noise_multiplier(target_epsilon=0.05, sample_rate=0.01, steps=10, delta=1e-5)
    with pytest.raises(PrivacyError, match="cannot be reached"):
        calibrate_noise_multiplier(target_epsilon=0.005, sample_rate=0.01, steps=10, delta=1e-5, accountant="prv")
    with pytest.raises(PrivacyError, match="positive number"):
        calibrate_noise_multiplier(target_epsilon=0, sample_rate=0.01, steps=10, delta=1e-5)


def test_check_delta():
    check_delta(1e-5, 200)
    with pytest.raises(PrivacyError) as info:
        check_delta(0.01, 200)
    assert str(info.value) == (
        "delta=0.01 is not below 1/N = 0.005 for 200 images; choose delta below 0.005 (1/(10N) = 0.0005 is customary)."
    )
    with pytest.raises(PrivacyError, match="not below 1/N"):
        check_delta(0.005, 200)
    with pytest.raises(PrivacyError, match="between 0 and 1"):
        check_delta(0.0, 200)
    with pytest.raises(PrivacyError, match="positive whole number"):
        check_delta(1e-5, 0)


def test_the_cached_rdp_curve_gives_exactly_opacus_epsilon_round_after_round():
    # A federation's charges: the same (sigma, q) again and again, then other pairs sharing sigma or q
    # (a cache keyed on one of them alone would answer with the wrong curve).
    history = []
    for steps in (1, 2, 3, 50, 51):
        history = [(1.0, 0.2, steps)]
        assert compute_epsilon_history(history, delta=1e-4) == opacus_epsilon("rdp", history, 1e-4)
    for extra in [(1.0, 0.05, 7), (1.3, 0.2, 4), (1.3, 0.05, 1)]:
        history = history + [extra]
        assert compute_epsilon_history(history, delta=1e-4) == opacus_epsilon("rdp", history, 1e-4)


def test_a_charge_after_the_first_asks_opacus_for_no_new_rdp_curve(monkeypatch):
    from opacus.accountants.analysis import rdp as analysis

    compute_epsilon(sample_rate=0.123, noise_multiplier=1.07, steps=1, delta=1e-5)
    calls = []
    real = analysis.compute_rdp
    monkeypatch.setattr(analysis, "compute_rdp", lambda **kwargs: calls.append(kwargs) or real(**kwargs))
    value = compute_epsilon(sample_rate=0.123, noise_multiplier=1.07, steps=40, delta=1e-5)
    assert calls == []
    monkeypatch.undo()
    assert value == opacus_epsilon("rdp", [(1.07, 0.123, 40)], 1e-5)


def test_the_rdp_orders_are_opacus_default_orders():
    from core.privacy.accountant import RDP_ORDERS

    assert RDP_ORDERS == RDPAccountant.DEFAULT_ALPHAS


def test_epsilon_without_opacus_loaded_is_opacus_epsilon_and_loads_no_torch():
    # A coordinator states epsilon in its model cards; it must not need torch for that.
    import json
    import subprocess
    import sys

    history = [(1.0, 0.2, 160), (1.3, 0.05, 7)]
    script = (
        "import json, sys\n"
        "from core.privacy.accountant import compute_epsilon_history\n"
        f"value = compute_epsilon_history({history!r}, delta=1e-4)\n"
        "print(json.dumps([value, sorted(m for m in ('torch', 'opacus') if m in sys.modules)]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    value, loaded = json.loads(done.stdout)
    assert loaded == []
    assert value == opacus_epsilon("rdp", history, 1e-4)

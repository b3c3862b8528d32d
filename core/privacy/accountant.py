"""Privacy accounting for the subsampled Gaussian mechanism, by Opacus's accountants.

Every number here comes from ``opacus.accountants`` (RDP: Mironov et al. 2019; PRV: Gopi et al.
2021) given a history of ``(noise_multiplier, sample_rate, steps)``, exactly as Opacus computes it
during training. Three cases are answered without asking Opacus, because its answer there is an
artefact or a hang rather than a privacy statement:

* no step taken or nothing sampled (steps 0 or sample rate 0): epsilon is 0;
* no noise (noise multiplier 0) with data sampled: epsilon is infinite;
* the PRV accountant when the RDP bound is above ``PRV_MAX_EPSILON``: PRV's numerical method then
  needs minutes (its domain grows with epsilon) for a guarantee that protects no one, so the RDP
  bound -- also a valid upper bound, only looser -- is reported instead.

The RDP of one step at Opacus's orders depends only on (noise multiplier, sample rate) and costs about
0.1 s to compute; it is kept per pair (``_rdp_per_step``), so a charge -- on the path of every
federated round -- costs a multiplication and Opacus's conversion to epsilon. The number is bit for
bit the one ``RDPAccountant.get_epsilon`` returns (its RDP is that same curve times the steps). The RDP
arithmetic is Opacus's own module (``_rdp_analysis``), loaded without the rest of Opacus where Opacus is
not loaded yet: the package imports torch, which a coordinator that only states epsilon does not need.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
import numbers
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

from core.errors import PrivacyError

ACCOUNTANTS = ("rdp", "prv")

PRV_MAX_EPSILON = 100.0
# Calibration never looks for more noise than this; a target that needs more is unreachable.
MAX_NOISE_MULTIPLIER = 1e4
# Opacus's PRV accountant reports epsilon to within this (its eps_error): it certifies nothing smaller.
PRV_EPSILON_RESOLUTION = 0.01

History = Sequence[tuple[float, float, int]]


def compute_epsilon(
    *, sample_rate: float, noise_multiplier: float, steps: int, delta: float, accountant: str = "rdp"
) -> float:
    """Epsilon after ``steps`` Poisson-subsampled Gaussian steps, at ``delta``."""
    return compute_epsilon_history([(noise_multiplier, sample_rate, steps)], delta=delta, accountant=accountant)


def compute_epsilon_history(history: History, *, delta: float, accountant: str = "rdp") -> float:
    """Epsilon of the composition of every ``(noise_multiplier, sample_rate, steps)`` in ``history``."""
    check_accountant_name(accountant)
    check_delta_value(delta)
    entries = [validate_history_entry(entry) for entry in history]
    entries = [(sigma, q, steps) for sigma, q, steps in entries if steps > 0 and q > 0]
    if not entries:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in entries):
        return math.inf
    rdp_epsilon = _opacus_epsilon("rdp", entries, delta)
    if accountant == "rdp" or rdp_epsilon > PRV_MAX_EPSILON:
        return rdp_epsilon
    return _opacus_epsilon("prv", entries, delta)


def calibrate_noise_multiplier(
    *, target_epsilon: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp"
) -> float:
    """The smallest noise multiplier found whose epsilon is at most ``target_epsilon`` (never above).

    Bisection on the accountant itself; the returned value is the upper end of the final
    bracket, whose epsilon was computed and checked. PrivacyError when no noise level up to
    ``MAX_NOISE_MULTIPLIER`` reaches the target.
    """
    check_accountant_name(accountant)
    if not (_is_real(target_epsilon) and math.isfinite(target_epsilon) and target_epsilon > 0):
        raise PrivacyError(f"The target epsilon must be a positive number (got {target_epsilon!r}).")
    _, sample_rate, steps = validate_history_entry((1.0, sample_rate, steps))
    if steps == 0 or sample_rate == 0:
        return 0.0  # nothing is computed on the data, so no noise is needed

    unreachable = (
        f"epsilon={target_epsilon:g} cannot be reached with the {accountant.upper()} accountant "
        f"(not even with a noise multiplier of {MAX_NOISE_MULTIPLIER:g}); raise the target epsilon or delta."
    )
    if accountant == "prv" and target_epsilon <= PRV_EPSILON_RESOLUTION:
        raise PrivacyError(unreachable)
    memo: dict[float, float] = {}

    def epsilon(sigma: float) -> float:
        if sigma not in memo:
            memo[sigma] = compute_epsilon(
                sample_rate=sample_rate, noise_multiplier=sigma, steps=steps, delta=delta, accountant=accountant
            )
        return memo[sigma]

    # Bracket [low, high] with epsilon(low) > target >= epsilon(high), then bisect it to 0.1%.
    high = 1.0
    while epsilon(high) > target_epsilon:
        if high >= MAX_NOISE_MULTIPLIER:
            raise PrivacyError(unreachable)
        high = min(high * 2, MAX_NOISE_MULTIPLIER)
    low = high / 2
    while epsilon(low) <= target_epsilon:
        high, low = low, low / 2
        if low < 1e-3:
            low = 0.0  # epsilon is infinite without noise
            break
    for _ in range(64):
        if high - low <= 1e-3 * high:
            break
        middle = (low + high) / 2
        if epsilon(middle) <= target_epsilon:
            high = middle
        else:
            low = middle
    if not epsilon(high) <= target_epsilon:
        raise PrivacyError(  # pragma: no cover - the bracket invariant makes this unreachable
            f"Noise calibration failed to stay within epsilon={target_epsilon:g}; choose a noise multiplier by hand."
        )
    return high


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Batches per epoch; with Poisson sampling the sample rate is 1 / steps_per_epoch (as in Opacus)."""
    return max(1, math.ceil(num_examples / batch_size))


def check_delta(delta: float, num_examples: int) -> None:
    """Refuse a delta that is not in (0, 1/N): with delta >= 1/N a mechanism may publish one record."""
    if not _is_whole(num_examples) or num_examples < 1:
        raise PrivacyError(f"The number of training images must be a positive whole number (got {num_examples!r}).")
    check_delta_value(delta)
    bound = 1.0 / num_examples
    if delta >= bound:
        raise PrivacyError(
            f"delta={delta:g} is not below 1/N = {bound:.3g} for {num_examples} images; "
            f"choose delta below {bound:.3g} (1/(10N) = {bound / 10:.3g} is customary)."
        )


# opacus.accountants.RDPAccountant.DEFAULT_ALPHAS, the orders its get_epsilon uses (that class imports
# torch; tests/core/privacy/test_accountant.py checks the two lists are the same).
RDP_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
_RDP_MODULE = "opacus.accountants.analysis.rdp"


@functools.cache
def _rdp_analysis() -> ModuleType:
    """Opacus's RDP analysis module (it needs only numpy and scipy.special).

    The module itself where Opacus is loaded (a hospital trains with it); elsewhere the same source,
    found by the import system as the package's submodule but run on its own, without opacus/__init__
    (which imports torch and all of Opacus). Where it cannot be found that way, the normal import.
    """
    if "opacus" in sys.modules:
        return importlib.import_module(_RDP_MODULE)
    package = importlib.util.find_spec("opacus")  # locates the package without running it
    if package is None or not package.submodule_search_locations:
        raise PrivacyError("The privacy accountant needs Opacus, which is not installed; reinstall Dopamine.")
    folders = [str(Path(location) / "accountants" / "analysis") for location in package.submodule_search_locations]
    for finder in sys.meta_path:
        find_spec = getattr(finder, "find_spec", None)
        spec = find_spec(_RDP_MODULE, folders) if find_spec is not None else None
        if spec is not None and spec.loader is not None:
            module = importlib.util.module_from_spec(spec)  # not entered in sys.modules
            spec.loader.exec_module(module)
            return module
    return importlib.import_module(_RDP_MODULE)


@functools.lru_cache(maxsize=1024)
def _rdp_per_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """Opacus's RDP of one subsampled Gaussian step at RDPAccountant's default orders (read-only)."""
    curve = np.asarray(
        _rdp_analysis().compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=RDP_ORDERS)
    )
    curve.setflags(write=False)
    return curve


def _rdp_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """RDPAccountant.get_epsilon for this history, from the per-step curves: Opacus sums
    compute_rdp(q, sigma, steps) = curve * steps over the history, in order, then converts."""
    rdp = sum([_rdp_per_step(sigma, q) * steps for sigma, q, steps in history])
    epsilon, _ = _rdp_analysis().get_privacy_spent(orders=RDP_ORDERS, rdp=rdp, delta=delta)
    return float(epsilon)


def _opacus_epsilon(accountant: str, history: list[tuple[float, float, int]], delta: float) -> float:
    try:
        # Opacus warns when the best RDP order is at the edge of its grid and numpy warns on
        # overflowing intermediate terms of the PRV; neither changes the bound it returns.
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            if accountant == "rdp":
                value = _rdp_epsilon(history, delta)
            else:
                from opacus.accountants import PRVAccountant

                engine = PRVAccountant()
                engine.history = list(history)
                value = float(engine.get_epsilon(delta))
    except (ValueError, ArithmeticError, RuntimeError, IndexError) as exc:
        raise PrivacyError(
            f"The {accountant.upper()} accountant could not compute epsilon for these settings ({exc}); "
            "try the other accountant or more noise."
        ) from exc
    if math.isnan(value):
        raise PrivacyError(
            f"The {accountant.upper()} accountant returned no number for these settings; try the other accountant."
        )
    return value


def check_accountant_name(accountant: str) -> None:
    """PrivacyError unless ``accountant`` is one of ACCOUNTANTS."""
    if accountant not in ACCOUNTANTS:
        raise PrivacyError(f"Unknown privacy accountant {accountant!r}; choose 'rdp' or 'prv'.")


def check_delta_value(delta: float) -> None:
    """PrivacyError unless 0 < delta < 1 (the bound against the data set size is check_delta)."""
    if not _is_real(delta) or not (0 < delta < 1):
        raise PrivacyError(f"delta must be a number between 0 and 1, exclusive (got {delta!r}).")


def validate_history_entry(entry: tuple[float, float, int]) -> tuple[float, float, int]:
    """``(noise_multiplier, sample_rate, steps)`` as (float, float, int), or PrivacyError."""
    try:
        sigma, q, steps = entry
    except (TypeError, ValueError) as exc:
        raise PrivacyError(f"A privacy history entry must be (noise_multiplier, sample_rate, steps), not {entry!r}.") from exc
    if not _is_real(sigma) or not (math.isfinite(sigma) and sigma >= 0):
        raise PrivacyError(f"The noise multiplier must be a number >= 0 (got {sigma!r}).")
    if not _is_real(q) or not (0 <= q <= 1):
        raise PrivacyError(f"The sample rate must be between 0 and 1 (got {q!r}).")
    if not _is_whole(steps) or steps < 0:
        raise PrivacyError(f"The number of steps must be a whole number >= 0 (got {steps!r}).")
    return float(sigma), float(q), int(steps)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_whole(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)

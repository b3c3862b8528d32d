"""The one-run lower bound on epsilon (Steinke, Nasr and Jagielski 2023, "Privacy auditing with one (1)
training run", Theorem 5.2 and their Algorithm 2's p-value).

m canaries are each included in the training data with probability 1/2, independently. After one
run an attacker guesses "in" or "out" for r of them (abstaining on the rest) and gets v right. If
the run is (epsilon, delta)-DP towards every canary, then

    P[v or more right] <= P[Binomial(r, p) >= v] + 2 m delta alpha,    p = e^eps / (1 + e^eps),
    alpha = max over i in 1..v of P[v > Binomial(r, p) >= v - i] / i,

so observing v right rejects every epsilon whose bound is at most the significance level; the
largest such epsilon is epsilon_lower. With delta = 0 and v = r the bound has a closed form,
p^r = significance, which is why it is capped by the number of guesses: 100 correct guesses at 95%
confidence give at most 3.49, 1000 give 5.8.

Which canaries to guess on is chosen from the scores (the top k as "in", the bottom k as "out"),
for k in a fixed list of candidates; every candidate is tested at significance / len(candidates)
(a union bound), so reporting the best candidate keeps the stated confidence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from core.errors import PrivacyError

# Guesses per side (top k "in", bottom k "out") as fractions of the canaries. Above 0.4 a side
# would reach past the canaries actually included (about half of them) and be wrong by design.
DEFAULT_GUESS_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4)
# epsilon_lower is searched up to here; with m <= 10^6 canaries the bound cannot get close.
_EPSILON_SEARCH_MAX = 60.0


def p_value(canaries: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """An upper bound on P[``correct`` or more right out of ``guesses``] when the run is
    (``epsilon``, ``delta``)-DP towards each of ``canaries`` canaries (Steinke et al. 2023)."""
    from scipy.stats import binom

    _check_counts(canaries, guesses, correct)
    if not (epsilon >= 0 and 0 <= delta <= 1):
        raise PrivacyError(f"epsilon must be >= 0 and delta in [0, 1] (got {epsilon!r}, {delta!r}).")
    if guesses == 0:
        return 1.0
    p = 1.0 / (1.0 + math.exp(-epsilon)) if epsilon < 700 else 1.0
    beta = float(binom.sf(correct - 1, guesses, p))  # P[Binomial(r, p) >= v]
    if delta == 0 or correct == 0:
        return min(1.0, beta)
    shifts = np.arange(1, correct + 1)
    # P[v > Binomial(r, p) >= v - i] for i = 1..v, from the cumulative pmf below v.
    below = np.cumsum(binom.pmf(correct - shifts, guesses, p))
    alpha = float(np.max(below / shifts))
    return min(1.0, beta + alpha * delta * 2 * canaries)


def epsilon_lower(canaries: int, guesses: int, correct: int, *, delta: float, significance: float) -> float:
    """The largest epsilon that ``correct`` right out of ``guesses`` rejects at ``significance``:
    every (epsilon', delta) claim with epsilon' below it is refuted with confidence 1 - significance.
    0.0 when not even epsilon = 0 is rejected."""
    if not 0 < significance < 1:
        raise PrivacyError(f"The significance level must be in (0, 1) (got {significance!r}).")
    if p_value(canaries, guesses, correct, 0.0, delta) > significance:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(canaries, guesses, correct, high, delta) <= significance:
        low, high = high, high * 2
        if high > _EPSILON_SEARCH_MAX:
            return _EPSILON_SEARCH_MAX
    for _ in range(60):  # p_value grows with epsilon: bisect its crossing of the significance
        if high - low <= 1e-6:
            break
        middle = (low + high) / 2
        if p_value(canaries, guesses, correct, middle, delta) <= significance:
            low = middle
        else:
            high = middle
    return low


def max_epsilon_lower(canaries: int, guesses: int, *, delta: float, significance: float) -> float:
    """The most ``guesses`` guesses can ever show: epsilon_lower when every one of them is right."""
    return epsilon_lower(canaries, guesses, guesses, delta=delta, significance=significance)


@dataclass(frozen=True)
class OneRunBound:
    """The one-run audit of one kind of canary."""

    canaries: int
    included: int
    guesses: int  # r, of the best candidate
    correct: int  # v
    confidence: float  # overall, after the union bound over candidates
    candidates: int  # how many guess counts were tried (each at significance / candidates)
    delta: float
    epsilon_lower: float
    max_epsilon_lower: float  # what the largest candidate could show if every guess were right

    def to_dict(self) -> dict:
        return asdict(self)


def guess_counts(canaries: int, fractions: Sequence[float] = DEFAULT_GUESS_FRACTIONS) -> list[int]:
    """Guesses per side to try, fixed before any score is seen (distinct, at least 1)."""
    return sorted({max(1, int(round(f * canaries))) for f in fractions if f * canaries >= 0.5} or {1})


def one_run_bound(
    scores: np.ndarray,
    included: np.ndarray,
    *,
    delta: float,
    confidence: float = 0.95,
    fractions: Sequence[float] = DEFAULT_GUESS_FRACTIONS,
) -> OneRunBound:
    """epsilon_lower from canary ``scores`` (higher: more likely included) and the truth ``included``.

    For each candidate k the attacker guesses "in" for the k highest scores and "out" for the k
    lowest (ties broken at random, so a tie is never an advantage); each candidate is tested at
    (1 - confidence) / candidates, and the best is reported.
    """
    scores = np.asarray(scores, dtype=np.float64)
    included = np.asarray(included, dtype=bool)
    if scores.ndim != 1 or scores.shape != included.shape or scores.size < 2:
        raise PrivacyError("An audit needs one score and one inclusion flag per canary, for at least 2 canaries.")
    if not np.all(np.isfinite(scores)):
        raise PrivacyError("A canary score is not a finite number; the audited run diverged.")
    if not 0 < confidence < 1:
        raise PrivacyError(f"The confidence must be between 0 and 1 (got {confidence!r}).")
    m = scores.size
    counts = [k for k in guess_counts(m, fractions) if 2 * k <= m]
    significance = (1.0 - confidence) / len(counts)
    tiebreak = np.random.default_rng().random(m)  # only orders equal scores
    order = np.lexsort((tiebreak, scores))  # ascending
    best: tuple[float, int, int] | None = None
    for k in counts:
        correct = int(included[order[-k:]].sum() + (~included[order[:k]]).sum())
        eps = epsilon_lower(m, 2 * k, correct, delta=delta, significance=significance)
        if best is None or eps > best[0]:
            best = (eps, 2 * k, correct)
    assert best is not None
    cap = max_epsilon_lower(m, 2 * counts[-1], delta=delta, significance=significance)
    return OneRunBound(canaries=m, included=int(included.sum()), guesses=best[1], correct=best[2],
                       confidence=confidence, candidates=len(counts), delta=delta, epsilon_lower=best[0],
                       max_epsilon_lower=cap)


def _check_counts(canaries: int, guesses: int, correct: int) -> None:
    for value in (canaries, guesses, correct):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise PrivacyError(f"Canary and guess counts must be whole numbers >= 0 (got {value!r}).")
    if not correct <= guesses <= canaries:
        raise PrivacyError(f"Need correct <= guesses <= canaries (got {correct}, {guesses}, {canaries}).")

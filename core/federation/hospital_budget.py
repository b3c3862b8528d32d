"""The hospital's privacy ledger as one federation membership uses it.

The home's one ledger (core.privacy.ledger), opened at its own delta and accountant (a new ledger
adopts the plan's), checked not to be behind the audit log (a restored backup), and charged once per
release: ``charge`` raises ReleaseRefused for a (plan, round, attempt) already charged, and
PrivacyBudgetExceeded past the cap or this run's limit. Every charge's description says against whom
its epsilon holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.errors import ConfigError
from core.federation.plan import FederationPlan, threat_model_text
from core.home import HospitalHome

if TYPE_CHECKING:
    from core.privacy.ledger import LedgerEntry, PrivacyLedger


class HospitalBudget:
    def __init__(self, home: HospitalHome, plan: FederationPlan, *, plan_hash: str, federation_name: str,
                 num_images: int, max_epsilon: float | None, accountant: str | None) -> None:
        self.home, self.plan, self.plan_hash, self.federation_name = home, plan, plan_hash, federation_name
        self.num_images, self.run_limit = num_images, max_epsilon
        self.ledger: PrivacyLedger | None = None
        self.accountant: str | None = None
        self.charged_here = 0
        self._allowance: int | None = None  # charged attempts the limit allows, counted from this start
        if plan.is_private:
            self._open(accountant)

    def _open(self, accountant: str | None) -> None:
        from core.audit import check_ledger_not_behind
        from core.budget import change_cap
        from core.privacy.accountant import check_delta
        from core.privacy.ledger import PrivacyLedger

        plan = self.plan
        assert plan.delta is not None  # validate(): a private mode sets it
        # delta < 1/N for this hospital's own images, at the plan's delta and at the ledger's.
        check_delta(float(plan.delta), self.num_images)
        ledger = PrivacyLedger(self.home.ledger)
        try:
            cap, delta = ledger.max_epsilon, ledger.delta
            if cap is None and self.run_limit is None:
                raise ConfigError("This federation uses differential privacy: set this hospital's privacy cap "
                                  "(--max-epsilon, or `dopamine ledger set-cap`).")
            if delta is None or cap is None:
                ledger.close()
                change_cap(self.home, cap if cap is not None else self.run_limit,
                           delta=delta if delta is not None else float(plan.delta),
                           accountant=None if delta is not None else (accountant or plan.accountant),
                           source=f"joining federation {self.federation_name}")
                ledger = PrivacyLedger(self.home.ledger)
            assert ledger.delta is not None  # set just above when it was missing
            check_delta(float(ledger.delta), self.num_images)
            check_ledger_not_behind(ledger, self.home.audit_log)
        except BaseException:
            ledger.close()
            raise
        self.ledger = ledger
        self.accountant = ledger.accountant

    @property
    def delta(self) -> float | None:
        return self.ledger.delta if self.ledger is not None else self.plan.delta

    @property
    def limit(self) -> float | None:
        """The epsilon this run may reach: the ledger's cap, or this run's lower limit."""
        if self.ledger is None:
            return None
        bounds = [b for b in (self.ledger.max_epsilon, self.run_limit) if b is not None]
        return min(bounds) if bounds else None

    def key(self, round: int, attempt: int) -> str:
        return f"fed:{self.plan_hash}:round:{round}:attempt:{attempt}"

    def charged(self, round: int, attempt: int) -> bool:
        return self.ledger is not None and self.ledger.has_charge(self.key(round, attempt))

    def spent(self) -> float:
        return self.ledger.spent() if self.ledger is not None else 0.0

    def allows_another(self) -> bool:
        """Whether the limit leaves room for one more charged attempt (checked again by charge itself)."""
        limit = self.limit
        if limit is None:
            return True
        if self._allowance is None:
            assert self.ledger is not None  # a limit comes from the ledger
            # A binary search with the accountant: a few calls once, instead of one every round.
            noise, rate, steps = self.plan.round_cost(self.num_images)
            low, high = 0, self.plan.rounds * self.plan.max_attempts
            while low < high:
                middle = (low + high + 1) // 2
                if self.ledger.epsilon_if(noise, rate, steps * middle) <= limit:
                    low = middle
                else:
                    high = middle - 1
            self._allowance = low
        return self.charged_here < self._allowance

    def decline_reason(self, round: int) -> str:
        assert self.ledger is not None  # only a private federation declines a round
        after = self.ledger.epsilon_if(*self.plan.round_cost(self.num_images))
        return (f"round {round} would bring this hospital's epsilon from {self.spent():.4g} to {after:.4g}, "
                f"above its cap of {self.limit:.4g}")

    def charge(self, round: int, attempt: int) -> tuple[str, LedgerEntry | None]:
        """Charge one round attempt (durably) before anything noised leaves; returns (key, ledger entry).

        ReleaseRefused for a key already charged; PrivacyBudgetExceeded past the cap or the run's limit.
        """
        key = self.key(round, attempt)
        if self.ledger is None:
            return "", None
        noise, rate, steps = self.plan.round_cost(self.num_images)
        entry = self.ledger.charge(
            noise_multiplier=noise, sample_rate=rate, steps=steps, key=key, limit=self.run_limit,
            description=f"federation {self.federation_name} ({self.plan.mode.upper()}) round {round} "
                        f"attempt {attempt}. {threat_model_text(self.plan)}")
        self.charged_here += 1
        return key, entry

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()

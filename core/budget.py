"""The hospital's privacy budget as people change it: a cap change is written to the signed audit log
before the ledger changes, so the log never misses one. The CLI (`dopamine ledger set-cap`), the app's
Privacy page, a first `train --max-epsilon` and a first `join` all go through ``change_cap``.

(It sits above core.privacy and core.audit, which do not know each other's writers.)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from core.audit import AuditLog
from core.home import HospitalHome
from core.privacy.accountant import check_accountant_name, check_delta_value
from core.privacy.ledger import PrivacyLedger, _check_cap


@dataclass(frozen=True)
class CapChange:
    """A deliberate change of a ledger's cap (and perhaps its delta), as recorded in the audit log."""

    ledger: str
    old_cap: float | None
    new_cap: float | None
    old_delta: float | None
    new_delta: float | None
    spent: float | None  # epsilon already spent, at the new delta (None while the ledger has no delta)
    source: str
    old_accountant: str = "rdp"
    new_accountant: str = "rdp"

    @property
    def changed(self) -> bool:
        return (self.old_cap, self.old_delta, self.old_accountant) != (
            self.new_cap, self.new_delta, self.new_accountant)

    @property
    def below_spent(self) -> bool:
        return self.new_cap is not None and self.spent is not None and self.spent > self.new_cap

    def summary(self) -> str:
        """One line for the audit log: what changed, old and new values."""
        text = f"privacy cap {_cap_text(self.old_cap)} -> {_cap_text(self.new_cap)}"
        if self.new_delta != self.old_delta:
            text += f"; delta {self.old_delta if self.old_delta is not None else 'unset'} -> {self.new_delta}"
        if self.new_accountant != self.old_accountant:
            text += f"; accountant {self.old_accountant} -> {self.new_accountant}"
        return text + (f" ({self.source})" if self.source else "")

    def message(self) -> str:
        """What to tell the user."""
        if not self.changed:
            return f"Nothing changed: the cap is already {_cap_text(self.new_cap)}" + (
                f" at delta = {self.new_delta:g}." if self.new_delta is not None else ".")
        cap = "No cap: private work is no longer limited" if self.new_cap is None else (
            f"Cap set to epsilon = {self.new_cap:g}")
        delta = f" at delta = {self.new_delta:g}" if self.new_delta is not None else ""
        text = f"{cap}{delta} (was {_cap_text(self.old_cap)}); recorded in the signed audit log."
        if self.below_spent:
            text += (f" The new cap is below the epsilon = {self.spent:.3g} already spent: nothing more can be "
                     "charged until the cap is raised again.")
        return text


def change_cap(home: HospitalHome, max_epsilon: float | None, *, delta: float | None = None,
               accountant: str | None = None, source: str = "") -> CapChange:
    """Set (None: remove) the cap of ``home``'s ledger, optionally its delta and accountant.

    The change is written to the home's signed audit log (kind "ledger") before the ledger changes, so
    the log never misses a cap change. Lowering the cap below what is already spent is allowed: it
    stops further private work, and ``CapChange.message()`` says so.
    """
    _check_cap(max_epsilon)
    if delta is not None:
        check_delta_value(delta)
    if accountant is not None:
        check_accountant_name(accountant)
    home.ensure()
    key = home.identity()
    with PrivacyLedger(home.ledger) as ledger:
        old_cap, old_delta = ledger.max_epsilon, ledger.delta
        new_delta = delta if delta is not None else old_delta
        spent = None if new_delta is None else ledger._spent_at(new_delta, accountant or ledger.accountant)
        change = CapChange(ledger=str(ledger.path), old_cap=old_cap,
                           new_cap=None if max_epsilon is None else float(max_epsilon), old_delta=old_delta,
                           new_delta=None if new_delta is None else float(new_delta), spent=spent,
                           source=source, old_accountant=ledger.accountant,
                           new_accountant=accountant or ledger.accountant)
        if not change.changed:
            return change  # nothing to record
        document = {**asdict(change), "time": datetime.now(UTC).isoformat(timespec="seconds")}
        AuditLog(home.audit_log, key=key).append(
            kind="ledger", what=change.summary(), payload=json.dumps(document, sort_keys=True).encode())
        ledger.set_cap(max_epsilon, delta, accountant=accountant)
    return change


def _cap_text(cap: float | None) -> str:
    return "none" if cap is None else f"{cap:g}"

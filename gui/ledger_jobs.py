"""Worker-thread jobs on the hospital's privacy ledger (core.privacy.ledger).

The ledger is SQLite, whose connections belong to one thread, so every job opens it, does one thing
and closes it again. Reading a ledger that does not exist yet returns an empty snapshot and creates
no file. Cap changes go through core.privacy.ledger.change_cap, so each one is in the audit log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class LedgerSnapshot:
    path: Path
    exists: bool
    max_epsilon: float | None = None
    delta: float | None = None
    accountant: str = "rdp"
    spent: float = 0.0
    entries: list[Any] = field(default_factory=list)  # core.privacy.ledger.LedgerEntry
    notice: str = ""  # what a cap change did (core.privacy.ledger.CapChange.message)
    below_spent: bool = False  # the cap just saved is below what is already spent


@dataclass
class PlanVerdict:
    epsilon_before: float
    epsilon_after: float
    max_epsilon: float | None
    delta: float | None
    accountant: str

    @property
    def allowed(self) -> bool:
        return self.max_epsilon is None or self.epsilon_after <= self.max_epsilon

    def text(self) -> str:
        cap = "no cap is set" if self.max_epsilon is None else f"the cap is {self.max_epsilon:g}"
        change = f"ε would go from {self.epsilon_before:.3g} to {self.epsilon_after:.3g}; {cap}."
        if self.allowed:
            return f"Allowed: {change}"
        return f"Refused: {change} Add noise, take fewer steps or raise the cap."


def _open(path: Path):
    from core.privacy.ledger import PrivacyLedger

    return PrivacyLedger(Path(path))


def read_ledger(path: Path) -> LedgerSnapshot:
    path = Path(path)
    if not path.exists():
        return LedgerSnapshot(path=path, exists=False)
    with _open(path) as ledger:
        return LedgerSnapshot(path=path, exists=True, max_epsilon=ledger.max_epsilon, delta=ledger.delta,
                              accountant=ledger.accountant, spent=ledger.spent(), entries=ledger.entries())


def set_cap(home: Path, max_epsilon: float | None, delta: float | None) -> LedgerSnapshot:
    """Change the cap of the ledger in hospital home ``home`` through core's one cap-change function, which
    records it in the home's signed audit log (as `dopamine ledger set-cap` does)."""
    from core.home import HospitalHome
    from core.privacy.ledger import change_cap

    hospital = HospitalHome.at(home)
    change = change_cap(hospital, max_epsilon, delta=delta, source="the app's Privacy page")
    snapshot = read_ledger(hospital.ledger)
    snapshot.notice = change.message()
    snapshot.below_spent = change.below_spent
    return snapshot


def check_plan(path: Path, *, noise_multiplier: float, sample_rate: float, steps: int,
               delta: float | None = None, accountant: str | None = None) -> PlanVerdict:
    """What the ledger would show after this work, and whether the cap allows it. Writes nothing.

    ``delta``/``accountant`` are used only when the ledger has none yet (no ledger, or no cap set).
    """
    path = Path(path)
    if not path.exists():
        from core.privacy.accountant import compute_epsilon

        if delta is None:
            raise _privacy_error("Set δ (on the Privacy page) before checking a plan.")
        after = compute_epsilon(sample_rate=sample_rate, noise_multiplier=noise_multiplier, steps=steps,
                                delta=delta, accountant=accountant or "rdp")
        return PlanVerdict(0.0, after, None, delta, accountant or "rdp")
    with _open(path) as ledger:
        return PlanVerdict(ledger.spent(), ledger.epsilon_if(noise_multiplier, sample_rate, steps),
                           ledger.max_epsilon, ledger.delta, ledger.accountant)


def export_ledger(path: Path, out: Path, fmt: str) -> Path:
    with _open(path) as ledger:
        if fmt == "csv":
            ledger.export_csv(Path(out))
        else:
            ledger.export_json(Path(out))
    return Path(out)


def _privacy_error(message: str) -> Exception:
    from core.errors import PrivacyError

    return PrivacyError(message)

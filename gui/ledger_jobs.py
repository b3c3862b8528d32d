"""Worker-thread jobs on the hospital's privacy ledger (core.privacy.ledger).

The ledger is SQLite, whose connections belong to one thread, so every job opens it, does one thing
and closes it again. Reading a ledger that does not exist yet returns an empty snapshot and creates
no file. Cap changes go through core.budget.change_cap, so each one is in the audit log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.privacy.ledger import ChargePreview as PlanVerdict  # noqa: F401 -- the verdict type the pages show


@dataclass
class LedgerSnapshot:
    path: Path
    exists: bool
    max_epsilon: float | None = None
    delta: float | None = None
    accountant: str = "rdp"
    spent: float = 0.0
    entries: list[Any] = field(default_factory=list)  # core.privacy.ledger.LedgerEntry
    notice: str = ""  # what a cap change did (core.budget.CapChange.message)
    below_spent: bool = False  # the cap just saved is below what is already spent


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


def set_cap(home: Path, max_epsilon: float | None, delta: float | None,
            source: str = "the app's Privacy page") -> LedgerSnapshot:
    """Change the cap of the ledger in hospital home ``home`` through core's one cap-change function, which
    records it in the home's signed audit log (as `dopamine ledger set-cap` does); ``source`` says where."""
    from core.budget import change_cap
    from core.home import HospitalHome

    hospital = HospitalHome.at(home)
    change = change_cap(hospital, max_epsilon, delta=delta, source=source)
    snapshot = read_ledger(hospital.ledger)
    snapshot.notice = change.message()
    snapshot.below_spent = change.below_spent
    return snapshot


def check_plan(path: Path, *, noise_multiplier: float, sample_rate: float, steps: int,
               delta: float | None = None, accountant: str | None = None):
    """core.privacy.ledger.preview_charge, on a worker thread: the ledger before/after, against its cap."""
    from core.privacy.ledger import preview_charge

    return preview_charge(path, noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps,
                          delta=delta, accountant=accountant)


def export_ledger(path: Path, out: Path, fmt: str) -> Path:
    with _open(path) as ledger:
        if fmt == "csv":
            ledger.export_csv(Path(out))
        else:
            ledger.export_json(Path(out))
    return Path(out)

"""Worker job of the Privacy page's audit card: core.privacy_audit on SYNTHETIC images only.

The job takes numbers, never a path: it has no way to reach the hospital's images, its ledger or
its home, so an audit started from the app cannot touch patient data or spend privacy budget.
"""

from __future__ import annotations

from typing import Any

from core.errors import ConfigError

# Every planned step runs on this computer; beyond this the audit would take many minutes.
MAX_AUDIT_STEPS = 2000
GUI_MODES = {"cdp": "Local training (CDP)", "fscdp": "Federation (FSCDP: 3 hospitals, m = 3, t = 1)"}


def audit_settings(*, mode: str, noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                   accountant: str) -> dict[str, Any]:
    """The AuditConfig fields for the planned settings (ConfigError when the audit would take too long)."""
    if steps > MAX_AUDIT_STEPS:
        raise ConfigError(f"An audit runs every planned step on this computer; {steps} steps would take too long "
                          f"here. Audit at most {MAX_AUDIT_STEPS} steps, or run `dopamine audit-dp` on a "
                          "spare computer.")
    return {"mode": mode, "noise_multiplier": float(noise_multiplier), "sample_rate": float(sample_rate),
            "steps": int(steps), "delta": float(delta), "accountant": accountant}


def run_audit(settings: dict[str, Any], *, progress, cancel) -> Any:
    """core.privacy_audit.audit.run for ``settings`` (audit_settings' fields, plus any sizing field), in a
    child process (gui.child_jobs' "audit" job), so the audit's training never competes with the window."""
    from gui.child_jobs import run_child

    return run_child("audit", {"settings": settings}, progress=progress, cancel=cancel)

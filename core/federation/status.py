"""``dopamine coordinator status DIR``: read the federation folder's state (no server needed)."""

from __future__ import annotations

from pathlib import Path

from core.errors import FederationError
from core.federation.layout import FederationPaths, load_settings
from core.federation.plan import load_plan, plan_hash
from core.federation.round_state import RoundState
from core.federation.store import CoordinatorStore


def read_status(folder: Path, *, last_rounds: int = 5) -> dict:
    paths = FederationPaths(Path(folder))
    if not paths.plan.exists() or not paths.state.exists():
        raise FederationError(f"{folder} is not a federation folder; run `dopamine coordinator init` first.")
    plan = load_plan(paths.plan)
    settings = load_settings(paths)
    store = CoordinatorStore(paths.state)
    try:
        meta = store.all_meta()
        hospitals = store.hospitals()
        rounds = store.rounds_tail(last_rounds)
        invitations = store.invitation_count()
    finally:
        store.close()
    state = RoundState.from_meta(meta)
    model = paths.model_package(state.model_round)
    return {
        "federation_id": plan.federation_id,
        "name": plan.name,
        "coordinator_url": settings.url,
        "mode": plan.mode,
        "plan_hash": plan_hash(plan),
        "status": state.status,
        "stop_reason": state.stop_reason,
        "round": state.round,
        "rounds": plan.rounds,
        "attempt": state.attempt,
        "phase": state.phase,
        "rounds_finished": state.model_round,
        "roster_signed": sorted(state.roster_signatures),
        "invitations": invitations,
        "hospitals": [
            {"hospital_id": h.hospital_id, "name": h.name, "fingerprint": h.fingerprint, "num_images": h.num_images,
             "status": h.status, "status_reason": h.status_reason, "rounds_included": h.rounds_included}
            for h in hospitals
        ],
        "last_rounds": [r.to_dict() for r in rounds],
        "latest_model": str(model) if model.exists() else None,
    }


def status_text(status: dict) -> str:
    lines = [
        f"Federation {status['name']} ({status['federation_id']}), mode {status['mode'].upper()}",
        f"Coordinator: {status['coordinator_url']}",
        f"Status: {status['status']}" + (f" ({status['stop_reason']})" if status["stop_reason"] else ""),
        f"Rounds finished: {status['rounds_finished']} of {status['rounds']}"
        + (f"; open: round {status['round']} attempt {status['attempt']}, step {status['phase']}"
           if status["status"] == "running" else ""),
        f"Hospitals enrolled: {len(status['hospitals'])} of {status['invitations']} invited",
    ]
    for h in status["hospitals"]:
        lines.append(f"  {h['hospital_id']} {h['name']}: {h['status']}, {h['num_images']} images, "
                     f"in {h['rounds_included']} rounds, key {h['fingerprint']}")
    for r in status["last_rounds"]:
        metrics = r["metrics"]
        shown = ", ".join(f"{k} {metrics[k]:.4f}" for k in ("accuracy", "kappa", "loss") if isinstance(metrics.get(k), float))
        lines.append(f"  round {r['round']}: {r['seconds']:.2f} s, {len(r['included'])} hospitals, "
                     f"{r['images']} images" + (f", {shown}" if shown else ""))
    if status["latest_model"]:
        lines.append(f"Latest global model: {status['latest_model']}")
    return "\n".join(lines)

"""Worker-thread jobs for the Host page: preview a plan, create the federation, run its coordinator, read
its live status. Nothing here touches Qt: the page runs these with ``context.runner.start``.

The federation lives in the lead site's hospital home (HOME/coordinators/<name>-<id>/, core.home), so
the app and ``dopamine coordinator ... DIR`` work on the same folder.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.home import HospitalHome

HOST_FILE = "host.json"  # what the app remembers of a federation it created: invitations, sheets
LEAD_TRAINS_RULE = ("This site also trains: it is both coordinator and participant, so it sees what the "
                    "coordinator sees and knows its own noise. It always counts among the t colluding "
                    "hospitals, so t must be at least 1.")


@dataclass
class HostForm:
    """What the lead site fills in on the Host page."""

    name: str
    mode: str  # f | fpdp | fscdp
    rounds: int
    hospital_names: list[str]
    expected_images: list[int]  # per hospital, for the preview only (hospitals declare theirs when they enroll)
    hosts: list[str]
    port: int
    model: str = "small_cnn"
    image_size: int = 64
    threshold: int | None = None
    colluders: int | None = None
    lead_trains: bool = False  # hospital 1 is this site
    noise_multiplier: float | None = None
    target_epsilon: float | None = None  # instead of sigma: the smallest sigma whose plan stays within it
    max_grad_norm: float | None = None
    sample_rate: float | None = None
    batch_size: int | None = None
    local_epochs: int | None = None
    delta: float | None = None
    accountant: str = "rdp"
    eval_data: Path | None = None
    invitations_dir: Path | None = None


@dataclass
class HospitalPreview:
    name: str
    images: int
    epsilon: float | None  # the whole plan, for this hospital (None: mode F)
    delta_ok: bool  # delta < 1/N: otherwise the hospital's client refuses the plan


@dataclass
class PlanPreview:
    plan: Any  # core.federation.plan.FederationPlan
    noise_multiplier: float | None  # the sigma used (calibrated when a target epsilon was given)
    noise_std_per_hospital: float | None  # FSCDP: sigma*C/sqrt(m - t)
    dropouts_tolerated: int  # K - m with secure aggregation; K - 1 without
    hospitals: list[HospitalPreview] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


def _init_config(form: HostForm, *, folder: Path, federation_id: str | None, noise: float | None):
    from core.federation.layout import InitConfig
    from core.federation.plan import default_colluders
    from core.federation.service import check_hosts

    colluders = form.colluders if form.colluders is not None else default_colluders(len(form.hospital_names))
    if form.lead_trains and form.mode != "f" and colluders < 1:
        raise ConfigError(LEAD_TRAINS_RULE)
    if len(form.hospital_names) != len(form.expected_images):
        raise ConfigError("Give an expected image count for every hospital.")
    private = form.mode != "f"
    return InitConfig(
        folder=folder, name=form.name.strip(), mode=form.mode, rounds=form.rounds,
        hospitals=len(form.hospital_names), hosts=check_hosts(form.hosts), port=form.port,
        threshold=form.threshold, colluders=form.colluders, model=form.model, image_size=form.image_size,
        noise_multiplier=noise if private else None, max_grad_norm=form.max_grad_norm if private else None,
        sample_rate=form.sample_rate if form.mode == "fscdp" else None,
        batch_size=form.batch_size if form.mode != "fscdp" else None,
        local_epochs=form.local_epochs if form.mode != "fscdp" else None,
        delta=form.delta if private else None, accountant=form.accountant,
        eval_data=form.eval_data, hospital_names=[n.strip() for n in form.hospital_names],
        federation_id=federation_id, invitations_dir=form.invitations_dir)


def _noise(form: HostForm) -> float | None:
    """The form's sigma, or the smallest one keeping every hospital's whole-plan ε within the target."""
    if form.mode == "f" or form.target_epsilon is None:
        return form.noise_multiplier
    from core.federation.layout import build_plan, new_federation_id
    from core.privacy.accountant import calibrate_noise_multiplier

    probe = build_plan(_init_config(form, folder=Path("."), federation_id=None, noise=1.0), new_federation_id())
    sigma = 0.0
    for images in sorted(set(form.expected_images)):
        _, rate, steps = probe.total_cost(images)
        sigma = max(sigma, calibrate_noise_multiplier(target_epsilon=form.target_epsilon, sample_rate=rate,
                                                      steps=steps, delta=float(probe.delta),
                                                      accountant=form.accountant))
    return sigma


def preview_plan(form: HostForm) -> PlanPreview:
    """The plan the form makes (checked by every rule the plan enforces) and what it costs each hospital."""
    from core.federation.layout import build_plan, new_federation_id

    noise = _noise(form)
    plan = build_plan(_init_config(form, folder=Path("."), federation_id=None, noise=noise), new_federation_id())
    hospitals = []
    for name, images in zip(plan.hospital_names, form.expected_images, strict=True):
        epsilon = plan.epsilon_cost(images) if plan.is_private else None
        hospitals.append(HospitalPreview(name, images, epsilon, not plan.is_private or plan.delta < 1 / images))
    std = plan.noise_std_per_hospital() if plan.mode == "fscdp" else None
    dropouts = plan.hospitals - plan.threshold if plan.secagg else plan.hospitals - 1
    return PlanPreview(plan=plan, noise_multiplier=plan.noise_multiplier, noise_std_per_hospital=std,
                       dropouts_tolerated=dropouts, hospitals=hospitals, lines=plan.summary_lines())


def rules_text(plan: Any, *, lead_trains: bool) -> list[str]:
    """The rules the plan enforces, one line each, with this plan's numbers."""
    k, m, t = plan.hospitals, plan.threshold, plan.colluders
    lines = [f"m ≤ K ({m} ≤ {k}): a round's sum is released only over at least m hospitals, so up to "
             f"{k - m if plan.secagg else k - 1} may drop out of a round before it stops."]
    if plan.secagg:
        lines.append(f"2m > K + t ({2 * m} > {k + t}): otherwise a lying coordinator could show hospitals "
                     "different survivor sets and unmask one hospital's update.")
        lines.append(f"m > t ({m} > {t}): the noise of at least m − t hospitals is unknown to any coalition.")
    lines.append(f"t < K ({t} < {k}): t hospitals may collude with the coordinator; ε holds against all of them.")
    if plan.mode == "fscdp":
        lines.append(f"Each hospital adds noise σC/√(m − t) = {plan.noise_std_per_hospital():.4g}, so the "
                     "coordinator and t hospitals together still face noise σC, as in centralized DP-SGD.")
    if lead_trains:
        lines.append(LEAD_TRAINS_RULE)
    return lines


def create_federation(form: HostForm, home: HospitalHome) -> Any:
    """Write the federation into the home (plan, CA, keys, state) and one invitation and printable sheet
    per hospital into the chosen folder; returns core's InitResult."""
    from core.federation.layout import init_federation, new_federation_id

    if form.invitations_dir is None:
        raise ConfigError("Choose a folder for the invitations.")
    federation_id = new_federation_id()
    folder = home.ensure().coordinator_dir(form.name.strip() or "federation", federation_id)
    result = init_federation(_init_config(form, folder=folder, federation_id=federation_id, noise=_noise(form)))
    data = {"invitations": [str(p) for p in result.invitations], "sheets": [str(p) for p in result.sheets],
            "lead_trains": form.lead_trains, "ca_fingerprint": result.ca_fingerprint}
    (Path(result.folder) / HOST_FILE).write_text(json.dumps(data, indent=1), encoding="utf-8")
    return result


def read_host_file(folder: Path | None) -> dict:
    """What create_federation remembered (empty for a federation made with `dopamine coordinator init`)."""
    if folder is None:
        return {}
    try:
        data = json.loads((Path(folder) / HOST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def port_check(host: str, port: int) -> str:
    from core.federation.service import port_problem

    return port_problem(host, port)


def start_coordinator(folder: Path, *, cancel) -> Any:
    from core.federation.service import CoordinatorService

    return CoordinatorService(folder).start(cancel=cancel)


def stop_coordinator(folder: Path, *, wait: bool = True) -> bool:
    from core.federation.service import CoordinatorService

    service = CoordinatorService(folder)
    if wait:
        return service.stop()
    state = service.state()
    if state.running and state.pid is not None:
        import os
        import signal

        os.kill(state.pid, signal.SIGTERM)  # on quit: it stops gracefully by itself
        return True
    return False


def set_paused(folder: Path, paused: bool) -> bool:
    from core.federation.service import CoordinatorService

    service = CoordinatorService(folder)
    service.pause() if paused else service.resume()
    return paused


def dashboard(folder: Path) -> Any:
    """core.federation.service.HostStatus of ``folder``: the same state `dopamine coordinator status` reads."""
    from core.federation.service import host_status

    return host_status(folder)


def hosted(home: HospitalHome) -> list[tuple[Path, str]]:
    """(folder, "name (status)") of every federation this site hosts, newest first."""
    from core.federation.plan import load_plan
    from core.federation.service import hosted_federations

    found = []
    for folder in hosted_federations(home):
        try:
            found.append((folder, load_plan(folder / "plan.toml").name))
        except Exception:  # noqa: BLE001 -- a damaged folder is listed by its name; opening it says why
            found.append((folder, folder.name))
    return found


def collect_final_model(home: HospitalHome, folder: Path) -> Path:
    from core.federation.service import collect_final_model as collect

    return collect(home, folder)


def expected_counts(text: str, hospitals: int) -> list[int]:
    """'500, 800' -> [500, 800, 800, ...]: the last count repeats for hospitals not given one."""
    values = [v for v in text.replace(";", ",").split(",") if v.strip()]
    try:
        counts = [int(v) for v in values]
    except ValueError:
        raise ConfigError("Expected images: whole numbers separated by commas.") from None
    if not counts or any(c < 1 for c in counts):
        raise ConfigError("Expected images: at least one positive count.")
    return (counts + [counts[-1]] * hospitals)[:hospitals]


def format_bytes(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    exponent = min(int(math.log(size, 1024)), 3)
    return f"{size / 1024 ** exponent:.1f} {('B', 'KB', 'MB', 'GB')[exponent]}"

"""``dopamine simulate``: a whole federation on this computer, with real processes and real TLS.

Writes synthetic fundus images for K hospitals, creates a federation (loopback HTTPS on a free
port), starts the coordinator and K hospital clients as separate processes
(``python -m core.cli ...``), optionally SIGKILLs hospitals after their upload in a given round,
waits for the end and reports per-round metrics, each hospital's epsilon (from its own ledger),
bytes sent and wall time.

    result = run(SimulationConfig(hospitals=3, mode="fscdp"), progress=..., cancel=...)
    result.to_dict()   # coordinator_url, plan, hospitals, rounds, model_path, ...

Why one module (about 470 lines): the simulation's processes, its run and the collection of its
results belong to one command.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.device import DEFAULT_DEVICE, check_device_name, device_name
from core.errors import ConfigError, FederationError
from core.jobs import NEVER_CANCELLED, CancelToken, ProgressFn, no_progress

# What a simulation on the synthetic data sets differently from the plan's defaults
# (core.federation.layout.PLAN_DEFAULTS). FSCDP is the 3-hospital demo's tuning (200 synthetic images
# per hospital at 64 px, small_cnn, sigma 1, C 1): q 0.3, the coordinator's SGD with momentum 0.9 at
# lr 0.3 decayed to 0 (cosine) over 160 rounds; an emulation of exactly these DP-SGD steps held
# 0.69-0.71 test accuracy from round 125 on (majority-class baseline 0.495), with q 0.2 it was
# 0.55-0.65 and varied more. delta 1e-4 is below 1/N for 200 images per hospital.
SIMULATION_TUNING: dict[str, dict] = {
    "fscdp": {"rounds": 160, "sample_rate": 0.3, "lr": 0.3, "delta": 1e-4, "server_lr_schedule": "cosine"},
    "fpdp": {"rounds": 5, "lr": 0.2, "delta": 1e-4},
    "f": {"rounds": 5},
}


@dataclass
class SimulationConfig:
    hospitals: int = 3
    mode: str = "fscdp"
    rounds: int | None = None
    drops: list[tuple[int, int]] = field(default_factory=list)  # (hospital number from 1, round)
    restart_dropped_after_s: float | None = None  # None: a dropped hospital stays down
    per_hospital: int = 200
    test_images: int = 200
    image_size: int = 64
    data_image_size: int | None = None  # synthetic images on disk (default: 1.5 x image_size)
    model: str = "small_cnn"
    workdir: Path | None = None  # keep everything here; None: a temporary folder, deleted at the end
    seed: int = 0
    threshold: int | None = None
    colluders: int | None = None
    max_attempts: int | None = None
    sample_rate: float | None = None
    batch_size: int | None = None
    local_epochs: int | None = None
    noise_multiplier: float | None = None
    max_grad_norm: float | None = None
    lr: float | None = None
    momentum: float | None = None
    delta: float | None = None
    accountant: str = "rdp"
    server_optimizer: str | None = None
    server_lr_schedule: str | None = None
    secagg: bool | None = None
    max_epsilon: float = 1000.0
    eval_every: int | None = None
    threads_per_process: int = 1
    device: str = DEFAULT_DEVICE  # every hospital's local work (core.device); the coordinator stays on the CPU
    timeout_s: float = 3600.0


@dataclass
class HospitalOutcome:
    name: str
    hospital_id: str
    num_images: int
    epsilon: float
    rounds_participated: list[int]
    bytes_sent: int
    wall_time_s: float
    exit_code: int | None
    killed_in_round: int | None
    home: str


@dataclass
class SimulationResult:
    coordinator_url: str
    federation_dir: str
    plan: dict
    hospitals: list[HospitalOutcome]
    rounds: list[dict]
    model_path: str | None
    status: str
    wall_time_s: float
    majority_baseline: float | None
    final_metrics: dict

    def to_dict(self) -> dict:
        return asdict(self)


def parse_drop(text: str) -> tuple[int, int]:
    """'H@R' -> (H, R): kill hospital number H (from 1) in round R after it uploaded."""
    try:
        hospital, round = text.split("@")
        value = (int(hospital), int(round))
    except ValueError as exc:
        raise ConfigError(f"--drop {text!r}: write HOSPITAL@ROUND, e.g. 2@3.") from exc
    if value[0] < 1 or value[1] < 1:
        raise ConfigError(f"--drop {text!r}: hospital and round count from 1.")
    return value


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    # The children run `python -m core.cli` from this checkout / installation.
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def wait_until_serving(url: str, ca_file: Path, *, timeout_s: float = 60.0, process: subprocess.Popen | None = None,
                       cancel: CancelToken = NEVER_CANCELLED) -> None:
    import requests

    session = requests.Session()
    session.trust_env = False
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            cancel.check()
            if process is not None and process.poll() is not None:
                raise FederationError(f"The coordinator exited with code {process.returncode} before serving; see its log.")
            try:
                # Connection: close, so no idle connection of ours delays the coordinator's shutdown.
                with session.get(url + "/v1/health", verify=str(ca_file), timeout=2,
                                 headers={"Connection": "close"}) as response:
                    if response.ok:
                        return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise FederationError(f"The coordinator did not start serving at {url} within {timeout_s:.0f} s.")
            cancel.wait(0.2)
    finally:
        session.close()


class HospitalProcess:
    """One ``dopamine join`` process and the events it printed (JSON lines on stdout).

    Each simulated hospital has its own home. One person runs them all here, so the roster is
    accepted as the coordinator shows it (``--accept-roster any``); real hospitals compare fingerprints.
    """

    def __init__(self, number: int, invitation: Path, data: Path, home: Path, log: Path, *,
                 max_epsilon: float, threads: int = 1, device: str = DEFAULT_DEVICE,
                 extra_env: dict[str, str] | None = None):
        self.number = number
        self.invitation = invitation
        self.data = data
        self.home = home
        self.log_path = log
        self.max_epsilon = max_epsilon
        self.threads = threads
        self.device = device
        self.extra_env = extra_env or {}
        self.events: list[dict] = []
        self.process: subprocess.Popen | None = None
        self.killed_in_round: int | None = None
        self.started = 0.0
        self.ended: float | None = None
        # Called as on_event(hospital, event_dict) from a reader thread.
        self.on_event: Callable[[HospitalProcess, dict], None] | None = None

    def start(self) -> None:
        argv = [sys.executable, "-m", "core.cli", "join", str(self.invitation), "--data", str(self.data),
                "--home", str(self.home), "--max-epsilon", str(self.max_epsilon), "--accept-roster", "any",
                "--events-jsonl", "--threads", str(self.threads), "--device", self.device]
        self.started = self.started or time.monotonic()
        self.ended = None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log,
                                            env=child_env(self.threads) | self.extra_env)
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()

    def _read(self, process: subprocess.Popen) -> None:
        assert process.stdout is not None  # started with stdout=PIPE
        for raw in process.stdout:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            self.events.append(event)
            if self.on_event is not None:
                self.on_event(self, event)

    def kill(self) -> None:
        """SIGKILL: no clean-up at all, as in a power cut."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        """The process's exit code (None while it runs or before it started)."""
        return self.process.returncode if self.process is not None else None

    @property
    def membership(self) -> Path:
        """This hospital's folder for the federation (state.json, models, pending uploads)."""
        from core.federation.client import membership_folder
        from core.federation.invitation import read_invitation
        from core.home import HospitalHome

        return membership_folder(HospitalHome.at(self.home), read_invitation(self.invitation))


class CoordinatorProcess:
    """``dopamine coordinator serve`` as a child process."""

    def __init__(self, folder: Path, log: Path, *, threads: int = 1) -> None:
        self.folder = Path(folder)
        self.log_path = log
        self.threads = threads
        self.process: subprocess.Popen | None = None

    def start(self, *, url: str, ca_file: Path, cancel: CancelToken = NEVER_CANCELLED) -> None:
        argv = [sys.executable, "-m", "core.cli", "coordinator", "serve", str(self.folder)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=log, env=child_env(self.threads))
        wait_until_serving(url, ca_file, process=self.process, cancel=cancel)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None


def _plan_init_config(config: SimulationConfig, folder: Path, port: int, eval_data: Path):
    from core.federation.layout import InitConfig

    tuning = SIMULATION_TUNING[config.mode]

    def pick(name: str):
        value = getattr(config, name)
        return value if value is not None else tuning.get(name)

    rounds = pick("rounds")
    return InitConfig(
        folder=folder, name=f"simulation ({config.mode.upper()}, {config.hospitals} hospitals)", mode=config.mode,
        rounds=rounds, hospitals=config.hospitals, hosts=["127.0.0.1", "localhost"], port=port,
        bind_host="127.0.0.1", threshold=config.threshold, colluders=config.colluders,
        max_attempts=config.max_attempts, model=config.model, image_size=config.image_size,
        noise_multiplier=pick("noise_multiplier"), max_grad_norm=pick("max_grad_norm"),
        sample_rate=pick("sample_rate"), batch_size=pick("batch_size"), local_epochs=pick("local_epochs"),
        lr=pick("lr"), momentum=pick("momentum"), delta=pick("delta"), accountant=config.accountant,
        server_optimizer=pick("server_optimizer"), server_lr_schedule=pick("server_lr_schedule"),
        secagg=config.secagg, seed=config.seed, eval_data=eval_data,
        eval_every=config.eval_every if config.eval_every is not None else max(1, rounds // 10),
        compute_phase_timeout_s=120.0, key_phase_timeout_s=60.0,
    )


def run(config: SimulationConfig, *, progress: ProgressFn = no_progress,
        cancel: CancelToken = NEVER_CANCELLED) -> SimulationResult:
    if config.mode not in SIMULATION_TUNING:
        raise ConfigError(f"Unknown mode {config.mode!r}; choose f, fpdp or fscdp.")
    if config.hospitals < 1:
        raise ConfigError("A simulation needs at least one hospital.")
    for hospital, _ in config.drops:
        if hospital > config.hospitals:
            raise ConfigError(f"--drop {hospital}@...: there are only {config.hospitals} hospitals.")
    # cuda without a GPU: refused here rather than by every hospital's process (auto needs no torch here).
    if check_device_name(config.device) == "cuda":
        device_name(config.device)
    started = time.monotonic()
    temporary = config.workdir is None
    root = Path(config.workdir) if config.workdir is not None else Path(tempfile.mkdtemp(prefix="dopamine-sim-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        return _run(config, root, temporary, started, progress, cancel)
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)


def _run(config: SimulationConfig, root: Path, temporary: bool, started: float, progress: ProgressFn,
         cancel: CancelToken) -> SimulationResult:
    from core.data.synthetic import write_demo_data
    from core.federation.invitation import read_invitation
    from core.federation.layout import FederationPaths, init_federation

    data = root / "data"
    if not (data / "test").exists():
        progress(0.0, f"Writing synthetic images for {config.hospitals} hospitals")
        write_demo_data(data, hospitals=config.hospitals, per_hospital=config.per_hospital,
                        test_images=config.test_images,
                        size=config.data_image_size or int(config.image_size * 3 // 2), seed=config.seed,
                        progress=lambda f, m: progress(0.05 * f, m), cancel=cancel)
    federation = root / "federation"
    if federation.exists():
        shutil.rmtree(federation)
    for old in ("hospitals", "logs"):
        shutil.rmtree(root / old, ignore_errors=True)
    port = free_port()
    init = init_federation(_plan_init_config(config, federation, port, data / "test"))
    paths = FederationPaths(federation)
    logs = root / "logs"
    coordinator = CoordinatorProcess(federation, logs / "coordinator.out", threads=config.threads_per_process)
    hospitals: list[HospitalProcess] = []
    try:
        progress(0.05, "Starting the coordinator")
        coordinator.start(url=init.coordinator_url, ca_file=paths.tls / "ca.pem", cancel=cancel)
        drops: dict[int, set[int]] = {}
        for number, dropped_round in config.drops:
            drops.setdefault(number, set()).add(dropped_round)
        rounds_total = init.plan.rounds
        done_rounds = [0]

        def on_event(hospital: HospitalProcess, event: dict) -> None:
            kind = event.get("event")
            if kind == "uploaded" and event.get("round") in drops.get(hospital.number, set()) \
                    and hospital.killed_in_round is None:
                hospital.killed_in_round = event["round"]
                hospital.kill()
                hospital.ended = time.monotonic()
                if config.restart_dropped_after_s is not None:
                    threading.Timer(config.restart_dropped_after_s, hospital.start).start()
            elif kind == "model_received" and event.get("round", 0) > done_rounds[0]:
                done_rounds[0] = event["round"]
                progress(0.1 + 0.85 * done_rounds[0] / rounds_total, f"Round {done_rounds[0]} of {rounds_total} done")

        for number, invitation in enumerate(sorted(init.invitations), start=1):
            hospital = HospitalProcess(number, invitation, data / f"hospital_{number:02d}",
                                       root / "hospitals" / f"hospital_{number:02d}", logs / f"hospital_{number:02d}.err",
                                       max_epsilon=config.max_epsilon, threads=config.threads_per_process,
                                       device=config.device)
            hospital.on_event = on_event
            hospitals.append(hospital)
            hospital.start()
        progress(0.1, f"{config.hospitals} hospitals joining")
        deadline = time.monotonic() + config.timeout_s
        while any(h.running for h in hospitals) or _restart_pending(hospitals, config):
            cancel.wait(0.2)
            if coordinator.exited:
                raise FederationError(f"The coordinator exited unexpectedly; see {coordinator.log_path}.")
            if time.monotonic() > deadline:
                raise FederationError(f"The simulation did not finish within {config.timeout_s:.0f} s; logs are in {logs}.")
            for hospital in hospitals:
                if not hospital.running and hospital.ended is None:
                    hospital.ended = time.monotonic()
        for hospital in hospitals:
            if hospital.ended is None:
                hospital.ended = time.monotonic()
        failed = [h for h in hospitals if h.returncode != 0
                  and not (h.killed_in_round is not None and h.returncode == -signal.SIGKILL)]
        if failed:
            h = failed[0]
            raise FederationError(f"Hospital {h.number} ended with code {h.returncode}: "
                                  f"{_last_line(h.log_path)}")
    finally:
        for hospital in hospitals:
            hospital.kill()
        coordinator.stop()
    progress(0.97, "Collecting results")
    return _collect(config, root, temporary, init, paths, hospitals, started, read_invitation)


def _restart_pending(hospitals: list[HospitalProcess], config: SimulationConfig) -> bool:
    # A killed hospital that will be restarted keeps the simulation open until it has run again.
    return config.restart_dropped_after_s is not None and any(
        h.killed_in_round is not None and not h.running and h.process is not None and h.process.returncode == -signal.SIGKILL
        for h in hospitals)


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1][:300] if lines else "(no output)"


def _collect(config, root, temporary, init, paths, hospitals, started, read_invitation) -> SimulationResult:
    from core.federation.status import read_status
    from core.federation.store import CoordinatorStore
    from core.home import HospitalHome
    from core.privacy.ledger import PrivacyLedger

    status = read_status(paths.root, last_rounds=10**6)
    store = CoordinatorStore(paths.state)
    try:
        records = {h.hospital_id: h for h in store.hospitals()}
        rounds = store.rounds()
    finally:
        store.close()
    outcomes = []
    for hospital in hospitals:
        invitation = read_invitation(hospital.invitation)
        record = records.get(invitation.hospital_id)
        home = HospitalHome.at(hospital.home)
        epsilon = 0.0
        if home.ledger.exists():
            with PrivacyLedger(home.ledger) as ledger:
                epsilon = ledger.spent()
        bytes_sent = 0
        state_file = hospital.membership / "state.json"
        if state_file.exists():
            bytes_sent = int(json.loads(state_file.read_text()).get("bytes_sent", 0))
        outcomes.append(HospitalOutcome(
            name=invitation.hospital_name, hospital_id=invitation.hospital_id,
            num_images=record.num_images if record else 0, epsilon=epsilon,
            rounds_participated=[r.round for r in rounds if invitation.hospital_id in r.included],
            bytes_sent=bytes_sent, wall_time_s=round((hospital.ended or time.monotonic()) - hospital.started, 3),
            exit_code=hospital.process.returncode if hospital.process else None,
            killed_in_round=hospital.killed_in_round, home=str(hospital.home),
        ))
    model = paths.model_package(status["rounds_finished"])
    model_path = None
    if model.exists():
        if temporary:
            from core.paths import data_dir

            keep = data_dir() / "simulations" / f"{init.plan.federation_id}.dpm"
            keep.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(model, keep)
            model_path = str(keep)
        else:
            model_path = str(model.resolve())
    final_metrics = next((r.metrics for r in reversed(rounds) if r.metrics), {})
    return SimulationResult(
        coordinator_url=init.coordinator_url, federation_dir=str(paths.root) if not temporary else "",
        plan=init.plan.to_dict(), hospitals=outcomes,
        rounds=[{"round": r.round, "seconds": round(r.finished_at - r.started_at, 4), "attempts": r.attempts,
                 "included": r.included, "images": r.images, "metrics": r.metrics} for r in rounds],
        model_path=model_path, status=status["status"], wall_time_s=round(time.monotonic() - started, 3),
        majority_baseline=_majority_baseline(root / "data" / "test"), final_metrics=final_metrics,
    )


def _majority_baseline(test_dir: Path) -> float | None:
    counts = [sum(1 for f in d.iterdir() if f.is_file()) for d in test_dir.iterdir() if d.is_dir()] if test_dir.exists() else []
    return max(counts) / sum(counts) if counts and sum(counts) else None

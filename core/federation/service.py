"""The coordinator as a background process of the lead site: start, pause, resume, stop, reconnect, and
the live status the host view and ``dopamine coordinator status`` show.

The process is ``dopamine coordinator serve DIR`` (core.federation.server), started in its own session
so it does not die with a terminal; whether it outlives the app's window is the app's choice (it stops
it on quit unless the user asked otherwise). The process itself keeps DIR/service.json (pid, port)
while it serves, so an app opened later, the CLI, or a systemd-started coordinator are all found the
same way: the pid in that file is alive and is a ``coordinator serve`` of this folder, and
/v1/health answers over TLS checked against the federation's own CA.

Pause is not a process signal: a stopped process makes hospitals retry, and a frozen one lets the
open step's clock run out. Pausing writes DIR/hold; the coordinator lets the round in progress finish
and holds the next attempt at its first step (round keys: nothing noised, nothing charged) until the
file is gone (core.federation.round_machine).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.config import atomic_write_bytes
from core.errors import ConfigError, FederationError
from core.federation.layout import FederationPaths, load_settings
from core.federation.plan import FederationPlan, load_plan
from core.home import HospitalHome
from core.jobs import NEVER_CANCELLED, CancelToken

START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 45.0  # uvicorn's 3 s grace, then the advancing thread's last step (the join waits up to 30 s)
_OUTPUT_LIMIT = 1024 * 1024

# Coordinators this process started: their Popen objects reap them (a dead child left unreaped would
# still answer os.kill(pid, 0), and look alive).
_children: dict[int, subprocess.Popen] = {}


def hosted_federations(home: HospitalHome) -> list[Path]:
    """The federation folders this site hosts (HOME/coordinators/*), newest first."""
    folder = home.coordinators
    if not folder.is_dir():
        return []
    # Folder names are made safe (letters, digits, - and _); a dot marks a copy a restore moved aside.
    found = [p for p in folder.iterdir() if p.is_dir() and "." not in p.name and (p / "plan.toml").is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def port_problem(host: str, port: int) -> str:
    """Why the coordinator could not listen on ``host``:``port`` ("" when it can)."""
    if not 1 <= int(port) <= 65535:
        return f"Port {port} is not a valid TCP port (1-65535)."
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As uvicorn binds: a port whose last connections are in TIME_WAIT is free for it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, int(port)))
        except PermissionError:
            return f"Port {port} needs administrator rights on this computer; choose one above 1023."
        except OSError as exc:
            return (f"Port {port} on {host} is in use or unavailable ({exc.strerror or exc}); stop the other "
                    "program or choose another port.")
    return ""


@dataclass(frozen=True)
class ServiceState:
    running: bool
    pid: int | None = None
    url: str = ""
    host: str = ""
    port: int = 0
    started_at: float | None = None
    started_here: bool = False  # this process started it (else the app before, a terminal or systemd)


def _proc_args(pid: int) -> tuple[list[str], Path] | None:
    """(argv, working folder) of ``pid`` on Linux; None where /proc does not tell (or the pid is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a], cwd


def _serves(pid: int, folder: Path) -> bool:
    """Whether ``pid`` is alive and is ``coordinator serve`` of ``folder`` (a pid can be reused)."""
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        _children.pop(pid, None)
        return False
    if Path("/proc").is_dir():
        found = _proc_args(pid)
        if found is None:
            return False
        args, cwd = found
        for index, arg in enumerate(args[:-2]):
            if arg == "coordinator" and args[index + 1] == "serve":
                target = next((a for a in args[index + 2:] if not a.startswith("-")), None)
                return target is not None and (cwd / target).resolve() == folder.resolve()
        return False
    if sys.platform == "win32":
        return child is not None  # os.kill(pid, 0) would end the process there
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


class CoordinatorService:
    """One hosted federation folder's coordinator process."""

    def __init__(self, folder: Path) -> None:
        self.paths = FederationPaths(Path(folder))
        if not self.paths.plan.exists():
            raise FederationError(f"{folder} is not a federation folder (no plan.toml).")

    @property
    def folder(self) -> Path:
        return self.paths.root

    # -- finding it -------------------------------------------------------------------------------

    def record(self) -> dict | None:
        try:
            data = json.loads(self.paths.service_record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None

    def state(self) -> ServiceState:
        record = self.record()
        if record is None or not _serves(record["pid"], self.folder):
            return ServiceState(running=False)
        return ServiceState(running=True, pid=record["pid"], url=str(record.get("url", "")),
                            host=str(record.get("host", "")), port=int(record.get("port", 0)),
                            started_at=record.get("started_at"), started_here=record["pid"] in _children)

    def health(self, *, timeout_s: float = 3.0) -> bool:
        """/v1/health answers over TLS, the certificate checked against this federation's CA."""
        settings = load_settings(self.paths)
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(settings.bind_host, settings.bind_host)
        context = ssl.create_default_context(cafile=str(self.paths.tls / "ca.pem"))
        try:
            with socket.create_connection((host, settings.port), timeout=timeout_s) as raw:
                # The certificate names the hosts hospitals use; checking it against the first of them
                # proves the answer comes from this federation's coordinator, whatever address we dialled.
                with context.wrap_socket(raw, server_hostname=settings.hosts[0]) as tls:
                    tls.sendall(f"GET /v1/health HTTP/1.1\r\nHost: {settings.hosts[0]}\r\n"
                                "Connection: close\r\n\r\n".encode())
                    answer = b""
                    while len(answer) < 65536:
                        chunk = tls.recv(4096)
                        if not chunk:
                            break
                        answer += chunk
        except (OSError, ssl.SSLError):
            return False
        head, _, body = answer.partition(b"\r\n\r\n")
        return head.startswith(b"HTTP/1.1 200") and b'"ok"' in body

    # -- starting and stopping ----------------------------------------------------------------------

    def start(self, *, timeout_s: float = START_TIMEOUT_S, cancel: CancelToken = NEVER_CANCELLED) -> ServiceState:
        """Start ``dopamine coordinator serve`` in the background and wait until it answers."""
        from core.federation.simulate import child_env

        current = self.state()
        if current.running:
            raise FederationError(f"The coordinator of this federation is already running (process {current.pid}).")
        settings = load_settings(self.paths)
        problem = port_problem(settings.bind_host, settings.port)
        if problem:
            raise FederationError(problem)
        output = self.paths.service_output
        if output.exists() and output.stat().st_size > _OUTPUT_LIMIT:
            output.unlink()
        argv = [sys.executable, "-m", "core.cli", "coordinator", "serve", str(self.folder.resolve())]
        with open(output, "ab") as out:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=self.folder,
                                       env=child_env(1), start_new_session=True)
        _children[process.pid] = process
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                _children.pop(process.pid, None)
                raise FederationError(f"The coordinator stopped while starting (exit code {process.returncode}): "
                                      f"{self._last_words()}")
            state = self.state()
            if state.running and self.health():
                return state
            if time.monotonic() > deadline:
                self._terminate(process.pid)
                raise FederationError(f"The coordinator did not answer within {timeout_s:.0f} s; see {self.paths.log}.")
            try:
                cancel.wait(0.2)
            except BaseException:
                self._terminate(process.pid)
                raise

    def stop(self, *, timeout_s: float = STOP_TIMEOUT_S) -> bool:
        """Stop the running coordinator gracefully (SIGTERM); False when none was running."""
        state = self.state()
        if not state.running or state.pid is None:
            return False
        self._terminate(state.pid, timeout_s=timeout_s)
        return True

    def _terminate(self, pid: int, *, timeout_s: float = STOP_TIMEOUT_S) -> None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout_s
        while _serves(pid, self.folder) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _serves(pid, self.folder):
            os.kill(pid, getattr(signal, "SIGKILL", signal.SIGTERM))  # SQLite holds the state: nothing committed is lost
            time.sleep(0.2)
        child = _children.pop(pid, None)
        if child is not None:
            child.wait(timeout=10)

    def _last_words(self) -> str:
        try:
            lines = self.paths.service_output.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no output"
        errors = [line for line in lines if line.startswith("error:")]
        return (errors or lines or ["no output"])[-1][:500]

    # -- pausing ----------------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self.paths.hold.exists()

    def pause(self) -> None:
        """Hold the federation: the round in progress finishes, the next waits at its start."""
        atomic_write_bytes(self.paths.hold, json.dumps({"since": time.time()}).encode())

    def resume(self) -> None:
        self.paths.hold.unlink(missing_ok=True)


# ---- the live status ----------------------------------------------------------------------------------

@dataclass
class HostedHospital:
    hospital_id: str
    name: str
    enrolled: bool
    status: str  # invited | active | declined | left
    online: bool
    last_seen: float | None
    rounds_included: int
    num_images: int | None
    bytes_received: int
    # Computed by the coordinator from the declared image count and the rounds whose released sum
    # included this hospital; the hospital's own ledger is the authority (it also counts failed attempts).
    epsilon: float | None
    fingerprint: str = ""


@dataclass
class HostStatus:
    folder: str
    name: str
    federation_id: str
    mode: str
    status: str  # enrolling | confirming | running | finished | stopped
    stop_reason: str
    round: int
    rounds: int
    attempt: int
    phase: str
    rounds_finished: int
    coordinator_url: str
    running: bool
    healthy: bool
    pid: int | None
    paused: bool
    delta: float | None
    accountant: str
    hospitals: list[HostedHospital] = field(default_factory=list)
    last_rounds: list[dict] = field(default_factory=list)  # round, seconds, included, images, metrics
    latest_model: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@functools.lru_cache(maxsize=512)
def _epsilon(noise: float, rate: float, steps: int, delta: float, accountant: str) -> float:
    from core.privacy.accountant import compute_epsilon

    return compute_epsilon(sample_rate=rate, noise_multiplier=noise, steps=steps, delta=delta, accountant=accountant)


def coordinator_epsilon(plan: FederationPlan, rounds_included: int, num_images: int) -> float | None:
    """The ε the coordinator's model cards state for a hospital in ``rounds_included`` released sums."""
    if not plan.is_private:
        return None
    noise, rate, per_round = plan.round_cost(num_images)
    steps = per_round * rounds_included
    if steps == 0:
        return 0.0
    assert plan.delta is not None  # validate(): a private plan sets it
    return _epsilon(noise, rate, steps, float(plan.delta), plan.accountant)


def host_status(folder: Path, *, check_health: bool = True) -> HostStatus:
    """Everything the host view shows, read from the folder (no signed request): the state in SQLite,
    the running process, the pause, and what the serving coordinator last wrote to live.json."""
    from core.federation.server import read_live
    from core.federation.status import read_status

    paths = FederationPaths(Path(folder))
    status = read_status(paths.root, last_rounds=100_000)
    plan = load_plan(paths.plan)
    service = CoordinatorService(paths.root)
    state = service.state()
    live = read_live(paths)  # what the coordinator last wrote: kept after it stops (bytes, last seen)
    seen = live.get("hospitals", {}) if live.get("federation_id") == plan.federation_id else {}
    enrolled = {h["hospital_id"]: h for h in status["hospitals"]}
    hospitals = []
    names = plan.hospital_names or [f"hospital-{i:02d}" for i in range(1, plan.hospitals + 1)]
    for hospital_id, name in zip(plan.hospital_ids, names, strict=True):
        record = enrolled.get(hospital_id)
        entry = seen.get(hospital_id, {}) if isinstance(seen.get(hospital_id), dict) else {}
        rounds = int(record["rounds_included"]) if record else 0
        hospitals.append(HostedHospital(
            hospital_id=hospital_id, name=record["name"] if record else name, enrolled=record is not None,
            status=record["status"] if record else "invited", online=state.running and bool(entry.get("online")),
            last_seen=entry.get("last_seen"), rounds_included=rounds,
            num_images=record["num_images"] if record else None,
            bytes_received=int(entry.get("bytes_received") or 0),
            epsilon=coordinator_epsilon(plan, rounds, record["num_images"]) if record else None,
            fingerprint=record["fingerprint"] if record else ""))
    return HostStatus(
        folder=str(paths.root), name=plan.name, federation_id=plan.federation_id, mode=plan.mode,
        status=status["status"], stop_reason=status["stop_reason"], round=status["round"], rounds=plan.rounds,
        attempt=status["attempt"], phase=status["phase"], rounds_finished=status["rounds_finished"],
        coordinator_url=status["coordinator_url"], running=state.running,
        healthy=state.running and check_health and service.health(), pid=state.pid, paused=service.paused,
        delta=plan.delta, accountant=plan.accountant, hospitals=hospitals, last_rounds=status["last_rounds"],
        latest_model=status["latest_model"])


def host_status_lines(status: HostStatus) -> list[str]:
    """What ``dopamine coordinator status`` adds about the process, the pause and each hospital."""
    if status.running:
        lines = [f"Coordinator process: running (pid {status.pid})"
                 + ("" if status.healthy else ", not answering /v1/health")]
    else:
        lines = ["Coordinator process: not running (start it with `dopamine coordinator serve` or from the app)"]
    if status.paused:
        lines.append("Paused by the lead site: the next round waits at its start (`dopamine coordinator resume`).")
    for h in status.hospitals:
        seen = time.strftime("%H:%M:%S", time.localtime(h.last_seen)) if h.last_seen else "never"
        epsilon = f", ε {h.epsilon:.3g} (coordinator's count)" if h.epsilon is not None else ""
        lines.append(f"  {h.hospital_id} {h.name}: {h.status}, {'online' if h.online else 'offline'}, "
                     f"last seen {seen}, {h.rounds_included} rounds, {h.bytes_received} bytes received{epsilon}")
    return lines


def collect_final_model(home: HospitalHome, folder: Path) -> Path:
    """Copy the finished federation's signed global model into the home's models (the Models page lists
    it) and trust its signer there: the coordinator's key was made by this site when it hosted it."""
    import shutil

    from core.models.trust import TrustStore
    from core.signing import load_private_key, public_key_bytes

    status = host_status(folder, check_health=False)
    if status.status != "finished" or not status.latest_model:
        raise FederationError("The federation has not finished yet; its final model is published after the last round.")
    target = home.models / f"{Path(folder).name}-final.dpm"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(status.latest_model, target)
    key = public_key_bytes(load_private_key(FederationPaths(Path(folder)).signing_key))
    store = TrustStore(home)
    if key not in store.trusted_keys():
        store.add(key, f"Coordinator of {status.name} (hosted here)"[:80], source=str(folder))
    return target


def check_hosts(hosts: list[str]) -> list[str]:
    """Host names or IP addresses hospitals will use, cleaned; ConfigError when one cannot be a host."""
    import ipaddress

    cleaned = []
    for host in hosts:
        host = host.strip().strip("[]")
        if not host:
            continue
        try:
            ipaddress.ip_address(host)
        except ValueError:
            labels = host.rstrip(".").split(".")
            if len(host) > 253 or not all(label and len(label) <= 63 and label.replace("-", "").isalnum()
                                          and not label.startswith("-") for label in labels):
                raise ConfigError(f"{host!r} is neither an IP address nor a host name.") from None
        cleaned.append(host)
    if not cleaned:
        raise ConfigError("Give at least one address hospitals will reach the coordinator at.")
    return cleaned

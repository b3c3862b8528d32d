"""The kill -9 matrix (issue 13, part A): a federation of real processes, SIGKILLed at one protocol phase,
restarted as the design says, then checked.

One cell = one phase x one party. The federation: K = 4 hospitals, t = 1, so m = 3 (2m > K + t), FSCDP,
2 rounds, small_cnn at 32 px, the coordinator evaluating every round. The parties: the coordinator, one
hospital (h02), m - 1 = 2 hospitals at once (h02, h03). h01 is never killed: its events mark the phases
when the coordinator is the victim.

Where each kill happens is found from what the processes report, never from a sleep:

- a hospital's event stream (``dopamine join --events-jsonl``): the phase of a round step, the local
  DP-SGD step done, the ledger charged (the upload follows), the upload sent;
- the coordinator's log (``enrolled h02``, ``round 1 done``);
- for the two points no one outside can see (the coordinator between writing round 1's signed model and
  committing the round; its evaluation child evaluating), the first coordinator runs as
  ``pausing_serve.py``, which stops itself there (SIGSTOP); the kit sees the stopped process and kills.

Restart: ``dopamine coordinator serve`` again on the same folder and port; ``dopamine join`` again with the
same home. Then the invariants (``check_invariants``): the federation finishes, or stops with a stated
reason and every hospital says why; no hospital's ledger under-counts what its audit log says it sent;
nothing was charged or released twice; every file is readable (SQLite integrity, every .dpm verifies,
every JSON parses, the audit logs verify, no temporary file is left); no round was released over fewer
than m hospitals; no evaluation child outlives its coordinator.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.federation.invitation import read_invitation
from core.federation.layout import FederationPaths, InitConfig, init_federation
from core.federation.simulate import CoordinatorProcess, HospitalProcess, child_env, free_port
from core.home import HospitalHome

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

PHASES = ("enrolling", "advertising keys", "sharing", "local compute", "upload", "unmasking",
          "publishing the model", "evaluation")
PARTIES = ("coordinator", "one hospital", "m - 1 hospitals")
HOSPITALS = 4
ROUNDS = 2
IMAGE_SIZE = 32
PER_HOSPITAL = 24
CELL_BOUND_S = 300.0  # a safety bound: a cell that runs past it is a hang (a finding), not a slow machine

# What marks each phase in round 1: (the source, what to look for). Events are `dopamine join` events.
EVENT_OF_PHASE = {
    "advertising keys": lambda e: e.get("event") == "phase" and e.get("phase") == "advertise",
    "sharing": lambda e: e.get("event") == "phase" and e.get("phase") == "share",
    "local compute": lambda e: e.get("event") == "local_step",  # computed, not yet charged or sent
    "unmasking": lambda e: e.get("event") == "phase" and e.get("phase") == "unmask",
}


def victims_of(party: str) -> list[int]:
    """Hospital numbers (from 1) the party kills; [] for the coordinator."""
    return {"coordinator": [], "one hospital": [2], "m - 1 hospitals": [2, 3]}[party]


@dataclass
class CellResult:
    phase: str
    party: str
    outcome: str = ""  # "finished", "stopped: <reason>", or what went wrong
    killed: list[str] = field(default_factory=list)  # what was killed, where
    rounds: list[dict] = field(default_factory=list)  # round, attempts, included
    epsilon: dict[str, float] = field(default_factory=dict)  # each hospital's ledger
    releases: dict[str, int] = field(default_factory=dict)  # charged releases each hospital's audit log shows
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class PausableCoordinator(CoordinatorProcess):
    """The coordinator process; the first start may run through pausing_serve.py (see the module doc)."""

    def __init__(self, folder: Path, log: Path, port: int, pause_at: str | None = None) -> None:
        super().__init__(folder, log)
        self.port = port
        self.pause_at = pause_at
        self.starts = 0

    def start(self, *, url: str, ca_file: Path, cancel=None) -> None:  # noqa: ARG002 -- the parent's signature
        from core.federation.simulate import wait_until_serving

        if self.pause_at and self.starts == 0:
            argv = [sys.executable, str(HERE / "pausing_serve.py"), self.pause_at, str(self.folder)]
        else:
            argv = [sys.executable, "-m", "core.cli", "coordinator", "serve", str(self.folder)]
        self.starts += 1
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=log, env=child_env(1), cwd=ROOT)
        wait_until_serving(url, ca_file, process=self.process)

    @property
    def stopped_by_signal(self) -> bool:
        """The process stopped itself (SIGSTOP): state T in /proc."""
        if self.process is None or self.process.poll() is not None:
            return False
        try:
            stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")

    def resume(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)


class ProcessFederation:
    """The federation folder, its coordinator process and its hospital processes, for one cell."""

    def __init__(self, root: Path, data: Path, *, hospitals: int = HOSPITALS, rounds: int = ROUNDS,
                 pause_at: str | None = None, **plan) -> None:
        self.root = Path(root)
        self.data = Path(data)
        port = free_port()
        settings = dict(mode="fscdp", rounds=rounds, hospitals=hospitals, hosts=["127.0.0.1"], port=port,
                        image_size=IMAGE_SIZE, sample_rate=0.5, noise_multiplier=1.0, max_grad_norm=1.0, lr=0.5,
                        delta=1e-3, eval_data=self.data / "test", eval_every=1, compute_phase_timeout_s=60.0,
                        key_phase_timeout_s=30.0)
        settings.update(plan)
        self.init = init_federation(InitConfig(folder=self.root / "federation", name="kill matrix", **settings))
        self.plan = self.init.plan
        self.paths = FederationPaths(self.root / "federation")
        self.invitations = sorted(self.init.invitations)
        self.signing_key = read_invitation(self.invitations[0]).coordinator_signing_key
        self.coordinator = PausableCoordinator(self.paths.root, self.root / "logs" / "coordinator.out", port, pause_at)
        self.hospitals = [
            HospitalProcess(i, invitation, self.data / f"hospital_{i:02d}", self.root / "homes" / f"h{i:02d}",
                            self.root / "logs" / f"hospital_{i:02d}.err", max_epsilon=1000.0)
            for i, invitation in enumerate(self.invitations, start=1)
        ]
        self._restarting: set[int] = set()
        self.lock = threading.Lock()

    # -- processes ------------------------------------------------------------------------------

    def start(self, on_event) -> None:
        self.start_coordinator()
        for hospital in self.hospitals:
            hospital.on_event = on_event
            hospital.start()

    def start_coordinator(self) -> None:
        self.coordinator.start(url=self.init.coordinator_url, ca_file=self.paths.tls / "ca.pem")

    def will_restart(self, numbers: list[int]) -> None:
        """Keep ``wait`` waiting until ``restart_hospitals(numbers)`` has run."""
        with self.lock:
            self._restarting.update(numbers)

    def restart_hospitals(self, numbers: list[int]) -> None:
        """``dopamine join`` again for these hospitals (same home, same invitation)."""
        self.will_restart(numbers)
        try:
            for number in numbers:
                self.hospitals[number - 1].start()
        finally:
            with self.lock:
                self._restarting.difference_update(numbers)

    def kill_hospitals(self, numbers: list[int]) -> None:
        """SIGKILL them all first, then reap: 'at once'."""
        processes = [self.hospitals[n - 1].process for n in numbers]
        for process in processes:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGKILL)
        for process in processes:
            if process is not None:
                process.wait()

    def wait(self, deadline: float) -> None:
        while True:
            with self.lock:
                busy = bool(self._restarting)
            if not busy and not any(h.running for h in self.hospitals):
                return
            if time.monotonic() > deadline:
                raise TimeoutError
            time.sleep(0.1)

    def close(self) -> None:
        for hospital in self.hospitals:
            hospital.kill()
        self.coordinator.resume()
        self.coordinator.stop()

    def logs(self, lines: int = 12) -> str:
        out = []
        for path in sorted((self.root / "logs").glob("*")):
            out.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        if self.paths.log.exists():
            out.append("--- coordinator.log\n" + "\n".join(self.paths.log.read_text().splitlines()[-2 * lines:]))
        return "\n".join(out)

    def home(self, number: int) -> HospitalHome:
        return HospitalHome.at(self.hospitals[number - 1].home)


class LogWatcher:
    """Follows coordinator.log (kept across restarts) and calls ``on_line`` for each new line."""

    def __init__(self, path: Path, on_line) -> None:
        self.path, self.on_line = path, on_line
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def start(self) -> LogWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _follow(self) -> None:
        position, pending = 0, b""
        while not self._stop.is_set():
            try:
                with open(self.path, "rb") as handle:
                    handle.seek(position)
                    chunk = handle.read()
            except FileNotFoundError:
                chunk = b""
            if chunk:
                position += len(chunk)
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self.on_line(line.decode("utf-8", "replace"))
            else:
                self._stop.wait(0.02)


# ---- one cell ---------------------------------------------------------------------------------------

def run_cell(phase: str, party: str, root: Path, data: Path) -> CellResult:
    """Kill ``party`` at ``phase`` of round 1, restart it, let the federation end, check the invariants."""
    assert phase in PHASES and party in PARTIES
    started = time.monotonic()
    result = CellResult(phase, party)
    victims = victims_of(party)
    pause_at = {"publishing the model": "publish", "evaluation": "evaluate"}.get(phase)
    if pause_at == "publish" and party != "coordinator":
        pause_at = None  # hospitals are killed while they fetch the published model (the log says when)
    federation = ProcessFederation(root, data, pause_at=pause_at)
    fired = threading.Event()
    enrolled: list[str] = []

    def kill_now(where: str) -> None:
        if fired.is_set():
            return
        fired.set()
        if party == "coordinator":
            federation.coordinator.kill()
            result.killed.append(f"coordinator at {where}")
            threading.Thread(target=_restart_coordinator, daemon=True).start()
        else:
            federation.will_restart(victims)
            federation.kill_hospitals(victims)
            result.killed.append(f"{', '.join(f'h{n:02d}' for n in victims)} at {where}")
            threading.Thread(target=federation.restart_hospitals, args=(victims,), daemon=True).start()

    def _restart_coordinator() -> None:
        try:
            federation.start_coordinator()
        except Exception as exc:  # noqa: BLE001 -- the cell reports it
            result.violations.append(f"the coordinator did not start again: {exc}")

    def on_event(hospital: HospitalProcess, event: dict) -> None:
        if fired.is_set() or event.get("round", 1) != 1:
            return
        observer = victims[:1] if victims else [1]
        if hospital.number not in observer:
            return
        kind = event.get("event")
        if phase in EVENT_OF_PHASE and EVENT_OF_PHASE[phase](event):
            kill_now(f"{kind} {event.get('phase', '')}".strip() + f" event of h{hospital.number:02d}")
        elif phase == "upload" and (kind == "budget_charged" if victims else kind == "uploaded"):
            # a hospital: charged, its upload being stored and sent; the coordinator: one upload in, more coming
            kill_now(f"{kind} event of h{hospital.number:02d}")

    def on_line(line: str) -> None:
        if fired.is_set():
            return
        match = re.search(r"enrolled (h\d+)", line)
        if phase == "enrolling" and match:
            enrolled.append(match.group(1))
            if party == "coordinator" and len(enrolled) >= 2:
                kill_now(f"enrollment of {match.group(1)} (2 of {HOSPITALS} enrolled)")
            elif party != "coordinator" and match.group(1) in {f"h{n:02d}" for n in victims}:
                kill_now(f"enrollment of {match.group(1)} committed by the coordinator")
        elif phase == "publishing the model" and party != "coordinator" and re.search(r"round 1 done", line):
            kill_now("round 1 published (the hospitals fetch its model)")

    watcher = LogWatcher(federation.paths.log, on_line).start()
    deadline = time.monotonic() + CELL_BOUND_S
    try:
        federation.start(on_event)
        if pause_at is not None:
            while not federation.coordinator.stopped_by_signal:
                if time.monotonic() > deadline or federation.coordinator.exited:
                    raise TimeoutError
                time.sleep(0.02)
            where = "its pause point: " + ("round 1's model written, the round not committed" if pause_at == "publish"
                                           else "its evaluation child evaluating round 1's model")
            if party == "coordinator":
                kill_now(where)
            else:
                kill_now(f"the coordinator's evaluation of round 1 (coordinator held at {pause_at})")
                federation.coordinator.resume()
        federation.wait(deadline)
    except TimeoutError:
        result.violations.append(f"the federation did not end within {CELL_BOUND_S:.0f} s (a hang)")
    finally:
        watcher.stop()
        federation.close()
    if not fired.is_set():
        result.violations.append(f"the kill point ({phase}) was never reached")
    result.seconds = round(time.monotonic() - started, 1)
    check_invariants(federation, result)
    if result.violations:
        result.violations.append("logs:\n" + federation.logs())
    return result


# ---- the invariants ---------------------------------------------------------------------------------

def check_invariants(federation: ProcessFederation, result: CellResult) -> None:
    """Append every violated invariant to ``result.violations`` (and fill in the figures)."""
    _outcome(federation, result)
    _rounds_over_threshold(federation, result)
    for number, _ in enumerate(federation.hospitals, start=1):
        _ledger_covers_audit(federation, number, result)
    _files_readable(federation, result)
    _no_orphans(federation, result)


def _outcome(federation: ProcessFederation, result: CellResult) -> None:
    from core.federation.status import read_status

    status = read_status(federation.paths.root, last_rounds=1000)
    codes = {f"h{h.number:02d}": h.returncode for h in federation.hospitals}
    if status["status"] == "finished" and status["rounds_finished"] == federation.plan.rounds:
        result.outcome = "finished"
        bad = {h: c for h, c in codes.items() if c != 0}
        if bad:
            result.violations.append(f"the federation finished but hospitals exited with {bad}")
    elif status["status"] == "stopped":
        reason = status.get("stop_reason") or ""
        result.outcome = f"stopped: {reason}"
        if not reason.strip() or "\n" in reason:
            result.violations.append(f"stopped without a one-line reason: {reason!r}")
        for hospital in federation.hospitals:
            last = _last_error(hospital.log_path)
            if hospital.returncode == 0 or not last:
                result.violations.append(f"h{hospital.number:02d} did not say why it stopped (exit {hospital.returncode})")
    else:
        result.outcome = f"{status['status']} after round {status['rounds_finished']}"
        result.violations.append(f"the federation neither finished nor stopped: {result.outcome}")


def _last_error(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.startswith("error:")]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _rounds_over_threshold(federation: ProcessFederation, result: CellResult) -> None:
    from core.federation.store import CoordinatorStore

    store = CoordinatorStore(federation.paths.state)
    try:
        rounds = store.rounds()
    finally:
        store.close()
    m = federation.plan.threshold
    numbers = [r.round for r in rounds]
    if len(numbers) != len(set(numbers)) or numbers != sorted(numbers):
        result.violations.append(f"rounds released out of order or twice: {numbers}")
    for record in rounds:
        result.rounds.append({"round": record.round, "attempts": record.attempts, "included": list(record.included)})
        if len(set(record.included)) < m:
            result.violations.append(f"round {record.round} was released over {len(record.included)} hospitals, "
                                     f"fewer than m = {m}")
        for hospital_id in record.included:
            number = int(hospital_id[1:])
            keys = _ledger_keys(federation.home(number))
            if not any(f":round:{record.round}:" in key for key in keys):
                result.violations.append(f"{hospital_id} is inside round {record.round} but its ledger has no charge "
                                         "for that round")


def _ledger_keys(home: HospitalHome) -> set[str]:
    from core.privacy.ledger import PrivacyLedger

    if not home.ledger.exists():
        return set()
    with PrivacyLedger(home.ledger) as ledger:
        return ledger.keys()


_UPLOAD = re.compile(r"^POST /v1/rounds/(\d+)/(\d+)/(mask|update)$")


def _ledger_covers_audit(federation: ProcessFederation, number: int, result: CellResult) -> None:
    """The hospital's ε is at least what the noised vectors its audit log records imply, each upload is
    covered by a charge, and no (round, attempt) was sent with two different contents."""
    from core.audit import read_audit_log, verify_audit_log
    from core.privacy.accountant import compute_epsilon
    from core.privacy.ledger import PrivacyLedger
    from core.signing import load_private_key, public_key_bytes

    name = f"h{number:02d}"
    home = federation.home(number)
    if not home.audit_log.exists():
        result.releases[name] = 0
        return
    verified = verify_audit_log(home.audit_log, public_key_bytes(load_private_key(home.identity_key)))
    if not verified.ok:
        result.violations.append(f"{name}'s audit log does not verify: {verified.to_text()}")
    contents: dict[tuple[int, int], set[str]] = defaultdict(set)
    for entry in read_audit_log(home.audit_log):
        match = _UPLOAD.match(entry.destination)
        if entry.kind != "sent" or not match:
            continue
        contents[(int(match.group(1)), int(match.group(2)))].add(entry.sha256)
        if not entry.ledger_key:
            result.violations.append(f"{name} sent {entry.destination} without naming the charge that covers it")
    twice = {k: len(v) for k, v in contents.items() if len(v) > 1}
    if twice:
        result.violations.append(f"{name} sent different noised vectors for one round attempt: {twice}")
    result.releases[name] = len(contents)
    if not home.ledger.exists():
        if contents:
            result.violations.append(f"{name} sent {len(contents)} noised vectors but has no ledger")
        return
    plan = federation.plan
    with PrivacyLedger(home.ledger) as ledger:
        spent, keys, delta, accountant = ledger.spent(), ledger.keys(), ledger.delta, ledger.accountant
    result.epsilon[name] = round(spent, 6)
    for round_, attempt in contents:
        if not any(key.endswith(f":round:{round_}:attempt:{attempt}") for key in keys):
            result.violations.append(f"{name} sent round {round_} attempt {attempt} but its ledger never charged it")
    if contents:
        noise, rate, steps = plan.round_cost(_num_images(federation, number))
        implied = compute_epsilon(sample_rate=rate, noise_multiplier=noise, steps=steps * len(contents),
                                  delta=float(delta), accountant=accountant)
        if spent < implied * (1 - 1e-9):
            result.violations.append(f"{name}'s ledger under-counts: epsilon {spent:.6g}, but its audit log shows "
                                     f"{len(contents)} noised uploads, worth {implied:.6g}")


def _num_images(federation: ProcessFederation, number: int) -> int:
    state = json.loads((federation.hospitals[number - 1].membership / "state.json").read_text())
    return int(state["num_images"])


def _files_readable(federation: ProcessFederation, result: CellResult) -> None:
    from core.errors import DopamineError
    from core.models.package import read_package

    places = [federation.paths.root] + [h.home for h in federation.hospitals]
    for place in places:
        for path in sorted(Path(place).rglob("*")):
            if not path.is_file():
                continue
            relative = path.relative_to(federation.root)
            if path.name.endswith(".tmp") or path.name.endswith("-journal"):
                result.violations.append(f"a temporary file was left behind: {relative}")
            elif path.suffix == ".sqlite":
                problem = _sqlite_problem(path)
                if problem:
                    result.violations.append(f"{relative}: {problem}")
            elif path.suffix == ".dpm":
                try:
                    read_package(path, require_signature=True, trusted_keys=[federation.signing_key])
                except DopamineError as exc:
                    result.violations.append(f"{relative} does not verify: {exc}")
            elif path.suffix == ".json":
                try:
                    json.loads(path.read_text(encoding="utf-8"))
                except (ValueError, UnicodeDecodeError) as exc:
                    result.violations.append(f"{relative} is not readable JSON: {exc}")


def _sqlite_problem(path: Path) -> str:
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = connection.execute("PRAGMA integrity_check").fetchall()
        finally:
            connection.close()
    except sqlite3.Error as exc:
        return f"cannot be opened ({exc})"
    return "" if rows == [("ok",)] else f"integrity check: {rows[:3]}"


def _no_orphans(federation: ProcessFederation, result: CellResult) -> None:
    """No evaluation child of a killed coordinator lives on (it must end when its parent's pipe closes)."""
    folder = str(federation.paths.root.resolve())
    deadline = time.monotonic() + 15
    while True:
        left = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"evaluator" in argv and folder.encode() in argv:
                left.append(int(proc.name))
        if not left:
            return
        if time.monotonic() > deadline:
            result.violations.append(f"evaluation processes outlived their coordinator: {left}")
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            return
        time.sleep(0.2)


# ---- the table --------------------------------------------------------------------------------------

def write_result(result: CellResult, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", f"{result.phase} {result.party}".lower()).strip("-")
    path = folder / f"{slug}.json"
    data = result.to_dict()
    data["violations"] = [v for v in result.violations if not v.startswith("logs:")]
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def short_outcome(cell: dict) -> str:
    """One table cell: what happened, in a few words."""
    if cell["violations"]:
        return "VIOLATED: " + cell["violations"][0][:80]
    if cell["outcome"] != "finished":
        return cell["outcome"]
    attempts = {r["round"]: r["attempts"] for r in cell["rounds"]}
    extra = [f"r{r} in {a} attempts" for r, a in sorted(attempts.items()) if a > 1]
    sizes = sorted({len(r["included"]) for r in cell["rounds"]})
    over = "/".join(str(s) for s in sizes)
    return "finished" + (f" ({', '.join(extra)})" if extra else "") + f", sums over {over}"


def markdown_table(folder: Path) -> str:
    cells = {}
    for path in sorted(folder.glob("*.json")):
        cell = json.loads(path.read_text())
        cells[(cell["phase"], cell["party"])] = cell
    lines = ["| phase | " + " | ".join(PARTIES) + " |", "|---|" + "---|" * len(PARTIES)]
    for phase in PHASES:
        row = [short_outcome(cells[(phase, p)]) if (phase, p) in cells else "not run" for p in PARTIES]
        lines.append(f"| {phase} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def epsilon_close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9)

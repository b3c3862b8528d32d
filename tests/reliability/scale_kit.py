"""The scale run (issue 13): K hospitals on loopback complete 3 FSCDP rounds while some drop out mid-round;
the coordinator's peak memory and round times.

The coordinator is the real ``dopamine coordinator serve`` process over real HTTPS. The hospitals run the
real hospital client (core.federation.client.run: enrollment, roster, secure aggregation, ledger, a DP-SGD
step of small_cnn at 16 px on a few images) as threads, a share of them in each of a few pool processes
(scale_pool.py): one ``dopamine join`` process per hospital costs about 235 MB and 1.4 s of CPU for its
imports alone, so 100 of them do not fit in 24 GB on 2 cores. Dropouts, all in round 2:

- killed: the hospitals of one pool process (only they live there) are SIGKILLed together as soon as the
  first of them starts the masking phase (keys shared, masked input not yet sent; the pool kills itself
  from that event, so the point is exact): their connections drop;
- leaving: hospitals that, when the unmasking phase starts (their masked input is in the sum), stop before
  answering and tell the coordinator they leave the federation (``dopamine leave``).

Memory: the coordinator's VmRSS (from /proc) once it serves and once round 1 opens (everyone enrolled), and
its VmHWM (peak RSS) before it is stopped. "Per enrolled hospital" is (peak - RSS before the first
enrollment) / K; across runs, the growth of the peak per added hospital (``growth_per_hospital_kb``).

Invariants checked (``violations``): the federation finishes all rounds; every round is released over at
least m hospitals; no dropped hospital is in a sum released after it dropped; every surviving hospital ends
"completed" with a model that verifies; the coordinator's SQLite passes its integrity check.
"""

from __future__ import annotations

import json
import math
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.federation.layout import FederationPaths, InitConfig, init_federation
from core.federation.simulate import CoordinatorProcess, child_env, free_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ROUNDS = 3
IMAGE_SIZE = 16
DATA_FOLDERS = 4  # synthetic data folders, shared round-robin by the hospitals (each has its own home/cache)
PER_HOSPITAL = 10


@dataclass
class ScaleResult:
    hospitals: int
    threshold: int = 0
    pools: int = 0
    dropouts: list[dict] = field(default_factory=list)  # hospital, how, round, phase
    status: str = ""
    rounds: list[dict] = field(default_factory=list)  # round, seconds, attempts, included
    coordinator_rss_before_mb: float | None = None  # serving, nobody enrolled yet
    coordinator_rss_enrolled_mb: float | None = None  # everyone enrolled, before round 1
    coordinator_peak_rss_mb: float | None = None  # VmHWM at the end
    per_hospital_kb: float | None = None  # (peak - before) / K
    pool_peak_rss_mb: list[float] = field(default_factory=list)
    hospital_in_pool_mb: float | None = None  # (peak - RSS after imports) / hospitals, over the pools that finished
    median_round_s: float | None = None
    max_round_s: float | None = None
    setup_s: float = 0.0  # coordinator start to round 1 open (enrollment, roster)
    wall_s: float = 0.0
    violations: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def dropouts_for(hospitals: int) -> tuple[list[int], list[int]]:
    """(killed, leaving) hospital numbers: K // 10 dropouts (at least 2), half of each kind."""
    count = max(2, hospitals // 10)
    killed = list(range(hospitals - count + 1, hospitals - count // 2 + 1))
    leaving = list(range(hospitals - count // 2 + 1, hospitals + 1))
    return killed, leaving


def write_data(folder: Path) -> Path:
    from core.data.synthetic import write_demo_data

    if not (folder / "summary.json").exists():
        write_demo_data(folder, hospitals=DATA_FOLDERS, per_hospital=PER_HOSPITAL, test_images=0, size=32, seed=11)
    return folder


def _proc_kb(pid: int, field_name: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class _Pool:
    def __init__(self, index: int, spec: dict, folder: Path, on_event) -> None:
        self.index = index
        self.numbers = [h["number"] for h in spec["hospitals"]]
        self.spec_path = folder / f"pool-{index}.json"
        self.spec_path.write_text(json.dumps(spec))
        self.log_path = folder / f"pool-{index}.err"
        self.on_event = on_event
        self.process: subprocess.Popen | None = None
        self.reader: threading.Thread | None = None
        self.peak_rss_mb: float | None = None
        self.base_rss_mb: float | None = None
        self.killed = False

    def start(self, threads: int = 1) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, str(HERE / "scale_pool.py"), str(self.spec_path)],
                                            stdout=subprocess.PIPE, stderr=log, env=child_env(threads), cwd=ROOT)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for raw in self.process.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            if event.get("event") == "pool_done":
                self.peak_rss_mb = event.get("peak_rss_mb")
                self.base_rss_mb = event.get("base_rss_mb")
            self.on_event(self, event)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # VmHWM just before the kill (the pool cannot report it itself)
            kb = _proc_kb(self.process.pid, "VmHWM")
            self.peak_rss_mb = round(kb / 1024, 1) if kb else None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.killed = True

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def run_scale(hospitals: int, root: Path, data: Path, *, pools: int = 3, timeout_s: float = 420.0) -> ScaleResult:
    """K = ``hospitals`` through ROUNDS FSCDP rounds with K // 10 dropouts in round 2; see the module doc."""
    started = time.monotonic()
    result = ScaleResult(hospitals)
    killed_numbers, leaving_numbers = dropouts_for(hospitals)
    port = free_port()
    init = init_federation(InitConfig(
        folder=root / "federation", name=f"scale {hospitals}", mode="fscdp", rounds=ROUNDS, hospitals=hospitals,
        hosts=["127.0.0.1"], port=port, image_size=IMAGE_SIZE, model="small_cnn", sample_rate=0.5,
        noise_multiplier=1.0, max_grad_norm=1.0, lr=0.1, delta=1e-3, key_phase_timeout_s=120.0,
        compute_phase_timeout_s=120.0))
    plan = init.plan
    result.threshold = plan.threshold
    paths = FederationPaths(root / "federation")
    invitations = sorted(init.invitations)
    homes = root / "homes"

    def entry(number: int) -> dict:
        leave_at = {"round": 2, "phase": "unmask"} if number in leaving_numbers else None
        return {"number": number, "invitation": str(invitations[number - 1]),
                "data": str(data / f"hospital_{(number - 1) % DATA_FOLDERS + 1:02d}"),
                "home": str(homes / f"h{number:03d}"), "leave_at": leave_at}

    staying = [n for n in range(1, hospitals + 1) if n not in killed_numbers]
    groups = [staying[i::pools] for i in range(pools)]
    lock = threading.Lock()
    ended: dict[int, dict] = {}
    drop_round_of: dict[int, int] = {}

    def on_event(pool: _Pool, event: dict) -> None:
        number = event.get("hospital", 0)
        kind = event.get("event")
        with lock:
            if kind in ("ended", "failed"):
                ended[number] = event
            if pool.index == 0 and kind == "phase" and event.get("round") == 2 and event.get("phase") == "mask":
                # the pool SIGKILLs itself right after printing this (scale_pool.py, die_at)
                result.dropouts.extend({"hospital": n, "how": "SIGKILL (its pool process)", "round": 2,
                                        "phase": "mask (keys shared, masked input not sent)"} for n in pool.numbers)
                drop_round_of.update({n: 2 for n in pool.numbers})
            if number in leaving_numbers and kind == "phase" and event.get("round") == 2 \
                    and event.get("phase") == "unmask":
                result.dropouts.append({"hospital": number, "how": "left the federation (dopamine leave)",
                                        "round": 2, "phase": "unmask (masked input in the sum)"})
                drop_round_of[number] = 2

    work = root / "pools"
    work.mkdir(parents=True, exist_ok=True)
    pool_list = [_Pool(0, {"hospitals": [entry(n) for n in killed_numbers], "die_at": {"round": 2, "phase": "mask"}},
                       work, on_event)]
    pool_list += [_Pool(i + 1, {"hospitals": [entry(n) for n in group]}, work, on_event)
                  for i, group in enumerate(groups) if group]
    result.pools = len(pool_list)
    coordinator = CoordinatorProcess(paths.root, root / "coordinator.out")
    try:
        coordinator.start(url=init.coordinator_url, ca_file=paths.tls / "ca.pem")
        assert coordinator.process is not None
        pid = coordinator.process.pid
        before = _proc_kb(pid, "VmRSS")
        result.coordinator_rss_before_mb = round(before / 1024, 1) if before else None

        for pool in pool_list:
            pool.start()
        deadline = time.monotonic() + timeout_s
        opened = None
        while any(p.running for p in pool_list):
            if coordinator.exited:
                result.violations.append(f"the coordinator exited with code {coordinator.process.returncode}")
                break
            if time.monotonic() > deadline:
                result.violations.append(f"the federation did not finish within {timeout_s:.0f} s")
                break
            if opened is None:
                status = _state_meta(paths)
                if status.get("round", 0) >= 1:
                    opened = time.monotonic()
                    result.setup_s = round(opened - started, 2)
                    kb = _proc_kb(pid, "VmRSS")
                    result.coordinator_rss_enrolled_mb = round(kb / 1024, 1) if kb else None
            time.sleep(0.2)
        peak = _proc_kb(pid, "VmHWM")
        result.coordinator_peak_rss_mb = round(peak / 1024, 1) if peak else None
    finally:
        for pool in pool_list:
            pool.kill()
            if pool.reader is not None:
                pool.reader.join(timeout=10)  # its last lines (the hospitals' ends, the pool's memory)
        coordinator.stop()
    result.wall_s = round(time.monotonic() - started, 2)
    if result.coordinator_peak_rss_mb and result.coordinator_rss_before_mb:
        result.per_hospital_kb = round((result.coordinator_peak_rss_mb - result.coordinator_rss_before_mb)
                                       * 1024 / hospitals, 1)
    finished = [p for p in pool_list if p.peak_rss_mb and p.base_rss_mb]
    result.pool_peak_rss_mb = [p.peak_rss_mb for p in finished]
    if finished:  # what one more hospital thread costs in a pool that has paid for its imports once
        result.hospital_in_pool_mb = round(statistics.mean((p.peak_rss_mb - p.base_rss_mb) / len(p.numbers)
                                                           for p in finished), 2)
    victims = pool_list[0].process
    if victims is None or victims.returncode != -signal.SIGKILL:
        result.violations.append(f"the pool of the hospitals to kill ended {victims and victims.returncode}, not SIGKILLed")
    _check(result, paths, plan, init, killed_numbers, leaving_numbers, ended, drop_round_of)
    return result


def _state_meta(paths: FederationPaths) -> dict:
    try:
        connection = sqlite3.connect(f"file:{paths.state}?mode=ro", uri=True, timeout=1)
        try:
            rows = dict(connection.execute("SELECT key, value FROM meta").fetchall())
        finally:
            connection.close()
    except sqlite3.Error:
        return {}
    try:
        return {"round": int(json.loads(rows.get("round", "0")))}
    except (TypeError, ValueError):
        return {}


def _check(result: ScaleResult, paths: FederationPaths, plan, init, killed, leaving, ended, drop_round_of) -> None:
    from core.federation.invitation import read_invitation
    from core.federation.status import read_status
    from core.models.package import read_package

    status = read_status(paths.root, last_rounds=10**6)
    result.status = status["status"] + (f" ({status['stop_reason']})" if status["stop_reason"] else "")
    ids = {n: read_invitation(p).hospital_id for n, p in enumerate(sorted(init.invitations), start=1)}
    result.rounds = [{"round": r["round"], "seconds": round(r["seconds"], 2), "attempts": r["attempts"],
                      "included": len(r["included"])} for r in status["last_rounds"]]
    seconds = [r["seconds"] for r in result.rounds]
    if seconds:
        result.median_round_s = round(statistics.median(seconds), 2)
        result.max_round_s = round(max(seconds), 2)
    if status["status"] != "finished" or status["rounds_finished"] != ROUNDS:
        result.violations.append(f"the federation ended {result.status} after {status['rounds_finished']} rounds")
    for record in status["last_rounds"]:
        if len(record["included"]) < plan.threshold:
            result.violations.append(f"round {record['round']} was released over {len(record['included'])} "
                                     f"hospitals, fewer than m = {plan.threshold}")
        for number, dropped in drop_round_of.items():
            if record["round"] > dropped and ids[number] in record["included"]:
                result.violations.append(f"h{number:03d} dropped in round {dropped} but is in round {record['round']}'s sum")
    if sorted(drop_round_of) != sorted(killed + leaving):
        result.violations.append(f"not every planned dropout happened: {sorted(drop_round_of)} of "
                                 f"{sorted(killed + leaving)}")
    signing_key = read_invitation(sorted(init.invitations)[0]).coordinator_signing_key
    for number in range(1, result.hospitals + 1):
        if number in killed:
            continue
        outcome = ended.get(number)
        wanted = "left mid-round" if number in leaving else "completed"
        if outcome is None or outcome.get("reason") != wanted:
            result.violations.append(f"h{number:03d} ended {outcome}, not {wanted}")
            continue
        if number not in leaving:
            models = list((paths.root.parent / "homes" / f"h{number:03d}").rglob("final*.dpm"))
            if not models:
                result.violations.append(f"h{number:03d} completed without a final model")
            for model in models:
                read_package(model, require_signature=True, trusted_keys=[signing_key])
    connection = sqlite3.connect(f"file:{paths.state}?mode=ro", uri=True)
    try:
        rows = connection.execute("PRAGMA integrity_check").fetchall()
    finally:
        connection.close()
    if rows != [("ok",)]:
        result.violations.append(f"state.sqlite integrity check: {rows[:3]}")


def markdown_table(results: list[dict]) -> str:
    lines = ["| K | dropouts (round 2) | m | coordinator RSS before / enrolled / peak (MB) | per hospital (KB) "
             "| round time median / max (s) | rounds included |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        included = "/".join(str(x["included"]) for x in r["rounds"])
        lines.append(f"| {r['hospitals']} | {len(r['dropouts'])} | {r['threshold']} | {r['coordinator_rss_before_mb']} / "
                     f"{r['coordinator_rss_enrolled_mb']} / {r['coordinator_peak_rss_mb']} | {r['per_hospital_kb']} "
                     f"| {r['median_round_s']} / {r['max_round_s']} | {included} |")
    return "\n".join(lines)


def growth_per_hospital_kb(results: list[dict]) -> float | None:
    """The coordinator's peak RSS growth per added hospital, between the smallest and largest K."""
    ordered = sorted((r for r in results if r["coordinator_peak_rss_mb"]), key=lambda r: r["hospitals"])
    if len(ordered) < 2 or ordered[-1]["hospitals"] == ordered[0]["hospitals"]:
        return None
    slope = (ordered[-1]["coordinator_peak_rss_mb"] - ordered[0]["coordinator_peak_rss_mb"]) * 1024 / (
        ordered[-1]["hospitals"] - ordered[0]["hospitals"])
    return round(slope, 1) if math.isfinite(slope) else None

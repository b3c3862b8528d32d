"""Federation round benchmark: round wall time against the slowest hospital's local compute, and the
coordinator's peak memory against the number of hospitals.

1. Round time (real processes over loopback HTTPS, `dopamine coordinator serve` + K `dopamine join`):
   for each mode and K, every round's wall time at the coordinator (round opened -> new global
   model published) divided by the slowest hospital's local computation in that round (its
   `compute_s`, from the hospitals' events). Round 1 is a warm-up and not counted. Goal: <= 1.3.
2. Memory: the coordinator process's peak RSS (VmHWM) for K simulated hospitals (the real client
   code, one thread each in this process), FSCDP with secure aggregation on SqueezeNet 1.1
   (725,061 parameters: 2.9 MB per masked upload), K = 3, 10, 30, 100. Goals (issue 14): at most 300 MB
   at K = 30, and at most base + 0.2 x (K x update size) at K = 100, base being the serving process
   before anyone enrolled (masked inputs are summed as they arrive, not kept).
3. Scale: round time for K = 30 and 100 hospitals with the small model (small_cnn, 32 px), simulated the
   same way (one thread each: K processes of 235 MB do not fit on this machine), so the hospitals' compute
   shares one interpreter and only the round time and the coordinator's memory are reported.

All numbers of one run come from the same machine; compare the ratios, not absolute times.

Usage: python benchmarks/round.py [--out benchmarks/results/round.json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.federation.layout import FederationPaths, InitConfig, init_federation  # noqa: E402
from core.federation.simulate import CoordinatorProcess, HospitalProcess, free_port  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "round.json"


def _data(root: Path, hospitals: int, per_hospital: int, size: int) -> Path:
    from core.data.synthetic import write_demo_data

    folder = root / f"data-{hospitals}-{per_hospital}-{size}"
    if not folder.exists():
        write_demo_data(folder, hospitals=hospitals, per_hospital=per_hospital, test_images=20, size=size, seed=5)
    return folder


def _plan(mode: str) -> dict:
    if mode == "fscdp":
        return dict(sample_rate=0.2, noise_multiplier=1.0, max_grad_norm=1.0, lr=0.1, delta=1e-4)
    return dict(batch_size=16, local_epochs=1, lr=0.05, secagg=True)


def round_times(root: Path, *, mode: str, hospitals: int, rounds: int, per_hospital: int, image_size: int) -> dict:
    """Run one federation of ``hospitals`` processes and time its rounds."""
    data = _data(root, hospitals, per_hospital, image_size * 3 // 2)
    folder = Path(tempfile.mkdtemp(dir=root, prefix=f"{mode}-{hospitals}-"))
    init = init_federation(InitConfig(
        folder=folder / "federation", name=f"bench {mode} {hospitals}", mode=mode, rounds=rounds, hospitals=hospitals,
        hosts=["127.0.0.1"], port=free_port(), image_size=image_size, compute_phase_timeout_s=600.0,
        key_phase_timeout_s=120.0, **_plan(mode)))
    paths = FederationPaths(folder / "federation")
    coordinator = CoordinatorProcess(paths.root, folder / "coordinator.out")
    clients = [HospitalProcess(i, inv, data / f"hospital_{i:02d}", folder / f"h{i:02d}", folder / f"h{i:02d}.err",
                               max_epsilon=1e6) for i, inv in enumerate(sorted(init.invitations), start=1)]
    started = time.perf_counter()
    try:
        coordinator.start(url=init.coordinator_url, ca_file=paths.tls / "ca.pem")
        for client in clients:
            client.start()
        deadline = time.monotonic() + 1800
        while any(c.running for c in clients):
            if time.monotonic() > deadline or coordinator.exited:
                raise RuntimeError(f"benchmark federation did not finish; see {folder}")
            time.sleep(0.2)
        if any(c.process.returncode != 0 for c in clients):
            raise RuntimeError(f"a hospital failed; see {folder}")
        peak_mb = _peak_rss_mb(coordinator.process.pid)
    finally:
        for client in clients:
            client.kill()
        coordinator.stop()
    from core.federation.status import read_status

    records = read_status(paths.root, last_rounds=10**6)["last_rounds"]
    per_round = []
    for record in records:
        computes = [e.get("compute_s", 0.0) for c in clients for e in c.events
                    if e["event"] == "uploaded" and e["round"] == record["round"]]
        slowest = max(computes) if computes else float("nan")
        per_round.append({"round": record["round"], "seconds": record["seconds"], "slowest_compute_s": round(slowest, 4),
                          "ratio": round(record["seconds"] / slowest, 3) if slowest > 0 else None})
    counted = [r for r in per_round if r["round"] > 1 and r["ratio"] is not None]
    return {
        "mode": mode, "hospitals": hospitals, "rounds": per_round, "image_size": image_size,
        "images_per_hospital": per_hospital, "wall_s": round(time.perf_counter() - started, 2),
        "median_round_s": statistics.median(r["seconds"] for r in counted) if counted else None,
        "median_slowest_compute_s": statistics.median(r["slowest_compute_s"] for r in counted) if counted else None,
        "median_ratio": statistics.median(r["ratio"] for r in counted) if counted else None,
        "coordinator_peak_rss_mb": peak_mb,
    }


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def threaded_federation(root: Path, *, hospitals: int, model: str, image_size: int, rounds: int) -> dict:
    """A coordinator process serving ``hospitals`` simulated hospitals (threads here): its RSS and round times."""
    from core.federation import client

    data = _data(root, 1, 8, image_size * 3 // 2) / "hospital_01"  # every simulated hospital reads it
    folder = Path(tempfile.mkdtemp(dir=root, prefix=f"memory-{hospitals}-"))
    init = init_federation(InitConfig(
        folder=folder / "federation", name=f"memory {hospitals}", mode="fscdp", rounds=rounds, hospitals=hospitals,
        hosts=["127.0.0.1"], port=free_port(), image_size=image_size, model=model, sample_rate=0.05,
        noise_multiplier=1.0, max_grad_norm=1.0, lr=0.1, delta=1e-4, compute_phase_timeout_s=600.0,
        key_phase_timeout_s=300.0))
    paths = FederationPaths(folder / "federation")
    coordinator = CoordinatorProcess(paths.root, folder / "coordinator.out")
    errors: list[BaseException] = []
    started = time.perf_counter()

    def join(invitation: Path, number: int) -> None:
        try:
            client.run(client.JoinConfig(invitation=invitation, data=data, home=folder / f"h{number:03d}",
                                         max_epsilon=1e6, accept_roster="any", poll_wait_s=10.0, threads=1))
        except BaseException as exc:  # noqa: BLE001 -- reported below
            errors.append(exc)

    try:
        coordinator.start(url=init.coordinator_url, ca_file=paths.tls / "ca.pem")
        idle_mb = _peak_rss_mb(coordinator.process.pid)
        threads = [threading.Thread(target=join, args=(inv, i)) for i, inv in enumerate(sorted(init.invitations), 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        peak_mb = _peak_rss_mb(coordinator.process.pid)
    finally:
        coordinator.stop()
    if errors:
        raise RuntimeError(f"simulated hospital failed: {errors[0]}")
    from core.federation.status import read_status

    status = read_status(paths.root, last_rounds=10**6)
    if status["status"] != "finished":
        raise RuntimeError(f"memory federation ended {status['status']}: {status['stop_reason']}")
    seconds = [r["seconds"] for r in status["last_rounds"]]
    update_mb = 4 * _parameters(model) / 1e6  # one masked upload: 4 bytes per parameter
    bound = memory_goal_mb(hospitals, idle_mb, update_mb)
    return {"hospitals": hospitals, "model": model, "image_size": image_size, "rounds": rounds,
            "round_s": seconds, "median_round_s": statistics.median(seconds[1:] or seconds),
            "coordinator_idle_rss_mb": idle_mb, "coordinator_peak_rss_mb": peak_mb, "update_mb": round(update_mb, 2),
            "goal_rss_mb": round(bound, 1) if bound is not None else None,
            "within_goal": peak_mb <= bound if peak_mb is not None and bound is not None else None,
            "wall_s": round(time.perf_counter() - started, 2)}


def memory_goal_mb(hospitals: int, idle_mb: float | None, update_mb: float) -> float | None:
    """Issue 14's goals: at most 300 MB at K = 30; at K = 100, the serving RSS + 0.2 x K x update size."""
    if hospitals == 30:
        return 300.0
    if hospitals == 100 and idle_mb is not None:
        return idle_mb + 0.2 * hospitals * update_mb
    return None


def _parameters(model: str) -> int:
    from core.models.registry import build_model

    return sum(p.numel() for p in build_model(model, 5).parameters())


def markdown(result: dict) -> str:
    lines = ["| mode | K | median round (s) | slowest hospital compute (s) | ratio |", "|---|---|---|---|---|"]
    for r in result["round_time"]:
        lines.append(f"| {r['mode']} | {r['hospitals']} | {r['median_round_s']:.3f} | {r['median_slowest_compute_s']:.3f} "
                     f"| {r['median_ratio']:.2f} |")
    lines += ["", "| K simulated hospitals | model | coordinator idle / peak RSS (MB) | goal (MB) | median round (s) |",
              "|---|---|---|---|---|"]
    for m in result["memory"] + result.get("scale", []):
        lines.append(f"| {m['hospitals']} | {m['model']} | {m['coordinator_idle_rss_mb']} / {m['coordinator_peak_rss_mb']} "
                     f"| {m['goal_rss_mb']} | {m['median_round_s']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="tiny settings, for tests (a minute)")
    parser.add_argument("--workdir", type=Path, help="keep the federations here (default: a temporary folder)")
    args = parser.parse_args(argv)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="dopamine-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    if args.quick:
        runs = [("f", 3)]
        round_settings = dict(rounds=2, per_hospital=16, image_size=32)
        memory_ks, memory_model, memory_size = [2, 4], "small_cnn", 32
        scale_ks: list[int] = []
    else:
        runs = [("f", 3), ("f", 10), ("fscdp", 3), ("fscdp", 10)]
        round_settings = dict(rounds=6, per_hospital=100, image_size=64)
        memory_ks, memory_model, memory_size = [3, 10, 30, 100], "squeezenet1_1", 32
        scale_ks = [30, 100]
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None},
        "quick": args.quick,
        "round_time": [round_times(root, mode=mode, hospitals=k, **round_settings) for mode, k in runs],
        "memory": [threaded_federation(root, hospitals=k, model=memory_model, image_size=memory_size, rounds=2)
                   for k in memory_ks],
        "scale": [threaded_federation(root, hospitals=k, model="small_cnn", image_size=32, rounds=4)
                  for k in scale_ks],
    }
    peaks = [m["coordinator_peak_rss_mb"] for m in result["memory"] if m["coordinator_peak_rss_mb"]]
    result["memory_growth"] = round(max(peaks) / min(peaks), 3) if peaks else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(markdown(result))
    print(f"coordinator peak RSS, largest K / smallest K: {result['memory_growth']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time from launching the desktop app to its main window first painted (offscreen), median of N runs.

    python installer/measure_startup.py                         # from source (installer/entry.py)
    python installer/measure_startup.py dist/Dopamine/dopamine  # the bundle
    python installer/measure_startup.py --runs 5 --json

Each run starts the app with QT_QPA_PLATFORM=offscreen, DOPAMINE_STARTUP_PROBE=1 (the app prints the
time of its first paint) and DOPAMINE_SMOKE_EXIT_MS=0 (it then quits), in a fresh DOPAMINE_HOME. The
start-up time is that printed time minus the time just before launch; one untimed warm-up run first
fills the disk cache, as a second launch by a user would find it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from launcher import HEAVY_MODULES_MARK, SMOKE_EXIT_ENV, STARTUP_PROBE_ENV, WINDOW_SHOWN_MARK  # noqa: E402

SOURCE_COMMAND = [sys.executable, str(ROOT / "installer" / "entry.py")]


def parse_probe(output: str) -> tuple[float, str]:
    """The unix time of the app's first paint, and the heavy modules it had loaded by then ("-": none)."""
    shown = heavy = None
    for line in output.splitlines():
        if line.startswith(WINDOW_SHOWN_MARK + " "):
            shown = float(line.split()[1])
        elif line.startswith(HEAVY_MODULES_MARK + " "):
            heavy = line.split()[1]
    if shown is None or heavy is None:
        raise RuntimeError(f"the app never reported its main window; its output was:\n{output[-2000:]}")
    return shown, heavy


def launch_once(command: list[str], *, timeout_s: float = 120.0) -> tuple[float, str]:
    """Seconds from launch to the first paint of the main window, and the heavy modules loaded by then."""
    with tempfile.TemporaryDirectory(prefix="dopamine-startup-") as home:
        env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", STARTUP_PROBE_ENV: "1", SMOKE_EXIT_ENV: "0",
               "DOPAMINE_HOME": home}
        started = time.time()
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s, cwd=home)
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} exited with code {done.returncode}:\n{done.stderr[-2000:]}")
    shown, heavy = parse_probe(done.stdout)
    return shown - started, heavy


def measure(command: list[str], *, runs: int, warmup: int = 1) -> dict:
    for _ in range(warmup):
        launch_once(command)
    results = [launch_once(command) for _ in range(runs)]
    times = [seconds for seconds, _ in results]
    heavy = sorted({name for _, loaded in results for name in loaded.split(",") if name != "-"})
    return {"command": command, "runs": runs, "seconds": times, "median_s": statistics.median(times),
            "heavy_modules_before_window": heavy, "cpu_count": os.cpu_count()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("executable", nargs="?", help="the bundle's executable (default: run from source)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    command = [str(Path(args.executable).resolve())] if args.executable else SOURCE_COMMAND
    result = measure(command, runs=args.runs, warmup=args.warmup)
    if args.json:
        print(json.dumps(result))
    else:
        runs = ", ".join(f"{t:.2f}" for t in result["seconds"])
        heavy = ", ".join(result["heavy_modules_before_window"]) or "none"
        print(f"median {result['median_s']:.2f} s to the main window over {args.runs} runs ({runs}); "
              f"{result['cpu_count']} CPUs; loaded before the window: {heavy}; {' '.join(command)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

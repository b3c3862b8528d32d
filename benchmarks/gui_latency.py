"""The window starts fast and stays responsive while a DP training job runs.

Start-up: a fresh process opens the main window (goal: shown within 2 s).

A 10 ms QTimer ticks on the GUI thread while the Train page runs a small DP-SGD job (in its
background child process, at lower priority). The longest gap between ticks is how long the window
was frozen; the goal is under 200 ms. The ratio worst gap / tick interval is measured in one run.
A loaded machine stretches gaps, so this is a benchmark, not a test (tests/gui/test_responsiveness.py
checks only that the loop kept running).

    QT_QPA_PLATFORM=offscreen python benchmarks/gui_latency.py [--quick] [--out benchmarks/results/gui_latency.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

TICK_MS = 10
GOAL_MS = 200.0
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gui_latency.json"


def _images(folder: Path, per_class: int) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, name in enumerate(("0", "2")):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 90, size=(64, 64, 3), dtype=np.uint8)
            pixels[..., k] += np.uint8(150)
            Image.fromarray(pixels).save(folder / name / f"{i:03d}.png")
    return folder


def measure(epochs: int, per_class: int) -> dict:
    from PySide6.QtCore import QTimer

    from gui.app import application, create_window, preload_engine

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DOPAMINE_HOME"] = tmp
        app = application([])
        window = create_window(app)
        window.resize(1280, 800)
        window.show()
        preload_engine()  # as the app does shortly after start-up
        data = _images(Path(tmp) / "images", per_class)
        page = window.show_page("train")
        page.data_picker.set_path(data)
        page.mode.setCurrentIndex(page.mode.findData("cdp"))
        page.model.setCurrentIndex(page.model.findData("small_cnn"))
        page.image_size.setCurrentIndex(page.image_size.findData(64))
        page.epochs.setValue(epochs)
        page.batch_size.setValue(8)
        end = time.perf_counter() + 0.5
        while time.perf_counter() < end:  # the first paint is start-up work, not training
            app.processEvents()
        ticks: list[float] = []
        timer = QTimer()
        timer.setInterval(TICK_MS)
        timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
        timer.start()
        started = time.perf_counter()
        page.start()
        while page.job is None or page.job.running:
            app.processEvents()
            time.sleep(0.001)
        timer.stop()
        seconds = time.perf_counter() - started
        error = page.job.error
        window.close()
    gaps_ms = [(b - a) * 1000 for a, b in zip(ticks, ticks[1:], strict=False)]
    return {"epochs": epochs, "images": 2 * per_class, "job_seconds": round(seconds, 3), "ticks": len(ticks),
            "worst_gap_ms": round(max(gaps_ms), 1) if gaps_ms else None,
            "median_gap_ms": round(statistics.median(gaps_ms), 2) if gaps_ms else None,
            "worst_gap_over_tick": round(max(gaps_ms) / TICK_MS, 2) if gaps_ms else None,
            "error": None if error is None else str(error)}


STARTUP_CODE = """
import time
start = time.perf_counter()
from gui.app import application, create_window
app = application([])
window = create_window(app)
window.show()
app.processEvents()
print(f"{time.perf_counter() - start:.4f}")
"""
STARTUP_GOAL_S = 2.0


def startup_seconds(repeats: int) -> list[float]:
    import subprocess

    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "DOPAMINE_HOME": tmp}
            done = subprocess.run([sys.executable, "-c", STARTUP_CODE], cwd=ROOT, env=env, capture_output=True,
                                  text=True, timeout=120, check=True)
            times.append(float(done.stdout.split()[-1]))
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short job (smoke run)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    startup = startup_seconds(1 if args.quick else 3)
    result = measure(epochs=1 if args.quick else 4, per_class=8 if args.quick else 24)
    report = {"benchmark": "gui_latency", "tick_ms": TICK_MS, "goal_worst_gap_ms": GOAL_MS,
              "goal_met": result["worst_gap_ms"] is not None and result["worst_gap_ms"] < GOAL_MS,
              "startup_s": startup, "startup_goal_s": STARTUP_GOAL_S,
              "startup_goal_met": min(startup) < STARTUP_GOAL_S,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_average": os.getloadavg()[0]},
              "result": result}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"window shown after {min(startup):.2f} s (best of {len(startup)}; goal < {STARTUP_GOAL_S:.0f} s)")
    print(f"worst event-loop gap during training: {result['worst_gap_ms']} ms "
          f"(goal < {GOAL_MS:.0f} ms; median {result['median_gap_ms']} ms, {result['ticks']} ticks)")
    return 0 if result["error"] is None else 1


if __name__ == "__main__":
    sys.exit(main())

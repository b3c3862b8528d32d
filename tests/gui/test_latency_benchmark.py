"""benchmarks/gui_latency.py --quick runs and writes its JSON (the latency goal itself lives there)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_gui_latency_benchmark_writes_json(tmp_path):
    out = tmp_path / "gui_latency.json"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gui_latency.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["goal_worst_gap_ms"] == 200.0 and report["result"]["error"] is None
    assert report["result"]["ticks"] > 0 and report["result"]["worst_gap_ms"] >= report["tick_ms"] * 0.5

"""benchmarks/noise.py --quick runs and writes the documented JSON."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_quick_noise_benchmark_writes_its_report(tmp_path):
    out = tmp_path / "noise.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "noise.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["benchmark"] == "noise" and report["quick"] is True
    assert {"platform", "cpu_count", "torch_threads", "load_average"} <= set(report["machine"])
    assert report["goal"]["length"] == 725_061 and "met" in report["goal"]
    (entry,) = report["results"]
    assert entry["length"] == 725_061
    assert set(entry["variants"]) == set(report["settings"]["variants"])
    for variant in entry["variants"].values():
        assert len(variant["times_ms"]) == report["settings"]["repeats"] == 3
        assert variant["median_ms"] > 0
    assert entry["variants"]["torch_normal_x4"]["ratio_to_torch_normal_x4"] == 1.0
    assert report["poisson_sample"]["images"] == 3662
    assert "wrote" in result.stdout

"""benchmarks/dp_step.py --quick runs and writes the documented JSON."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_quick_benchmark_writes_ratios(tmp_path):
    out = tmp_path / "dp_step.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "dp_step.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["benchmark"] == "dp_step" and report["quick"] is True
    assert {"platform", "cpu_count", "torch_threads", "load_average"} <= set(report["machine"])
    assert {"torch", "opacus"} <= set(report["versions"])
    assert report["goal"] == {"model": "squeezenet1_1", "image_size": 224, "mode": "fused", "max_ratio": 1.2}
    (entry,) = report["results"]
    assert (entry["model"], entry["image_size"], entry["batch_size"]) == ("small_cnn", 32, 4)
    assert entry["plain_s"] > 0 and len(entry["plain_times_s"]) == report["settings"]["repeats"] == 2
    assert len(entry["load_average_after"]) == 3
    assert set(entry["modes"]) == {"fused", "hooks"}
    for mode in entry["modes"].values():
        assert {"median_s", "images_per_s", "ratio", "paired_ratio", "times_s", "cpu_s", "cpu_ratio"} <= set(mode)
        assert mode["ratio"] == mode["median_s"] / entry["plain_s"] > 0
    assert "wrote" in result.stdout

"""benchmarks/data_load.py --quick runs every phase and writes the JSON the issue's table quotes."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_quick_benchmark_writes_json(tmp_path):
    out = tmp_path / "data_load.json"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "data_load.py"), "--quick", "--out", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["benchmark"] == "data_load" and report["quick"] is True
    phases = report["phases"]
    assert phases["decode_1"]["workers"] == 1 and phases["decode_pool"]["workers"] == report["machine"]["decode_workers"]
    assert phases["decode_1"]["images"] == phases["decode_pool"]["images"] == report["settings"]["decode_subset"]
    build, warm, epoch = phases["build"], phases["warm"], phases["epoch"]
    assert build["decoded"] == build["images"] == report["settings"]["images"] and build["on_disk"]
    assert warm["decoded"] == 0 and epoch["decoded"] == 0 and warm["on_disk"]
    assert epoch["images_read_in_epoch"] == epoch["images"] and epoch["dp_steps"] >= 1
    assert 0 < build["decode_worker_peak_rss_mb"] < build["peak_rss_mb"]  # the workers import no torch
    assert build["cache_entries"] == build["images"]
    for name in ("decode_1", "decode_pool", "validate_1", "validate_pool"):
        assert len(phases[name]["images_per_s_runs"]) == report["settings"]["repeats"] == 1
        assert phases[name]["cores_used"] > 0 and phases[name]["images_per_s"] > 0
    assert report["decode_pool_speedup"] > 0 and report["validate_pool_speedup_paired"] > 0
    assert set(report["targets"]) == {
        "training_peak_rss_mb", "training_peak_rss_ok", "decode_uses_more_than_one_core"}

"""`dopamine simulate` (what `make demo` runs) and `benchmarks/round.py --quick`."""

import json
import subprocess
import sys
from pathlib import Path

from core.federation.simulate import SimulationConfig, run

ROOT = Path(__file__).resolve().parents[2]


def test_simulate_runs_a_federation_and_kills_a_hospital_after_its_upload(tmp_path):
    progress = []
    # A dropout needs m < K: with 3 hospitals that is t = 0 (m = 2); the default t = 1 needs all three.
    result = run(SimulationConfig(hospitals=3, mode="fscdp", rounds=2, drops=[(3, 1)], per_hospital=16,
                                  test_images=20, image_size=32, workdir=tmp_path, sample_rate=0.3, colluders=0),
                 progress=lambda f, m: progress.append(f))
    data = json.loads(json.dumps(result.to_dict()))  # what --json writes
    assert data["status"] == "finished"
    assert data["coordinator_url"].startswith("https://127.0.0.1:")
    for key in ("mode", "sample_rate", "noise_multiplier", "max_grad_norm", "delta", "accountant", "threshold",
                "colluders"):
        assert key in data["plan"]
    assert (data["plan"]["threshold"], data["plan"]["colluders"]) == (2, 0)  # tolerates one dropout
    hospitals = {h["name"]: h for h in data["hospitals"]}
    assert hospitals["hospital-03"]["killed_in_round"] == 1
    assert hospitals["hospital-03"]["rounds_participated"] == [1]  # its round-1 upload counted
    assert hospitals["hospital-01"]["rounds_participated"] == [1, 2]
    for h in data["hospitals"]:
        assert h["epsilon"] > 0 and h["bytes_sent"] > 0
    assert [r["round"] for r in data["rounds"]] == [1, 2]
    assert data["rounds"][0]["included"] == ["h01", "h02", "h03"]
    assert data["rounds"][1]["included"] == ["h01", "h02"]
    assert "accuracy" in data["rounds"][-1]["metrics"]
    assert Path(data["model_path"]).is_file()
    assert progress and max(progress) > 0.9


def test_round_benchmark_quick_writes_its_json(tmp_path):
    out = tmp_path / "round.json"
    completed = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "round.py"), "--quick", "--out", str(out),
                                "--workdir", str(tmp_path / "work")], capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    result = json.loads(out.read_text())
    (timing,) = result["round_time"]
    assert timing["hospitals"] == 3 and timing["median_ratio"] > 0
    assert all(r["slowest_compute_s"] > 0 for r in timing["rounds"])
    assert [m["hospitals"] for m in result["memory"]] == [2, 4]
    assert all(m["coordinator_peak_rss_mb"] > 0 for m in result["memory"])
    assert result["memory_growth"] >= 1.0
    assert "| f | 3 |" in completed.stdout

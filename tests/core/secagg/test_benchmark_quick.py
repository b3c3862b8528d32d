"""The benchmark's --quick smoke run works and writes the documented JSON."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_quick_benchmark_writes_the_expected_json(tmp_path):
    out = tmp_path / "secagg.json"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "secagg.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(out.read_text())
    assert report["benchmark"] == "secagg" and report["quick"] is True
    assert [r["hospitals"] for r in report["results"]] == [3, 5]
    for result in report["results"]:
        assert {
            "client_mask_s",
            "coordinator_unmask_s",
            "bytes_per_hospital",
            "raw_aes_ctr_s",
            "round_s",
            "round_ratio",
            "round_separate_ratio",
            "round_float_ratio",
            "prg_bytes",
        } <= set(result)
        assert set(result["coordinator_unmask_s"]) == {"0", "1"}
        k, length = result["hospitals"], report["vector_length"]
        assert result["prg_bytes"] == (k * k + k) * 4 * length
        assert result["round_ratio"] == result["round_s"] / result["raw_aes_ctr_s"]
        # The masked vector dominates the upload: 4 bytes per value plus small messages.
        assert 4 * length < result["bytes_per_hospital"]["upload"] < 4 * length + 4096
        assert all(
            value > 0 for value in (result["client_mask_s"], result["raw_aes_ctr_s"], result["round_s"])
        )

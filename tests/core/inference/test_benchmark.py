"""The inference benchmark runs (--quick) and writes the numbers the README table quotes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_quick_benchmark_writes_json(tmp_path):
    out = tmp_path / "inference.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "inference.py"), "--quick", "--architecture",
                    "small_cnn", "--size", "64", "--out", str(out)], check=True, capture_output=True, timeout=300)
    data = json.loads(out.read_text())
    assert data["architecture"] == "small_cnn" and data["input_px"] == 64 and data["quick"] is True
    for name in ("forward_only", "predict_image_at_input_size", "predict_file_512px_png", "grad_cam"):
        timing = data["warm"][name]
        assert 0 < timing["min_ms"] <= timing["median_ms"] <= timing["p90_ms"]
    first = data["first_prediction"]
    assert 0 < first["open_s_median"] < first["first_prediction_s_median"]
    assert set(data["targets"]) == {"warm_predict_ms", "warm_predict_ok", "first_prediction_s", "first_prediction_ok"}

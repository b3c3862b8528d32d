"""benchmarks/privacy_audit.py --quick runs and writes the documented JSON."""

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_quick_privacy_audit_benchmark_writes_its_report(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("privacy_audit_benchmark", REPO / "benchmarks" / "privacy_audit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "privacy_audit.json"
    assert module.main(["--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == "privacy_audit" and report["quick"] is True
    assert {(row["mode"], row["noise_multiplier"]) for row in report["results"]} == {
        ("cdp", 0.0), ("cdp", 1.0), ("fscdp", 0.0), ("fscdp", 1.0)}
    for row in report["results"]:
        assert row["seconds"] > 0 and row["bounds"]["gradient"]["canaries"] == 100
        assert (row["epsilon"] is None) == (row["noise_multiplier"] == 0.0)
    (broken,) = report["broken_mechanism"]
    assert broken["epsilon_lower"] > broken["epsilon"]  # the power check holds even in the smoke run
    assert set(report["power_checks"]) >= {"broken_mechanism_detected", "real_sigma_sound_at_corrected_confidence"}
    assert "wrote" in capsys.readouterr().out

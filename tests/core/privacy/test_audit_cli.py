"""``dopamine audit-dp``: JSON and the HTML/PNG report, a federation plan's settings, clear errors, and
a name and help text kept apart from ``dopamine audit verify`` (the signed audit log)."""

from __future__ import annotations

import json

import pytest

from core.cli import build_parser, main

SMALL = ["--steps", "2", "--sample-rate", "0.5", "--canaries", "30", "--input-canaries", "10", "--images", "4",
         "--image-size", "16"]


def test_json_and_report(tmp_path, capsys):
    assert main(["audit-dp", "--json", "--noise-multiplier", "1.5", "--delta", "1e-5", "--out", str(tmp_path), *SMALL]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["config"]["mode"] == "cdp" and result["config"]["noise_multiplier"] == 1.5
    assert set(result["bounds"]) == {"gradient", "input"}
    assert result["bounds"]["gradient"]["canaries"] == 30 and result["epsilon"] > result["epsilon_lower"] >= 0
    assert result["summary"].startswith("Measured at least ε") and "guaranteed at most ε" in result["summary"]
    assert json.loads((tmp_path / "audit.json").read_text())["epsilon"] == result["epsilon"]
    assert (tmp_path / "audit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "audit.html").read_text()
    assert "Measured at least" in page and "data:image/png;base64," in page and "cannot" in page


def test_a_federation_plan_sets_what_is_audited(tmp_path, capsys):
    from core.federation.plan import FederationPlan, save_plan

    plan = FederationPlan(name="demo", federation_id="f1", mode="fscdp", rounds=160, hospitals=3, threshold=3,
                          colluders=1, noise_multiplier=1.3, max_grad_norm=1.0, sample_rate=0.3, secagg=True,
                          delta=1e-4)
    save_plan(plan, tmp_path / "plan.toml")
    assert main(["audit-dp", "--plan", str(tmp_path / "plan.toml"), "--json", *SMALL]) == 0
    result = json.loads(capsys.readouterr().out)
    config = result["config"]
    assert (config["mode"], config["noise_multiplier"], config["delta"]) == ("fscdp", 1.3, 1e-4)
    assert (config["hospitals"], config["threshold"], config["colluders"], config["steps"]) == (3, 3, 1, 2)
    assert "coordinator together with up to 1 other hospital" in result["threat_model"]


def test_settings_it_cannot_audit_are_refused_with_what_to_do(capsys):
    assert main(["audit-dp", "--mode", "fscdp", "--colluders", "0", *SMALL]) == 1
    assert "colluders t must be at least 1" in capsys.readouterr().err
    assert main(["audit-dp", "--sample-rate", "1.5", "--steps", "2"]) == 1
    assert "sample rate" in capsys.readouterr().err


def test_named_apart_from_the_audit_log_check(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    assert "audit-dp" in text and "signed audit log" in text
    line = next(line for line in text.splitlines() if line.strip().startswith("audit-dp"))
    assert "measure privacy empirically" in line

"""`dopamine compare`'s job: the epsilon it reports, resume, calibration, the report files."""

import json
import math

import pytest

from core.compare import run as compare_run
from core.compare.config import MODES, CompareConfig
from core.compare.modes import privacy_schedule
from core.compare.report import build_figure
from core.compare.run import calibrate, mode_settings, run
from core.errors import ConfigError
from core.privacy.accountant import compute_epsilon


def tiny(out, **overrides) -> CompareConfig:
    values = dict(out=out, hospitals=2, seeds=1, synthetic_images=60, epochs=1, rounds=2, local_epochs=1,
                  batch_size=16, local_batch_size=8, lr_search=False, image_size=32)
    values.update(overrides)
    return CompareConfig(**values)


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    return out, run(tiny(out))


def test_every_mode_ran_and_the_epsilon_is_the_accountants(compared):
    out, result = compared
    results = json.loads((out / "results.json").read_text())
    assert sorted(r["mode"] for r in results["runs"]) == sorted(MODES)
    for record in results["runs"]:
        assert 0.0 <= record["accuracy"] <= 1.0 and len(record["per_class_recall"]) == 5
        if record["mode"] in ("c", "f"):
            assert record["epsilon"] is None  # infinite: no DP
            continue
        expected = compute_epsilon(sample_rate=record["sample_rate"], noise_multiplier=record["noise_multiplier"],
                                   steps=record["steps"], delta=record["delta"], accountant=record["accountant"])
        assert record["epsilon"] == pytest.approx(expected, rel=1e-12)
        assert record["steps"] > 0 and 0 < record["sample_rate"] <= 1
    by_mode = {r["mode"]: r for r in results["runs"]}
    # CDP and FSCDP share (q, T, sigma) by construction, so they share epsilon too.
    assert by_mode["cdp"]["epsilon"] == pytest.approx(by_mode["fscdp"]["epsilon"])
    assert by_mode["cdp"]["sample_rate"] == by_mode["fscdp"]["sample_rate"]


def test_the_report_files_are_written(compared):
    out, result = compared
    assert result.paths["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = result.paths["report"].read_text()
    for mode in MODES:
        assert f"{mode.upper()}:" in page
    assert "not covered by the epsilon" in page
    assert "Synthetic images" in page


def test_the_figure_has_one_series_per_mode(compared):
    out, _ = compared
    results = json.loads((out / "results.json").read_text())
    figure = build_figure(results)
    left, right = figure.axes
    labels = [text.split(":")[0] for axis in (left, right) for text in axis.get_legend_handles_labels()[1]]
    assert sorted(labels) == sorted(m.upper() for m in MODES)
    assert len(left.containers) == 3 and len(right.containers) == 2  # DP modes at their epsilon; C, F at infinity


def test_resume_skips_finished_runs_and_adds_seeds(compared, monkeypatch, tmp_path):
    import shutil

    out, _ = compared
    copy = tmp_path / "again"
    shutil.copytree(out, copy)
    calls = []
    real = compare_run.run_mode
    monkeypatch.setattr(compare_run, "run_mode", lambda s, d, seed, **k: calls.append((s.mode, seed)) or real(s, d, seed, **k))
    run(tiny(copy))
    assert calls == []  # everything was finished
    result = run(tiny(copy, seeds=2))
    assert sorted(calls) == sorted((m, 1) for m in MODES)  # only the new seed
    assert result.results["summary"]["c"]["runs"] == 2
    with pytest.raises(ConfigError, match="other settings"):
        run(tiny(copy, noise_multiplier=2.0))


def test_a_killed_run_resumes_after_its_last_finished_pair(tmp_path, monkeypatch):
    from core.errors import Cancelled
    from core.jobs import CancelToken

    token = CancelToken()
    real = compare_run.run_mode
    done = []

    def cancel_after_two(settings, data, seed, **kwargs):
        if len(done) == 2:
            token.cancel()
        outcome = real(settings, data, seed, **kwargs)
        done.append(settings.mode)
        return outcome

    monkeypatch.setattr(compare_run, "run_mode", cancel_after_two)
    with pytest.raises(Cancelled):
        run(tiny(tmp_path, modes=("c", "f", "cdp")), cancel=token)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["mode"] for r in saved["runs"]] == ["c", "f"]
    done.clear()
    monkeypatch.setattr(compare_run, "run_mode", lambda s, d, seed, **k: done.append(s.mode) or real(s, d, seed, **k))
    run(tiny(tmp_path, modes=("c", "f", "cdp")))
    assert done == ["cdp"]


@pytest.mark.parametrize("mode", ["cdp", "fpdp", "fscdp"])
def test_target_epsilon_calibrates_sigma_per_mode(mode):
    config = tiny("unused", rounds=6, epochs=3)
    sizes = [40, 52, 37]
    settings = calibrate(mode_settings(config, mode, 0.1, sum(sizes)), sizes, target=4.0)
    epsilons = [compute_epsilon(sample_rate=q, noise_multiplier=settings.noise_multiplier, steps=t,
                                delta=settings.delta) for q, t in privacy_schedule(settings, sizes)]
    assert max(epsilons) <= 4.0
    assert max(epsilons) > 4.0 * 0.99  # the smallest sigma that does it, not merely a safe one


def test_learning_rate_search_is_recorded_and_uses_validation_images(tmp_path):
    result = run(tiny(tmp_path, modes=("c",), lr_search=True))
    search = result.results["lr_search"]["c"]
    assert [t["lr"] for t in search["trials"]] == list(compare_run.LR_CANDIDATES["c"])
    assert search["chosen"] in compare_run.LR_CANDIDATES["c"]
    assert result.results["runs"][0]["settings"]["lr"] == search["chosen"]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"modes": ("c", "x")}, "name each of"),
    ({"modes": ("c", "c")}, "name each of"),
    ({"split": "dirichlet:0"}, "dirichlet:ALPHA"),
    ({"target_epsilon": -1.0}, "target-epsilon"),
    ({"model": "vgg"}, "Unknown model"),
    ({"hospitals": 1}, "hospitals"),
])
def test_bad_settings_are_refused_before_any_work(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run(tiny(tmp_path, **overrides))
    assert not (tmp_path / "results.json").exists()


def test_the_cli_writes_the_comparison(tmp_path, capsys):
    from core.cli import main

    code = main(["compare", "--out", str(tmp_path), "--hospitals", "2", "--seeds", "1", "--modes", "c,fscdp",
                 "--synthetic-images", "60", "--epochs", "1", "--no-lr-search"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "FSCDP" in printed and "figure" in printed
    assert math.isfinite(json.loads((tmp_path / "results.json").read_text())["summary"]["fscdp"]["epsilon"])


def test_search_ties_at_the_majority_class_are_decided_by_the_validation_loss(tmp_path, monkeypatch):
    """Short DP runs often all predict the commonest class; the rate that learned most must still win."""
    from core.compare.modes import RunOutcome

    losses = {0.03: 1.40, 0.1: 1.10, 0.3: 1.25}

    def fake(settings, data, seed, **kwargs):
        return RunOutcome(mode=settings.mode, seed=seed, accuracy=0.49 if settings.lr != 0.3 else 0.495,
                          kappa=0.0, loss=losses[settings.lr], per_class_recall=[1.0, 0, 0, 0, 0], epsilon=1.0,
                          delta=1e-4, accountant="rdp", noise_multiplier=1.0, sample_rate=0.1, steps=1, rounds=None,
                          seconds=0.0, settings={"lr": settings.lr})

    monkeypatch.setattr(compare_run, "run_mode", fake)
    result = run(tiny(tmp_path, modes=("cdp",), lr_search=True))
    assert result.results["lr_search"]["cdp"]["chosen"] == 0.1

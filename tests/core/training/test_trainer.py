"""Local training end to end on a tiny synthetic set: privacy accounting, ledger, cancel, CLI."""

import json
from pathlib import Path

import pytest

from core.cli import main
from core.errors import Cancelled, PrivacyBudgetExceeded, PrivacyError
from core.jobs import CancelToken
from core.training.config import TrainConfig


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    from core.data.synthetic import write_demo_data

    out = tmp_path_factory.mktemp("demo")
    write_demo_data(out, hospitals=1, per_hospital=60, test_images=30, size=48, seed=3)
    return out / "hospital_01"


def _config(data: Path, tmp_path: Path, **overrides) -> TrainConfig:
    values = dict(data=data, out=tmp_path / "model.dpm", mode="cdp", model="small_cnn", epochs=2,
                  batch_size=8, lr=0.05, noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-3,
                  image_size=32, home=tmp_path / "home", seed=1)
    values.update(overrides)
    return TrainConfig(**values)


def test_cdp_run_charges_the_ledger_with_the_accountants_epsilon(tiny_data, tmp_path):
    from core.models.package import read_package
    from core.privacy.accountant import compute_epsilon
    from core.privacy.ledger import PrivacyLedger
    from core.training.trainer import run

    epochs_seen = []
    result = run(_config(tiny_data, tmp_path), on_epoch=epochs_seen.append)
    expected = compute_epsilon(sample_rate=result.sample_rate, noise_multiplier=1.0, steps=result.steps,
                               delta=1e-3, accountant="rdp")
    assert result.epsilon == pytest.approx(expected)
    assert result.steps == 2 * round(1 / result.sample_rate)
    assert [e.epoch for e in epochs_seen] == [1, 2]
    assert epochs_seen[-1].epsilon == pytest.approx(expected)
    with PrivacyLedger(tmp_path / "home" / "privacy-ledger.sqlite") as ledger:
        assert len(ledger.entries()) == 2
        assert ledger.spent() == pytest.approx(expected, rel=1e-6)
    package = read_package(tmp_path / "model.dpm")
    assert package.signature_ok
    assert package.card.mode == "cdp"
    assert package.card.epsilon == pytest.approx(expected)
    assert package.card.noise_multiplier == 1.0
    # The validation figures in the signed card: baseline, test set, reference, and what epsilon does not cover.
    validation = package.card.metrics["validation"]
    assert validation["accuracy"] == pytest.approx(result.metrics["accuracy"])
    assert validation["majority_baseline"] == pytest.approx(result.majority_baseline)
    assert validation["images"] == result.val_images == validation["test_set"]["images"]
    assert validation["test_set"]["held_by"] == "the training hospital"
    assert "not cover" in validation["release_note"] and validation["reference"]["width_median"] == 48.0
    assert Path(result.log_path).read_text().count("epoch") >= 2
    # Everything in the hospital home: run log, image cache, and the home's identity key signs the model.
    home = tmp_path / "home"
    assert Path(result.log_path).is_relative_to(home / "runs")
    assert list((home / "cache" / "images").rglob("*.npy"))
    from core.home import HospitalHome
    from core.signing import public_key_bytes

    assert package.signer_public_key == public_key_bytes(HospitalHome(home).identity())


def test_run_that_would_pass_the_cap_is_refused_before_any_step(tiny_data, tmp_path):
    from core.privacy.ledger import PrivacyLedger
    from core.training.trainer import run

    steps = []
    with pytest.raises(PrivacyBudgetExceeded):
        run(_config(tiny_data, tmp_path, max_epsilon=0.5),
            progress=lambda f, m: steps.append(m) if m.startswith("epoch") else None)
    assert steps == []
    assert not (tmp_path / "model.dpm").exists()
    with PrivacyLedger(tmp_path / "home" / "privacy-ledger.sqlite") as ledger:
        assert ledger.entries() == []


def test_target_epsilon_is_never_overshot(tiny_data, tmp_path):
    from core.training.trainer import run

    result = run(_config(tiny_data, tmp_path, noise_multiplier=None, target_epsilon=3.0, epochs=1))
    assert result.epsilon <= 3.0
    assert result.epsilon > 2.5  # calibrated, not just a huge sigma


def test_delta_not_below_one_over_n_is_an_error(tiny_data, tmp_path):
    from core.training.trainer import run

    with pytest.raises(PrivacyError, match="delta"):
        run(_config(tiny_data, tmp_path, delta=0.5))


def test_cancel_takes_effect_within_one_batch(tiny_data, tmp_path):
    from core.training.trainer import run

    token = CancelToken()
    batches_after_cancel = []

    def progress(fraction, message):
        if message.startswith("epoch"):
            if token.cancelled:
                batches_after_cancel.append(message)
            token.cancel()

    with pytest.raises(Cancelled):
        run(_config(tiny_data, tmp_path, mode="c", noise_multiplier=None), progress=progress, cancel=token)
    assert batches_after_cancel == []


def test_mode_c_trains_without_touching_the_ledger(tiny_data, tmp_path):
    from core.training.trainer import run

    result = run(_config(tiny_data, tmp_path, mode="c", noise_multiplier=None, epochs=1))
    assert result.epsilon is None and result.ledger_path is None
    assert not (tmp_path / "home" / "privacy-ledger.sqlite").exists()


def test_cli_train_json_and_evaluate(tiny_data, tmp_path, capsys):
    code = main(["train", str(tiny_data), "--mode", "cdp", "--model", "small_cnn", "--epochs", "1",
                 "--batch-size", "8", "--noise-multiplier", "1.1", "--max-grad-norm", "1.0",
                 "--delta", "1e-3", "--accountant", "prv", "--image-size", "32",
                 "--out", str(tmp_path / "m.dpm"), "--home", str(tmp_path / "home"),
                 "--max-epsilon", "50", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("epsilon", "delta", "sample_rate", "noise_multiplier", "steps", "accountant", "metrics", "model_path"):
        assert key in out
    assert out["accountant"] == "prv"
    assert set(out["metrics"]) >= {"accuracy", "kappa", "per_class_recall", "confusion_matrix"}

    test_dir = tiny_data.parent / "test"
    assert main(["evaluate", out["model_path"], str(test_dir), "--json"]) == 0
    evaluation = json.loads(capsys.readouterr().out)
    assert evaluation["signature_verified"] is True
    assert evaluation["images"] == 30


def test_cli_reports_bad_data_in_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["train", str(empty), "--out", str(tmp_path / "m.dpm"), "--noise-multiplier", "1"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_privacy_calculator_matches_opacus(capsys):
    from opacus.accountants import RDPAccountant

    assert main(["privacy", "--sample-rate", "0.01", "--noise-multiplier", "1.1", "--steps", "1000",
                 "--delta", "1e-5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    accountant = RDPAccountant()
    accountant.history = [(1.1, 0.01, 1000)]
    assert out["epsilon"] == pytest.approx(accountant.get_epsilon(1e-5))

    assert main(["privacy", "--sample-rate", "0.01", "--target-epsilon", "2", "--steps", "1000",
                 "--delta", "1e-5", "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert planned["epsilon"] <= 2.0


def test_adam_is_available_for_dp_training_and_unknown_optimizers_are_refused(tiny_data, tmp_path):
    from core.errors import ConfigError
    from core.training.trainer import run

    result = run(_config(tiny_data, tmp_path, optimizer="adam", lr=0.01, epochs=1))
    assert result.epsilon is not None and result.steps > 0
    with pytest.raises(ConfigError, match="optimizer"):
        run(_config(tiny_data, tmp_path, optimizer="rmsprop"))

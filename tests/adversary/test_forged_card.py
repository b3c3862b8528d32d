"""Issue #10, point 8: a forged model card signed with the forger's own key.

Anyone can make an Ed25519 key, write a card claiming epsilon = 0.1 and sign it: the signature then
verifies against the key inside the file. Before trusted signers, `predict`, `evaluate` and the viewer
called such a model "verified". Here the forger does exactly that, and every place a model's signature
is reported must say "valid signature, unknown signer" (amber), and `--require-trusted` must refuse it.
The same model signed by the hospital's own key, or by a signer the user added, shows as trusted.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.cli import main
from core.home import HospitalHome
from core.models.package import ModelCard, write_package
from core.models.registry import build_model
from core.signing import fingerprint, generate_private_key, public_key_bytes

CLASSES = ["healthy", "disease"]
CLAIMED_EPSILON = 0.1


def forge(path: Path, key) -> Path:
    """A small model with a card claiming strong privacy it never had (trained without DP at all)."""
    torch.manual_seed(0)
    card = ModelCard(
        architecture="small_cnn", classes=CLASSES, preprocessing={"size": 32}, mode="fscdp",
        epsilon=CLAIMED_EPSILON, delta=1e-6, accountant="rdp", noise_multiplier=5.0, sample_rate=0.01,
        max_grad_norm=1.0, steps=100, rounds=100, hospitals=10, image_counts={"hospital_01": 5000},
        metrics={"accuracy": 0.97}, created="2026-06-01T00:00:00+00:00", software_version="0.1.0",
        description="Certified epsilon 0.1 by the Retina network coordinator")
    write_package(path, build_model("small_cnn", len(CLASSES)).state_dict(), card, key)
    return path


@pytest.fixture
def world(tmp_path):
    home = tmp_path / "hospital-home"
    HospitalHome.at(home).identity()  # the hospital has its own key (it trains and signs models)
    forger = generate_private_key()
    images = tmp_path / "images"
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (images / name).mkdir(parents=True)
        for index in range(3):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(images / name / f"{index}.png")
    return home, forger, forge(tmp_path / "forged.dpm", forger), images


def predict_json(capsys, *args: str) -> tuple[int, list | None, str]:
    code = main(["predict", *args, "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out else None, err


def test_predict_does_not_call_a_self_signed_card_trusted(world, capsys):
    home, forger, forged, images = world
    code, rows, err = predict_json(capsys, str(forged), str(images / "disease" / "0.png"), "--home", str(home))
    assert code == 0
    # The signature itself verifies (the forger signed with their own key) ...
    assert rows[0]["signature_verified"] is True
    # ... but the signer is nobody this hospital trusts, and the output says whose key it was.
    assert rows[0]["signer_trusted"] is False
    assert rows[0]["signer_fingerprint"] == fingerprint(public_key_bytes(forger))
    assert "unknown signer" in err and "unverified" in err


def test_require_trusted_refuses_the_forgery_with_a_way_out(world, capsys):
    home, forger, forged, images = world
    code, rows, err = predict_json(capsys, str(forged), str(images), "--home", str(home), "--require-trusted")
    assert code == 1 and rows is None
    line = err.strip()
    assert "\n" not in line and line.startswith("error: ") and "Traceback" not in line
    assert fingerprint(public_key_bytes(forger)) in line and "dopamine trust add" in line

    code = main(["evaluate", str(forged), str(images), "--home", str(home), "--require-trusted", "--json"])
    out, err = capsys.readouterr()
    assert code == 1 and out == "" and "dopamine trust add" in err


def test_evaluate_reports_the_signer_as_untrusted(world, capsys):
    home, forger, forged, images = world
    code = main(["evaluate", str(forged), str(images), "--home", str(home), "--json"])
    out, _ = capsys.readouterr()
    result = json.loads(out)
    assert code == 0 and result["signature_verified"] is True
    assert result["signer_trusted"] is False and result["signer_fingerprint"] == fingerprint(public_key_bytes(forger))

    main(["evaluate", str(forged), str(images), "--home", str(home)])
    out, _ = capsys.readouterr()
    assert "UNKNOWN SIGNER" in out and "unverified" in out and "verified)" not in out


def test_the_hospitals_own_signature_and_an_added_signer_are_trusted(world, tmp_path, capsys):
    home, forger, forged, images = world
    own = forge(tmp_path / "own.dpm", HospitalHome.at(home).identity())
    code, rows, _ = predict_json(capsys, str(own), str(images / "healthy" / "0.png"), "--home", str(home),
                                 "--require-trusted")
    assert code == 0 and rows[0]["signer_trusted"] is True

    # After the sender confirmed the fingerprint, the user trusts it: then, and only then, it counts.
    code = main(["trust", "add", str(forged), "--name", "Forger who is now vouched for", "--home", str(home)])
    out, _ = capsys.readouterr()
    assert code == 0 and fingerprint(public_key_bytes(forger)) in out and "Compare" in out
    code, rows, _ = predict_json(capsys, str(forged), str(images / "healthy" / "0.png"), "--home", str(home),
                                 "--require-trusted")
    assert code == 0 and rows[0]["signer_trusted"] is True
    # Another hospital home has not vouched for it.
    code, rows, _ = predict_json(capsys, str(forged), str(images / "healthy" / "0.png"),
                                 "--home", str(tmp_path / "other-home"))
    assert rows[0]["signer_trusted"] is False


def test_the_viewer_shows_the_forgery_amber_not_verified(world, qtbot):
    from gui.context import AppContext
    from gui.settings import AppSettings
    from gui.viewer import ViewerPage

    home, forger, forged, images = world
    context = AppContext(AppSettings(work_folder=home))
    page = ViewerPage(context)
    qtbot.addWidget(page)
    page.show()
    try:
        page.open_model(forged)
        qtbot.waitUntil(lambda: page.predictor is not None, timeout=20000)
        banner = page.model_banner.text()
        assert page.model_banner.kind == "warning"  # amber: neither green "ok" nor red "error"
        assert "Unknown signer" in banner and "unverified" in banner and "signature verified" not in banner.lower()
        assert page.verification_label.text() == "Valid signature, unknown signer: the card's claims are unverified."
        rows = page.card_form.rows
        assert rows["Signature"].startswith("Valid signature, unknown signer")
        assert rows["Privacy ε (epsilon)"] == "0.1 (unverified claim)"
        assert rows["Signer fingerprint"] == fingerprint(public_key_bytes(forger))
    finally:
        context.runner.cancel_all()
        context.runner.wait_all(10000)

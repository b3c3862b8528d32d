"""Models page: packages trained here or received, with card, signature status, viewer and export."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from PySide6.QtWidgets import QFileDialog

from core import __version__
from core.home import HospitalHome
from core.models.package import ModelCard, read_package, write_package
from core.models.registry import build_model
from core.models.trust import TrustStore
from core.signing import fingerprint, generate_private_key, public_key_bytes


def _package(path: Path, *, epsilon: float | None = 3.5, key=None) -> Path:
    model = build_model("small_cnn", 5)
    card = ModelCard(
        architecture="small_cnn", classes=["No DR", "Mild", "Moderate", "Severe", "Proliferative DR"],
        preprocessing={"size": 32}, mode="cdp" if epsilon else "c", epsilon=epsilon,
        delta=1e-5 if epsilon else None, accountant="rdp" if epsilon else None,
        noise_multiplier=1.1 if epsilon else None, sample_rate=0.1, max_grad_norm=1.0 if epsilon else None,
        steps=100, rounds=None, hospitals=1, image_counts={"local": 40},
        metrics={"validation": {"accuracy": 0.75}}, created="2026-11-20T10:00:00+00:00",
        software_version=__version__, description="test model")
    key = key or HospitalHome.at().identity()  # the app's work folder is the default hospital home
    path.parent.mkdir(parents=True, exist_ok=True)
    write_package(path, {k: v.detach() for k, v in model.state_dict().items()}, card, key)
    return path


def _tamper(source: Path, target: Path) -> Path:
    """Same weights and signature, but the card now claims a smaller epsilon."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "card.json":
                card = json.loads(data)
                card["epsilon"] = 0.1
                data = json.dumps(card).encode()
            zout.writestr(item, data)
    return target


def test_models_are_listed_with_their_signature_status(window, qtbot, tmp_path, monkeypatch):
    folder = window.context.models_folder
    good = _package(folder / "good.dpm")
    _tamper(good, folder / "tampered.dpm")
    (folder / "junk.dpm").write_bytes(b"not a zip at all")
    stranger = generate_private_key()
    _package(folder / "stranger.dpm", epsilon=0.1, key=stranger)

    page = window.show_page("models")
    qtbot.waitUntil(lambda: len(page.entries) == 4, timeout=30000)
    by_name = {entry.path.name: entry for entry in page.entries}
    assert by_name["good.dpm"].signature_text == "valid — signed by this hospital"
    assert by_name["tampered.dpm"].signature_text == "NOT VALID (changed or damaged)"
    assert by_name["junk.dpm"].signature_text == "unreadable" and by_name["junk.dpm"].error
    # A valid signature by a key nobody here trusts is not "valid — signed by ...": its claims are unverified.
    unknown = by_name["stranger.dpm"]
    assert unknown.signature_ok and not unknown.signer_trusted and unknown.level == "unknown signer"
    assert unknown.signature_text == "valid signature, UNKNOWN SIGNER: claims unverified"
    assert unknown.signer_fingerprint == fingerprint(public_key_bytes(stranger))
    assert {page.table.item(r, 5).text() for r in range(4)} == {e.signature_text for e in page.entries}
    page.table.selectRow([e.path.name for e in page.entries].index("stranger.dpm"))
    assert page.details.value("Privacy") == "ε = 0.100 at δ = 1e-05 (RDP) (unverified claim)"
    assert "unverified" in page.details.value("What it proves")

    row = [e.path.name for e in page.entries].index("good.dpm")
    page.table.selectRow(row)
    assert page.details.value("Privacy") == "ε = 3.500 at δ = 1e-05 (RDP)"
    assert page.details.value("Held-out evaluation") == (
        "On the training hospital's held-out validation images, this model scored accuracy 0.750.")
    assert page.open_button.isEnabled()

    opened = []
    window.context.install_navigation(window.show_page, opened.append)
    page.open_selected()
    assert opened == [good]

    exported = tmp_path / "copy.dpm"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(exported), ""))
    page.export_selected()
    qtbot.waitUntil(exported.exists, timeout=10000)
    assert read_package(exported).sha256 == read_package(good).sha256


def test_adding_a_model_file_checks_it_first(window, qtbot, tmp_path, monkeypatch):
    outside = _package(tmp_path / "from-usb.dpm", epsilon=None)
    page = window.show_page("models")
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(outside), ""))
    page.add_model()
    qtbot.waitUntil(lambda: any(e.path.name == "from-usb.dpm" for e in page.entries), timeout=30000)
    entry = next(e for e in page.entries if e.path.name == "from-usb.dpm")
    assert entry.source == "added" and entry.path.parent == window.context.models_folder / "imported"
    assert sum(1 for e in page.entries if e.path.name == "from-usb.dpm") == 1

    bogus = tmp_path / "bogus.dpm"
    bogus.write_bytes(b"PK\x03\x04 broken")
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(bogus), ""))
    page.add_model()
    from PySide6.QtWidgets import QMessageBox

    qtbot.waitUntil(lambda: window.findChild(QMessageBox, "errorDialog") is not None, timeout=10000)
    assert not (window.context.models_folder / "imported" / "bogus.dpm").exists()


def test_trusted_signers_in_settings_change_what_the_models_page_shows(window, qtbot, tmp_path, monkeypatch):
    from gui import dialogs

    sender = generate_private_key()
    received = _package(window.context.models_folder / "imported" / "from-clinic.dpm", epsilon=0.1, key=sender)
    settings = window.show_page("settings").trusted_signers
    # The hospital's own key is listed by itself and cannot be removed here.
    own = fingerprint(public_key_bytes(HospitalHome.at().identity()))
    settings.refresh()
    qtbot.waitUntil(lambda: any(s.fingerprint == own for s in settings.signers), timeout=10000)
    settings.table.selectRow([s.fingerprint for s in settings.signers].index(own))
    assert not settings.remove_button.isEnabled()
    row = [s.fingerprint for s in settings.signers].index(own)
    assert settings.table.item(row, 1).text() == "this hospital"
    assert settings.table.item(row, 2).text().split("\n") == [" ".join(own.split()[:8]), " ".join(own.split()[8:])]

    models = window.show_page("models")
    qtbot.waitUntil(lambda: any(e.path.name == "from-clinic.dpm" for e in models.entries), timeout=30000)
    assert next(e for e in models.entries if e.path.name == "from-clinic.dpm").level == "unknown signer"

    # Adding the signer shows its fingerprint to compare first; cancelling adds nothing.
    shown = []
    monkeypatch.setattr(type(settings), "ask_name", lambda self, fp, suggested: shown.append(fp) or None)
    settings.add_from_model(received)
    qtbot.waitUntil(lambda: len(shown) == 1, timeout=10000)
    assert shown == [fingerprint(public_key_bytes(sender))] and not HospitalHome.at().trusted_keys.exists()

    monkeypatch.setattr(type(settings), "ask_name", lambda self, fp, suggested: "City Eye Clinic")
    window.show_page("settings")
    settings.add_from_model(received)
    qtbot.waitUntil(lambda: any(s.name == "City Eye Clinic" for s in settings.signers), timeout=10000)
    assert TrustStore(HospitalHome.at()).trusted_keys()[public_key_bytes(sender)].source == str(received)
    models = window.show_page("models")
    qtbot.waitUntil(lambda: any(e.path.name == "from-clinic.dpm" and e.signer_trusted for e in models.entries),
                    timeout=30000)
    entry = next(e for e in models.entries if e.path.name == "from-clinic.dpm")
    assert entry.signature_text == "valid — signed by City Eye Clinic (added by you)"

    # Removing it (after a confirmation) makes the model an unknown signer's again.
    window.show_page("settings")
    settings.table.selectRow([s.name for s in settings.signers].index("City Eye Clinic"))
    assert settings.remove_button.isEnabled()
    monkeypatch.setattr(dialogs, "confirm", lambda *a, **k: True)
    settings.remove_selected()
    qtbot.waitUntil(lambda: all(s.name != "City Eye Clinic" for s in settings.signers), timeout=10000)
    models = window.show_page("models")
    qtbot.waitUntil(lambda: any(e.path.name == "from-clinic.dpm" and not e.signer_trusted for e in models.entries),
                    timeout=30000)


def test_a_model_whose_signature_fails_cannot_lend_its_key(window, qtbot, tmp_path):
    from PySide6.QtWidgets import QMessageBox

    good = _package(tmp_path / "good.dpm", key=generate_private_key())
    forged = _tamper(good, tmp_path / "forged.dpm")
    settings = window.show_page("settings").trusted_signers
    settings.add_from_model(forged)
    qtbot.waitUntil(lambda: window.findChild(QMessageBox, "errorDialog") is not None, timeout=10000)
    assert "signature does not match" in window.findChild(QMessageBox, "errorDialog").text()
    assert not HospitalHome.at().trusted_keys.exists()

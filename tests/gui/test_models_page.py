"""Models page: packages trained here or received, with card, signature status, viewer and export."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from PySide6.QtWidgets import QFileDialog

from core import __version__
from core.models.package import ModelCard, read_package, write_package
from core.models.registry import build_model
from core.paths import data_dir
from core.signing import load_or_create_private_key


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
    key = key or load_or_create_private_key(data_dir() / "identity" / "hospital_ed25519.pem")
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

    page = window.show_page("models")
    qtbot.waitUntil(lambda: len(page.entries) == 3, timeout=30000)
    by_name = {entry.path.name: entry for entry in page.entries}
    assert by_name["good.dpm"].signature_text == "valid — signed by this hospital"
    assert by_name["tampered.dpm"].signature_text == "NOT VALID (changed or damaged)"
    assert by_name["junk.dpm"].signature_text == "unreadable" and by_name["junk.dpm"].error
    assert {page.table.item(r, 5).text() for r in range(3)} == {e.signature_text for e in page.entries}

    row = [e.path.name for e in page.entries].index("good.dpm")
    page.table.selectRow(row)
    assert page.details.value("Privacy") == "ε = 3.500 at δ = 1e-05 (RDP)"
    assert page.details.value("Accuracy (validation)") == "0.750"
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

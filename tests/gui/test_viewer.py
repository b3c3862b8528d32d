"""The Viewer page under pytest-qt: open a model, predict, heatmap, navigation, DICOM panel, batch export."""

from __future__ import annotations

import csv
import io
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent

from core.data import DR_CLASSES, Preprocessing
from core.home import HospitalHome
from core.inference import open_model as core_open_model
from core.models.package import ModelCard, write_package
from core.models.registry import build_model
from core.models.trust import TrustStore
from core.signing import generate_private_key
from gui import dialogs
from gui.context import AppContext
from gui.settings import AppSettings
from gui.viewer import ViewerPage

WAIT_MS = 20000


def make_package(path, key=None):
    torch.manual_seed(0)
    model = build_model("small_cnn", 5)
    card = ModelCard(
        architecture="small_cnn", classes=list(DR_CLASSES), preprocessing=Preprocessing(size=32).to_dict(),
        mode="cdp", epsilon=3.0, delta=1e-5, accountant="rdp", noise_multiplier=1.0, sample_rate=0.05,
        max_grad_norm=1.0, steps=100, rounds=None, hospitals=1, image_counts={"local": 200}, metrics={},
        created="2026-01-01T00:00:00Z", software_version="0.1.0", description="<b>not html</b>",
    )
    write_package(path, model.state_dict(), card, key or generate_private_key())
    return path


@pytest.fixture
def model_path(tmp_path):
    """Signed with the hospital's own key (the page's work folder is its home): a trusted signer."""
    return make_package(tmp_path / "model.dpm", HospitalHome.at(tmp_path / "work").identity())


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(3):
        Image.fromarray(rng.integers(0, 256, (60 + 10 * index, 80, 3), dtype=np.uint8)).save(folder / f"img{index}.png")
    (folder / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    return folder


@pytest.fixture
def page(qtbot, tmp_path):
    context = AppContext(AppSettings(work_folder=tmp_path / "work"))
    widget = ViewerPage(context)
    qtbot.addWidget(widget)
    widget.resize(1100, 800)
    widget.show()
    yield widget
    context.runner.cancel_all()
    context.runner.wait_all(10000)


@pytest.fixture
def errors(monkeypatch):
    shown = []
    monkeypatch.setattr(dialogs, "show_error", lambda parent, exc: shown.append(exc))
    return shown


def open_and_wait(qtbot, page, model_path, folder):
    page.open_model(model_path)
    qtbot.waitUntil(lambda: page.predictor is not None, timeout=WAIT_MS)
    page.open_paths([folder])
    qtbot.waitUntil(lambda: page.analysis is not None and page.analysis.prediction is not None, timeout=WAIT_MS)


def test_open_model_shows_card_and_predicts(qtbot, page, model_path, images, errors):
    open_and_wait(qtbot, page, model_path, images)
    rows = page.card_form.rows
    assert rows["Signature"] == "Signed by a trusted signer (this hospital)" and rows["Architecture"] == "small_cnn"
    assert rows["Privacy ε (epsilon)"] == "3" and rows["Description"] == "<b>not html</b>"
    assert page.model_banner.kind == "ok" and "trusted signer (this hospital)" in page.model_banner.text()

    expected = core_open_model(model_path).predict_file(images / "img0.png")
    assert page.analysis.path == images / "img0.png"
    assert page.prediction_label.text().startswith(expected.predicted_class)
    for name, probability in expected.probabilities.items():
        assert page.bars.value(name) == pytest.approx(probability, abs=1e-3)
    assert "diabetic retinopathy" in page.referable_label.text()
    assert page.view.has_image() and page.view.image_item.pixmap().width() == 80
    assert errors == []


def test_heatmap_toggle_and_opacity(qtbot, page, model_path, images, errors):
    open_and_wait(qtbot, page, model_path, images)
    assert page.analysis.heatmap is None and not page.view.heat_item.isVisible()
    page.heatmap_check.setChecked(True)
    qtbot.waitUntil(lambda: page.analysis.heatmap is not None, timeout=WAIT_MS)
    assert page.view.heat_item.isVisible()
    assert page.heatmap_method.text() == "Heatmap: grad-cam"
    # The 32x32 heatmap is stretched over the model's center crop of the 80x60 image.
    left, top, width, height = page.predictor.crop_box((80, 60))
    box = page.view.heat_item.sceneBoundingRect()
    assert (box.left(), box.top()) == pytest.approx((left, top), abs=0.01)
    assert (box.width(), box.height()) == pytest.approx((width, height), abs=0.01)
    assert 0 < left and left + width < 80 and width > 40
    page.opacity_slider.setValue(80)
    assert page.view.heat_item.opacity() == pytest.approx(0.8)
    page.heatmap_check.setChecked(False)
    assert not page.view.heat_item.isVisible()
    # Moving on with the heatmap switched on computes it for the next image as part of the analysis.
    page.heatmap_check.setChecked(True)
    page.step(1)
    qtbot.waitUntil(lambda: page.analysis.path == images / "img1.png" and page.analysis.heatmap is not None,
                    timeout=WAIT_MS)
    assert page.view.heat_item.isVisible() and errors == []


def test_keyboard_navigation_and_zoom(qtbot, page, model_path, images, errors):
    open_and_wait(qtbot, page, model_path, images)
    assert [p.name for p in page.files] == ["img0.png", "img1.png", "img2.png", "zz_broken.png"]

    def at(index):
        qtbot.waitUntil(lambda: page.index == index, timeout=WAIT_MS)

    qtbot.keyClick(page.view, Qt.Key.Key_Right)
    at(1)
    qtbot.keyClick(page.view, Qt.Key.Key_PageDown)
    at(2)
    qtbot.keyClick(page.view, Qt.Key.Key_Left)
    at(1)
    qtbot.keyClick(page.view, Qt.Key.Key_PageUp)
    at(0)
    qtbot.keyClick(page.view, Qt.Key.Key_PageUp)  # already first: stays
    assert page.index == 0
    qtbot.waitUntil(lambda: page.analysis is not None and page.analysis.path == images / "img0.png",
                    timeout=WAIT_MS)

    before = page.view.zoom_factor
    page.view.zoom_in()
    assert page.view.zoom_factor == pytest.approx(before * 1.25)
    page.view.actual_size()
    assert page.view.zoom_factor == pytest.approx(1.0)

    # The broken file is reported on the page, not as a crash, and browsing goes on.
    page.show_index(3)
    qtbot.waitUntil(lambda: page.notice.isVisible(), timeout=WAIT_MS)
    assert "zz_broken.png" in page.notice.text()
    assert page.analysis is None and not page.view.has_image()
    page.step(-1)
    qtbot.waitUntil(lambda: page.analysis is not None, timeout=WAIT_MS)
    assert not page.notice.isVisible() and errors == []


def test_tampered_model_needs_confirmation_and_is_marked(qtbot, page, model_path, images, tmp_path,
                                                          monkeypatch, errors):
    with zipfile.ZipFile(model_path) as original:
        members = {name: original.read(name) for name in original.namelist()}
    card = json.loads(members["card.json"])
    card["epsilon"] = 0.01
    members["card.json"] = json.dumps(card).encode()
    forged = tmp_path / "forged.dpm"
    with zipfile.ZipFile(forged, "w") as out:
        for name, data in members.items():
            out.writestr(name, data)

    asked = []
    monkeypatch.setattr(dialogs, "confirm", lambda parent, title, text, yes="": asked.append(title) or False)
    page.open_model(forged)
    qtbot.waitUntil(lambda: len(asked) == 1, timeout=WAIT_MS)
    qtbot.wait(50)
    assert page.predictor is None and errors == []

    monkeypatch.setattr(dialogs, "confirm", lambda parent, title, text, yes="": asked.append(title) or True)
    page.open_model(forged)
    qtbot.waitUntil(lambda: page.predictor is not None, timeout=WAIT_MS)
    assert len(asked) == 2 and page.predictor.signature_verified is False
    assert page.model_banner.kind == "error" and "UNVERIFIED" in page.model_banner.text()
    assert page.card_form.rows["Signature"].startswith("NOT VERIFIED")
    page.open_paths([images / "img0.png"])
    qtbot.waitUntil(lambda: page.analysis is not None and page.analysis.prediction is not None, timeout=WAIT_MS)
    assert "UNVERIFIED" in page.prediction_label.text()
    assert page.analysis.prediction.signature_verified is False


def test_batch_run_table_and_export(qtbot, page, model_path, images, tmp_path, errors):
    page.open_model(model_path)
    qtbot.waitUntil(lambda: page.predictor is not None, timeout=WAIT_MS)
    page.run_batch([images])
    qtbot.waitUntil(lambda: page.batch is not None, timeout=WAIT_MS)
    assert page.batch_table.rowCount() == 4
    names = [page.batch_table.item(r, 0).text() for r in range(4)]
    assert names == ["img0.png", "img1.png", "img2.png", "zz_broken.png"]
    column = page.BATCH_COLUMNS.index
    assert "zz_broken.png" in page.batch_table.item(3, column("Problem")).text()
    # The test model's card has no evaluation: every answer says so.
    assert page.batch_table.item(0, column("Prediction")).text().removesuffix(" [NOT VALIDATED]") in DR_CLASSES
    assert page.batch_table.item(0, column("Grade folder")).text() == "images"
    assert page.batch_table.item(0, column("True label")).text() == ""  # "images" is no grade
    assert page.export_csv_button.isEnabled() and page.export_html_button.isEnabled()

    page.export_csv(tmp_path / "out.csv")
    qtbot.waitUntil(lambda: (tmp_path / "out.csv").exists(), timeout=WAIT_MS)
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out.csv").read_text())))
    assert len(rows) == 4 and rows[0]["model_sha256"] == page.predictor.sha256 and rows[0]["signer_trusted"] == "true"
    assert page.batch_table.item(0, column("Model signer")).text() == "trusted"
    page.export_html(tmp_path / "out.html")
    qtbot.waitUntil(lambda: (tmp_path / "out.html").exists(), timeout=WAIT_MS)
    assert (tmp_path / "out.html").read_text().count("data:image/jpeg;base64,") == 6

    # Double-clicking a row shows that image.
    page._batch_row_opened(2, 0)
    qtbot.waitUntil(lambda: page.analysis is not None and page.analysis.path.name == "img2.png", timeout=WAIT_MS)
    assert errors == []


def test_batch_cancel(qtbot, page, model_path, tmp_path, errors):
    folder = tmp_path / "many"
    folder.mkdir()
    for index in range(60):
        Image.new("RGB", (40, 40), (index, 0, 0)).save(folder / f"{index:03d}.png")
    page.open_model(model_path)
    qtbot.waitUntil(lambda: page.predictor is not None, timeout=WAIT_MS)
    page.run_batch([folder])
    qtbot.waitUntil(lambda: page.batch_table.rowCount() >= 1, timeout=WAIT_MS)
    page.batch_progress.cancel()
    qtbot.waitUntil(lambda: page.batch_button.isEnabled(), timeout=WAIT_MS)
    assert page.batch is None and not page.export_csv_button.isEnabled()
    assert "cancelled" in page.batch_summary.text() and errors == []


def test_dicom_panel_hides_identifying_fields_until_asked(qtbot, page, tmp_path, errors, write_mono_dicom):
    path = tmp_path / "eye.dcm"
    write_mono_dicom(path, np.full((40, 50), 120, np.uint8), PatientName="Doe^Jane", PatientID="XY-99",
                Manufacturer="Topcon")
    page.open_paths([path])  # no model: the image and its header are still shown
    qtbot.waitUntil(lambda: page.analysis is not None, timeout=WAIT_MS)

    def table():
        return {page.dicom_table.item(r, 0).text(): page.dicom_table.item(r, 1).text()
                for r in range(page.dicom_table.rowCount())}

    shown = table()
    assert shown["Manufacturer"] == "Topcon" and shown["Rows"] == "40"
    assert "Patient name" not in shown and "XY-99" not in repr(shown)
    page.identifying_check.setChecked(True)
    qtbot.waitUntil(lambda: "Patient name" in table(), timeout=WAIT_MS)
    assert table()["Patient ID"] == "XY-99"
    page.identifying_check.setChecked(False)
    qtbot.waitUntil(lambda: "Patient name" not in table(), timeout=WAIT_MS)
    assert page.prediction_label.text() == "Open a model to predict." and errors == []


def test_drop_a_model_and_a_folder(qtbot, page, model_path, images, errors):
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(model_path)), QUrl.fromLocalFile(str(images))])
    event = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                       Qt.KeyboardModifier.NoModifier)
    page.dropEvent(event)
    qtbot.waitUntil(lambda: page.predictor is not None and len(page.files) == 4, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: page.analysis is not None and page.analysis.prediction is not None, timeout=WAIT_MS)
    assert errors == []


def test_main_window_opens_a_model_in_the_viewer(window, qtbot, model_path, errors):
    window.context.open_in_viewer(model_path)
    assert window.current_page == "viewer"
    qtbot.waitUntil(lambda: window.viewer.predictor is not None, timeout=WAIT_MS)
    assert window.viewer.predictor.path == model_path and errors == []


def test_fast_browsing_shows_only_the_last_image(qtbot, page, model_path, images, errors):
    open_and_wait(qtbot, page, model_path, images)
    shown = []
    original = page._analysed
    page._analysed = lambda serial, result: (shown.append((serial == page._serial, result.path.name)),
                                             original(serial, result))
    page.step(1)
    page.step(1)
    qtbot.waitUntil(lambda: page.analysis.path.name == "img2.png", timeout=WAIT_MS)
    qtbot.wait(200)
    assert page.analysis.path.name == "img2.png" and page.index == 2
    # Whatever finished for img1 was either dropped before running or ignored as stale.
    assert all(current == (name == "img2.png") for current, name in shown)
    assert errors == []


def test_a_valid_signature_by_an_unknown_signer_is_amber_until_the_signer_is_trusted(qtbot, page, tmp_path, images,
                                                                                      errors):
    stranger = generate_private_key()
    path = make_package(tmp_path / "from-elsewhere.dpm", stranger)
    open_and_wait(qtbot, page, path, images)
    assert page.predictor.signature_verified and not page.predictor.signer_trusted
    assert page.model_banner.kind == "warning" and "Unknown signer" in page.model_banner.text()
    assert "unverified" in page.model_banner.text() and "signature verified" not in page.model_banner.text().lower()
    rows = page.card_form.rows
    assert rows["Signature"].startswith("Valid signature, unknown signer")
    assert rows["Privacy ε (epsilon)"] == "3 (unverified claim)"
    assert rows["Signer fingerprint"] == page.predictor.signer_fingerprint
    assert page.prediction_label.text().endswith("[UNKNOWN SIGNER]")

    # Trusting the signer (Settings does this and says so through models_changed) turns the page green.
    TrustStore(HospitalHome.at(tmp_path / "work")).add(page.predictor.package.signer_public_key, "Eye clinic",
                                                       source=str(path))
    page.context.models_changed.emit()
    qtbot.waitUntil(lambda: page.model_banner.kind == "ok", timeout=WAIT_MS)
    assert "Eye clinic (added by you)" in page.model_banner.text()
    assert page.card_form.rows["Privacy ε (epsilon)"] == "3"
    assert "[UNKNOWN SIGNER]" not in page.prediction_label.text() and errors == []


def _stereo(tmp_path):
    from core.data.dicom_writer import write_dicom

    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    return write_dicom(tmp_path / "series" / "stereo.dcm", frames, syntax="rle", ImageLaterality="L",
                       Manufacturer="Topcon", ManufacturerModelName="TRC-NW8", HorizontalFieldOfView=45,
                       PatientName="Doe^Jane"), frames


def test_the_viewer_steps_through_the_frames_of_a_series(qtbot, page, model_path, tmp_path, errors):
    path, frames = _stereo(tmp_path)
    page.open_model(model_path)
    qtbot.waitUntil(lambda: page.predictor is not None, timeout=WAIT_MS)
    page.open_paths([path])
    qtbot.waitUntil(lambda: page.analysis is not None and page.analysis.prediction is not None, timeout=WAIT_MS)
    assert (page.analysis.frame, page.analysis.frames) == (0, 3)
    assert page.frame_stepper.isVisible() and page.frame_stepper.position.text() == "frame 1 of 3"
    assert not page.frame_stepper.previous_button.isEnabled()
    expected = core_open_model(model_path)
    seen = []
    for frame in range(3):
        if frame:
            qtbot.keyClick(page.view, Qt.Key.Key_Down)
            qtbot.waitUntil(lambda f=frame: page.analysis.frame == f and page.analysis.prediction is not None,
                            timeout=WAIT_MS)
        prediction = page.analysis.prediction
        assert prediction.frame == frame and prediction.laterality == "L"
        assert prediction.probabilities == pytest.approx(expected.predict_file(path, frame=frame).probabilities)
        shown = page.analysis.image
        assert (shown.width(), shown.height()) == (64, 48)
        seen.append(tuple(shown.pixelColor(5, 5).getRgb()[:3]))
        assert seen[-1] == tuple(int(v) for v in frames[frame][5, 5])
    assert not page.frame_stepper.next_button.isEnabled()
    qtbot.keyClick(page.view, Qt.Key.Key_Down)  # past the last frame: stays
    page.frame_stepper.previous_button.click()
    qtbot.waitUntil(lambda: page.analysis.frame == 1, timeout=WAIT_MS)
    assert page.frame_stepper.position.text() == "frame 2 of 3"
    assert errors == []


def test_dicom_panel_shows_eye_camera_and_field_of_view_without_identifying_fields(qtbot, page, tmp_path, errors):
    path, _ = _stereo(tmp_path)
    page.open_paths([path])
    qtbot.waitUntil(lambda: page.analysis is not None and page.dicom_table.rowCount() > 0, timeout=WAIT_MS)
    rows = {page.dicom_table.item(r, 0).text(): page.dicom_table.item(r, 1).text()
            for r in range(page.dicom_table.rowCount())}
    assert rows["Eye"] == "Left" and rows["Camera / device"] == "Topcon TRC-NW8"
    assert rows["Field of view"] == "45 deg" and rows["Frames"] == "3"
    assert rows["Transfer syntax"] == "RLE Lossless"
    assert "Doe" not in repr(rows)


def test_a_batch_row_of_a_frame_opens_that_frame(qtbot, page, model_path, tmp_path, errors):
    path, _ = _stereo(tmp_path)
    page.open_model(model_path)
    qtbot.waitUntil(lambda: page.predictor is not None, timeout=WAIT_MS)
    page.run_batch([path.parent])
    qtbot.waitUntil(lambda: page.batch is not None, timeout=WAIT_MS)
    names = [page.batch_table.item(r, 0).text() for r in range(page.batch_table.rowCount())]
    assert names == ["stereo.dcm [frame 1]", "stereo.dcm [frame 2]", "stereo.dcm [frame 3]"]
    page._batch_row_opened(2, 0)
    qtbot.waitUntil(lambda: page.analysis is not None and page.analysis.frame == 2, timeout=WAIT_MS)
    assert page.files == [path] and page.frame_stepper.position.text() == "frame 3 of 3"

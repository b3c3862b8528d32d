"""The Viewer as staff meet it: a model that learned nothing says so beside every answer, unusual images
are flagged, the region the model sees is outlined with a legend for the heatmap, the image pane is large,
the zoom is a real readout, the batch table has the grade folder and true label, exports are confirmed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from PySide6.QtWidgets import QLabel, QMessageBox

from core.data import DR_CLASSES, Preprocessing
from core.home import HospitalHome
from core.inference import held_out_evaluation
from core.models.package import ModelCard, write_package
from core.models.registry import build_model
from core.training.metrics import compute_metrics
from gui.context import AppContext
from gui.settings import AppSettings
from gui.viewer import ViewerPage

WAIT_MS = 20000
TRUTH = [0] * 99 + [1] * 20 + [2] * 40 + [3] * 15 + [4] * 26


def _package(path, home, predicted, reference=None):
    torch.manual_seed(0)
    evaluation = held_out_evaluation(compute_metrics(TRUTH, predicted, 5), TRUTH, list(DR_CLASSES),
                                     described="the coordinator's own held-out images in folder test",
                                     held_by="the coordinator", reference=reference)
    card = ModelCard(
        architecture="small_cnn", classes=list(DR_CLASSES), preprocessing=Preprocessing(size=32).to_dict(),
        mode="fscdp", epsilon=3.0, delta=1e-5, accountant="rdp", noise_multiplier=1.0, sample_rate=0.3,
        max_grad_norm=1.0, steps=10, rounds=10, hospitals=2, image_counts={"a": 100}, metrics={"evaluation": evaluation},
        created="2026-01-01T00:00:00Z", software_version="0.1.0", description="test")
    write_package(path, build_model("small_cnn", 5).state_dict(), card, HospitalHome.at(home).identity())
    return path


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
def graded(tmp_path):
    """A folder per grade, as hospitals keep labelled images."""
    rng = np.random.default_rng(0)
    for grade in ("0", "2"):
        (tmp_path / "graded" / grade).mkdir(parents=True)
        for index in range(2):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
                tmp_path / "graded" / grade / f"{grade}_{index}.png")
    return tmp_path / "graded"


def _open(qtbot, page, model, image):
    page.open_model(model)
    qtbot.waitUntil(lambda: page.predictor is not None, timeout=WAIT_MS)
    page.open_paths([image])
    qtbot.waitUntil(lambda: page.analysis is not None and page.analysis.prediction is not None, timeout=WAIT_MS)


def test_a_baseline_only_model_is_never_a_confident_diagnosis(qtbot, page, tmp_path, graded):
    model = _package(tmp_path / "baseline.dpm", tmp_path / "work", [0] * len(TRUTH))
    _open(qtbot, page, model, graded / "2" / "2_0.png")
    assert page.validation_banner.isVisible() and page.validation_banner.kind == "error"
    assert "NO BETTER THAN ALWAYS ANSWERING “NO DR”" in page.validation_banner.text()
    assert "[NO BETTER THAN BASELINE]" in page.prediction_label.text()
    assert page.prediction_warning.isVisible() and "Do not rely on this answer" in page.prediction_warning.text()
    # "Not referable" (or "Referable") never stands alone.
    assert page.referable_label.text().endswith("%  [NO BETTER THAN BASELINE]")
    assert page.card_form.rows["Validation"].startswith("NO BETTER THAN ALWAYS ANSWERING")

    page.run_batch([graded])
    qtbot.waitUntil(lambda: page.batch is not None, timeout=WAIT_MS)
    column = page.BATCH_COLUMNS.index
    rows = range(page.batch_table.rowCount())
    assert all("[NO BETTER THAN BASELINE]" in page.batch_table.item(r, column("Prediction")).text() for r in rows)
    assert page.batch_panel.validation.isVisible() and "NO BETTER" in page.batch_panel.validation.text().upper()
    # The grade folder and the true label it gives.
    assert [page.batch_table.item(r, column("Grade folder")).text() for r in rows] == ["0", "0", "2", "2"]
    assert [page.batch_table.item(r, column("True label")).text() for r in rows] == \
        ["No DR", "No DR", "Moderate", "Moderate"]
    assert "Where the folder gives the grade:" in page.batch_summary.text()

    # Every export is confirmed.
    page.export_csv(tmp_path / "out.csv")
    qtbot.waitUntil(lambda: page.findChild(QMessageBox, "savedDialog") is not None, timeout=WAIT_MS)
    assert str(tmp_path / "out.csv") in page.findChild(QMessageBox, "savedDialog").text()


def test_a_validated_model_shows_no_warning_and_the_region_it_sees(qtbot, page, tmp_path, graded):
    rng = np.random.default_rng(1)
    good = [t if rng.random() < 0.8 else int(rng.integers(0, 5)) for t in TRUTH]
    reference = {"images": 200, "width_median": 40.0, "height_median": 40.0,
                 "colour_mean": [128.0, 128.0, 128.0], "colour_std": [20.0, 20.0, 20.0]}
    model = _package(tmp_path / "good.dpm", tmp_path / "work", good, reference)
    _open(qtbot, page, model, graded / "0" / "0_0.png")
    assert not page.validation_banner.isVisible() and not page.prediction_warning.isVisible()
    assert "[" not in page.prediction_label.text()
    assert page.input_label.text().startswith("The model sees this image at 32 × 32 px")
    assert page.view.region == pytest.approx(page.predictor.crop_box((40, 40)), abs=0.01)
    assert not page.notice.isVisible() and not page.input_notice.isVisible()

    # A big photograph of other colours: said on the page, not squeezed in silence.
    photo = tmp_path / "photo.png"
    Image.new("RGB", (1411, 1411), (200, 40, 10)).save(photo)
    page.open_paths([photo])
    qtbot.waitUntil(lambda: page.analysis is not None and page.analysis.path == photo, timeout=WAIT_MS)
    assert page.input_notice.isVisible() and "Unlike the images the model was tested on" in page.input_notice.text()
    assert "1411 × 1411" in page.input_notice.text() and "shrunk 44.1× from 1411 × 1411" in page.input_label.text()

    # The heatmap comes with its legend.
    page.heatmap_check.setChecked(True)
    qtbot.waitUntil(lambda: page.analysis.heatmap is not None, timeout=WAIT_MS)
    assert page.legend.isVisible()


def test_the_prediction_tab_says_what_to_do_next(qtbot, page, tmp_path, graded):
    assert page.prediction_label.text() == "Open a model to predict."
    model = _package(tmp_path / "m.dpm", tmp_path / "work", TRUTH)
    page.open_model(model)
    qtbot.waitUntil(lambda: page.predictor is not None, timeout=WAIT_MS)
    assert page.prediction_label.text() == "Open an image or a folder (or drop them here) to diagnose it."
    page.open_paths([graded / "0" / "0_0.png"])
    qtbot.waitUntil(lambda: page.analysis is not None and page.analysis.prediction is not None, timeout=WAIT_MS)
    assert page.prediction_label.text().split(" (")[0] in DR_CLASSES


def test_the_image_pane_is_large_and_the_zoom_is_a_readout(window, qtbot, tmp_path, graded):
    viewer = window.show_page("viewer")
    viewer = window.viewer
    qtbot.wait(50)
    size = viewer.view.size()
    assert size.width() >= 660 and size.height() >= 480, size  # it was about 590 x 285 at 1280 x 800
    viewer.open_paths([graded / "0" / "0_0.png"])
    qtbot.waitUntil(lambda: viewer.analysis is not None, timeout=WAIT_MS)
    viewer.view.actual_size()
    assert viewer.zoom_readout.text() == "Zoom 100%"
    viewer.view.zoom_in()
    assert viewer.zoom_readout.text() == "Zoom 125%"
    viewer.view.fit()
    assert viewer.zoom_readout.text() == f"Zoom {viewer.view.zoom_factor * 100:.0f}%"
    shown = QLabel.text(viewer.position_label)  # what is drawn, not cut at this width
    assert viewer.position_label.text() == "1 of 1:  0_0.png" == shown
    assert viewer.position_label.toolTip() == str(graded / "0" / "0_0.png")


def test_the_batch_layout_stays_put_while_rows_arrive(qtbot, page, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for index in range(30):
        Image.new("RGB", (40, 40), (index * 8, 0, 0)).save(folder / f"{index:03d}.png")
    page.open_model(_package(tmp_path / "m.dpm", tmp_path / "work", TRUTH))
    qtbot.waitUntil(lambda: page.predictor is not None, timeout=WAIT_MS)
    page.run_batch([folder])
    qtbot.waitUntil(lambda: page.batch_table.rowCount() >= 1, timeout=WAIT_MS)
    sizes, widths = page.vertical.sizes(), [page.batch_table.columnWidth(c) for c in range(1, 8)]
    table_top = page.batch_table.geometry().top()
    qtbot.waitUntil(lambda: page.batch is not None, timeout=WAIT_MS)
    assert page.vertical.sizes() == sizes and [page.batch_table.columnWidth(c) for c in range(1, 8)] == widths
    assert page.batch_table.geometry().top() == table_top  # the progress bar kept its space

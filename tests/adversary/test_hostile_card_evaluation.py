"""A model card's evaluation is text written by whoever signed it (any key can sign): markup in it must stay
text wherever the app now shows it (the Viewer's banners, the Models page, the HTML report), and a card that
claims a validation it does not have (accuracy above the baseline without the figures to back it) must not
be read as validated."""

from __future__ import annotations

import html

import torch
from PIL import Image
from PySide6.QtWidgets import QLabel

from core.data import DR_CLASSES, Preprocessing
from core.inference import BatchConfig, assess, run
from core.models.package import ModelCard, write_package
from core.models.registry import build_model
from core.signing import generate_private_key

HOSTILE = "<img src='file:///etc/passwd'><a href='https://evil.example'>click</a>"


def _card(metrics: dict) -> ModelCard:
    return ModelCard(
        architecture="small_cnn", classes=list(DR_CLASSES), preprocessing=Preprocessing(size=32).to_dict(),
        mode="fscdp", epsilon=1.0, delta=1e-5, accountant="rdp", noise_multiplier=1.0, sample_rate=0.3,
        max_grad_norm=1.0, steps=1, rounds=1, hospitals=2, image_counts={"a": 10}, metrics=metrics,
        created="2026-01-01T00:00:00Z", software_version="0.1.0", description="x")


def _hostile_package(path):
    # No confusion matrix: the class named in the banners is the card's own "majority_class".
    evaluation = {"accuracy": 0.5, "kappa": 0.0, "images": 200, "majority_baseline": 0.5,
                  "majority_class": HOSTILE, "test_set": {"images": 200, "held_by": HOSTILE, "described": HOSTILE}}
    torch.manual_seed(0)
    write_package(path, build_model("small_cnn", 5).state_dict(), _card({"evaluation": evaluation}),
                  generate_private_key())
    return path


def test_markup_in_a_card_evaluation_stays_text_in_the_viewer_and_the_report(qtbot, tmp_path):
    from gui.context import AppContext
    from gui.settings import AppSettings
    from gui.viewer import ViewerPage

    model = _hostile_package(tmp_path / "hostile.dpm")
    Image.new("RGB", (40, 40), (120, 60, 30)).save(tmp_path / "eye.png")
    page = ViewerPage(AppContext(AppSettings(work_folder=tmp_path / "work")))
    qtbot.addWidget(page)
    page.show()
    page.open_model(model)
    qtbot.waitUntil(lambda: page.predictor is not None, timeout=20000)
    page.open_paths([tmp_path / "eye.png"])
    qtbot.waitUntil(lambda: page.analysis is not None and page.analysis.prediction is not None, timeout=20000)
    for banner in (page.validation_banner, page.prediction_warning):
        assert "<img" not in banner.text() and html.escape("<img", quote=False) in banner.text()
    labels = [w for w in page.card_form.findChildren(QLabel) if "img src" in w.text()]
    assert labels and all(w.textFormat().name == "PlainText" for w in labels)

    result = run(BatchConfig(model=model, inputs=[tmp_path / "eye.png"], report=tmp_path / "r.html",
                             report_heatmaps=False))
    report = (tmp_path / "r.html").read_text()
    assert result.model_validation == "baseline"
    assert "<img src='file" not in report and "<a href='https://evil" not in report


def test_a_card_cannot_claim_validation_with_figures_that_do_not_add_up():
    # Accuracy 0.9 claimed, but the confusion matrix it ships says the model answered class 0 every time.
    claim = {"accuracy": 0.9, "kappa": 0.8, "images": 200, "majority_baseline": 0.1,
             "confusion_matrix": [[100, 0, 0, 0, 0], [25, 0, 0, 0, 0], [25, 0, 0, 0, 0], [25, 0, 0, 0, 0],
                                  [25, 0, 0, 0, 0]]}
    verdict = assess(_card({"evaluation": claim}))
    assert verdict.level == "baseline" and "answered “No DR” for every one of the 200 test images" in verdict.message

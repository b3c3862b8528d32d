"""Honest diagnoses: a model that learned nothing says so beside every answer, in the CLI and every export;
images far from the tested ones are flagged; the model input size is always stated."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.cli import main
from core.data import DR_CLASSES, Preprocessing
from core.inference import (
    BatchConfig,
    assess,
    check_input,
    held_out_evaluation,
    open_model,
    reference_statistics,
    run,
)
from core.inference.assessment import BASELINE, NOT_VALIDATED, VALIDATED
from core.models.package import ModelCard, write_package
from core.models.registry import build_model
from core.signing import generate_private_key
from core.training.metrics import compute_metrics

# The federation: 200 held-out images, 99 of them "No DR", and a model answering "No DR" every time.
TRUE = [0] * 99 + [1] * 20 + [2] * 40 + [3] * 15 + [4] * 26
ALWAYS_NO_DR = [0] * len(TRUE)


def _card(metrics: dict, size: int = 32) -> ModelCard:
    return ModelCard(
        architecture="small_cnn", classes=list(DR_CLASSES), preprocessing=Preprocessing(size=size).to_dict(),
        mode="fscdp", epsilon=2.0, delta=1e-5, accountant="rdp", noise_multiplier=1.0, sample_rate=0.3,
        max_grad_norm=1.0, steps=10, rounds=10, hospitals=2, image_counts={"a": 100, "b": 100}, metrics=metrics,
        created="2026-01-01T00:00:00Z", software_version="0.1.0", description="test")


def _evaluation(predicted: list[int], reference: dict | None = None) -> dict:
    return held_out_evaluation(compute_metrics(TRUE, predicted, 5), TRUE, list(DR_CLASSES),
                               described="the coordinator's own held-out images in folder test",
                               held_by="the coordinator", reference=reference)


def _package(path: Path, metrics: dict, size: int = 32) -> Path:
    torch.manual_seed(0)
    write_package(path, build_model("small_cnn", 5).state_dict(), _card(metrics, size), generate_private_key())
    return path


def test_always_answering_no_dr_is_called_what_it_is():
    verdict = assess(_card({"evaluation": _evaluation(ALWAYS_NO_DR)}))
    assert verdict.level == BASELINE and not verdict.trustworthy
    assert verdict.headline == "No better than always answering “No DR”"
    assert verdict.baseline == pytest.approx(0.495) and verdict.accuracy == pytest.approx(0.495)
    assert "answered “No DR” for every one of the 200 test images" in verdict.message
    assert "the coordinator's own held-out images in folder test" in verdict.message
    assert verdict.marker == "[NO BETTER THAN BASELINE]"


def test_a_model_that_beats_the_baseline_is_validated_and_one_within_noise_is_not():
    rng = np.random.default_rng(0)
    good = [t if rng.random() < 0.7 else int(rng.integers(0, 5)) for t in TRUE]
    verdict = assess(_card({"evaluation": _evaluation(good)}))
    assert verdict.level == VALIDATED and verdict.accuracy > 0.7 and verdict.marker == ""
    # Two images better than always "No DR" on 200: within two standard errors (0.071) of the baseline.
    barely = list(ALWAYS_NO_DR)
    barely[99] = barely[100] = 1
    assert assess(_card({"evaluation": _evaluation(barely)})).level == BASELINE


def test_a_card_without_an_evaluation_is_not_validated_and_old_cards_are_read():
    assert assess(_card({})).level == NOT_VALIDATED
    assert assess(_card({"evaluation": {}})).level == NOT_VALIDATED
    # Cards written before the evaluation had a name: chance-level kappa is still caught.
    assert assess(_card({"accuracy": 0.6, "kappa": 0.02})).level == BASELINE
    assert assess(_card({"accuracy": 0.6, "kappa": 0.55})).level == VALIDATED


def test_the_evaluation_block_says_whose_images_and_that_epsilon_does_not_cover_it():
    block = _evaluation(ALWAYS_NO_DR)
    assert block["images"] == 200 and block["majority_class"] == "No DR"
    assert block["majority_baseline"] == pytest.approx(0.495)
    assert block["test_set"] == {"images": 200, "held_by": "the coordinator",
                                 "described": "the coordinator's own held-out images in folder test"}
    assert "not cover" in block["release_note"] and "ε" in block["release_note"]
    json.dumps(block)  # goes into the signed card as JSON


def test_a_baseline_model_in_predict_json_and_every_export(tmp_path, capsys):
    model = _package(tmp_path / "baseline.dpm", {"evaluation": _evaluation(ALWAYS_NO_DR)})
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for index in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(images / f"i{index}.png")

    assert main(["predict", str(model), str(images), "--json"]) == 0
    out, err = capsys.readouterr()
    rows = json.loads(out)
    assert len(rows) == 2
    for row in rows:
        assert row["model_validation"] == BASELINE
        assert "No better than always answering" not in row["model_warning"]  # the message, not the headline
        assert "do not use them for patients" in row["model_warning"]
        assert row["input"]["input_size"] == 32 and row["input"]["image_size"] == [40, 40]
    assert "WARNING" in err and "NO BETTER THAN ALWAYS ANSWERING “NO DR”" in err

    assert main(["predict", str(model), str(images)]) == 0
    out, _ = capsys.readouterr()
    lines = [line for line in out.splitlines() if ".png:" in line]
    assert len(lines) == 2 and all("[NO BETTER THAN BASELINE]" in line for line in lines)

    result = run(BatchConfig(model=model, inputs=[images], csv=tmp_path / "o.csv", report=tmp_path / "o.html",
                             report_heatmaps=False))
    assert result.model_validation == BASELINE
    rows = list(csv.DictReader(io.StringIO((tmp_path / "o.csv").read_text())))
    assert {row["model_validation"] for row in rows} == {BASELINE}
    html = (tmp_path / "o.html").read_text()
    assert 'class="warn">NO BETTER THAN ALWAYS ANSWERING' in html and html.count("[NO BETTER THAN BASELINE]") >= 3


def test_a_prediction_never_says_not_referable_without_the_warning(tmp_path):
    predictor = open_model(_package(tmp_path / "m.dpm", {}), allow_unverified=True)
    prediction = predictor.predict_image(Image.new("RGB", (40, 40), (120, 60, 30)))
    assert prediction.model_validation == NOT_VALIDATED and prediction.model_marker == "[NOT VALIDATED]"
    assert prediction.referable_text in ("Referable [NOT VALIDATED]", "Not referable [NOT VALIDATED]")
    assert prediction.to_dict()["model_warning"].startswith("This model's card holds no evaluation")


def test_images_far_from_the_tested_ones_are_flagged():
    tested = torch.full((20, 3, 32, 32), 0, dtype=torch.uint8)
    tested[:, 0] = torch.randint(100, 140, (20, 1, 1), dtype=torch.uint8)  # reddish fundus-like colours
    tested[:, 1] = torch.randint(40, 70, (20, 1, 1), dtype=torch.uint8)
    tested[:, 2] = torch.randint(10, 30, (20, 1, 1), dtype=torch.uint8)
    make_up = {"resolution": {"width": {"median": 160}, "height": {"median": 160}}}
    reference = reference_statistics(tested, make_up)
    assert reference["images"] == 20 and reference["width_median"] == 160.0 and len(reference["colour_mean"]) == 3

    alike = check_input((170, 160), 32, reference["colour_mean"], reference)
    assert alike.warnings == [] and alike.summary == "The model sees this image at 32 × 32 px (shrunk 5× from 170 × 160)."
    photograph = check_input((1411, 1411), 32, reference["colour_mean"], reference)
    assert len(photograph.warnings) == 1 and "1411 × 1411 px" in photograph.warnings[0]
    wide = check_input((320, 160), 32, reference["colour_mean"], reference)
    assert any("centre square" in w for w in wide.warnings)
    blue = check_input((160, 160), 32, [20.0, 40.0, 200.0], reference)
    assert any("colours" in w for w in blue.warnings)
    # No reference (an older card): the squeeze to a tiny input is still said.
    assert "shrunk 29×" in check_input((1411, 1411), 48, None, None).warnings[0]
    assert check_input((1411, 1411), 48, None, None).summary.startswith("The model sees this image at 48 × 48 px")


def test_the_predictor_checks_each_image_against_the_card_reference(tmp_path):
    reference = {"images": 10, "width_median": 40.0, "height_median": 40.0,
                 "colour_mean": [120.0, 60.0, 30.0], "colour_std": [8.0, 8.0, 8.0]}
    predictor = open_model(_package(tmp_path / "m.dpm", {"evaluation": _evaluation(TRUE, reference)}),
                           allow_unverified=True)
    assert predictor.assessment.level == VALIDATED
    same = predictor.predict_image(Image.new("RGB", (40, 40), (120, 60, 30)))
    assert same.input_check.warnings == []
    other = predictor.predict_image(Image.new("RGB", (600, 600), (20, 200, 240)))
    assert len(other.input_check.warnings) == 2  # far larger, and other colours

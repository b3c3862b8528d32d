"""Guarded data choices: the parent of the right folder, a test split, folders that are not grades or not
the plan's classes are warned about; small images are one line at the real model input size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from core.cli import main
from core.data import DR_CLASSES
from core.data.validation import class_mismatch, validate


def _images(folder: Path, count: int, size: int = 40, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{seed}_{index}.png")


def _demo_layout(root: Path) -> Path:
    """What `dopamine demo-data` writes: hospital_01/<grade>, hospital_02/<grade>, test/<grade>."""
    for seed, part in enumerate(("hospital_01", "hospital_02", "test")):
        for grade in ("0", "2"):
            _images(root / part / grade, 2, seed=seed * 10 + int(grade))
    return root


def test_the_parent_of_the_demo_data_is_not_taken_for_a_hospital(tmp_path):
    report = validate(_demo_layout(tmp_path / "demo"))
    assert report.classes == ["hospital_01", "hospital_02", "test"] and report.usable == 12  # usable, but ...
    kinds = [w.kind for w in report.warnings]
    assert kinds.count("nested_classes") == 3 and "test_split" in kinds and "not_grades" in kinds
    nested = next(w.message for w in report.warnings if w.kind == "nested_classes")
    assert "hospital_01 itself holds folders of images (0, 2)" in nested and "choose hospital_01 itself" in nested
    test = next(w.message for w in report.warnings if w.kind == "test_split")
    assert "test" in test and "held-out test set" in test
    assert "WARNING: The class folder hospital_01 itself holds" in report.to_text()
    assert json.loads(report.to_json())["warnings"][0]["kind"]


def test_one_hospital_folder_is_clean_and_the_test_folder_is_named(tmp_path):
    root = _demo_layout(tmp_path / "demo")
    assert validate(root / "hospital_01").warnings == []
    held_out = validate(root / "test").warnings
    assert [w.kind for w in held_out] == ["test_split"] and "The folder test is named like" in held_out[0].message


def test_classes_other_than_the_plans_are_warned_and_explained(tmp_path):
    root = tmp_path / "eyes"
    for name in ("normal", "glaucoma"):
        _images(root / name, 2)
    report = validate(root, expected_classes=list(DR_CLASSES), expected_from="the plan of Retina network")
    assert [w.kind for w in report.warnings] == ["other_classes"]
    assert "not the classes of the plan of Retina network (No DR, Mild" in report.warnings[0].message
    assert class_mismatch(["glaucoma", "normal"], ["glaucoma", "normal"]) == ""
    assert [w.kind for w in validate(root).warnings] == ["not_grades"]


def test_small_images_are_one_line_at_the_models_input_size(tmp_path):
    root = tmp_path / "small"
    _images(root / "0", 3, size=40)
    _images(root / "2", 2, size=64, seed=5)
    report = validate(root, min_size=48)
    assert report.smaller_than(48) == 3 and report.smaller_than(224) == 5 and report.smaller_than(32) == 0
    text = report.to_text()
    assert "3 image(s) are smaller than the model input of 48 px (the smallest: 40 px)" in text
    assert text.count("40x40 px") == 0  # not one line per image


def test_inspect_for_a_model_uses_its_classes_and_input_size(tmp_path, capsys):
    import torch

    from core.data import Preprocessing
    from core.models.package import ModelCard, write_package
    from core.models.registry import build_model
    from core.signing import generate_private_key

    torch.manual_seed(0)
    model = tmp_path / "m.dpm"
    card = ModelCard(architecture="small_cnn", classes=list(DR_CLASSES), preprocessing=Preprocessing(size=48).to_dict(),
                     mode="c", epsilon=None, delta=None, accountant=None, noise_multiplier=None, sample_rate=None,
                     max_grad_norm=None, steps=1, rounds=None, hospitals=1, image_counts={}, metrics={},
                     created="2026-01-01T00:00:00Z", software_version="0.1.0")
    write_package(model, build_model("small_cnn", 5).state_dict(), card, generate_private_key())
    root = _demo_layout(tmp_path / "demo")
    assert main(["inspect", str(root), "--for", str(model)]) == 0
    out = capsys.readouterr().out
    assert "not the classes of the model m.dpm" in out and "itself holds folders" in out
    assert "smaller than the model input of 48 px" in out
    assert main(["inspect", str(root / "hospital_01"), "--for", str(model), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["warnings"] == [] and report["min_size"] == 48

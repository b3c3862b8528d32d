"""Tiny signed model packages and images for the inference tests."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from core.data import DR_CLASSES, Preprocessing
from core.models.package import ModelCard, write_package
from core.models.registry import build_model
from core.signing import generate_private_key

SIZE = 32


def make_card(architecture: str, classes: list[str], spec: Preprocessing) -> ModelCard:
    return ModelCard(
        architecture=architecture, classes=list(classes), preprocessing=spec.to_dict(), mode="fscdp",
        epsilon=2.5, delta=1e-5, accountant="rdp", noise_multiplier=1.1, sample_rate=0.01, max_grad_norm=1.0,
        steps=300, rounds=300, hospitals=10, image_counts={"hospital_01": 300, "hospital_02": 280},
        metrics={"accuracy": 0.61, "kappa": 0.55}, created="2026-01-01T00:00:00Z", software_version="0.1.0",
        description="test model",
    )


def make_package(path: Path, *, architecture: str = "small_cnn", classes: list[str] | None = None,
                 spec: Preprocessing | None = None, seed: int = 0) -> Path:
    classes = list(classes or DR_CLASSES)
    spec = spec or Preprocessing(size=SIZE)
    torch.manual_seed(seed)
    model = build_model(architecture, len(classes))
    write_package(path, model.state_dict(), make_card(architecture, classes, spec), generate_private_key())
    return path


def tamper(source: Path, target: Path) -> Path:
    """Copy a package with its card edited (epsilon lowered) but the old signature kept."""
    with zipfile.ZipFile(source) as original:
        members = {name: original.read(name) for name in original.namelist()}
    card = json.loads(members["card.json"])
    card["epsilon"] = 0.1
    members["card.json"] = json.dumps(card).encode()
    with zipfile.ZipFile(target, "w") as forged:
        for name, data in members.items():
            forged.writestr(name, data)
    return target


def random_image(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def kit(write_mono_dicom) -> SimpleNamespace:
    """The helpers above, for test modules (importlib mode cannot import conftest)."""
    return SimpleNamespace(SIZE=SIZE, make_package=make_package, tamper=tamper, random_image=random_image,
                           png_bytes=png_bytes, write_dicom=write_mono_dicom)


@pytest.fixture(scope="session")
def package_path(tmp_path_factory) -> Path:
    return make_package(tmp_path_factory.mktemp("models") / "dr.dpm")


@pytest.fixture(scope="session")
def tampered_path(package_path, tmp_path_factory) -> Path:
    return tamper(package_path, tmp_path_factory.mktemp("forged") / "forged.dpm")


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """Two PNGs, a JPEG in a sub-folder, a corrupt PNG, an HTML-hostile name and a text file to ignore."""
    root = tmp_path_factory.mktemp("images")
    (root / "sub").mkdir()
    random_image(1).save(root / "a.png")
    random_image(2, (64, 64)).save(root / "b.png")
    random_image(3, (50, 70)).convert("RGB").save(root / "sub" / "c.jpg", quality=95)
    random_image(4).save(root / "<b>&x.png")
    (root / "broken.png").write_bytes(png_bytes(random_image(5))[:60])
    (root / "notes.txt").write_text("not an image")
    return root

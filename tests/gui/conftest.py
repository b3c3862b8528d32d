"""GUI test fixtures: a fresh main window per test and tiny image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_image_folder(root: Path, *, classes: tuple[str, ...] = ("0", "2"), per_class: int = 10,
                       size: int = 40, corrupt: bool = False, seed: int = 0) -> Path:
    """One sub-folder per class; class k is tinted so a tiny model can tell the classes apart."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 90, size=(size, size, 3), dtype=np.uint8)
            pixels[..., k % 3] += np.uint8(150)
            Image.fromarray(pixels).save(folder / f"img_{k}_{i:03d}.png")
    if corrupt:
        good = (root / classes[0] / "img_0_000.png").read_bytes()
        (root / classes[0] / "broken_scan.png").write_bytes(good[: len(good) // 3])
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "images", corrupt=True)


@pytest.fixture
def make_image_folder():
    """The folder writer itself, for tests that need other sizes (conftest cannot be imported)."""
    return write_image_folder


@pytest.fixture
def window(qtbot):
    from gui.app import application, create_window

    app = application([])
    win = create_window(app)
    qtbot.addWidget(win)
    win.resize(1280, 800)
    win.show()
    yield win
    runner = win.context.runner
    runner.cancel_all()
    assert runner.wait_all(60000), "a background job did not stop after cancel"

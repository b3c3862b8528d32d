"""`python -m gui.screenshots OUTDIR` renders every page, with demo content, to PNGs of at least 1280x800."""

from __future__ import annotations

from PySide6.QtGui import QImage

from gui.main_window import NAVIGATION


def test_one_png_per_page_at_least_1280_by_800(tmp_path, qapp):
    from gui.screenshots import main

    assert main([str(tmp_path), "--quick"]) == 0
    for number, (key, _text, _icon) in enumerate(NAVIGATION, start=1):
        image = QImage(str(tmp_path / f"{number:02d}-{key}.png"))
        assert not image.isNull(), key
        assert image.width() >= 1280 and image.height() >= 800
    assert (tmp_path / "dark-home.png").exists()
    # Real demo content, not empty pages: the data page's full render is taller than one screen.
    assert QImage(str(tmp_path / "02-data-full.png")).height() > 800

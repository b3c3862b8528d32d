"""Files shipped beside the code: style sheets and icons (also inside a PyInstaller bundle)."""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path

from PySide6.QtCore import QByteArray, QSize, Qt
from PySide6.QtGui import QIcon, QPainter, QPixmap
from PySide6.QtSvg import QSvgRenderer


def resources_dir() -> Path:
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        return Path(bundle) / "resources"
    return Path(__file__).resolve().parent.parent / "resources"


def read_text(*parts: str) -> str:
    return resources_dir().joinpath(*parts).read_text(encoding="utf-8")


@lru_cache(maxsize=64)
def icon(name: str, color: str = "#000000", size: int = 24) -> QIcon:
    """A line icon from resources/icons/<name>.svg drawn in ``color`` (icons follow the theme)."""
    svg = read_text("icons", f"{name}.svg").replace("#000000", color)
    renderer = QSvgRenderer(QByteArray(svg.encode()))
    result = QIcon()
    for scale in (1, 2):
        pixmap = QPixmap(QSize(size * scale, size * scale))
        pixmap.fill(Qt.GlobalColor.transparent)
        painter = QPainter(pixmap)
        renderer.render(painter)
        painter.end()
        result.addPixmap(pixmap)
    return result


def app_icon() -> QIcon:
    return QIcon(str(resources_dir() / "icons" / "app.svg"))

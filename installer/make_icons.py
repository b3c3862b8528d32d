"""Render the app icon (resources/icons/app.svg) to the raster files each platform's packaging needs.

    python installer/make_icons.py OUT_DIR   ->  OUT_DIR/dopamine.png (512 px), dopamine.ico, dopamine.icns

The SVG stays the one source; these files are build outputs (the spec calls ``write_icons`` into
build/icons). Qt renders the SVG, Pillow writes the multi-size .ico and .icns.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE_SVG = ROOT / "resources" / "icons" / "app.svg"
ICO_SIZES = (16, 24, 32, 48, 64, 128, 256)
ICNS_SIZE = 1024


def render_png(svg: Path, size: int) -> bytes:
    """The SVG drawn into a transparent size x size PNG."""
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice
    from PySide6.QtGui import QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise ValueError(f"{svg}: not a valid SVG file")
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(0)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter)
    painter.end()
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buffer, "PNG")
    buffer.close()
    return bytes(data)


def write_icons(out_dir: Path, svg: Path = SOURCE_SVG) -> dict[str, Path]:
    """Write dopamine.png, dopamine.ico and dopamine.icns into ``out_dir``; returns them by suffix."""
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {suffix: out_dir / f"dopamine.{suffix}" for suffix in ("png", "ico", "icns")}
    paths["png"].write_bytes(render_png(svg, 512))
    # Each .ico size is rendered from the vector, not downscaled, so small sizes stay sharp.
    ico_images = [Image.open(io.BytesIO(render_png(svg, size))) for size in ICO_SIZES]
    ico_images[-1].save(paths["ico"], format="ICO", sizes=[(s, s) for s in ICO_SIZES],
                        append_images=ico_images[:-1])
    Image.open(io.BytesIO(render_png(svg, ICNS_SIZE))).save(paths["icns"], format="ICNS")
    return paths


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_icons.py OUT_DIR")
    for path in write_icons(Path(sys.argv[1])).values():
        print(path)

"""A grid of image thumbnails with captions (the grade), decoded off the UI thread."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QIcon, QImage, QPixmap
from PySide6.QtWidgets import QListView, QListWidget, QListWidgetItem, QWidget

from core.jobs import NEVER_CANCELLED, CancelToken, ProgressFn, no_progress

THUMBNAIL_SIZE = 84


@dataclass
class Thumbnail:
    path: Path
    caption: str
    image: QImage  # QImage (not QPixmap) may be built on a worker thread


def make_thumbnails(items: list[tuple[Path, str]], *, size: int = THUMBNAIL_SIZE,
                    progress: ProgressFn = no_progress, cancel: CancelToken = NEVER_CANCELLED,
                    on_event=None) -> int:
    """Decode each image with core.data's reader and emit a Thumbnail per readable one (a worker job)."""
    from core.data.images import load_image
    from core.errors import DataError

    made = 0
    for index, (path, caption) in enumerate(items):
        cancel.check()
        try:
            image = load_image(Path(path))
        except DataError:
            continue
        image.thumbnail((size, size))
        rgb = image.convert("RGB")
        data = rgb.tobytes()
        qimage = QImage(data, rgb.width, rgb.height, rgb.width * 3, QImage.Format.Format_RGB888).copy()
        if on_event is not None:
            on_event(Thumbnail(Path(path), caption, qimage))
        made += 1
        progress((index + 1) / len(items), f"Thumbnail {index + 1} of {len(items)}")
    return made


class ThumbnailGrid(QListWidget):
    def __init__(self, parent: QWidget | None = None, *, size: int = THUMBNAIL_SIZE) -> None:
        super().__init__(parent)
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setIconSize(QSize(size, size))
        self.setGridSize(QSize(size + 28, size + 34))
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setMovement(QListView.Movement.Static)
        self.setWrapping(True)
        self.setUniformItemSizes(True)
        self.setSelectionMode(QListWidget.SelectionMode.NoSelection)
        self.setMinimumHeight(2 * (size + 34) + 12)

    def add_thumbnail(self, thumbnail: Thumbnail) -> None:
        item = QListWidgetItem(QIcon(QPixmap.fromImage(thumbnail.image)), thumbnail.caption)
        item.setToolTip(str(thumbnail.path))
        item.setTextAlignment(Qt.AlignmentFlag.AlignHCenter)
        self.addItem(item)

    def captions(self) -> list[str]:
        return [self.item(i).text() for i in range(self.count())]

"""The Viewer's image: a zoomable, pannable view with the saliency heatmap over the region the model sees,
and the frame stepper of multi-frame DICOM files."""

from __future__ import annotations

from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtGui import QImage, QKeyEvent, QPainter, QPixmap, QTransform, QWheelEvent
from PySide6.QtWidgets import (
    QGraphicsPixmapItem,
    QGraphicsScene,
    QGraphicsView,
    QHBoxLayout,
    QLabel,
    QWidget,
)

from gui.widgets.common import button

NAVIGATION_KEYS = {Qt.Key.Key_Left: -1, Qt.Key.Key_PageUp: -1, Qt.Key.Key_Right: 1, Qt.Key.Key_PageDown: 1}
FRAME_KEYS = {Qt.Key.Key_Up: -1, Qt.Key.Key_Down: 1}
MIN_SCALE, MAX_SCALE = 0.02, 40.0



def qimage(image) -> QImage:
    """A PIL image as a QImage that owns its pixels (QImage, unlike QPixmap, may be built off the UI thread)."""
    rgb = image.convert("RGB")
    data = rgb.tobytes()
    return QImage(data, rgb.width, rgb.height, 3 * rgb.width, QImage.Format.Format_RGB888).copy()



class ImageView(QGraphicsView):
    """Zoom (wheel, buttons) and pan (drag) over the image, with a heatmap layer over the model's crop."""

    navigate = Signal(int)
    navigate_frame = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("viewerImage")
        self.setScene(QGraphicsScene(self))
        self.image_item = QGraphicsPixmapItem()
        self.image_item.setTransformationMode(Qt.TransformationMode.SmoothTransformation)
        self.heat_item = QGraphicsPixmapItem()
        self.heat_item.setTransformationMode(Qt.TransformationMode.SmoothTransformation)
        self.heat_item.setZValue(1)
        self.heat_item.setVisible(False)
        self.scene().addItem(self.image_item)
        self.scene().addItem(self.heat_item)
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setMinimumSize(320, 280)
        # Drops go to the page, which knows what to do with models, images and folders.
        self.setAcceptDrops(False)
        self.viewport().setAcceptDrops(False)
        self._heat_wanted = False

    @property
    def zoom_factor(self) -> float:
        return self.transform().m11()

    def has_image(self) -> bool:
        return not self.image_item.pixmap().isNull()

    def set_image(self, image: QImage | None) -> None:
        self.image_item.setPixmap(QPixmap.fromImage(image) if image is not None else QPixmap())
        self.heat_item.setPixmap(QPixmap())
        self.heat_item.setVisible(False)
        self.scene().setSceneRect(self.image_item.boundingRect())
        self.fit()

    def set_heatmap(self, heatmap: QImage | None, box: tuple[float, float, float, float] | None) -> None:
        if heatmap is None or box is None:
            self.heat_item.setPixmap(QPixmap())
            self.heat_item.setVisible(False)
            return
        left, top, width, height = box
        self.heat_item.setPixmap(QPixmap.fromImage(heatmap))
        self.heat_item.setTransform(QTransform.fromScale(width / heatmap.width(), height / heatmap.height()))
        self.heat_item.setPos(left, top)
        self.heat_item.setVisible(self._heat_wanted)

    def set_heatmap_visible(self, visible: bool) -> None:
        self._heat_wanted = visible
        self.heat_item.setVisible(visible and not self.heat_item.pixmap().isNull())

    def set_heatmap_opacity(self, opacity: float) -> None:
        self.heat_item.setOpacity(max(0.0, min(1.0, opacity)))

    def zoom(self, factor: float) -> None:
        target = max(MIN_SCALE, min(MAX_SCALE, self.zoom_factor * factor))
        step = target / self.zoom_factor
        self.scale(step, step)

    def zoom_in(self) -> None:
        self.zoom(1.25)

    def zoom_out(self) -> None:
        self.zoom(0.8)

    def actual_size(self) -> None:
        self.setTransform(QTransform())

    def fit(self) -> None:
        if self.has_image():
            self.fitInView(QRectF(self.image_item.boundingRect()), Qt.AspectRatioMode.KeepAspectRatio)

    def wheelEvent(self, event: QWheelEvent) -> None:  # noqa: N802 (Qt override)
        steps = event.angleDelta().y() / 120.0
        if steps:
            self.zoom(1.25 ** steps)
        event.accept()

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 (Qt override)
        step = NAVIGATION_KEYS.get(Qt.Key(event.key()))
        if step is not None and event.modifiers() == Qt.KeyboardModifier.NoModifier:
            self.navigate.emit(step)
            event.accept()
            return
        frame_step = FRAME_KEYS.get(Qt.Key(event.key()))
        if frame_step is not None and event.modifiers() == Qt.KeyboardModifier.NoModifier:
            self.navigate_frame.emit(frame_step)
            event.accept()
            return
        if event.key() in (Qt.Key.Key_Plus, Qt.Key.Key_Equal):
            self.zoom_in()
        elif event.key() == Qt.Key.Key_Minus:
            self.zoom_out()
        elif event.key() == Qt.Key.Key_0:
            self.fit()
        else:
            super().keyPressEvent(event)


class FrameStepper(QWidget):
    """▲ frame 2 of 30 ▼ for a multi-frame file; hidden for single images."""

    step = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.previous_button = button("▲ Frame")
        self.next_button = button("Frame ▼")
        self.position = QLabel("")
        self.position.setTextFormat(Qt.TextFormat.PlainText)
        self.previous_button.setToolTip("Previous frame (Up)")
        self.next_button.setToolTip("Next frame (Down)")
        self.previous_button.clicked.connect(lambda: self.step.emit(-1))
        self.next_button.clicked.connect(lambda: self.step.emit(1))
        layout.addWidget(self.previous_button)
        layout.addWidget(self.position)
        layout.addWidget(self.next_button)
        layout.addStretch(1)
        self.show_frame(0, 1)

    def show_frame(self, frame: int, frames: int) -> None:
        self.setVisible(frames > 1)
        self.position.setText(f"frame {frame + 1} of {frames}")
        self.previous_button.setEnabled(frame > 0)
        self.next_button.setEnabled(frame < frames - 1)



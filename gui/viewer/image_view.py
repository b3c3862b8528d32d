"""The Viewer's image: a zoomable, pannable view with the saliency heatmap over the region the model sees
(outlined, so a heatmap that covers only the centre is not mistaken for the whole image), a zoom readout,
the heatmap's colour legend, a file name that elides in the middle, and the frame stepper of multi-frame
DICOM files."""

from __future__ import annotations

from PySide6.QtCore import QRectF, QSize, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QFontMetrics,
    QImage,
    QKeyEvent,
    QPainter,
    QPen,
    QPixmap,
    QResizeEvent,
    QTransform,
    QWheelEvent,
)
from PySide6.QtWidgets import (
    QGraphicsPixmapItem,
    QGraphicsRectItem,
    QGraphicsScene,
    QGraphicsView,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
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
    zoom_changed = Signal(float)  # screen pixels per image pixel

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
        # The region the model sees (resized and cropped from the image): a dashed outline over the image.
        self.region_item = QGraphicsRectItem()
        pen = QPen(QColor(255, 214, 0), 2, Qt.PenStyle.DashLine)
        pen.setCosmetic(True)  # the same width at every zoom
        self.region_item.setPen(pen)
        self.region_item.setZValue(2)
        self.region_item.setVisible(False)
        self.scene().addItem(self.image_item)
        self.scene().addItem(self.heat_item)
        self.scene().addItem(self.region_item)
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setMinimumSize(240, 160)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self._fitted = True  # follow the view's size until the user zooms
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
        self.region_item.setVisible(False)
        self.scene().setSceneRect(self.image_item.boundingRect())
        self.fit()

    def set_region(self, box: tuple[float, float, float, float] | None) -> None:
        """Outline (left, top, width, height) in image pixels: what the model sees; None hides it."""
        if box is None or not self.has_image():
            self.region_item.setVisible(False)
            return
        self.region_item.setRect(QRectF(*box))
        self.region_item.setVisible(True)

    @property
    def region(self) -> tuple[float, float, float, float] | None:
        if not self.region_item.isVisible():
            return None
        rect = self.region_item.rect()
        return rect.x(), rect.y(), rect.width(), rect.height()

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
        self._fitted = False
        self.zoom_changed.emit(self.zoom_factor)

    def zoom_in(self) -> None:
        self.zoom(1.25)

    def zoom_out(self) -> None:
        self.zoom(0.8)

    def actual_size(self) -> None:
        self.setTransform(QTransform())
        self._fitted = False
        self.zoom_changed.emit(self.zoom_factor)

    def fit(self) -> None:
        self._fitted = True
        if self.has_image():
            self.fitInView(QRectF(self.image_item.boundingRect()), Qt.AspectRatioMode.KeepAspectRatio)
            self.zoom_changed.emit(self.zoom_factor)

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 (Qt override)
        super().resizeEvent(event)
        if self._fitted:  # a larger pane shows a larger image, until the user picks a zoom
            self.fit()

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




class ZoomReadout(QLabel):
    """The zoom as people read it: "Zoom 37%" (100% is one image pixel per screen pixel)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Zoom —", parent)
        self.setToolTip("100% shows one image pixel per screen pixel")
        self.setMinimumWidth(QFontMetrics(self.font()).horizontalAdvance("Zoom 4000%") + 6)

    def show_zoom(self, factor: float) -> None:
        self.setText(f"Zoom {factor * 100:.0f}%")


class HeatmapLegend(QWidget):
    """The heatmap's colours from "little" to "much" influence on the answer."""

    def __init__(self, gradient: QImage, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        bar = QLabel()
        bar.setPixmap(QPixmap.fromImage(gradient).scaled(QSize(110, 10), Qt.AspectRatioMode.IgnoreAspectRatio,
                                                        Qt.TransformationMode.SmoothTransformation))
        bar.setToolTip("Heatmap colours: blue, little influence on the answer; red, much influence")
        low, high = QLabel("low"), QLabel("high influence")
        for word in (low, high):
            word.setProperty("role", "muted")
        layout.addWidget(low)
        layout.addWidget(bar)
        layout.addWidget(high)


class ElidedLabel(QLabel):
    """One line of plain text that shortens in the middle when narrow (the whole text is its tooltip), so a
    long file name keeps its start and its end. ``text()`` is the whole text."""

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTextFormat(Qt.TextFormat.PlainText)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self._full = ""
        self.set_full_text(text)

    def set_full_text(self, text: str, tooltip: str | None = None) -> None:
        self._full = text
        self.setToolTip(tooltip if tooltip is not None else text)
        self._elide()

    def setText(self, text: str) -> None:  # noqa: N802 (Qt's name)
        self.set_full_text(text)

    def text(self) -> str:
        return self._full

    def full_text(self) -> str:
        return self._full

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 (Qt override)
        super().resizeEvent(event)
        self._elide()

    def _elide(self) -> None:
        width = max(40, self.width())
        super().setText(QFontMetrics(self.font()).elidedText(self._full, Qt.TextElideMode.ElideMiddle, width))

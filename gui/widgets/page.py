"""The base of every page: a title, a plain-words explanation and a scrollable body."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

from gui.widgets.common import label

if TYPE_CHECKING:
    from gui.context import AppContext


class Page(QWidget):
    """Subclasses set ``title``/``subtitle`` and add their widgets to ``self.body``.

    ``scrolls = False`` gives a page that fills the window instead (the Viewer's splitters).
    """

    key = ""
    title = ""
    subtitle = ""
    scrolls = True

    def __init__(self, context: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.context = context
        if not self.scrolls:
            self.body = QVBoxLayout(self)
            self.body.setContentsMargins(28, 22, 28, 16)
            self.body.setSpacing(10)
            self._add_titles()
            return
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()
        scroll.setObjectName("pageScroll")
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        # Pages reflow to the window's width; only vertical scrolling.
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        outer.addWidget(scroll)
        content = QWidget()
        scroll.setWidget(content)
        self.body = QVBoxLayout(content)
        self.body.setContentsMargins(28, 22, 28, 22)
        self.body.setSpacing(12)
        self._add_titles()

    def _add_titles(self) -> None:
        self.title_label = label(self.title, "title")
        self.subtitle_label = label(self.subtitle, "subtitle")
        self.body.addWidget(self.title_label)
        if self.subtitle:
            self.body.addWidget(self.subtitle_label)

    def on_shown(self) -> None:
        """Called each time the page becomes the visible one; refresh cheap state here."""

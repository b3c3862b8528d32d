"""Small building blocks: banners, section titles, cards, key/value cards, buttons."""

from __future__ import annotations

from collections.abc import Iterable

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QFormLayout,
    QFrame,
    QGroupBox,
    QLabel,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

BANNER_KINDS = ("info", "privacy", "ok", "warning", "error")


def _restyle(widget: QWidget) -> None:
    """Re-apply the style sheet after a dynamic property changed."""
    widget.style().unpolish(widget)
    widget.style().polish(widget)


def label(text: str = "", role: str | None = None, *, wrap: bool = True, selectable: bool = False) -> QLabel:
    widget = QLabel(text)
    widget.setWordWrap(wrap)
    if role:
        widget.setProperty("role", role)
    if selectable:
        widget.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return widget


class Banner(QLabel):
    """A coloured one-paragraph message: what happens to the data, what something costs, what failed."""

    def __init__(self, text: str = "", kind: str = "info", parent: QWidget | None = None) -> None:
        super().__init__(text, parent)
        self.setWordWrap(True)
        self.setTextFormat(Qt.TextFormat.RichText)
        self.setOpenExternalLinks(False)
        self.set_kind(kind)

    @property
    def kind(self) -> str:
        return str(self.property("banner"))

    def set_kind(self, kind: str) -> None:
        if kind not in BANNER_KINDS:
            raise ValueError(kind)
        self.setProperty("banner", kind)
        _restyle(self)

    def show_message(self, text: str, kind: str = "info") -> None:
        self.setText(text)
        self.set_kind(kind)
        self.setVisible(bool(text))


def button(text: str, *, primary: bool = False, danger: bool = False, action: bool = False) -> QPushButton:
    widget = QPushButton(text)
    if primary:
        widget.setProperty("primary", True)
    if danger:
        widget.setProperty("danger", True)
    if action:
        widget.setProperty("action", True)
        widget.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
    return widget


class Card(QFrame):
    """A framed panel with a vertical layout in ``self.body``."""

    def __init__(self, title: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setProperty("role", "card")
        self.body = QVBoxLayout(self)
        self.body.setContentsMargins(14, 12, 14, 12)
        self.body.setSpacing(8)
        if title:
            self.body.addWidget(label(title, "section"))


class KeyValueCard(QGroupBox):
    """Labelled values (a model card, a plan, a result). Values can be selected and copied."""

    def __init__(self, title: str, parent: QWidget | None = None) -> None:
        super().__init__(title, parent)
        self._form = QFormLayout(self)
        self._form.setLabelAlignment(Qt.AlignmentFlag.AlignLeft)
        self._form.setHorizontalSpacing(18)
        self._form.setVerticalSpacing(6)
        self._values: dict[str, QLabel] = {}

    def set_rows(self, rows: Iterable[tuple[str, object]]) -> None:
        while self._form.rowCount():
            self._form.removeRow(0)
        self._values.clear()
        for key, value in rows:
            widget = label("—" if value is None or value == "" else str(value), selectable=True)
            # Values come from files others wrote (model cards, plans): shown as text, never read as markup.
            widget.setTextFormat(Qt.TextFormat.PlainText)
            self._values[key] = widget
            name = QLabel(key)
            name.setProperty("role", "muted")
            self._form.addRow(name, widget)

    def value(self, key: str) -> str:
        return self._values[key].text()

    def keys(self) -> list[str]:
        return list(self._values)

"""The Viewer's side panels: probability bars, a plain form, and the words for signers."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QFormLayout,
    QLabel,
    QProgressBar,
    QVBoxLayout,
    QWidget,
)


class ProbabilityBars(QWidget):
    """One labelled bar per class, rebuilt when the model changes."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self.bars: dict[str, QProgressBar] = {}

    def set_classes(self, classes: list[str]) -> None:
        for bar in self.bars.values():
            bar.deleteLater()
        self.bars = {}
        for name in classes:
            bar = QProgressBar()
            bar.setRange(0, 1000)
            bar.setTextVisible(True)
            bar.setObjectName("probabilityBar")
            self.bars[name] = bar
            self._layout.addWidget(bar)
        self.clear()

    def clear(self) -> None:
        for name, bar in self.bars.items():
            bar.setValue(0)
            bar.setFormat(f"{name}: –")

    def set_probabilities(self, probabilities: dict[str, float]) -> None:
        for name, bar in self.bars.items():
            p = float(probabilities.get(name, 0.0))
            bar.setValue(round(p * 1000))
            bar.setFormat(f"{name}: {100 * p:.1f}%")

    def value(self, name: str) -> float:
        return self.bars[name].value() / 1000.0


class PlainForm(QWidget):
    """Label/value rows shown as plain text: values come from files and are never read as HTML."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._form = QFormLayout(self)
        self._form.setLabelAlignment(Qt.AlignmentFlag.AlignLeft)
        self.rows: dict[str, str] = {}

    def set_rows(self, rows: list[tuple[str, str]]) -> None:
        while self._form.rowCount():
            self._form.removeRow(0)
        self.rows = {}
        for key, value in rows:
            name = QLabel(key)
            name.setTextFormat(Qt.TextFormat.PlainText)
            name.setProperty("role", "muted")
            shown = QLabel(str(value))
            shown.setTextFormat(Qt.TextFormat.PlainText)
            shown.setWordWrap(True)
            shown.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self._form.addRow(name, shown)
            self.rows[key] = str(value)



def signer_word(signer) -> str:
    return {"trusted": "trusted", "unknown signer": "UNKNOWN"}.get(signer.level, "NOT VERIFIED")


def grouped(text: str, size: int = 8) -> str:
    return " ".join(text[i:i + size] for i in range(0, len(text), size))


def escape(text: str) -> str:
    from html import escape

    return escape(text, quote=False)


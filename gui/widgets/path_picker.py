"""A path field with a Browse button (folders or files)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QFileDialog, QHBoxLayout, QLineEdit, QPushButton, QWidget


class PathPicker(QWidget):
    """Emits ``path_chosen`` when the user picks a path or presses Enter in the field."""

    path_chosen = Signal(object)

    def __init__(self, *, folder: bool = True, file_filter: str = "", placeholder: str = "",
                 button_text: str = "Browse…", start_dir: Path | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._folder = folder
        self._filter = file_filter
        self.start_dir = start_dir
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.field = QLineEdit()
        self.field.setPlaceholderText(placeholder)
        self.button = QPushButton(button_text)
        layout.addWidget(self.field, 1)
        layout.addWidget(self.button)
        self.button.clicked.connect(self.browse)
        self.field.returnPressed.connect(self._typed)

    def path(self) -> Path | None:
        text = self.field.text().strip()
        return Path(text).expanduser() if text else None

    def set_path(self, path: Path | str | None, *, emit: bool = False) -> None:
        self.field.setText("" if path is None else str(path))
        if emit and path is not None:
            self.path_chosen.emit(Path(path))

    def browse(self) -> None:
        start = str(self.path() or self.start_dir or Path.home())
        if self._folder:
            chosen = QFileDialog.getExistingDirectory(self, "Choose a folder", start)
        else:
            chosen, _ = QFileDialog.getOpenFileName(self, "Choose a file", start, self._filter)
        if chosen:
            self.set_path(chosen, emit=True)

    def _typed(self) -> None:
        path = self.path()
        if path is not None:
            self.path_chosen.emit(path)

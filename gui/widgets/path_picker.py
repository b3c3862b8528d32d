"""A path field with a Browse button (folders or files)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QHBoxLayout, QLineEdit, QPushButton, QWidget

from gui.file_dialogs import FolderMemory, open_file, open_folder


class _StartFolder(FolderMemory):
    """For pickers without the app's memory: start in ``start_dir`` when it exists, else the home folder."""

    def __init__(self, start_dir: Path | None) -> None:
        self._start = start_dir

    def start(self, purpose: str, fallback: Path | None = None) -> Path:
        for candidate in (self._start, fallback):
            if candidate is not None and Path(candidate).is_dir():
                return Path(candidate)
        return Path.home()

    def remember(self, purpose: str, chosen: Path | str) -> None:
        pass


class PathPicker(QWidget):
    """Emits ``path_chosen`` when the user picks a path or presses Enter in the field.

    With ``memory`` (the app's gui.file_dialogs.FolderMemory) the dialog starts in the last folder used for
    ``purpose``, else in ``start_dir`` when it exists, else in the home folder."""

    path_chosen = Signal(object)

    def __init__(self, *, folder: bool = True, file_filter: str = "", placeholder: str = "",
                 button_text: str = "Browse…", start_dir: Path | None = None,
                 memory: FolderMemory | None = None, purpose: str = "",
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._folder = folder
        self._filter = file_filter
        self.start_dir = start_dir
        self.memory: FolderMemory = memory if memory is not None else _StartFolder(start_dir)
        self.purpose = purpose or ("folders" if folder else "files")
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
        if self._folder:
            chosen = open_folder(self, self.memory, self.purpose, "Choose a folder", fallback=self.start_dir)
        else:
            chosen = open_file(self, self.memory, self.purpose, "Choose a file", self._filter,
                               fallback=self.start_dir)
        if chosen is not None:
            self.set_path(chosen, emit=True)

    def _typed(self) -> None:
        path = self.path()
        if path is not None:
            self.path_chosen.emit(path)

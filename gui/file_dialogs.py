"""File dialogs that start where the user was: the last folder used for that purpose, else the hospital's
images folder (Settings), else the user's home folder; never a folder that does not exist.

Purposes are short names ("images", "model", "invitation", "export", ...); each remembers its own folder
in the app's settings, so exporting a report does not move where images are opened from.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QFileDialog, QWidget

from gui.settings import AppSettings, save_settings


class FolderMemory:
    """The last folder per purpose, kept in the app's settings (saved at once: a crash keeps it too)."""

    def __init__(self, settings: AppSettings) -> None:
        self.settings = settings

    def start(self, purpose: str, fallback: Path | None = None) -> Path:
        remembered = self.settings.last_folders.get(purpose)
        for candidate in (remembered, fallback, self.settings.data_folder):
            if candidate and Path(candidate).expanduser().is_dir():
                return Path(candidate).expanduser()
        return Path.home()

    def remember(self, purpose: str, chosen: Path | str) -> None:
        """Keep the folder the choice was made in (a chosen folder's parent), so the next dialog shows the
        chosen file or folder among its neighbours."""
        folder = Path(chosen).parent
        if self.settings.last_folders.get(purpose) == str(folder):
            return
        self.settings.last_folders[purpose] = str(folder)
        try:
            save_settings(self.settings)
        except (OSError, ValueError):
            pass  # a folder not remembered is no reason to fail a file dialog


def open_file(parent: QWidget | None, memory: FolderMemory, purpose: str, title: str, file_filter: str = "",
              *, fallback: Path | None = None) -> Path | None:
    chosen, _ = QFileDialog.getOpenFileName(parent, title, str(memory.start(purpose, fallback)), file_filter)
    return _kept(memory, purpose, chosen)


def open_files(parent: QWidget | None, memory: FolderMemory, purpose: str, title: str, file_filter: str = "",
               *, fallback: Path | None = None) -> list[Path]:
    chosen, _ = QFileDialog.getOpenFileNames(parent, title, str(memory.start(purpose, fallback)), file_filter)
    if chosen:
        memory.remember(purpose, chosen[0])
    return [Path(path) for path in chosen]


def open_folder(parent: QWidget | None, memory: FolderMemory, purpose: str, title: str,
                *, fallback: Path | None = None) -> Path | None:
    chosen = QFileDialog.getExistingDirectory(parent, title, str(memory.start(purpose, fallback)))
    return _kept(memory, purpose, chosen)


def save_file(parent: QWidget | None, memory: FolderMemory, purpose: str, title: str, name: str,
              file_filter: str = "", *, fallback: Path | None = None) -> Path | None:
    start = memory.start(purpose, fallback) / name
    chosen, _ = QFileDialog.getSaveFileName(parent, title, str(start), file_filter)
    return _kept(memory, purpose, chosen)


def _kept(memory: FolderMemory, purpose: str, chosen: str) -> Path | None:
    if not chosen:
        return None
    memory.remember(purpose, chosen)
    return Path(chosen)

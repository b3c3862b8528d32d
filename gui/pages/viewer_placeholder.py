"""Shown in the Viewer slot until gui/pages/viewer.py (the inference viewer) is installed."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QWidget

from gui.context import AppContext
from gui.widgets.common import Banner
from gui.widgets.page import Page


class ViewerPlaceholder(Page):
    key = "viewer"
    title = "Viewer"
    subtitle = "Diagnose images with a trained model, offline, on this computer."

    def __init__(self, context: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(context, parent)
        self.notice = Banner("The image viewer is not installed in this build.", "warning")
        self.body.addWidget(self.notice)
        self.body.addStretch(1)
        self.requested: Path | None = None

    def open_model(self, path: Path) -> None:
        self.requested = Path(path)
        self.notice.show_message(
            f"The image viewer is not installed in this build, so {Path(path).name} cannot be opened here. "
            "Use <code>dopamine predict</code> on the command line instead.", "warning")

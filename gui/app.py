"""Start the desktop app: ``dopamine gui`` or ``python -m gui.app``.

Start-up stays fast because nothing here imports torch or opacus; pages import core modules that
need them only inside background jobs.
"""

from __future__ import annotations

import sys

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from core import __version__
from core.errors import ConfigError
from gui.context import AppContext
from gui.dialogs import show_error
from gui.main_window import MainWindow
from gui.resources import app_icon
from gui.settings import load_settings
from gui.theme import apply_theme


def application(argv: list[str] | None = None) -> QApplication:
    """The running QApplication, created on first use."""
    app = QApplication.instance()
    if app is None:
        app = QApplication([sys.argv[0] if sys.argv else "dopamine", *(argv or [])])
    app.setApplicationName("Dopamine")
    app.setApplicationVersion(__version__)
    app.setOrganizationName("Dopamine")
    app.setWindowIcon(app_icon())
    return app


def create_window(app: QApplication) -> MainWindow:
    """Load settings, apply the theme and build the main window (not shown yet)."""
    settings, warning = load_settings()
    context = AppContext(settings, settings_warning=warning)
    apply_theme(app, settings.theme)
    window = MainWindow(context)
    if warning:
        QTimer.singleShot(0, lambda: show_error(window, ConfigError(warning)))
    return window


def main(argv: list[str] | None = None) -> int:
    app = application(argv)
    window = create_window(app)
    window.show()
    code = int(app.exec())
    window.context.runner.cancel_all()
    window.context.runner.wait_all(15000)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

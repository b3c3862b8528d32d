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
from gui.child_jobs import FROZEN_FLAG
from gui.child_jobs import main as child_main
from gui.context import AppContext
from gui.dialogs import show_error
from gui.main_window import MainWindow
from gui.resources import app_icon
from gui.settings import load_settings
from gui.theme import apply_theme
from gui.widgets.plots import restyle_all

# Training runs on a worker thread that is CPU-bound in Python (Opacus hooks, the loop) half the time.
# The UI thread needs the interpreter lock for every Python slot it runs; by default it may wait 5 ms
# for each hand-over, which adds up to visible stalls. 1 ms keeps the window answering quickly.
UI_SWITCH_INTERVAL_S = 0.001


def application(argv: list[str] | None = None) -> QApplication:
    """The running QApplication, created on first use."""
    sys.setswitchinterval(UI_SWITCH_INTERVAL_S)
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
    restyle_all(settings.theme)
    window = MainWindow(context)
    if warning:
        QTimer.singleShot(0, lambda: show_error(window, ConfigError(warning)))
    return window


def preload_engine() -> None:
    """Import torch, Opacus and the trainer on a worker soon after start-up.

    Loading torch's C library holds the interpreter lock for a few hundred milliseconds; done while the
    user is still reading the Home page, it never stalls a click on Start training.
    """
    import opacus  # noqa: F401
    import torch  # noqa: F401

    import core.data  # noqa: F401
    import core.training.trainer  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    if argv and argv[0] == FROZEN_FLAG:  # a bundled app re-launched as a background job (gui.child_jobs)
        return child_main()
    app = application(argv)
    window = create_window(app)
    window.show()
    QTimer.singleShot(1500, lambda: window.context.runner.start(preload_engine, name="preload"))
    code = int(app.exec())
    window.context.runner.cancel_all()
    window.context.runner.wait_all(15000)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

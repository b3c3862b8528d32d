"""The main window: a navigation list on the left, one page at a time on the right."""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import QByteArray, QSize, Qt, QTimer
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (
    QApplication,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from gui.context import AppContext
from gui.dialogs import confirm, show_error
from gui.pages.activity import ActivityPage
from gui.pages.compare import ComparePage
from gui.pages.data import DataPage
from gui.pages.federation import FederationPage
from gui.pages.home import HomePage
from gui.pages.host import HostPage
from gui.pages.models import ModelsPage
from gui.pages.privacy import PrivacyPage
from gui.pages.settings import SettingsPage
from gui.pages.train import TrainPage
from gui.resources import app_icon, icon
from gui.theme import apply_theme, colors
from gui.widgets.common import Banner
from gui.widgets.plots import restyle_all

STATUS_AFTER_S = 1.0  # a background job is named in the status line once it has run this long

# (key, navigation label, icon name). The order is the order of the navigation list.
NAVIGATION = (
    ("home", "Home", "home"),
    ("data", "Data", "data"),
    ("train", "Train locally", "train"),
    ("federation", "Federation", "federation"),
    ("host", "Host a federation", "host"),
    ("privacy", "Privacy", "privacy"),
    ("compare", "Compare modes", "compare"),
    ("models", "Models", "models"),
    ("viewer", "Viewer", "viewer"),
    ("settings", "Settings", "settings"),
    ("activity", "Activity", "activity"),
)

PAGE_CLASSES = {
    "home": HomePage, "data": DataPage, "train": TrainPage, "federation": FederationPage, "host": HostPage,
    "privacy": PrivacyPage, "compare": ComparePage, "models": ModelsPage, "settings": SettingsPage,
    "activity": ActivityPage,
}


class LazyPage(QWidget):
    """Holds a page that is built the first time it is needed (the Viewer loads torch when built)."""

    def __init__(self, factory, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._factory = factory
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self.page: QWidget | None = None
        self.load_error: Exception | None = None

    def ensure(self) -> QWidget:
        if self.page is None:
            try:
                self.page = self._factory()
            except Exception as exc:  # noqa: BLE001 -- one broken page must not take the window down
                self.page = Banner(f"This page could not be loaded ({type(exc).__name__}: {exc}).", "error")
                self.page.setAlignment(Qt.AlignmentFlag.AlignTop)
                self.load_error = exc
                show_error(self, exc)
            self._layout.addWidget(self.page)
        return self.page

    def on_shown(self) -> None:
        page = self.ensure()
        on_shown = getattr(page, "on_shown", None)
        if on_shown is not None:
            on_shown()


def _viewer_page(context: AppContext, parent: QWidget) -> QWidget:
    from gui.viewer import ViewerPage  # built on first use: start-up stays light

    return ViewerPage(context, parent)


class MainWindow(QMainWindow):
    def __init__(self, context: AppContext) -> None:
        super().__init__()
        self.context = context
        self.setWindowTitle("Dopamine — private training for hospitals")
        self.setWindowIcon(app_icon())
        self.setMinimumSize(1024, 680)
        self.pages: dict[str, QWidget] = {}

        central = QWidget()
        layout = QHBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self._navigation_pane())
        self.stack = QStackedWidget()
        layout.addWidget(self.stack, 1)
        self.setCentralWidget(central)

        for key, _text, _icon in NAVIGATION:
            if key == "viewer":
                page: QWidget = LazyPage(lambda: _viewer_page(context, self))
            else:
                page = PAGE_CLASSES[key](context, self)
            self.pages[key] = page
            self.stack.addWidget(page)

        context.install_navigation(self.show_page, self.open_in_viewer)
        context.theme_changed.connect(self._apply_theme)
        context.runner.job_started.connect(self._update_status)
        context.runner.job_finished.connect(self._update_status)
        self.navigation.currentRowChanged.connect(self._row_changed)
        self._restore_geometry()
        self._refresh_icons()
        self.show_page(context.settings.last_page if context.settings.last_page in self.pages else "home")

    def _navigation_pane(self) -> QWidget:
        pane = QWidget()
        pane.setObjectName("navigationPane")
        pane.setFixedWidth(228)
        layout = QVBoxLayout(pane)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        name = QLabel("Dopamine")
        name.setObjectName("appName")
        tagline = QLabel("Private model training for hospitals. Patient images never leave the hospital.")
        tagline.setObjectName("appTagline")
        tagline.setWordWrap(True)
        layout.addWidget(name)
        layout.addWidget(tagline)
        self.navigation = QListWidget()
        self.navigation.setObjectName("navigation")
        self.navigation.setIconSize(QSize(20, 20))
        for key, text, _icon in NAVIGATION:
            item = QListWidgetItem(text)
            item.setData(Qt.ItemDataRole.UserRole, key)
            self.navigation.addItem(item)
        layout.addWidget(self.navigation, 1)
        self.status_label = QLabel("")
        self.status_label.setObjectName("appTagline")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        return pane

    def _refresh_icons(self) -> None:
        c = colors(self.context.settings.theme)
        for row, (_key, _text, name) in enumerate(NAVIGATION):
            self.navigation.item(row).setIcon(icon(name, c.muted))

    def _apply_theme(self, theme: str) -> None:
        app = QApplication.instance()
        if app is not None:
            apply_theme(app, theme)
        restyle_all(theme)
        self._refresh_icons()

    @property
    def current_page(self) -> str:
        return NAVIGATION[self.navigation.currentRow()][0]

    def show_page(self, key: str) -> QWidget:
        row = [k for k, _t, _i in NAVIGATION].index(key)
        if self.navigation.currentRow() != row:
            self.navigation.setCurrentRow(row)  # emits currentRowChanged -> _row_changed
        return self.pages[key]

    def _row_changed(self, row: int) -> None:
        if row < 0:
            return
        key = NAVIGATION[row][0]
        page = self.pages[key]
        self.stack.setCurrentWidget(page)
        self.context.settings.last_page = key
        on_shown = getattr(page, "on_shown", None)
        if on_shown is not None:
            on_shown()

    @property
    def viewer(self) -> QWidget:
        """The Viewer page itself (built on first use)."""
        return self.pages["viewer"].ensure()

    def open_in_viewer(self, path: Path) -> None:
        self.show_page("viewer")
        opener = getattr(self.viewer, "open_model", None)
        if opener is not None:
            opener(Path(path))

    def _update_status(self, handle: object = None) -> None:
        """Names only jobs that have run for a while: the many sub-second ones (a ledger read, a dashboard
        poll) would make the line flicker."""
        now = time.monotonic()
        jobs = [job for job in self.context.runner.active if now - job.started >= STATUS_AFTER_S]
        if handle is not None and getattr(handle, "running", False):
            QTimer.singleShot(int(STATUS_AFTER_S * 1000) + 50, self, self._update_status)
        if not jobs:
            self.status_label.setText("")
        else:
            self.status_label.setText(f"{len(jobs)} task(s) running in the background")

    def _restore_geometry(self) -> None:
        settings = self.context.settings
        restored = False
        if settings.window_geometry:
            restored = self.restoreGeometry(QByteArray.fromBase64(settings.window_geometry.encode()))
        if not restored:
            self.resize(1280, 800)
        if settings.window_state:
            self.restoreState(QByteArray.fromBase64(settings.window_state.encode()))

    def remember_geometry(self) -> None:
        settings = self.context.settings
        settings.window_geometry = bytes(self.saveGeometry().toBase64().data()).decode()
        settings.window_state = bytes(self.saveState().toBase64().data()).decode()

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 (Qt override)
        precious = [job for job in self.context.runner.active if job.precious]
        if precious and not confirm(
            self, "Work is still running",
            f"{len(precious)} task(s) are still running (training or a federation). Quitting cancels "
            "them at the next safe point; nothing already charged to the privacy ledger is lost.",
            yes="Cancel them and quit",
        ):
            event.ignore()
            return
        self.context.runner.cancel_all()
        self.context.runner.wait_all(15000)
        self.remember_geometry()
        try:
            self.context.save_settings()
        except Exception:  # noqa: BLE001 -- never block quitting on a settings write
            pass
        event.accept()

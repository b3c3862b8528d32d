"""What every page shares: settings, the job runner, well-known paths and app-wide signals."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal

from core.home import HospitalHome
from gui.file_dialogs import FolderMemory
from gui.settings import AppSettings, save_settings
from gui.workers import JobRunner


@dataclass(frozen=True)
class ExpectedImages:
    """What the model to be trained expects of the images: its input size, and its classes when known (a
    federation's plan). The Data page checks against it; the Federation and Train pages set it."""

    size: int
    classes: list[str] | None
    source: str  # in words: "the plan of Retina network", "the Train locally page"


@dataclass
class FederationStatus:
    """The GUI's summary of this hospital's federation, shown on Home and Federation."""

    state: str = "none"  # none | invited | joining | running | paused | left | finished | error
    name: str = ""
    coordinator: str = ""
    round: int = 0
    rounds: int = 0
    epsilon_spent: float | None = None
    epsilon_cap: float | None = None
    message: str = ""


class AppContext(QObject):
    """Passed to every page. Signals let one page's work refresh another page."""

    settings_changed = Signal()
    theme_changed = Signal(str)
    dataset_changed = Signal(object)  # core.data.ValidationReport
    ledger_changed = Signal()
    models_changed = Signal()
    federation_changed = Signal(object)  # FederationStatus
    expected_images_changed = Signal(object)  # ExpectedImages

    def __init__(self, settings: AppSettings, *, runner: JobRunner | None = None,
                 settings_warning: str | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.settings_warning = settings_warning
        self.runner = runner or JobRunner(self)
        self.dataset_report: Any = None
        self.federation = FederationStatus()
        self.folders = FolderMemory(settings)
        # A federation's plan wins over the Train page's image size: it is what joining checks.
        self._expected: dict[str, ExpectedImages] = {}
        self._viewer_opener: Callable[[Path], None] | None = None
        self._navigator: Callable[[str], None] | None = None

    # Every path comes from the hospital home (core.home), the same folder `dopamine --home` uses, so the
    # app and the command line spend one ledger and sign with one key.
    @property
    def work_folder(self) -> Path:
        return Path(self.settings.work_folder)

    @property
    def home(self) -> HospitalHome:
        return HospitalHome.at(self.settings.work_folder)

    @property
    def ledger_path(self) -> Path:
        return self.home.ledger

    @property
    def audit_log_path(self) -> Path:
        """The home's signed log of everything sent and every cap change."""
        return self.home.audit_log

    @property
    def models_folder(self) -> Path:
        """Models trained on this computer."""
        return self.home.models

    @property
    def federations_folder(self) -> Path:
        """One sub-folder per joined federation: its state and received models."""
        return self.home.federations

    @property
    def identity_key_path(self) -> Path:
        """This hospital's long-term Ed25519 key: signs local models, federation requests and the audit log."""
        return self.home.identity_key

    @property
    def image_cache(self) -> Path:
        """Decoded, resized copies of the hospital's images (safe to delete; rebuilt when needed)."""
        return self.home.image_cache

    def save_settings(self) -> None:
        save_settings(self.settings)
        self.settings_changed.emit()

    def set_dataset_report(self, report: Any) -> None:
        self.dataset_report = report
        self.dataset_changed.emit(report)

    @property
    def expected_images(self) -> ExpectedImages:
        for source in ("federation", "train"):
            if source in self._expected:
                return self._expected[source]
        return ExpectedImages(size=224, classes=None, source="the default model input")

    def set_expected_images(self, source: str, expected: ExpectedImages | None) -> None:
        """``source``: "federation" (an invitation under review) or "train" (the Train page's settings)."""
        before = self.expected_images
        if expected is None:
            self._expected.pop(source, None)
        else:
            self._expected[source] = expected
        if self.expected_images != before:
            self.expected_images_changed.emit(self.expected_images)

    def set_federation(self, status: FederationStatus) -> None:
        self.federation = status
        self.federation_changed.emit(status)

    def install_navigation(self, navigate: Callable[[str], None],
                           open_in_viewer: Callable[[Path], None]) -> None:
        self._navigator = navigate
        self._viewer_opener = open_in_viewer

    def navigate(self, page: str) -> None:
        if self._navigator is not None:
            self._navigator(page)

    def open_in_viewer(self, path: Path) -> None:
        if self._viewer_opener is not None:
            self._viewer_opener(Path(path))

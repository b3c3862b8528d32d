"""Settings: folders, CPU threads, default accountant and theme. Saved as soon as they change."""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtWidgets import QComboBox, QFormLayout, QHBoxLayout, QSpinBox, QWidget

from core import paths
from gui.context import AppContext
from gui.dialogs import show_error
from gui.settings import AppSettings, settings_path
from gui.widgets.common import Card, KeyValueCard, button, label
from gui.widgets.page import Page
from gui.widgets.path_picker import PathPicker

THEME_NAMES = {"light": "Light", "dark": "Dark"}
ACCOUNTANT_NAMES = {"rdp": "RDP (Rényi DP, standard)", "prv": "PRV (tighter, slower)"}


class SettingsPage(Page):
    key = "settings"
    title = "Settings"
    subtitle = "Changes are saved as soon as you make them."

    def __init__(self, context: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(context, parent)
        folders = Card("Folders")
        form = QFormLayout()
        self.data_folder = PathPicker(folder=True)
        self.work_folder = PathPicker(folder=True)
        form.addRow("Images start in", self.data_folder)
        form.addRow("Work folder", self.work_folder)
        folders.body.addLayout(form)
        folders.body.addWidget(label(
            "The work folder holds the privacy ledger, trained and received models and federation "
            "records. Images are never copied there; Dopamine reads them where they are.", "muted"))
        self.body.addWidget(folders)

        computing = Card("Computing and privacy")
        cform = QFormLayout()
        self.cpu_threads = QSpinBox()
        self.cpu_threads.setRange(1, max(1, os.cpu_count() or 1))
        self.cpu_threads.setSuffix(f" of {os.cpu_count() or 1} CPU threads")
        self.accountant = QComboBox()
        for key, text in ACCOUNTANT_NAMES.items():
            self.accountant.addItem(text, key)
        self.theme = QComboBox()
        for key, text in THEME_NAMES.items():
            self.theme.addItem(text, key)
        for widget in (self.cpu_threads, self.accountant, self.theme):
            widget.setMaximumWidth(360)
        cform.addRow("Training uses", self.cpu_threads)
        cform.addRow("Privacy accountant", self.accountant)
        cform.addRow("Theme", self.theme)
        computing.body.addLayout(cform)
        computing.body.addWidget(label(
            "Leave one thread free to keep the computer responsive. The accountant turns noise and "
            "steps into ε; the one used is recorded with every number.", "muted"))
        self.body.addWidget(computing)

        self.locations = KeyValueCard("Where Dopamine keeps its files")
        self.body.addWidget(self.locations)
        self.defaults_button = button("Restore defaults")
        row = QHBoxLayout()
        row.addWidget(self.defaults_button)
        row.addStretch(1)
        self.body.addLayout(row)
        self.body.addStretch(1)

        self._loading = False
        self._load(context.settings)
        self.data_folder.path_chosen.connect(lambda _p: self.apply())
        self.work_folder.path_chosen.connect(lambda _p: self.apply())
        self.data_folder.field.editingFinished.connect(self.apply)
        self.work_folder.field.editingFinished.connect(self.apply)
        self.cpu_threads.valueChanged.connect(self.apply)
        self.accountant.currentIndexChanged.connect(self.apply)
        self.theme.currentIndexChanged.connect(self.apply)
        self.defaults_button.clicked.connect(self.restore_defaults)

    def _load(self, settings: AppSettings) -> None:
        self._loading = True
        try:
            self.data_folder.set_path(settings.data_folder)
            self.work_folder.set_path(settings.work_folder)
            self.cpu_threads.setValue(int(settings.cpu_threads))
            self.accountant.setCurrentIndex(max(0, self.accountant.findData(settings.accountant)))
            self.theme.setCurrentIndex(max(0, self.theme.findData(settings.theme)))
        finally:
            self._loading = False
        self._show_locations()

    def _show_locations(self) -> None:
        self.locations.set_rows([
            ("Settings file", settings_path()),
            ("Privacy ledger", self.context.ledger_path),
            ("Models trained here", self.context.models_folder),
            ("Federations", self.context.federations_folder),
            ("Image cache (safe to delete)", paths.cache_dir()),
            ("Logs", paths.log_dir()),
        ])

    def apply(self) -> None:
        if self._loading:
            return
        settings = self.context.settings
        old_theme, old_work = settings.theme, settings.work_folder
        settings.data_folder = self.data_folder.path() or AppSettings().data_folder
        settings.work_folder = self.work_folder.path() or AppSettings().work_folder
        settings.cpu_threads = self.cpu_threads.value()
        settings.accountant = self.accountant.currentData()
        settings.theme = self.theme.currentData()
        try:
            self.context.save_settings()
        except Exception as exc:  # noqa: BLE001 -- a failed save is shown, the app keeps running
            show_error(self, exc)
            return
        if settings.theme != old_theme:
            self.context.theme_changed.emit(settings.theme)
        if Path(settings.work_folder) != Path(old_work):
            self.context.ledger_changed.emit()
            self.context.models_changed.emit()
        self._show_locations()

    def restore_defaults(self) -> None:
        defaults = AppSettings()
        self._load(defaults)
        self.apply()

"""Settings: the hospital home and its image cache, CPU threads, the compute device (Auto, CPU, CUDA), default
accountant and theme, and the HTTPS
proxy the hospital reaches its coordinators through (kept in the home's network.toml, which `dopamine join`
and `leave` read too). Saved as soon as they change."""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtWidgets import QComboBox, QFormLayout, QHBoxLayout, QLineEdit, QSpinBox, QWidget

from core import paths
from gui.context import AppContext
from gui.dialogs import show_error
from gui.settings import AppSettings, settings_path
from gui.widgets.common import Card, KeyValueCard, button, label
from gui.widgets.page import Page
from gui.widgets.path_picker import PathPicker

THEME_NAMES = {"light": "Light", "dark": "Dark"}
ACCOUNTANT_NAMES = {"rdp": "RDP (Rényi DP, standard)", "prv": "PRV (tighter, slower)"}
DEVICE_NAMES = {"auto": "Auto (a CUDA GPU when there is one)", "cpu": "CPU", "cuda": "CUDA GPU"}


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
        form.addRow("Hospital home folder", self.work_folder)
        folders.body.addLayout(form)
        folders.body.addWidget(label(
            "The hospital home holds this hospital's one privacy ledger, its identity key, the signed audit "
            "log, trained and received models, federation records and the image cache. The command line "
            "uses the same folder (`dopamine … --home`), so both spend one privacy budget. Images are read "
            "where they are; the only copies are the decoded ones in the image cache below.", "muted"))
        self.body.addWidget(folders)
        self.image_cache = ImageCacheCard(context)
        self.body.addWidget(self.image_cache)

        computing = Card("Computing and privacy")
        cform = QFormLayout()
        self.cpu_threads = QSpinBox()
        self.cpu_threads.setRange(1, max(1, os.cpu_count() or 1))
        self.cpu_threads.setSuffix(f" of {os.cpu_count() or 1} CPU threads")
        self.device = QComboBox()
        for key, text in DEVICE_NAMES.items():
            self.device.addItem(text, key)
        self.device_in_use = label("", "muted", selectable=True)
        self.device_in_use.setObjectName("deviceInUse")
        self.accountant = QComboBox()
        for key, text in ACCOUNTANT_NAMES.items():
            self.accountant.addItem(text, key)
        self.theme = QComboBox()
        for key, text in THEME_NAMES.items():
            self.theme.addItem(text, key)
        for widget in (self.cpu_threads, self.device, self.accountant, self.theme):
            widget.setMaximumWidth(360)
        cform.addRow("Training uses", self.cpu_threads)
        cform.addRow("Compute on", self.device)
        cform.addRow("In use", self.device_in_use)
        cform.addRow("Privacy accountant", self.accountant)
        cform.addRow("Theme", self.theme)
        computing.body.addLayout(cform)
        computing.body.addWidget(label(
            "Leave one thread free to keep the computer responsive. Training, federations and comparisons "
            "compute on the device chosen; the privacy noise is drawn on the CPU either way, so the choice "
            "changes speed, not privacy. The accountant turns noise and steps into ε; the one used is "
            "recorded with every number.", "muted"))
        self.body.addWidget(computing)

        network = Card("Network")
        nform = QFormLayout()
        self.proxy = QLineEdit()
        self.proxy.setPlaceholderText("none: connect directly")
        self.proxy.setMaximumWidth(360)
        nform.addRow("HTTPS proxy", self.proxy)
        network.body.addLayout(nform)
        network.body.addWidget(label(
            "Only if this hospital's IT requires one, e.g. http://proxy.hospital.example:3128 (with "
            "user:password@ before the host if it asks for them). Kept in the hospital home, so joining, "
            "leaving and the command line use it. The federation's CA stays pinned through the proxy: one that "
            "inspects TLS is refused, and IT must exempt the coordinator's address from inspection.", "muted"))
        self.body.addWidget(network)

        self.trusted_signers = TrustedSigners(context)
        self.body.addWidget(self.trusted_signers)

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
        self.device.currentIndexChanged.connect(self.apply)
        self.accountant.currentIndexChanged.connect(self.apply)
        self.theme.currentIndexChanged.connect(self.apply)
        self.proxy.editingFinished.connect(self.apply_proxy)
        self.defaults_button.clicked.connect(self.restore_defaults)

    def _load(self, settings: AppSettings) -> None:
        self._loading = True
        try:
            self.data_folder.set_path(settings.data_folder)
            self.work_folder.set_path(settings.work_folder)
            self.cpu_threads.setValue(int(settings.cpu_threads))
            self.device.setCurrentIndex(max(0, self.device.findData(settings.device)))
            self.accountant.setCurrentIndex(max(0, self.accountant.findData(settings.accountant)))
            self.theme.setCurrentIndex(max(0, self.theme.findData(settings.theme)))
        finally:
            self._loading = False
        self._load_proxy()
        self._show_locations()

    def on_shown(self) -> None:
        super().on_shown()
        self.show_device_in_use()

    def show_device_in_use(self) -> None:
        """What the chosen device is on this computer, e.g. "CPU (no CUDA GPU found)": found on a worker, as it
        imports torch (so only once the page is shown, never at start-up)."""
        from core.device import describe_device

        self.device_in_use.setText("Looking for a CUDA GPU…")
        self.context.runner.start(describe_device, self.device.currentData(), name="find compute device",
                                  on_done=self.device_in_use.setText,
                                  on_error=lambda exc: self.device_in_use.setText(str(exc)))

    def _load_proxy(self) -> None:
        from core.errors import ConfigError
        from core.federation.network import load_network_settings

        try:
            self.proxy.setText(load_network_settings(self.context.home).proxy)
        except ConfigError as exc:  # a broken network.toml: shown, and fixed by saving a proxy here
            self.proxy.setText("")
            self.proxy.setToolTip(str(exc))

    def apply_proxy(self) -> None:
        from core.errors import ConfigError
        from core.federation.network import NetworkSettings, load_network_settings, save_network_settings

        home = self.context.home
        try:
            settings = load_network_settings(home)
        except ConfigError:
            settings = NetworkSettings()
        if self.proxy.text().strip() == settings.proxy:
            return
        settings.proxy = self.proxy.text()
        try:
            save_network_settings(home, settings)
        except Exception as exc:  # noqa: BLE001 -- a refused address is shown, the app keeps running
            show_error(self, exc)
            return
        self.proxy.setText(settings.proxy)
        self.proxy.setToolTip("")

    def _show_locations(self) -> None:
        self.locations.set_rows([
            ("Settings file", settings_path()),
            ("Privacy ledger", self.context.ledger_path),
            ("Audit log (signed)", self.context.audit_log_path),
            ("Identity key", self.context.identity_key_path),
            ("Models trained here", self.context.models_folder),
            ("Training runs", self.context.home.runs),
            ("Federations", self.context.federations_folder),
            ("Image cache (safe to delete)", self.context.image_cache),
            ("App logs", paths.log_dir()),
        ])

    def apply(self) -> None:
        if self._loading:
            return
        settings = self.context.settings
        old_theme, old_work, old_device = settings.theme, settings.work_folder, settings.device
        settings.data_folder = self.data_folder.path() or AppSettings().data_folder
        settings.work_folder = self.work_folder.path() or AppSettings().work_folder
        settings.cpu_threads = self.cpu_threads.value()
        settings.device = self.device.currentData()
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
            self._load_proxy()  # the proxy belongs to the home
        if settings.device != old_device:
            self.show_device_in_use()
        self._show_locations()

    def restore_defaults(self) -> None:
        defaults = AppSettings()
        self._load(defaults)
        self.apply()


class ImageCacheCard(Card):
    """The hospital home's image cache: decoded copies of the hospital's images, their size and a Clear
    button. Sizes are computed and files deleted on worker threads."""

    def __init__(self, context: AppContext, parent: QWidget | None = None) -> None:
        super().__init__("Image cache", parent)
        self.context = context
        self.size: tuple[int, int] | None = None  # (entries, bytes) last measured
        self.body.addWidget(label(
            "To train quickly, Dopamine keeps a decoded, resized copy of each image it reads in the hospital "
            "home. These copies are patient data and stay on this computer; deleting them is safe, they are "
            "rebuilt from the original images when needed.", "muted"))
        row = QHBoxLayout()
        self.summary = label("Measuring…", selectable=True)
        self.clear_button = button("Clear image cache", danger=True)
        row.addWidget(self.summary, 1)
        row.addWidget(self.clear_button)
        self.body.addLayout(row)
        self.clear_button.clicked.connect(self.clear)
        context.settings_changed.connect(self.refresh)

    def showEvent(self, event) -> None:  # noqa: N802 -- Qt's name
        super().showEvent(event)
        self.refresh()

    def refresh(self) -> None:
        from core.home import image_cache_usage

        self.context.runner.start(image_cache_usage, self.context.image_cache, name="measure image cache",
                                  on_done=self.show_size, on_error=lambda exc: self.summary.setText(str(exc)))

    def show_size(self, size: tuple[int, int]) -> None:
        from gui.pages.activity import human_bytes

        self.size = size
        entries, total = size
        where = self.context.image_cache
        if entries == 0:
            self.summary.setText(f"Empty ({where}).")
        else:
            self.summary.setText(f"{entries} decoded image(s), {human_bytes(total)}, in {where}.")
        self.clear_button.setEnabled(entries > 0)

    def clear(self) -> None:
        from gui import dialogs

        entries, total = self.size or (0, 0)
        if not dialogs.confirm(
                self, "Clear the image cache?",
                f"Delete the {entries} decoded copies ({self._bytes(total)}) of this hospital's images in "
                f"{self.context.image_cache}? The original images are not touched; the copies are rebuilt "
                "from them the next time they are needed, so the next training run starts more slowly.",
                yes="Clear"):
            return
        from core.home import clear_image_cache

        self.summary.setText("Clearing…")
        self.context.runner.start(clear_image_cache, self.context.image_cache, name="clear image cache",
                                  on_done=lambda _freed: self.refresh(),
                                  on_error=lambda exc: show_error(self, exc))

    @staticmethod
    def _bytes(count: int) -> str:
        from gui.pages.activity import human_bytes

        return human_bytes(count)


class TrustedSigners(Card):
    """The model signers this hospital trusts (core.models.trust): whose model cards count.

    Its own key and the coordinators of federations it joined are trusted by themselves; other senders
    are added from one of their model files after comparing fingerprints, and can be removed. Key files
    are read on workers; every change says so through ``models_changed`` (Viewer, Models pages).
    """

    COLUMNS = ("Name", "Kind", "Fingerprint")
    NOBODY = "Nobody yet: models signed by anyone show as “unknown signer”."

    def __init__(self, context: AppContext, parent: QWidget | None = None) -> None:
        from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget

        super().__init__("Trusted signers", parent)
        self.context = context
        self.signers: list = []  # core.models.trust.TrustedSigner
        self.body.addWidget(label(
            "A model's card (privacy ε, training, accuracy) counts only when its signer is trusted. This "
            "hospital's own key and the coordinators of federations it joined are trusted by themselves. Add "
            "another sender only after they read you their fingerprint (phone, in person) and it matches.",
            "muted"))
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setObjectName("trustedSigners")
        self.table.setHorizontalHeaderLabels(list(self.COLUMNS))
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setWordWrap(True)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.setFixedHeight(80)
        self.body.addWidget(self.table)
        self.status = label("", "muted", selectable=True)
        self.body.addWidget(self.status)
        row = QHBoxLayout()
        self.add_button = button("Add from a model file…")
        self.remove_button = button("Remove")
        row.addWidget(self.add_button)
        row.addWidget(self.remove_button)
        row.addStretch(1)
        self.body.addLayout(row)
        self.add_button.clicked.connect(self.choose_model)
        self.remove_button.clicked.connect(self.remove_selected)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        context.models_changed.connect(self.refresh)
        self._selection_changed()

    def showEvent(self, event) -> None:  # noqa: N802 (Qt override)
        # Keys can change outside the app (`dopamine trust add`, a federation joined): list them afresh.
        super().showEvent(event)
        self.refresh()

    def _home(self):
        from gui.model_jobs import home_of

        return home_of(self.context)

    def refresh(self) -> None:
        from gui.model_jobs import list_signers

        self.context.runner.start(list_signers, self._home(), name="List trusted signers", on_done=self.show_signers,
                                  on_error=lambda exc: self.status.setText(str(exc)))

    def show_signers(self, signers: list) -> None:
        from PySide6.QtGui import QFont
        from PySide6.QtWidgets import QTableWidgetItem

        self.signers = list(signers)
        self.table.setRowCount(len(self.signers))
        mono = QFont("monospace")
        mono.setStyleHint(QFont.StyleHint.Monospace)
        for row, signer in enumerate(self.signers):
            groups = signer.fingerprint.split()
            cells = (signer.name, signer.kind, " ".join(groups[:8]) + "\n" + " ".join(groups[8:]))
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(f"{signer.kind}; from {signer.source}" + (f"; added {signer.added}" if signer.added
                                                                          else ""))
                if column == 2:
                    item.setFont(mono)
                self.table.setItem(row, column, item)
        self.table.resizeRowsToContents()
        # As tall as its rows (a hospital trusts a handful of signers), so the page does not show a blank box.
        rows_height = sum(self.table.rowHeight(r) for r in range(self.table.rowCount()))
        self.table.setFixedHeight(max(80, self.table.horizontalHeader().height() + rows_height + 6))
        if not self.signers:
            self.status.setText(self.NOBODY)
        elif self.status.text() == self.NOBODY:
            self.status.setText("")
        self._selection_changed()

    def selected(self):
        rows = self.table.selectionModel().selectedRows()
        if not rows or rows[0].row() >= len(self.signers):
            return None
        return self.signers[rows[0].row()]

    def _selection_changed(self) -> None:
        from gui.model_jobs import ADDED_BY_USER

        signer = self.selected()
        self.remove_button.setEnabled(signer is not None and signer.kind == ADDED_BY_USER)

    def choose_model(self) -> None:
        from gui.file_dialogs import open_file

        chosen = open_file(self, self.context.folders, "model", "Trust the signer of a model file",
                           "Dopamine models (*.dpm)", fallback=self.context.models_folder)
        if chosen is not None:
            self.add_from_model(chosen)

    def add_from_model(self, path: Path) -> None:
        """Read the file's signer on a worker, then ask the user to compare fingerprints and name it."""
        from gui.model_jobs import read_signer

        self.context.runner.start(read_signer, Path(path), self._home(), name="Read model signer",
                                  on_done=self._confirm_signer, on_error=lambda exc: show_error(self, exc))

    def _confirm_signer(self, found) -> None:
        from gui.model_jobs import ADDED_BY_USER, add_signer

        if found.already is not None and found.already.kind != ADDED_BY_USER:
            self.status.setText(f"{found.path.name} is signed by {found.already.described}, already trusted.")
            return
        name = self.ask_name(found.fingerprint, found.already.name if found.already else "")
        if not name:
            return
        self.context.runner.start(add_signer, self._home(), found.public_key, name, str(found.path), name="Trust signer",
                                  on_done=lambda signer: self._changed(f"Trusted: {signer.name} ({signer.fingerprint})."),
                                  on_error=lambda exc: show_error(self, exc))

    def ask_name(self, fingerprint: str, suggested: str) -> str | None:
        """The signer's name once the user compared ``fingerprint`` with the sender's; None to cancel."""
        from PySide6.QtWidgets import QInputDialog

        groups = fingerprint.split()
        name, ok = QInputDialog.getText(
            self, "Trust this signer?",
            "Fingerprint of the key that signed the file:\n\n" + " ".join(groups[:8]) + "\n"
            + " ".join(groups[8:]) + "\n\nAsk the sender to read you their fingerprint (phone, in person). Only "
            "if every group matches, name the signer (who they are):", text=suggested)
        return name.strip() if ok and name.strip() else None

    def remove_selected(self) -> None:
        from gui import dialogs
        from gui.model_jobs import remove_signer

        signer = self.selected()
        if signer is None or not self.remove_button.isEnabled():
            return
        if dialogs.confirm(self, "Stop trusting this signer?",
                           f"Models signed by {signer.name} will show as “unknown signer”: their "
                           "cards’ claims unverified.", yes="Remove"):
            self.context.runner.start(remove_signer, self._home(), signer.fingerprint, name="Remove trusted signer",
                                      on_done=lambda removed: self._changed(f"No longer trusted: {removed.name}."),
                                      on_error=lambda exc: show_error(self, exc))

    def _changed(self, message: str) -> None:
        self.status.setText(message)
        # The Viewer and Models pages re-check their signatures; this list reloads too.
        self.context.models_changed.emit()

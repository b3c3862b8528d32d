"""Host a federation: the lead site writes the plan, invites the hospitals, runs the coordinator on this
computer as a background process, and watches the rounds.

Why one module (about 650 lines): the plan form, its live preview, the coordinator's controls and the
dashboard are one page over one federation folder; every computation is in gui.host_jobs (run on the
job runner) and core.federation.service.
"""

from __future__ import annotations

import html
import socket
import time
from pathlib import Path
from typing import Any

import shiboken6
from PySide6.QtCore import QCoreApplication, Qt, QTimer, QUrl
from PySide6.QtGui import QDesktopServices, QPdfWriter, QTextDocument
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLineEdit,
    QPlainTextEdit,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from core.errors import ConfigError
from gui import host_jobs
from gui.context import AppContext
from gui.dialogs import confirm, show_error
from gui.widgets.common import Banner, Card, KeyValueCard, button, label
from gui.widgets.page import Page
from gui.widgets.path_picker import PathPicker
from gui.widgets.plots import LivePlot

EXPLAIN = (
    "The lead site of a consortium writes the plan every hospital agrees to, sends each hospital its "
    "invitation, and runs the <b>coordinator</b> on this computer. The coordinator never sees an image or "
    "a single hospital's update: only sums over at least m hospitals, noised for differential privacy. "
    "Its state lives in this hospital's home folder; <code>dopamine coordinator status</code> reads the same."
)
FIREWALL = (
    "Hospitals connect to this computer on TCP port {port}: open it (inbound) in this computer's firewall "
    "and in any firewall between the hospitals and this site. Nothing else needs to be open, and no "
    "hospital needs an open port."
)
EPSILON_NOTE = (
    "ε per hospital as the coordinator computes it, from the image count each declared and the rounds "
    "whose released sum included it. Each hospital's own ledger is the authority: it also counts "
    "attempts that failed, and says so on its Privacy page."
)
MODES = (("fscdp", "FSCDP (Dopamine): DP-SGD + secure sum"), ("fpdp", "FPDP: local DP-SGD"),
         ("f", "F: averaging, no DP"))
MODELS = ("small_cnn", "squeezenet1_1", "resnet18_gn")
POLL_MS = 1500


def _spin(low: float, high: float, value: float, *, decimals: int | None = None, special: str = ""):
    box: QSpinBox | QDoubleSpinBox = QSpinBox() if decimals is None else QDoubleSpinBox()
    if decimals is not None:
        box.setDecimals(decimals)  # type: ignore[union-attr]
    box.setRange(low, high)  # type: ignore[arg-type]
    box.setValue(value)  # type: ignore[arg-type]
    if special:
        box.setSpecialValueText(special)
    return box


class HostPage(Page):
    key = "host"
    title = "Host a federation"
    subtitle = "Plan it, invite the hospitals, run its coordinator here and watch every round."

    def __init__(self, context: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(context, parent)
        self.body.addWidget(Banner(EXPLAIN, "info"))
        chooser_row = QHBoxLayout()
        chooser_row.addWidget(label("Federation:", "section", wrap=False))
        self.chooser = QComboBox()
        self.chooser.setMinimumWidth(420)
        chooser_row.addWidget(self.chooser, 1)
        self.body.addLayout(chooser_row)

        self.new_panel = QWidget()
        self.new_panel.setLayout(self._plan_form())
        self.body.addWidget(self.new_panel)
        self.hosted_panel = QWidget()
        self.hosted_panel.setLayout(self._hosted_view())
        self.body.addWidget(self.hosted_panel)
        self.body.addStretch(1)

        self.folder: Path | None = None  # the hosted federation shown
        self.status: Any = None  # core.federation.service.HostStatus, the latest read
        self.preview: Any = None  # gui.host_jobs.PlanPreview
        self.created: Any = None  # core's InitResult of the federation created here
        self._keep: dict[Path, bool] = {}  # folder -> keep its coordinator running after the app quits
        self._preview_generation = 0
        self._polling = False
        self._collected: set[Path] = set()
        self._debounce = QTimer(self, singleShot=True, interval=350)
        self._debounce.timeout.connect(self.refresh_preview)
        self._poll = QTimer(self, interval=POLL_MS)
        self._poll.timeout.connect(self.refresh_dashboard)
        self.chooser.currentIndexChanged.connect(self._chosen)
        app = QCoreApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.stop_on_quit)
        self.reload_hosted()

    # ---- building ------------------------------------------------------------------------------------
    def _plan_form(self) -> QHBoxLayout:
        columns = QHBoxLayout()
        columns.setSpacing(16)
        plan = Card("1. The plan every hospital agrees to")
        form = self.form_layout = QFormLayout()
        self.name = QLineEdit("Retina network")
        self.mode = QComboBox()
        for key, text in MODES:
            self.mode.addItem(text, key)
        self.model = QComboBox()
        for name in MODELS:
            self.model.addItem(name, name)
        self.image_size = _spin(16, 512, 64)
        self.rounds = _spin(1, 100_000, 100)
        self.hospital_names = QPlainTextEdit("This hospital\nCity Eye Clinic\nUniversity Hospital\nNorth Clinic")
        self.hospital_names.setMaximumHeight(96)
        self.lead_trains = QCheckBox("This site also trains (it is the first hospital)")
        self.lead_trains.setChecked(True)
        self.expected = QLineEdit("1000")
        self.expected.setToolTip("Images each hospital expects to use, comma-separated; the last repeats.")
        self.threshold = _spin(0, 1000, 0, special="automatic")
        self.threshold.setToolTip("Automatic: about two thirds of the hospitals, at least 2, and 2m > K + t.")
        self.colluders = _spin(-1, 999, -1, special="automatic (1)")
        self.noise_source = QComboBox()
        self.noise_source.addItem("noise multiplier σ", "sigma")
        self.noise_source.addItem("target ε for the whole plan", "epsilon")
        self.noise = _spin(0.01, 1000.0, 1.0, decimals=3)
        self.clip = _spin(0.001, 1000.0, 1.0, decimals=3)
        self.sample_rate = _spin(0.0001, 1.0, 0.05, decimals=4)
        self.batch_size = _spin(1, 4096, 32)
        self.local_epochs = _spin(1, 100, 1)
        self.delta = QLineEdit("1e-5")
        self.accountant = QComboBox()
        self.accountant.addItem("RDP", "rdp")
        self.accountant.addItem("PRV", "prv")
        self.eval_data = PathPicker(placeholder="Optional: labelled held-out images")
        self.eval_data.setToolTip("This site's labelled held-out images: the coordinator reports the global "
                                  "model's accuracy and κ on them after each round.")
        rows = [("Name", self.name), ("Mode", self.mode), ("Model", self.model), ("Image size (px)", self.image_size),
                ("Rounds", self.rounds), ("Hospitals (one per line)", self.hospital_names), ("", self.lead_trains),
                ("Expected images", self.expected), ("Threshold m", self.threshold),
                ("Colluding hospitals t", self.colluders), ("Noise from", self.noise_source),
                ("σ", self.noise), ("Clipping C", self.clip), ("Sample rate q", self.sample_rate),
                ("Batch size", self.batch_size), ("Local epochs", self.local_epochs), ("δ", self.delta),
                ("Accountant", self.accountant), ("Held-out set", self.eval_data)]
        for text, widget in rows:
            form.addRow(text, widget)
        plan.body.addLayout(form)
        plan.body.addStretch(1)
        columns.addWidget(plan, 1)

        right = Card("What each hospital would spend")
        self.preview_table = QTableWidget(0, 3)
        self.preview_table.setHorizontalHeaderLabels(["Hospital", "Expected images", "ε for the whole plan"])
        self.preview_table.verticalHeader().setVisible(False)
        self.preview_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.preview_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.preview_table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.preview_summary = Banner("", "privacy")
        self.rules = label("", "muted")
        self.rules.setTextFormat(Qt.TextFormat.RichText)
        right.body.addWidget(self.preview_summary)
        right.body.addWidget(self.preview_table)
        right.body.addWidget(label("The rules the plan enforces", "section"))
        right.body.addWidget(self.rules)

        address = Card("2. Where hospitals reach the coordinator")
        address_form = QFormLayout()
        self.hosts = QLineEdit(socket.gethostname())
        self.hosts.setToolTip("Host names or IP addresses of this computer, comma-separated; the first goes into "
                              "the invitations, all go into the TLS certificate.")
        self.port = _spin(1, 65535, 8443)
        port_row = QHBoxLayout()
        port_row.addWidget(self.port)
        self.check_port_button = button("Check that the port is free")
        port_row.addWidget(self.check_port_button)
        port_row.addStretch(1)
        address_form.addRow("Addresses", self.hosts)
        address_form.addRow("Port", port_row)
        address.body.addLayout(address_form)
        self.port_note = Banner("", "info")
        address.body.addWidget(self.port_note)

        invite = Card("3. Invitations")
        invite.body.addWidget(label("One invitation per hospital and a printable sheet with the CA fingerprint "
                                    "its people compare with you by phone. Each invitation enrolls whoever "
                                    "opens it first: hand it over privately.", "muted"))
        self.invitations_dir = PathPicker(placeholder="Folder for the invitations and sheets")
        self.create_button = button("Create the federation", primary=True)
        invite.body.addWidget(self.invitations_dir)
        invite.body.addWidget(self.create_button)
        side = QWidget()
        side_layout = QVBoxLayout(side)
        side_layout.setContentsMargins(0, 0, 0, 0)
        for card in (right, address, invite):
            side_layout.addWidget(card)
        side_layout.addStretch(1)
        columns.addWidget(side, 1)
        for box in (self.mode, self.model, self.noise_source, self.accountant):
            box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            box.setMinimumContentsLength(12)

        for widget in (self.name, self.expected, self.delta, self.hosts):
            widget.textChanged.connect(self._form_changed)
        self.hospital_names.textChanged.connect(self._form_changed)
        for box in (self.mode, self.model, self.noise_source, self.accountant):
            box.currentIndexChanged.connect(self._form_changed)
        for spin in (self.image_size, self.rounds, self.threshold, self.colluders, self.noise, self.clip,
                     self.sample_rate, self.batch_size, self.local_epochs, self.port):
            spin.valueChanged.connect(self._form_changed)
        self.lead_trains.toggled.connect(self._form_changed)
        self.check_port_button.clicked.connect(self.check_port)
        self.create_button.clicked.connect(self.create)
        self._show_mode_rows()
        return columns

    def _hosted_view(self) -> QVBoxLayout:
        rows = QVBoxLayout()
        rows.setContentsMargins(0, 0, 0, 0)
        rows.setSpacing(12)
        top = QHBoxLayout()
        top.setSpacing(16)
        self.federation_card = KeyValueCard("Federation")
        self.fingerprint = label("", "section", selectable=True)
        invitations = Card("Invitations")
        invitations.body.addWidget(label("CA fingerprint: read it out to each hospital by phone.", "muted"))
        invitations.body.addWidget(self.fingerprint)
        self.invitation_list = label("", "muted", selectable=True)
        invitations.body.addWidget(self.invitation_list)
        sheet_row = QHBoxLayout()
        self.pdf_button = button("Save the sheets as PDF")
        self.open_folder_button = button("Open the folder")
        self.train_here_button = button("Train here too")
        for widget in (self.pdf_button, self.open_folder_button, self.train_here_button):
            sheet_row.addWidget(widget)
        sheet_row.addStretch(1)
        invitations.body.addLayout(sheet_row)

        control = Card("Coordinator")
        self.service_label = label("", "section")
        self.service_detail = label("", "muted", selectable=True)
        buttons = QHBoxLayout()
        self.start_button = button("Start", primary=True)
        self.pause_button = button("Pause")
        self.resume_button = button("Resume")
        self.stop_button = button("Stop", danger=True)
        for widget in (self.start_button, self.pause_button, self.resume_button, self.stop_button):
            buttons.addWidget(widget)
        buttons.addStretch(1)
        self.keep_running = QCheckBox("Keep the coordinator running after this window closes")
        for widget in (self.service_label, self.service_detail):
            control.body.addWidget(widget)
        control.body.addLayout(buttons)
        control.body.addWidget(self.keep_running)
        control.body.addWidget(label("Pause lets the round in progress finish and holds the next one at its start "
                                     "(nothing is computed or charged while it waits). Stop ends the process; "
                                     "starting it again resumes the federation where it was.", "muted"))
        top.addWidget(self.federation_card, 1)
        top.addWidget(control, 1)
        rows.addLayout(top)
        rows.addWidget(invitations)

        board = Card("Dashboard")
        self.round_label = label("", "section")
        self.hospitals_table = QTableWidget(0, 7)
        self.hospitals_table.setHorizontalHeaderLabels(
            ["Hospital", "Enrolled", "Online", "Last seen", "Rounds in", "Received", "ε (coordinator's count)"])
        self.hospitals_table.verticalHeader().setVisible(False)
        self.hospitals_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = self.hospitals_table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.metrics_plot = LivePlot("Global model on this site's held-out set", "value", "round", y_range=(0, 1))
        self.final_note = Banner("", "ok")
        self.final_note.setVisible(False)
        self.models_button = button("Show it on the Models page")
        self.models_button.setVisible(False)
        for widget in (self.round_label, self.hospitals_table, label(EPSILON_NOTE, "muted"), self.final_note,
                       self.models_button, self.metrics_plot):
            board.body.addWidget(widget)
        rows.addWidget(board)

        self.start_button.clicked.connect(self.start)
        self.pause_button.clicked.connect(lambda: self.set_paused(True))
        self.resume_button.clicked.connect(lambda: self.set_paused(False))
        self.stop_button.clicked.connect(self.stop)
        self.keep_running.toggled.connect(self._keep_toggled)
        self.pdf_button.clicked.connect(self.save_pdfs)
        self.open_folder_button.clicked.connect(self._open_folder)
        self.train_here_button.clicked.connect(self.train_here)
        self.models_button.clicked.connect(lambda: self.context.navigate("models"))
        return rows

    def _run(self, fn: Any, *args: Any, on_done: Any = None, on_error: Any = None, **kwargs: Any) -> Any:
        """Start a job whose answers reach this page only while it exists (a closed window's page is gone
        before a job it started may answer)."""

        def alive(callback: Any) -> Any:
            if callback is None:
                return None
            return lambda value: callback(value) if shiboken6.isValid(self) else None

        return self.context.runner.start(fn, *args, on_done=alive(on_done), on_error=alive(on_error), **kwargs)

    # ---- choosing a federation -----------------------------------------------------------------------------
    def reload_hosted(self, select: Path | None = None) -> None:
        """List the federations this site hosts (HOME/coordinators); select ``select`` or the newest."""
        found = host_jobs.hosted(self.context.home)
        self.chooser.blockSignals(True)
        self.chooser.clear()
        self.chooser.addItem("New federation…", None)
        for folder, name in found:
            self.chooser.addItem(f"{name} ({folder.name})", str(folder))
        self.chooser.blockSignals(False)
        wanted = select or (found[0][0] if found else None)
        index = self.chooser.findData(str(wanted)) if wanted is not None else 0
        self.chooser.setCurrentIndex(max(index, 0))
        self._chosen()

    def _chosen(self) -> None:
        data = self.chooser.currentData()
        self.folder = Path(data) if data else None
        self.new_panel.setVisible(self.folder is None)
        self.hosted_panel.setVisible(self.folder is not None)
        self.status = None
        if self.folder is None:
            self._poll.stop()
            self._form_changed()
            return
        self._show_details(self.folder)
        self.metrics_plot.clear_series()
        self.refresh_dashboard()
        self._poll.start()

    def on_shown(self) -> None:
        # Nothing runs for this page until it is shown: the preview loads the accountant (seconds), which
        # the window's start-up must not wait for.
        if self.folder is None:
            self.refresh_preview()
        else:
            self.refresh_dashboard()

    # ---- the plan form ----------------------------------------------------------------------------------
    def _show_mode_rows(self) -> None:
        mode = self.mode.currentData()
        private, fscdp = mode != "f", mode == "fscdp"
        visible = {self.noise_source: private, self.noise: private, self.clip: private, self.delta: private,
                   self.accountant: private, self.sample_rate: fscdp, self.batch_size: not fscdp,
                   self.local_epochs: not fscdp}
        for widget, shown in visible.items():
            self.form_layout.setRowVisible(widget, shown)
        target = self.noise_source.currentData() == "epsilon"
        label_item = self.form_layout.labelForField(self.noise)
        if label_item is not None:
            label_item.setText("target ε" if target else "σ")

    def form(self) -> host_jobs.HostForm:
        """The form as core's terms (ConfigError when a field cannot be read)."""
        names = [n.strip() for n in self.hospital_names.toPlainText().splitlines() if n.strip()]
        if not names:
            raise ConfigError("Name at least one hospital, one per line.")
        try:
            delta = float(self.delta.text())
        except ValueError:
            raise ConfigError("δ must be a number such as 1e-5.") from None
        target = self.noise_source.currentData() == "epsilon"
        return host_jobs.HostForm(
            name=self.name.text(), mode=self.mode.currentData(), rounds=self.rounds.value(), hospital_names=names,
            expected_images=host_jobs.expected_counts(self.expected.text(), len(names)),
            hosts=self.hosts.text().split(","), port=self.port.value(), model=self.model.currentData(),
            image_size=self.image_size.value(), threshold=self.threshold.value() or None,
            colluders=None if self.colluders.value() < 0 else self.colluders.value(),
            lead_trains=self.lead_trains.isChecked(),
            noise_multiplier=None if target else self.noise.value(),
            target_epsilon=self.noise.value() if target else None, max_grad_norm=self.clip.value(),
            sample_rate=self.sample_rate.value(), batch_size=self.batch_size.value(),
            local_epochs=self.local_epochs.value(), delta=delta, accountant=self.accountant.currentData(),
            eval_data=self.eval_data.path(), invitations_dir=self.invitations_dir.path())

    def _form_changed(self, *_args: object) -> None:
        self._show_mode_rows()
        self.port_note.show_message(FIREWALL.format(port=self.port.value()), "info")
        if self.isVisible():
            self._debounce.start()

    def refresh_preview(self) -> None:
        """Recompute the preview on a worker (the accountant is not for the UI thread)."""
        self._preview_generation += 1
        generation = self._preview_generation
        try:
            form = self.form()
        except ConfigError as exc:
            self._show_problem(str(exc))
            return
        self.preview = None
        self.preview_summary.show_message("Working out what each hospital would spend…", "info")
        self._run(
            host_jobs.preview_plan, form, name="preview the federation plan",
            on_done=lambda preview: generation == self._preview_generation and self._show_preview(preview),
            on_error=lambda exc: generation == self._preview_generation and self._show_problem(str(exc)))

    def _show_problem(self, text: str) -> None:
        self.preview = None
        self.preview_summary.show_message(f"<b>This plan cannot be used:</b> {text}", "error")
        self.preview_table.setRowCount(0)
        self.rules.setText("")
        self.create_button.setEnabled(False)

    def _show_preview(self, preview: host_jobs.PlanPreview) -> None:
        self.preview = preview
        plan = preview.plan
        self.preview_table.setRowCount(len(preview.hospitals))
        for row, hospital in enumerate(preview.hospitals):
            epsilon = "none (no DP)" if hospital.epsilon is None else f"{hospital.epsilon:.3g}"
            if not hospital.delta_ok:
                epsilon += f" — δ must be below 1/{hospital.images}"
            for column, value in enumerate((hospital.name, str(hospital.images), epsilon)):
                self.preview_table.setItem(row, column, QTableWidgetItem(value))
        _fit_rows(self.preview_table)
        parts = [f"K = {plan.hospitals}, m = {plan.threshold}, t = {plan.colluders}: up to "
                 f"<b>{preview.dropouts_tolerated} hospital(s) may drop out</b> of a round before it stops."]
        if preview.noise_std_per_hospital is not None:
            parts.append(f"With σ = {preview.noise_multiplier:.4g}, each hospital adds noise of std "
                         f"σC/√(m − t) = <b>{preview.noise_std_per_hospital:.4g}</b>.")
        elif preview.noise_multiplier is not None:
            parts.append(f"σ = {preview.noise_multiplier:.4g}.")
        if plan.is_private:
            worst = max(h.epsilon or 0.0 for h in preview.hospitals)
            parts.append(f"Taking part in all {plan.rounds} rounds costs a hospital up to <b>ε = {worst:.3g}</b> "
                         f"at δ = {plan.delta:g} ({plan.accountant.upper()}), against the coordinator and "
                         f"{plan.colluders} other hospital(s).")
        bad_delta = [h.name for h in preview.hospitals if not h.delta_ok]
        kind = "warning" if bad_delta else "privacy"
        self.preview_summary.show_message(" ".join(parts), kind)
        self.rules.setText("<br>".join(f"• {html.escape(line)}" for line in
                                       host_jobs.rules_text(plan, lead_trains=self.lead_trains.isChecked())))
        self.create_button.setEnabled(not bad_delta)

    def check_port(self) -> None:
        port = self.port.value()

        def shown(problem: str) -> None:
            self.port_note.show_message(problem or f"Port {port} is free on this computer. "
                                        + FIREWALL.format(port=port), "error" if problem else "ok")

        self._run(host_jobs.port_check, "0.0.0.0", port, name="check the port", on_done=shown,
                                  on_error=lambda exc: show_error(self, exc))

    def create(self) -> None:
        try:
            form = self.form()
        except ConfigError as exc:
            show_error(self, exc)
            return
        self.create_button.setEnabled(False)

        def done(result: Any) -> None:
            self.created = result
            self.create_button.setEnabled(True)
            self.reload_hosted(select=Path(result.folder))

        def failed(exc: BaseException) -> None:
            self.create_button.setEnabled(True)
            show_error(self, exc)

        self._run(host_jobs.create_federation, form, self.context.home, name="create the federation",
                                  on_done=done, on_error=failed)

    # ---- a hosted federation ------------------------------------------------------------------------------
    def _show_details(self, folder: Path) -> None:
        from core.federation.layout import FederationPaths, load_settings
        from core.federation.plan import load_plan
        from core.federation.tls import certificate_fingerprint

        paths = FederationPaths(folder)
        try:  # small text files: cheap enough for the UI thread
            plan, settings = load_plan(paths.plan), load_settings(paths)
            rows = certificate_fingerprint((paths.tls / "ca.pem").read_text()).split()
        except Exception as exc:  # noqa: BLE001 -- a damaged folder: say why, keep the page
            self.federation_card.set_rows([("Folder", str(folder)), ("Problem", str(exc))])
            return
        self.federation_card.set_rows([
            ("Name", plan.name), ("Mode", plan.mode.upper()), ("Coordinator address", settings.url),
            ("Hospitals", f"{plan.hospitals}, m = {plan.threshold}, t = {plan.colluders}"),
            ("Rounds", plan.rounds), ("Folder", str(folder))])
        self.fingerprint.setText("<br>".join(" ".join(rows[i:i + 4]) for i in range(0, len(rows), 4)))
        info = host_jobs.read_host_file(folder)
        files = info.get("invitations", [])
        self.invitation_list.setText("<br>".join(files) if files else
                                     "Invitations were written by `dopamine coordinator init`.")
        self.pdf_button.setEnabled(bool(info.get("sheets")))
        self.open_folder_button.setEnabled(bool(files))
        self.train_here_button.setVisible(bool(info.get("lead_trains")) and bool(files))

    def refresh_dashboard(self) -> None:
        if self.folder is None or self._polling or not self.isVisible():
            return
        folder = self.folder
        self._polling = True

        def done(status: Any) -> None:
            self._polling = False
            if folder == self.folder:
                self.show_status(status)

        def failed(exc: BaseException) -> None:
            self._polling = False
            self.service_label.setText("Cannot read this federation")
            self.service_detail.setText(str(exc))

        self._run(host_jobs.dashboard, folder, name="read the federation", on_done=done,
                                  on_error=failed)

    def show_status(self, status: Any) -> None:
        first = self.status is None
        self.status = status
        folder = Path(status.folder)
        if first and status.running and folder not in self._keep:
            self._keep[folder] = True  # found running: it was kept when the app last closed
        self.keep_running.blockSignals(True)
        self.keep_running.setChecked(self._keep.get(folder, False))
        self.keep_running.blockSignals(False)
        if status.running:
            self.service_label.setText("Paused" if status.paused else "Running")
            answering = "answering" if status.healthy else "not answering yet"
            self.service_detail.setText(f"Process {status.pid}, {answering} at {status.coordinator_url}.")
        else:
            self.service_label.setText("Stopped")
            self.service_detail.setText("Start it to let hospitals enroll and the rounds go on." if status.status not in
                                        ("finished", "stopped") else "The federation has ended.")
        ended = status.status in ("finished", "stopped")
        self.start_button.setEnabled(not status.running and not ended)
        self.stop_button.setEnabled(status.running)
        self.pause_button.setEnabled(not status.paused and not ended)
        self.resume_button.setEnabled(status.paused)
        self.round_label.setText(_round_text(status))
        self._show_hospitals(status)
        for name in ("accuracy", "kappa"):
            points = [(r["round"], r["metrics"][name]) for r in status.last_rounds
                      if isinstance(r["metrics"].get(name), float)]
            if points:
                self.metrics_plot.set_series("κ" if name == "kappa" else name, [p[0] for p in points],
                                             [p[1] for p in points])
        if status.status == "finished" and folder not in self._collected:
            self._collected.add(folder)
            self._run(host_jobs.collect_final_model, self.context.home, folder,
                                      name="add the final model", on_done=self._final_model,
                                      on_error=lambda exc: show_error(self, exc))

    def _show_hospitals(self, status: Any) -> None:
        self.hospitals_table.setRowCount(len(status.hospitals))
        for row, h in enumerate(status.hospitals):
            seen = time.strftime("%H:%M:%S", time.localtime(h.last_seen)) if h.last_seen else "—"
            epsilon = "—" if h.epsilon is None else f"{h.epsilon:.3g}"
            values = (f"{h.name} ({h.hospital_id})", "yes" if h.enrolled else "invited",
                      "online" if h.online else "offline", seen, str(h.rounds_included),
                      host_jobs.format_bytes(h.bytes_received), epsilon)
            for column, value in enumerate(values):
                self.hospitals_table.setItem(row, column, QTableWidgetItem(value))
        _fit_rows(self.hospitals_table)

    def _final_model(self, path: Path) -> None:
        self.final_note.show_message(f"The federation finished. Its final signed model is on the Models page: "
                                     f"{path.name}", "ok")
        self.models_button.setVisible(True)
        self.context.models_changed.emit()

    # ---- the coordinator process ----------------------------------------------------------------------------
    def start(self) -> None:
        if self.folder is None:
            return
        folder = self.folder
        self._keep.setdefault(folder, self.keep_running.isChecked())
        self.start_button.setEnabled(False)
        self.service_label.setText("Starting…")
        self._run(host_jobs.start_coordinator, folder, name="start the coordinator",
                                  on_done=lambda _state: self.refresh_dashboard(),
                                  on_error=lambda exc: (show_error(self, exc), self.refresh_dashboard()))

    def stop(self) -> None:
        if self.folder is None:
            return
        status = self.status
        if status is not None and status.status == "running" and not confirm(
                self, "Stop the coordinator?",
                "Hospitals keep retrying while it is stopped; starting it again resumes the round where it was.",
                yes="Stop it"):
            return
        self.stop_button.setEnabled(False)
        self.service_label.setText("Stopping…")
        self._run(host_jobs.stop_coordinator, self.folder, name="stop the coordinator",
                                  on_done=lambda _stopped: self.refresh_dashboard(),
                                  on_error=lambda exc: show_error(self, exc))

    def set_paused(self, paused: bool) -> None:
        if self.folder is None:
            return
        self._run(host_jobs.set_paused, self.folder, paused, name="pause the federation",
                                  on_done=lambda _p: self.refresh_dashboard(), on_error=lambda exc: show_error(self, exc))

    def _keep_toggled(self, checked: bool) -> None:
        if self.folder is not None:
            self._keep[self.folder] = checked

    def stop_on_quit(self) -> None:
        """The app is quitting: stop every coordinator it knows of, unless the user asked to keep it."""
        for folder, keep in list(self._keep.items()):
            if not keep:
                try:
                    host_jobs.stop_coordinator(folder, wait=False)
                except Exception:  # noqa: BLE001 -- never block quitting
                    pass

    # ---- invitations --------------------------------------------------------------------------------------
    def save_pdfs(self) -> list[Path]:
        """Each printable sheet also as a PDF beside it (Qt renders it; small, so on the UI thread)."""
        if self.folder is None:
            return []
        written = []
        for sheet in host_jobs.read_host_file(self.folder).get("sheets", []):
            path = Path(sheet)
            if not path.exists():
                continue
            document = QTextDocument()
            document.setHtml(path.read_text(encoding="utf-8"))
            target = path.with_name(path.name.replace(".sheet.html", ".sheet.pdf"))
            writer = QPdfWriter(str(target))
            writer.setTitle(f"Dopamine invitation sheet: {path.stem}")
            document.print_(writer)
            written.append(target)
        if written:
            self.invitation_list.setText(self.invitation_list.text() + "<br>PDF sheets: "
                                         + ", ".join(p.name for p in written))
        return written

    def _open_folder(self) -> None:
        files = host_jobs.read_host_file(self.folder).get("invitations", []) if self.folder else []
        if files:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(Path(files[0]).parent)))

    def train_here(self) -> None:
        """Open this site's own invitation (the first) on the Federation page: it trains like any hospital."""
        files = host_jobs.read_host_file(self.folder).get("invitations", []) if self.folder else []
        if not files:
            return
        self.context.settings.invitation = files[0]
        self.context.navigate("federation")
        federation = getattr(self.window(), "pages", {}).get("federation")
        opener = getattr(federation, "open_invitation", None)
        if opener is not None:
            federation.picker.set_path(files[0])
            opener(Path(files[0]))


def _fit_rows(table: QTableWidget) -> None:
    """As tall as its rows: the page scrolls, not the table."""
    header = table.horizontalHeader()
    rows = sum(table.rowHeight(r) for r in range(table.rowCount()))
    table.setFixedHeight(max(header.height(), header.sizeHint().height()) + rows + 2 * table.frameWidth() + 2)


def _round_text(status: Any) -> str:
    state = {"enrolling": "Waiting for the hospitals to enroll",
             "confirming": "Waiting for every hospital to confirm the roster",
             "finished": "Finished", "stopped": f"Stopped: {status.stop_reason}"}.get(status.status)
    enrolled = sum(h.enrolled for h in status.hospitals)
    if state is None:
        step = f", step {status.phase}" if status.phase else ""
        state = f"Round {status.round} of {status.rounds} (attempt {status.attempt}{step})"
        if status.paused:
            state += " — paused: the next round waits at its start"
    return f"{state}. {status.rounds_finished} of {status.rounds} rounds done; {enrolled} of " \
           f"{len(status.hospitals)} hospitals enrolled."


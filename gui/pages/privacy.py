"""Privacy: the hospital's cap (ε, δ), what was spent (table and curve), export, a plan check, and an
empirical audit of the planned settings on synthetic images."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLineEdit,
    QProgressBar,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from core.errors import ConfigError
from gui.audit_jobs import GUI_MODES, audit_settings, run_audit
from gui.context import AppContext
from gui.dialogs import show_error
from gui.ledger_jobs import LedgerSnapshot, PlanVerdict, check_plan, export_ledger, read_ledger, set_cap
from gui.widgets.common import Banner, Card, button, label
from gui.widgets.page import Page
from gui.widgets.plots import LivePlot

EXPLAIN = (
    "Differential privacy limits how much any model trained here can reveal about a single patient. "
    "The number ε (epsilon) measures that: <b>smaller is more private</b>. Every private training run, "
    "and every federation round, spends some ε, and the spending adds up. The <b>cap</b> is the most "
    "this hospital allows in total: Dopamine refuses, before it starts, any work that would pass it."
)


def parse_delta(text: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError as exc:
        raise ConfigError(f"δ {text!r} is not a number; type it like 1e-5.") from exc
    if not 0.0 < value < 1.0:
        raise ConfigError("δ must be between 0 and 1 (typically 1e-5, below 1 / number of images).")
    return value


class PrivacyPage(Page):
    key = "privacy"
    title = "Privacy budget"
    subtitle = "How much privacy this hospital has spent, and the most it allows."

    def __init__(self, context: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(context, parent)
        self.body.addWidget(Banner(EXPLAIN, "privacy"))

        top = QHBoxLayout()
        top.setSpacing(12)
        spent_card = Card("Spent so far")
        self.spent_label = label("—", "big")
        self.spent_bar = QProgressBar()
        self.spent_bar.setRange(0, 1000)
        self.spent_bar.setTextVisible(False)
        self.spent_detail = label("", "muted")
        spent_card.body.addWidget(self.spent_label)
        spent_card.body.addWidget(self.spent_bar)
        spent_card.body.addWidget(self.spent_detail)
        spent_card.body.addStretch(1)
        top.addWidget(spent_card, 1)

        cap_card = Card("This hospital's cap")
        form = QFormLayout()
        self.cap_enabled = QCheckBox("Limit the total ε to")
        self.cap_enabled.setChecked(True)
        self.cap_spin = QDoubleSpinBox()
        self.cap_spin.setRange(0.01, 1000.0)
        self.cap_spin.setDecimals(2)
        self.cap_spin.setValue(10.0)
        self.delta_edit = QLineEdit()
        self.delta_edit.setPlaceholderText("e.g. 1e-5 (below 1 / number of images)")
        form.addRow(self.cap_enabled, self.cap_spin)
        form.addRow("δ (delta)", self.delta_edit)
        cap_card.body.addLayout(form)
        self.save_cap_button = button("Save cap", primary=True)
        cap_card.body.addWidget(self.save_cap_button)
        self.cap_notice = Banner("", "info")
        self.cap_notice.setVisible(False)
        cap_card.body.addWidget(self.cap_notice)
        cap_card.body.addWidget(label("The cap and δ are stored in the hospital's one ledger, so `dopamine` "
                                      "on the command line and the app enforce the same limit. Every change "
                                      "is written to the signed audit log (Activity page).", "muted"))
        top.addWidget(cap_card, 1)
        self.body.addLayout(top)

        self.curve = LivePlot("ε spent over time", "ε", "charge")
        curve_card = Card("Spending")
        curve_card.body.addWidget(self.curve)
        self.body.addWidget(curve_card)

        table_card = Card("Ledger: every charge, in order")
        self.table = QTableWidget(0, 6)
        self.table.setHorizontalHeaderLabels(["When", "What", "σ (noise)", "q (sample rate)", "Steps",
                                              "ε after"])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.table.setMinimumHeight(200)
        table_card.body.addWidget(self.table)
        exports = QHBoxLayout()
        self.export_csv_button = button("Export CSV…")
        self.export_json_button = button("Export JSON…")
        self.refresh_button = button("Refresh")
        exports.addWidget(self.export_csv_button)
        exports.addWidget(self.export_json_button)
        exports.addStretch(1)
        exports.addWidget(self.refresh_button)
        table_card.body.addLayout(exports)
        self.body.addWidget(table_card)

        check_card = Card("Check a plan before running it")
        check_card.body.addWidget(label(
            "Enter what a training run or federation would do; Dopamine says what the ledger would show "
            "afterwards and whether the cap allows it. Nothing is charged.", "muted"))
        check_form = QHBoxLayout()
        self.plan_sigma = QDoubleSpinBox()
        self.plan_sigma.setRange(0.01, 100.0)
        self.plan_sigma.setValue(1.0)
        self.plan_sigma.setDecimals(3)
        self.plan_q = QDoubleSpinBox()
        self.plan_q.setRange(0.0001, 1.0)
        self.plan_q.setDecimals(4)
        self.plan_q.setSingleStep(0.001)
        self.plan_q.setValue(0.01)
        self.plan_steps = QSpinBox()
        self.plan_steps.setRange(1, 10_000_000)
        self.plan_steps.setValue(1000)
        for text, widget in (("σ", self.plan_sigma), ("q", self.plan_q), ("steps", self.plan_steps)):
            check_form.addWidget(label(text, wrap=False))
            check_form.addWidget(widget)
        self.check_button = button("Check")
        check_form.addWidget(self.check_button)
        check_form.addStretch(1)
        check_card.body.addLayout(check_form)
        self.verdict = Banner("", "info")
        self.verdict.setVisible(False)
        check_card.body.addWidget(self.verdict)
        self.body.addWidget(check_card)
        self._build_audit_card()

        self.snapshot: LedgerSnapshot | None = None
        self.last_verdict: PlanVerdict | None = None
        self.save_cap_button.clicked.connect(self.save_cap)
        self.refresh_button.clicked.connect(self.refresh)
        self.export_csv_button.clicked.connect(lambda: self.export("csv"))
        self.export_json_button.clicked.connect(lambda: self.export("json"))
        self.check_button.clicked.connect(self.check_plan)
        self.cap_enabled.toggled.connect(self.cap_spin.setEnabled)
        context.ledger_changed.connect(self._changed)
        context.settings_changed.connect(self._changed)

    def _build_audit_card(self) -> None:
        audit_card = Card("Audit: measure the privacy of these settings")
        audit_card.body.addWidget(label(
            "Every ε above is a guarantee computed from the settings: an upper bound. An audit measures "
            "instead: it trains once with the σ, q and steps above through Dopamine's own DP code, on "
            "<b>synthetic images only</b> (never this hospital's), with canaries, and turns how well an "
            "attacker can tell which canaries were used into a lower bound on ε. Nothing is charged. A lower "
            "bound above the guarantee would mean a bug. See docs/privacy-audit.md for what an audit cannot see.",
            "muted"))
        row = QHBoxLayout()
        self.audit_mode = QComboBox()
        for key, text in GUI_MODES.items():
            self.audit_mode.addItem(text, key)
        self.audit_button = button("Run audit")
        self.audit_cancel_button = button("Cancel")
        self.audit_cancel_button.setEnabled(False)
        self.audit_save_button = button("Save report…")
        self.audit_save_button.setEnabled(False)
        for widget in (self.audit_mode, self.audit_button, self.audit_cancel_button):
            row.addWidget(widget)
        row.addStretch(1)
        row.addWidget(self.audit_save_button)
        audit_card.body.addLayout(row)
        self.audit_progress = QProgressBar()
        self.audit_progress.setRange(0, 1000)
        self.audit_progress.setVisible(False)
        audit_card.body.addWidget(self.audit_progress)
        self.audit_result = Banner("", "info")
        self.audit_result.setVisible(False)
        audit_card.body.addWidget(self.audit_result)
        self.body.addWidget(audit_card)
        # Extra AuditConfig fields (sizes); tests use it for small audits.
        self.audit_sizes: dict = {}
        self.last_audit = None
        self.audit_job = None
        self.audit_button.clicked.connect(self.start_audit)
        self.audit_cancel_button.clicked.connect(self.cancel_audit)
        self.audit_save_button.clicked.connect(self.save_audit_report)

    def start_audit(self) -> None:
        try:
            delta = parse_delta(self.delta_edit.text())
            if delta is None:
                delta = self.snapshot.delta if self.snapshot is not None and self.snapshot.delta else 1e-5
            settings = audit_settings(
                mode=self.audit_mode.currentData(), noise_multiplier=self.plan_sigma.value(),
                sample_rate=self.plan_q.value(), steps=self.plan_steps.value(), delta=delta,
                accountant=self.context.settings.accountant)
        except ConfigError as exc:
            show_error(self, exc)
            return
        settings.update(self.audit_sizes)
        self.last_audit = None
        self.audit_button.setEnabled(False)
        self.audit_cancel_button.setEnabled(True)
        self.audit_save_button.setEnabled(False)
        self.audit_progress.setValue(0)
        self.audit_progress.setVisible(True)
        self.audit_result.show_message("Training with canaries on synthetic images…", "info")
        self.audit_job = self.context.runner.start(
            run_audit, settings, name="privacy audit", on_progress=self._audit_progress,
            on_done=self.show_audit, on_error=self._audit_failed, on_cancelled=self._audit_cancelled)

    def cancel_audit(self) -> None:
        if self.audit_job is not None:
            self.audit_job.cancel()

    def _audit_progress(self, fraction: float, message: str) -> None:
        self.audit_progress.setValue(int(fraction * 1000))
        self.audit_result.show_message(message, "info")

    def _audit_ended(self) -> None:
        self.audit_job = None
        self.audit_button.setEnabled(True)
        self.audit_cancel_button.setEnabled(False)
        self.audit_progress.setVisible(False)

    def show_audit(self, result) -> None:
        self._audit_ended()
        self.last_audit = result
        self.audit_save_button.setEnabled(True)
        text = result.summary()
        if result.exceeds_claim:
            text += " The measured bound is above the guarantee: the code or its accounting is wrong; report it."
        self.audit_result.show_message(text, "error" if result.exceeds_claim else "ok")

    def _audit_failed(self, error: BaseException) -> None:
        self._audit_ended()
        self.audit_result.setVisible(False)
        show_error(self, error)

    def _audit_cancelled(self) -> None:
        self._audit_ended()
        self.audit_result.show_message("Audit cancelled.", "info")

    def save_audit_report(self) -> None:
        if self.last_audit is None:
            return
        folder = QFileDialog.getExistingDirectory(self, "Save the audit report (audit.html, .json, .png) in")
        if folder:
            from core.privacy_audit.report import write_report

            self.context.runner.start(write_report, self.last_audit, folder, name="save audit report",
                                      on_error=lambda e: show_error(self, e))

    def on_shown(self) -> None:
        self.refresh()

    def _changed(self) -> None:
        # Composing the ledger's ε is real work: a hidden page waits until it is shown again.
        if self.isVisible():
            self.refresh()

    def refresh(self) -> None:
        self.context.runner.start(read_ledger, self.context.ledger_path, name="read ledger",
                                  on_done=self.show_snapshot, on_error=lambda e: show_error(self, e))

    def show_snapshot(self, snapshot: LedgerSnapshot) -> None:
        self.snapshot = snapshot
        cap = snapshot.max_epsilon
        if not snapshot.exists:
            self.spent_label.setText("ε = 0")
            self.spent_detail.setText(f"No private work yet. The ledger will be created at {snapshot.path}.")
        else:
            self.spent_label.setText(f"ε = {snapshot.spent:.3g}" + (f" of {cap:g}" if cap is not None else ""))
            delta = f"δ = {snapshot.delta:g}" if snapshot.delta is not None else "δ not set"
            self.spent_detail.setText(
                f"{len(snapshot.entries)} charge(s); {delta}; accountant {snapshot.accountant.upper()}. "
                f"Ledger: {snapshot.path}")
        self.spent_bar.setValue(int(min(1.0, snapshot.spent / cap) * 1000) if cap else 0)
        self.cap_enabled.setChecked(cap is not None or not snapshot.exists)
        if cap is not None:
            self.cap_spin.setValue(cap)
        if snapshot.delta is not None:
            self.delta_edit.setText(f"{snapshot.delta:g}")
        self._fill_table(snapshot.entries)
        self.curve.set_series("ε after charge", list(range(1, len(snapshot.entries) + 1)),
                              [float(e.epsilon_after) for e in snapshot.entries])
        self.curve.set_limit("cap", cap)

    def _fill_table(self, entries: list) -> None:
        self.table.setRowCount(len(entries))
        for row, entry in enumerate(entries):
            values = (str(entry.time)[:19].replace("T", " "), entry.description, f"{entry.noise_multiplier:.4g}",
                      f"{entry.sample_rate:.4g}", str(entry.steps), f"{entry.epsilon_after:.4g}")
            for column, value in enumerate(values):
                self.table.setItem(row, column, QTableWidgetItem(value))

    def save_cap(self) -> None:
        try:
            delta = parse_delta(self.delta_edit.text())
            if delta is None and (self.snapshot is None or self.snapshot.delta is None):
                raise ConfigError("Type δ first (for example 1e-5, below 1 / the number of images): the cap "
                                  "counts ε at this δ.")
        except ConfigError as exc:
            show_error(self, exc)
            return
        cap = self.cap_spin.value() if self.cap_enabled.isChecked() else None
        self.context.runner.start(set_cap, self.context.home.root, cap, delta, name="set cap",
                                  on_done=self._cap_saved, on_error=lambda e: show_error(self, e))

    def _cap_saved(self, snapshot: LedgerSnapshot) -> None:
        self.show_snapshot(snapshot)
        if snapshot.notice:
            self.cap_notice.show_message(snapshot.notice, "warning" if snapshot.below_spent else "ok")
        self.context.ledger_changed.emit()

    def check_plan(self) -> None:
        try:
            delta = parse_delta(self.delta_edit.text())
        except ConfigError as exc:
            show_error(self, exc)
            return
        self.context.runner.start(
            check_plan, self.context.ledger_path, noise_multiplier=self.plan_sigma.value(),
            sample_rate=self.plan_q.value(), steps=self.plan_steps.value(), delta=delta,
            accountant=self.context.settings.accountant, name="check plan",
            on_done=self.show_verdict, on_error=lambda e: show_error(self, e))

    def show_verdict(self, verdict: PlanVerdict) -> None:
        self.last_verdict = verdict
        self.verdict.show_message(verdict.text(), "ok" if verdict.allowed else "error")

    def export(self, fmt: str) -> None:
        if self.snapshot is None or not self.snapshot.exists:
            show_error(self, ConfigError("There is no ledger yet: nothing has been charged, so there is "
                                         "nothing to export."))
            return
        chosen, _ = QFileDialog.getSaveFileName(self, "Export the privacy ledger", f"privacy-ledger.{fmt}",
                                                f"{fmt.upper()} (*.{fmt})")
        if chosen:
            self.context.runner.start(export_ledger, self.context.ledger_path, chosen, fmt, name="export",
                                      on_error=lambda e: show_error(self, e))

"""Activity: the hospital home's signed audit log of everything it sent and every cap change, verified."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from gui.context import AppContext
from gui.dialogs import show_error
from gui.widgets.common import Banner, button, label
from gui.widgets.page import Page

NOTHING_YET = "No audit log yet: this hospital has not sent anything to a federation or changed its privacy cap."


@dataclass
class AuditView:
    path: Path
    entries: list[Any]  # core.audit.AuditEntry
    verification: Any  # core.audit.AuditVerification
    key_note: str = ""  # why the signatures were not checked, when they were not


def load_audit(path: Path, home: Path | None = None) -> AuditView:
    """Read and verify ``path`` (worker thread). The home's own log is checked with the home's identity
    key; any other file has no key to check against here, so only its chain is checked."""
    from core.audit import read_audit_log, verify_audit_log
    from core.home import HospitalHome

    path = Path(path)
    public_key = None
    note = "This log is not this hospital home's own, so there is no key here to check its signatures."
    if home is not None:
        hospital = HospitalHome.at(home)
        if path.resolve() == hospital.audit_log.resolve():
            if hospital.identity_key.exists():
                from core.signing import load_private_key, public_key_bytes

                public_key = public_key_bytes(load_private_key(hospital.identity_key))
                note = ""
            else:
                note = f"This home has no identity key ({hospital.identity_key}) to check the signatures with."
    return AuditView(path, read_audit_log(path), verify_audit_log(path, public_key), note)


def _entries(count: int) -> str:
    return f"{count} entr{'y' if count == 1 else 'ies'}"


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} bytes"


class ActivityPage(Page):
    key = "activity"
    title = "Activity"
    subtitle = ("Everything this hospital sent to a federation coordinator, and every change to its privacy "
                "cap, recorded before it happened. Each entry is chained to the one before by its hash and "
                "signed with this hospital's key, so any later edit shows up.")

    def __init__(self, context: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(context, parent)
        row = QHBoxLayout()
        self.logs = QComboBox()
        self.logs.setMinimumWidth(420)
        self.open_button = button("Open another log…")
        self.refresh_button = button("Verify again")
        row.addWidget(label("Audit log", wrap=False))
        row.addWidget(self.logs, 1)
        row.addWidget(self.open_button)
        row.addWidget(self.refresh_button)
        self.body.addLayout(row)
        self.verdict = Banner("", "info")
        self.body.addWidget(self.verdict)
        self.table = QTableWidget(0, 7)
        self.table.setHorizontalHeaderLabels(["#", "When (UTC)", "Round", "Phase", "What", "Size",
                                              "SHA-256 of the bytes"])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(4, QHeaderView.ResizeMode.Stretch)
        self.table.setMinimumHeight(360)
        self.body.addWidget(self.table)
        self.body.addWidget(label("Only requests that carry data are recorded; downloads of the shared "
                                  "model carry nothing from this hospital. Patient images are never sent.",
                                  "muted"))
        self.view: AuditView | None = None
        self.logs.currentIndexChanged.connect(self._log_chosen)
        self.open_button.clicked.connect(self._open_other)
        self.refresh_button.clicked.connect(self.verify)
        self.verdict.show_message(NOTHING_YET, "info")
        context.settings_changed.connect(self._home_changed)

    def on_shown(self) -> None:
        self.reload_list()

    def _home_changed(self) -> None:
        if self.isVisible():
            self.reload_list()

    def reload_list(self, select: Path | None = None) -> None:
        current = select or self.current_path()
        paths = [self.context.audit_log_path] if self.context.audit_log_path.is_file() else []
        if current is not None and current not in paths and current.is_file():
            paths.append(current)
        self.logs.blockSignals(True)
        self.logs.clear()
        for path in paths:
            self.logs.addItem(self._log_name(path), str(path))
        if current is not None:
            self.logs.setCurrentIndex(max(0, self.logs.findData(str(current))))
        self.logs.blockSignals(False)
        if paths:
            self.verify()
        else:
            self.view = None
            self.table.setRowCount(0)
            self.verdict.show_message(NOTHING_YET, "info")

    def _log_name(self, path: Path) -> str:
        if path == self.context.audit_log_path:
            return f"This hospital's audit log ({path})"
        return str(path)

    def current_path(self) -> Path | None:
        data = self.logs.currentData()
        return Path(data) if data else None

    def _log_chosen(self, _index: int) -> None:
        self.verify()

    def _open_other(self) -> None:
        from gui.file_dialogs import open_file

        chosen = open_file(self, self.context.folders, "audit log", "Open an audit log",
                           "Audit logs (*.jsonl);;All files (*)", fallback=self.context.work_folder)
        if chosen is not None:
            self.reload_list(select=chosen)

    def verify(self) -> None:
        path = self.current_path()
        if path is None:
            return
        self.verdict.show_message(f"Verifying {path.name}…", "info")
        self.context.runner.start(load_audit, path, self.context.home.root, name="verify audit log",
                                  on_done=self.show_view, on_error=self._failed)

    def _failed(self, exc: BaseException) -> None:
        self.verdict.show_message(str(exc), "error")
        show_error(self, exc)

    def show_view(self, view: AuditView) -> None:
        self.view = view
        v = view.verification
        if v.ok and v.signatures_checked:
            self.verdict.show_message(
                f"<b>Chain intact, every entry signed by this hospital.</b> {_entries(v.entries)} verified with "
                f"the hospital's key ({v.signer_fingerprint[:19]}…); {human_bytes(v.total_bytes)} sent in "
                "total. Nothing was edited, removed or reordered.", "ok")
        elif v.ok:
            self.verdict.show_message(
                f"<b>Chain intact; signatures not checked.</b> {_entries(v.entries)} link up; "
                f"{human_bytes(v.total_bytes)} sent in total. {view.key_note} Whoever can write the file "
                "could have rebuilt an unsigned chain.", "warning")
        else:
            self.verdict.show_message(
                f"<b>Log BROKEN at line {v.broken_at_line}:</b> {v.reason}. "
                f"{v.entries} earlier entr{'y is' if v.entries == 1 else 'ies are'} intact. "
                "Keep a copy of this file and tell your IT security team.", "error")
        self.table.setRowCount(len(view.entries))
        for row, entry in enumerate(view.entries):
            cap_change = entry.kind == "ledger"
            values = (str(entry.seq), entry.time[:19].replace("T", " "),
                      "" if entry.round is None else str(entry.round),
                      "privacy cap" if cap_change else entry.phase, entry.what,
                      "—" if cap_change else human_bytes(entry.bytes), entry.sha256[:16] + "…")
            for column, value in enumerate(values):
                item = QTableWidgetItem(value)
                if column == 6:
                    item.setToolTip(entry.sha256)
                if column == 4:
                    tip = " · ".join(x for x in (entry.destination, entry.federation, entry.ledger_key) if x)
                    item.setToolTip(tip)
                self.table.setItem(row, column, item)

"""Activity: the hash-chained audit log of everything this hospital sent, and whether the chain holds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
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


@dataclass
class AuditView:
    path: Path
    entries: list[Any]  # core.federation.audit.AuditEntry
    verification: Any  # core.federation.audit.AuditVerification


def find_audit_logs(federations_folder: Path) -> list[Path]:
    """Every joined federation keeps its own audit log inside its folder."""
    if not federations_folder.is_dir():
        return []
    return sorted(p for p in federations_folder.rglob("audit*.jsonl") if p.is_file())


def load_audit(path: Path) -> AuditView:
    from core.federation.audit import read_audit_log, verify_audit_log

    return AuditView(Path(path), read_audit_log(path), verify_audit_log(path))


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
    subtitle = ("Everything this hospital sent to a federation coordinator, recorded before it was sent. "
                "Each entry is chained to the one before by its hash, so any later edit shows up.")

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
        self.table.setHorizontalHeaderLabels(["#", "When (UTC)", "Round", "Phase", "What was sent", "Size",
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
        self.verdict.show_message("No audit log yet: this hospital has not sent anything to a federation.",
                                  "info")

    def on_shown(self) -> None:
        self.reload_list()

    def reload_list(self, select: Path | None = None) -> None:
        current = select or self.current_path()
        paths = find_audit_logs(self.context.federations_folder)
        if current is not None and current not in paths:
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
            self.table.setRowCount(0)
            self.verdict.show_message(
                "No audit log yet: this hospital has not sent anything to a federation.", "info")

    def _log_name(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.context.federations_folder))
        except ValueError:
            return str(path)

    def current_path(self) -> Path | None:
        data = self.logs.currentData()
        return Path(data) if data else None

    def _log_chosen(self, _index: int) -> None:
        self.verify()

    def _open_other(self) -> None:
        chosen, _ = QFileDialog.getOpenFileName(self, "Open an audit log", str(self.context.work_folder),
                                                "Audit logs (*.jsonl);;All files (*)")
        if chosen:
            self.reload_list(select=Path(chosen))

    def verify(self) -> None:
        path = self.current_path()
        if path is None:
            return
        self.verdict.show_message(f"Verifying {path.name}…", "info")
        self.context.runner.start(load_audit, path, name="verify audit log", on_done=self.show_view,
                                  on_error=self._failed)

    def _failed(self, exc: BaseException) -> None:
        self.verdict.show_message(str(exc), "error")
        show_error(self, exc)

    def show_view(self, view: AuditView) -> None:
        self.view = view
        v = view.verification
        if v.ok:
            self.verdict.show_message(
                f"<b>Chain intact.</b> {v.entries} entries verified; {human_bytes(v.total_bytes)} sent in "
                "total. Nothing was edited, removed or reordered.", "ok")
        else:
            self.verdict.show_message(
                f"<b>Chain BROKEN at line {v.broken_at_line}:</b> {v.reason}. "
                f"{v.entries} earlier entr{'y is' if v.entries == 1 else 'ies are'} intact. "
                "Keep a copy of this file and tell your IT security team.", "error")
        self.table.setRowCount(len(view.entries))
        for row, entry in enumerate(view.entries):
            values = (str(entry.seq), entry.time[:19].replace("T", " "),
                      "" if entry.round is None else str(entry.round), entry.phase, entry.what,
                      human_bytes(entry.bytes), entry.sha256[:16] + "…")
            for column, value in enumerate(values):
                item = QTableWidgetItem(value)
                if column == 6:
                    item.setToolTip(entry.sha256)
                if column == 4:
                    item.setToolTip(entry.destination)
                self.table.setItem(row, column, item)

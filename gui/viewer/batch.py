"""The Viewer's batch panel: one row per image (its grade folder, the true label when the folder says it,
the prediction), a progress bar that keeps its space, the model's validation beside the results, and the
export buttons. It renders; the page runs the batch."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from gui.theme import colors
from gui.viewer.image_view import ElidedLabel
from gui.widgets.common import Banner, button
from gui.widgets.job_progress import JobProgress

COLUMNS = ("File", "Grade folder", "True label", "Prediction", "Probability", "Referable DR", "Model signer",
           "Problem")
# Fixed starting widths: the table does not re-lay out its columns as rows arrive.
WIDTHS = {"Grade folder": 100, "True label": 110, "Prediction": 170, "Probability": 90, "Referable DR": 110,
          "Model signer": 110}
DR_GRADES = ["No DR", "Mild", "Moderate", "Severe", "Proliferative DR"]


def true_label(path: Path, classes: list[str]) -> str:
    """The class a file's folder names (a grade folder 0-4 of a DR model, or a class name), else ""."""
    folder = Path(path).parent.name
    if classes == DR_GRADES and folder.isdigit() and int(folder) < len(classes):
        return classes[int(folder)]
    by_name = {name.lower(): name for name in classes}
    return by_name.get(folder.lower(), "")


class BatchPanel(QGroupBox):
    row_opened = Signal(str, int)  # file, frame (0-based)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Batch", parent)
        layout = QVBoxLayout(self)
        top = QHBoxLayout()
        # One line (shortened in the middle when narrow): the table below never moves while a batch runs.
        self.summary = ElidedLabel("Run a model on every image of a folder (Batch on folder…); export the results "
                                   "as CSV or HTML.")
        self.export_csv_button = button("Export CSV…")
        self.export_html_button = button("Export HTML report…")
        top.addWidget(self.summary, 1)
        top.addWidget(self.export_csv_button)
        top.addWidget(self.export_html_button)
        layout.addLayout(top)
        self.progress = JobProgress(keep_space=True)
        layout.addWidget(self.progress)
        self.validation = Banner("", "error")
        self.validation.setVisible(False)
        layout.addWidget(self.validation)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setStretchLastSection(False)
        for name, width in WIDTHS.items():
            self.table.setColumnWidth(COLUMNS.index(name), width)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setWordWrap(False)
        self.table.cellDoubleClicked.connect(self._opened)
        self.table.setMinimumHeight(80)
        layout.addWidget(self.table, 1)
        # Until the first batch only the summary line and the buttons take room: the image pane gets the rest.
        self._retain_progress(False)
        self.table.setVisible(False)
        self.set_exports_enabled(False)
        self._classes: list[str] = []
        self._signer = ""
        self._marker = ""

    def _retain_progress(self, retain: bool) -> None:
        policy = self.progress.sizePolicy()
        policy.setRetainSizeWhenHidden(retain)
        self.progress.setSizePolicy(policy)

    def column(self, name: str) -> int:
        return COLUMNS.index(name)

    def start(self, classes: list[str], signer: str, assessment) -> None:
        """A new batch: nothing of the last one stays."""
        self._classes, self._signer = list(classes), signer
        self._marker = "" if assessment is None or assessment.trustworthy else assessment.marker
        self.table.setVisible(True)
        self._retain_progress(True)  # from now on its space stays, shown or not
        self.table.setRowCount(0)
        self.set_exports_enabled(False)
        self.summary.setText("Predicting…")
        if assessment is not None and not assessment.trustworthy:
            self.validation.show_message(f"<b>{_escape(assessment.headline)}:</b> every answer below is marked "
                                         f"{_escape(assessment.marker)}. {_escape(assessment.short)}", "error")
        else:
            self.validation.setVisible(False)

    def add_item(self, item) -> None:
        row = self.table.rowCount()
        self.table.insertRow(row)
        p = item.prediction
        path = Path(item.file)
        truth = true_label(path, self._classes)
        cells = {"File": path.name + ("" if item.frame is None else f" [frame {item.frame + 1}]"),
                 "Grade folder": path.parent.name, "True label": truth, "Model signer": self._signer,
                 "Problem": item.error or ""}
        if p is not None:
            cells["Prediction"] = p.predicted_class + (f" {self._marker}" if self._marker else "")
            cells["Probability"] = f"{100 * p.probabilities[p.predicted_class]:.1f}%"
            if p.referable_dr is not None:
                cells["Referable DR"] = ("yes" if p.referable_dr else "no") + (" ⚠" if self._marker else "")
        for column, name in enumerate(COLUMNS):
            cell = QTableWidgetItem(cells.get(name, ""))
            if name == "File":
                cell.setToolTip(item.file)
                cell.setData(Qt.ItemDataRole.UserRole, item.file)
                cell.setData(Qt.ItemDataRole.UserRole + 1, item.frame or 0)
            if name == "Prediction" and p is not None and truth and truth != p.predicted_class:
                cell.setForeground(QColor(colors("light").bad))
                cell.setToolTip(f"The folder says {truth}.")
            self.table.setItem(row, column, cell)

    def files(self) -> list[Path]:
        """One entry per file (a multi-frame file has a row per frame), in table order."""
        return list(dict.fromkeys(Path(self.table.item(r, 0).data(Qt.ItemDataRole.UserRole))
                                  for r in range(self.table.rowCount())))

    def set_exports_enabled(self, enabled: bool) -> None:
        self.export_csv_button.setEnabled(enabled)
        self.export_html_button.setEnabled(enabled)

    def agreement(self) -> tuple[int, int]:
        """(rows whose folder gives the true label, of those how many the model got right)."""
        known = right = 0
        for row in range(self.table.rowCount()):
            truth = self.table.item(row, self.column("True label")).text()
            answer = self.table.item(row, self.column("Prediction")).text()
            if truth and answer:
                known += 1
                right += answer.split(" [")[0] == truth
        return known, right

    def _opened(self, row: int, _column: int) -> None:
        cell = self.table.item(row, 0)
        if cell is not None:
            self.row_opened.emit(str(cell.data(Qt.ItemDataRole.UserRole)),
                                 int(cell.data(Qt.ItemDataRole.UserRole + 1) or 0))


def _escape(text: str) -> str:
    from html import escape

    return escape(text, quote=False)

"""Compare modes: what a federation would buy this hospital, on its own images, before it joins one.

Runs `dopamine compare` (core.compare) as a background child job and shows its figure and table.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, QTimer, QUrl
from PySide6.QtGui import QDesktopServices, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QScrollArea,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from core.compare.config import MODES, CompareConfig
from core.compare.report import COLUMNS, TITLES, table_rows
from core.errors import DopamineError
from gui.compare_jobs import comparison_folder, run_compare
from gui.context import AppContext
from gui.dialogs import show_error
from gui.widgets.common import Banner, Card, button, label
from gui.widgets.job_progress import JobProgress
from gui.widgets.page import Page
from gui.widgets.path_picker import PathPicker

EXPLAIN = (
    "Train the five modes side by side on images split into virtual hospitals, and see the accuracy each "
    "reaches at its ε: <b>C</b> and <b>CDP</b> pool every image in one place (without and with DP-SGD), "
    "<b>F</b> and <b>FPDP</b> are federated averaging (without DP, and with each hospital adding all of its "
    "own noise), and <b>FSCDP</b> is a Dopamine federation (each hospital adds a share of the noise and the "
    "coordinator sees only the secure sum). Everything runs on this computer: nothing is sent, and no privacy "
    "budget is spent. The results describe your images, so keep the report as you would any analysis of them."
)
SPLITS = (("iid", "Equal hospitals, same class mix (as in the paper)"),
          ("dirichlet:0.5", "Unequal class mix (Dirichlet 0.5 label skew)"),
          ("folders", "The folder's own hospital folders and its test folder"))


class ComparePage(Page):
    key = "compare"
    title = "Compare modes"
    subtitle = "What each way of training would give this hospital: accuracy against privacy."

    def __init__(self, context: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(context, parent)
        self.body.addWidget(Banner(EXPLAIN, "privacy"))
        self.job = None
        self.last_result: dict | None = None
        self._build_settings()
        self.progress = JobProgress()
        self.body.addWidget(self.progress)
        self._build_results()
        self.body.addStretch(1)

    def _build_settings(self) -> None:
        card = Card("Settings")
        form = QFormLayout()
        self.data_picker = PathPicker(placeholder="empty: synthetic fundus images (not patient data)",
                                      memory=self.context.folders, purpose="compare data")
        form.addRow("Images", self.data_picker)
        self.hospitals = QSpinBox()
        self.hospitals.setRange(2, 30)
        self.hospitals.setValue(10)
        self.hospitals.setMaximumWidth(120)
        form.addRow("Virtual hospitals (K)", self.hospitals)
        self.split = QComboBox()
        for key, text in SPLITS:
            self.split.addItem(text, key)
        self.split.setMaximumWidth(460)
        form.addRow("Split", self.split)
        self.seeds = QSpinBox()
        self.seeds.setRange(1, 10)
        self.seeds.setValue(3)
        self.seeds.setMaximumWidth(120)
        form.addRow("Runs per mode", self.seeds)
        modes = QHBoxLayout()
        self.mode_boxes = {}
        for mode in MODES:
            box = QCheckBox(mode.upper())
            box.setChecked(True)
            box.setToolTip(TITLES[mode])
            self.mode_boxes[mode] = box
            modes.addWidget(box)
        modes.addStretch(1)
        form.addRow("Modes", modes)
        equal = QHBoxLayout()
        self.equal_epsilon = QCheckBox("Match every DP mode to ε =")
        self.target_epsilon = QDoubleSpinBox()
        self.target_epsilon.setRange(0.1, 100.0)
        self.target_epsilon.setValue(8.0)
        self.target_epsilon.setEnabled(False)
        self.equal_epsilon.toggled.connect(self.target_epsilon.setEnabled)
        equal.addWidget(self.equal_epsilon)
        equal.addWidget(self.target_epsilon)
        equal.addStretch(1)
        form.addRow("Privacy", equal)
        self.quick = QCheckBox("Quick look (under a minute: few images, one short run per mode)")
        form.addRow("", self.quick)
        card.body.addLayout(form)
        row = QHBoxLayout()
        self.run_button = button("Compare", primary=True)
        self.run_button.clicked.connect(self.start)
        row.addWidget(self.run_button)
        row.addStretch(1)
        card.body.addLayout(row)
        card.body.addWidget(label("The same settings again resume the last comparison where it stopped.", "muted"))
        self.body.addWidget(card)

    def _build_results(self) -> None:
        card = Card("Results")
        self.status = Banner("", "info")
        self.status.setVisible(False)
        card.body.addWidget(self.status)
        self.figure = QLabel()
        self.figure.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.figure.setVisible(False)
        card.body.addWidget(self.figure)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels([title for _, title in COLUMNS])
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.setVisible(False)
        card.body.addWidget(self.table)
        self.open_button = button("Open the full report")
        self.open_button.setEnabled(False)
        self.open_button.clicked.connect(self.open_report)
        card.body.addWidget(self.open_button, 0, Qt.AlignmentFlag.AlignLeft)
        self.body.addWidget(card)
        self.results_card = card

    def settings(self) -> dict:
        """The CompareConfig fields the form describes (paths as text, for the child job)."""
        modes = [mode for mode, box in self.mode_boxes.items() if box.isChecked()]
        data = self.data_picker.path()
        config = {"data": str(data) if data is not None else None, "hospitals": self.hospitals.value(),
                  "split": self.split.currentData(), "seeds": self.seeds.value(), "modes": modes,
                  "target_epsilon": self.target_epsilon.value() if self.equal_epsilon.isChecked() else None,
                  "quick": self.quick.isChecked(), "delta": 1e-4, "accountant": self.context.settings.accountant,
                  "device": self.context.settings.device}
        return config

    def start(self) -> None:
        config = self.settings()
        try:
            folder = comparison_folder(self.context.home.comparisons, config)
            CompareConfig(**{**config, "out": folder}).validate()
        except DopamineError as exc:  # a bad setting: shown, nothing started
            show_error(self, exc)
            return
        config["out"] = str(folder)
        self.run_button.setEnabled(False)
        self.status.show_message("Comparing: the first minutes load the images and search learning rates.", "info")
        self.job = self.context.runner.start(run_compare, config, name="compare modes", on_done=self.show_result,
                                             on_error=self._failed, on_cancelled=self._cancelled)
        self.progress.bind(self.job, "Preparing the images…")

    def _ended(self) -> None:
        self.job = None
        self.run_button.setEnabled(True)

    def show_result(self, result: dict) -> None:
        self._ended()
        self.last_result = result
        results = result["results"]
        rows = table_rows(results)
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, (key, _) in enumerate(COLUMNS):
                item = QTableWidgetItem(row[key])
                item.setToolTip(row["title"])
                self.table.setItem(r, c, item)
        self.table.setVisible(True)
        pixmap = QPixmap(result["paths"]["figure"])
        if not pixmap.isNull():
            self.figure.setPixmap(pixmap.scaledToWidth(min(880, pixmap.width()),
                                                       Qt.TransformationMode.SmoothTransformation))
            self.figure.setVisible(True)
        self.open_button.setEnabled(True)
        scroll = self.findChild(QScrollArea)
        if scroll is not None:  # the figure and table, not the settings, once they are there
            QTimer.singleShot(0, self, lambda: scroll.verticalScrollBar().setValue(self.results_card.y() - 8))
        config = results["config"]
        synthetic = "synthetic" in results.get("data", {}).get("source", "")
        self.status.show_message(
            f"ε at δ = {config['delta']:g} ({config['accountant'].upper()}), the worst hospital's for FPDP and "
            "FSCDP. The learning-rate search is not covered by it."
            + (" Synthetic images: these accuracies say nothing clinical." if synthetic else ""), "ok")

    def open_report(self) -> None:
        if self.last_result is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(Path(self.last_result["paths"]["report"]))))

    def _failed(self, error: BaseException) -> None:
        self._ended()
        self.status.setVisible(False)
        show_error(self, error)

    def _cancelled(self) -> None:
        self._ended()
        self.status.show_message("Comparison cancelled; Compare with the same settings resumes it.", "info")

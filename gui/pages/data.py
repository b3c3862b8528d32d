"""Data: choose the hospital's images, check them in the background, see balance, make-up (cameras,
resolutions, eyes), samples, problems, and a few images before and after preprocessing (plain, or cropped
to the retina).

The check is made for the model the images will train (gui.context.ExpectedImages: a federation's plan, or
the Train page's input size): small images are counted at that input size, and folders that look like the
wrong choice (the parent of the right folder, a test split, classes that are not the plan's) are warned
about, never shown in green. A new check clears the previous folder's results first.

It is one module past 400 lines because the check, its summary, the preview and the problems are one page;
what decodes images (make_thumbnails, make_previews) runs as jobs off the UI thread."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from core.jobs import NEVER_CANCELLED, CancelToken, ProgressFn, no_progress
from gui.context import AppContext, ExpectedImages
from gui.dialogs import saved, show_error
from gui.file_dialogs import open_file, save_file
from gui.widgets.common import Banner, Card, button, label
from gui.widgets.job_progress import JobProgress
from gui.widgets.page import Page
from gui.widgets.path_picker import PathPicker
from gui.widgets.plots import BarChart
from gui.widgets.thumbnails import ThumbnailGrid, make_thumbnails

THUMBNAILS_PER_CLASS = 6
PREVIEW_IMAGES = 4
PREVIEW_PX = 150

PROBLEM_WORDS = {
    "unreadable": "Cannot be read",
    "truncated": "Damaged (file cut short)",
    "not_image": "Not an image",
    "duplicate": "Duplicate of another file",
    "too_many_frames": "Too many frames",
    "too_small": "Small image (used, enlarged)",
    "no_fundus_disc": "Retina not found (plain crop used)",
    "no_image_for_csv_row": "CSV row without image",
    "no_label": "No grade / label",
}


def serious_problems(report: Any) -> int:
    """Problems that cost a file (small images, and images the fundus crop leaves to the plain crop, are
    reported but still used)."""
    from core.data.problems import NOTES

    return sum(1 for p in report.problems if p.kind not in NOTES)


@dataclass
class PreviewPair:
    """One image before and after preprocessing (QImages: they may be built on a worker thread)."""

    name: str
    before: QImage
    after: QImage
    note: str


def _qimage(image) -> QImage:
    rgb = image.convert("RGB")
    return QImage(rgb.tobytes(), rgb.width, rgb.height, rgb.width * 3, QImage.Format.Format_RGB888).copy()


def make_previews(samples: list[Any], fundus_crop: bool, local_contrast: bool, *, size: int = PREVIEW_PX,
                  progress: ProgressFn = no_progress, cancel: CancelToken = NEVER_CANCELLED,
                  on_event=None) -> int:
    """Decode each sample and emit a PreviewPair: the photograph, and what the model would see with these
    options (a worker job; the UI thread never decodes)."""
    from core.data.images import load_image
    from core.data.preprocess import Preprocessing, prepare
    from core.errors import DataError

    spec = Preprocessing(size=size, fundus_crop=fundus_crop, local_contrast=local_contrast)
    made = 0
    for index, sample in enumerate(samples):
        cancel.check()
        try:
            image = load_image(Path(sample.path), frame=sample.frame or 0)
        except DataError:
            continue
        prepared = prepare(image, spec)
        if prepared.search is None:
            note = "centre crop"
        elif prepared.search.disc is None:
            note = f"plain crop: {prepared.search.reason}"
        else:
            note = "retina cut by the frame" if prepared.search.disc.partial else "retina found"
        before = image.copy()
        before.thumbnail((size, size))
        if on_event is not None:
            on_event(PreviewPair(sample.name, _qimage(before), _qimage(prepared.image), note))
        made += 1
        progress((index + 1) / max(len(samples), 1), f"Preview {index + 1} of {len(samples)}")
    return made


class PreprocessingPreview(Card):
    """A few images before and after preprocessing, with the fundus options to try."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Before and after preprocessing", parent)
        options = QHBoxLayout()
        self.fundus_check = QCheckBox("Crop to the retina (fundus photographs)")
        self.fundus_check.setToolTip("Find the retina's disc against the dark surround, crop its square, resize. "
                                     "Images without a dark surround keep the plain centre crop.")
        self.contrast_check = QCheckBox("Local colour normalisation")
        self.contrast_check.setToolTip("4 x image - 4 x blurred image + 128: evens out lighting and colour "
                                       "differences between cameras.")
        options.addWidget(self.fundus_check)
        options.addWidget(self.contrast_check)
        options.addStretch(1)
        self.body.addLayout(options)
        self.grid = QGridLayout()
        self.grid.setHorizontalSpacing(10)
        self.body.addLayout(self.grid)
        self.note = label("Check a collection to see a few of its images as the model will see them.", "muted")
        self.body.addWidget(self.note)
        self.pairs: list[PreviewPair] = []

    def clear(self) -> None:
        self.pairs = []
        while self.grid.count():
            widget = self.grid.takeAt(0).widget()
            if widget is not None:
                widget.deleteLater()

    def add_pair(self, pair: PreviewPair) -> None:
        column = len(self.pairs)
        self.pairs.append(pair)
        for row, (image, caption) in enumerate(((pair.before, pair.name), (pair.after, pair.note))):
            picture = QLabel()
            picture.setPixmap(QPixmap.fromImage(image))
            picture.setAlignment(Qt.AlignmentFlag.AlignCenter)
            picture.setToolTip(caption)
            text = QLabel(caption)
            text.setTextFormat(Qt.TextFormat.PlainText)
            text.setWordWrap(True)
            text.setMaximumWidth(PREVIEW_PX + 20)
            text.setProperty("role", "muted")
            self.grid.addWidget(picture, 2 * row, column)
            self.grid.addWidget(text, 2 * row + 1, column)
        self.note.setText("Top: the photographs. Bottom: what the model sees with the options above. To train "
                          "with them: dopamine train --fundus-crop [--local-contrast]; they are recorded in the "
                          "model, so diagnosis repeats them.")


class DataPage(Page):
    key = "data"
    title = "Data"
    subtitle = ("Choose this hospital's images: a folder with one sub-folder per grade, an APTOS-style CSV "
                "file (id_code, diagnosis) next to its images, or DICOM files.")

    def __init__(self, context: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(context, parent)
        self.body.addWidget(Banner(
            "Checking reads the images where they are. Nothing is copied, uploaded or changed, "
            "and nothing leaves this computer.", "ok"))

        row = QHBoxLayout()
        self.picker = PathPicker(folder=True, placeholder="Folder of images, or a CSV file",
                                 button_text="Choose folder…", memory=context.folders, purpose="images")
        self.csv_button = button("Choose CSV file…")
        self.check_button = button("Check images", primary=True)
        row.addWidget(self.picker, 1)
        row.addWidget(self.csv_button)
        row.addWidget(self.check_button)
        self.body.addLayout(row)
        self.expected_note = label("", "muted")
        self.body.addWidget(self.expected_note)
        self.progress = JobProgress()
        self.body.addWidget(self.progress)

        self.summary = Banner("", "info")
        self.summary.setVisible(False)
        self.body.addWidget(self.summary)

        middle = QHBoxLayout()
        middle.setSpacing(12)
        self.chart = BarChart("Images per class (usable)")
        self.chart.setMinimumHeight(240)
        chart_card = Card("Class balance")
        chart_card.body.addWidget(self.chart)
        self.balance_note = label("", "muted")
        chart_card.body.addWidget(self.balance_note)
        middle.addWidget(chart_card, 1)
        thumbs_card = Card("Sample images")
        self.thumbnails = ThumbnailGrid()
        thumbs_card.body.addWidget(self.thumbnails)
        middle.addWidget(thumbs_card, 1)
        self.body.addLayout(middle)

        make_up_card = Card("Make-up: cameras, resolutions, eyes")
        self.make_up_label = label("Check a collection to see what it is made of.", "muted")
        self.make_up_label.setTextFormat(Qt.TextFormat.PlainText)
        self.make_up_label.setWordWrap(True)
        make_up_card.body.addWidget(self.make_up_label)
        self.body.addWidget(make_up_card)
        self.preview = PreprocessingPreview()
        self.body.addWidget(self.preview)

        problems_card = Card("Problems found")
        self.problems_note = label("Problems with single files are listed here; they never stop the check.",
                                   "muted")
        problems_card.body.addWidget(self.problems_note)
        self.problems = QTableWidget(0, 3)
        self.problems.setHorizontalHeaderLabels(["File", "Problem", "Why"])
        self.problems.verticalHeader().setVisible(False)
        self.problems.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.problems.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        header = self.problems.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.problems.setColumnWidth(0, 260)
        self.problems.setMinimumHeight(180)
        problems_card.body.addWidget(self.problems)
        self.save_report_button = button("Save report as JSON…")
        self.save_report_button.setEnabled(False)
        save_row = QHBoxLayout()
        save_row.addWidget(self.save_report_button)
        save_row.addStretch(1)
        problems_card.body.addLayout(save_row)
        self.body.addWidget(problems_card)

        self.report: Any = None
        self._job = None
        self._thumb_job = None
        self._preview_job = None
        self._checked_once = False
        self.picker.path_chosen.connect(self.check)
        self.csv_button.clicked.connect(self._choose_csv)
        self.check_button.clicked.connect(lambda: self.check(self.picker.path()))
        self.save_report_button.clicked.connect(self._save_report)
        self.preview.fundus_check.toggled.connect(lambda _on: self._load_previews(self.report))
        self.preview.contrast_check.toggled.connect(lambda _on: self._load_previews(self.report))
        context.expected_images_changed.connect(self._expected_changed)
        self._show_expected()
        if context.settings.dataset is not None:
            self.picker.set_path(context.settings.dataset)

    def on_shown(self) -> None:
        # The remembered dataset is checked again the first time the page is opened (files may change).
        if not self._checked_once and self.report is None and self.context.settings.dataset is not None:
            self.check(self.context.settings.dataset)

    def _choose_csv(self) -> None:
        chosen = open_file(self, self.context.folders, "images", "Choose the labels CSV", "CSV files (*.csv)")
        if chosen is not None:
            self.picker.set_path(chosen)
            self.check(chosen)

    # ---- what the images are checked for ---------------------------------------------------------------
    @property
    def expected(self) -> ExpectedImages:
        return self.context.expected_images

    def _show_expected(self) -> None:
        expected = self.expected
        classes = f" and the classes {', '.join(expected.classes)}" if expected.classes else ""
        self.expected_note.setText(f"Checked for a model input of {expected.size} px{classes} "
                                   f"({expected.source}).")

    def _expected_changed(self, _expected: ExpectedImages) -> None:
        self._show_expected()
        if self.report is not None:  # counted again for the new input size and classes; nothing is re-read
            self._show_summary(self.report)
            self._show_problems(list(self.report.problems))

    def warnings(self, report: Any) -> list[str]:
        """The report's warnings, the class check made for what the images are now expected to train."""
        from core.data.dataset import DR_CLASSES
        from core.data.validation import class_mismatch

        expected = self.expected
        texts = [w.message for w in report.warnings if w.kind not in ("other_classes", "not_grades")]
        if expected.classes is not None:
            mismatch = class_mismatch(report.classes, expected.classes, expected.source)
            if mismatch:
                texts.append(mismatch)
        elif report.layout == "folders" and list(report.classes) != list(DR_CLASSES):
            texts += [w.message for w in report.warnings if w.kind == "not_grades"]
        return texts

    def clear_results(self) -> None:
        """Nothing of the previous folder stays on screen once another check starts (or fails)."""
        for job in (self._thumb_job, self._preview_job):
            if job is not None and job.running:
                job.cancel()
        self.report = None
        self.chart.set_counts({})
        self.balance_note.setText("")
        self.thumbnails.clear()
        self.make_up_label.setText("Check a collection to see what it is made of.")
        self.preview.clear()
        self.problems.setRowCount(0)
        self.problems_note.setText("Problems with single files are listed here; they never stop the check.")
        self.save_report_button.setEnabled(False)

    def check(self, path: Path | None) -> None:
        if path is None:
            self.summary.show_message("Choose a folder or a CSV file first.", "warning")
            return
        if self._job is not None and self._job.running:
            self._job.cancel()
        self.clear_results()
        self._checked_once = True
        self.picker.set_path(path)
        self.check_button.setEnabled(False)
        self.summary.show_message(f"Checking {escape(str(path))}…", "info")
        expected = self.expected
        self._job = job = self.context.runner.start(
            _validate, Path(path), min_size=expected.size, expected_classes=expected.classes,
            expected_from=expected.source, name="validate",
            on_done=lambda report, p=Path(path): self._show_report(p, report) if self._job is job else None,
            on_error=lambda exc: self._failed(exc) if self._job is job else None,
            on_cancelled=lambda: self._cancelled() if self._job is job else None)
        job.finished.connect(lambda: self.check_button.setEnabled(True) if self._job is job else None)
        self.progress.bind(job, "Checking images…")

    def _failed(self, exc: BaseException) -> None:
        self.clear_results()
        kept = self.context.settings.dataset
        still = (f" The images chosen before ({escape(str(kept))}) stay this hospital's images for training and "
                 "joining." if kept is not None else "")
        self.summary.show_message(f"These images could not be used: {escape(str(exc))}{still}", "error")
        show_error(self, exc)

    def _cancelled(self) -> None:
        self.summary.show_message("Check cancelled. Nothing was changed.", "warning")

    def _show_summary(self, report: Any) -> None:
        serious = serious_problems(report)
        warnings = self.warnings(report)
        kind = "error" if not report.usable else ("warning" if serious or warnings else "ok")
        files = getattr(report, "usable_files", report.usable)
        if files and files != report.usable:
            used = f"{report.usable} images from {files} of {report.total_files} files can be used for training"
        else:
            used = f"{report.usable} of {report.total_files} files can be used for training"
        text = ""
        if warnings:
            text += ("<b>This is probably not the folder to train or join with:</b><ul>"
                     + "".join(f"<li>{escape(w)}</li>" for w in warnings) + "</ul>")
        text += f"<b>{used}</b> ({len(report.classes)} classes: {escape(', '.join(report.classes))}; " \
                f"layout: {report.layout}). "
        text += (f"{serious} problem(s) found: see the list below. " if serious else "No problems found. ")
        text += escape(report.small_images_line(self.expected.size))
        self.summary.show_message(text, kind)

    def _show_report(self, path: Path, report: Any) -> None:
        self.report = report
        problems = list(report.problems)
        self._show_summary(report)
        self.chart.set_counts({name: int(report.class_counts.get(name, 0)) for name in report.classes})
        self._show_balance(report)
        self._show_problems(problems)
        self.save_report_button.setEnabled(True)
        self.context.settings.dataset = path
        self.context.save_settings()
        self.context.set_dataset_report(report)
        self._load_thumbnails(report)
        self._show_make_up(report)
        self._load_previews(report)

    def _show_make_up(self, report: Any) -> None:
        from core.data.validation import make_up_lines

        lines = [line.strip() for line in make_up_lines(getattr(report, "make_up", {}))[1:]]
        self.make_up_label.setText("\n".join(lines) if lines else "No usable images.")

    def _load_previews(self, report: Any) -> None:
        if self._preview_job is not None and self._preview_job.running:
            self._preview_job.cancel()
        self.preview.clear()
        if report is None or not report.usable_samples:
            return
        # Spread over the collection: different folders, often different cameras.
        samples = report.usable_samples
        stride = max(1, len(samples) // PREVIEW_IMAGES)
        chosen = samples[::stride][:PREVIEW_IMAGES]
        self._preview_job = self.context.runner.start(
            make_previews, chosen, self.preview.fundus_check.isChecked(), self.preview.contrast_check.isChecked(),
            name="preprocessing preview", on_event=self._add_preview)

    def _add_preview(self, pair: PreviewPair) -> None:
        self.preview.add_pair(pair)

    def _show_balance(self, report: Any) -> None:
        counts = [int(report.class_counts.get(name, 0)) for name in report.classes]
        if not counts or not sum(counts):
            self.balance_note.setText("No usable labelled images.")
            return
        largest = max(counts)
        share = largest / sum(counts)
        empty = [name for name, count in zip(report.classes, counts, strict=True) if count == 0]
        note = f"The largest class holds {share:.0%} of the images."
        if empty:
            note += f" No images for: {', '.join(empty)}; the model cannot learn those grades here."
        self.balance_note.setText(note)

    def _show_problems(self, problems: list[Any]) -> None:
        # Files that will be skipped first; small images are one row at the end, counted at the model's input
        # size (they are used, and can be thousands).
        order = {kind: rank for rank, kind in enumerate(PROBLEM_WORDS)}
        problems = sorted((p for p in problems if p.kind != "too_small"), key=lambda p: order.get(p.kind, 99))
        small = self.report.smaller_than(self.expected.size) if self.report is not None else 0
        self.problems.setRowCount(len(problems) + (1 if small else 0))
        for row, problem in enumerate(problems):
            name = QTableWidgetItem(Path(problem.path).name)
            name.setToolTip(problem.path)
            self.problems.setItem(row, 0, name)
            self.problems.setItem(row, 1, QTableWidgetItem(PROBLEM_WORDS.get(problem.kind, problem.kind)))
            self.problems.setItem(row, 2, QTableWidgetItem(problem.reason))
        if small:
            row = len(problems)
            self.problems.setItem(row, 0, QTableWidgetItem(f"{small} image(s)"))
            self.problems.setItem(row, 1, QTableWidgetItem(PROBLEM_WORDS["too_small"]))
            self.problems.setItem(row, 2, QTableWidgetItem(
                f"smaller than the model input of {self.expected.size} px; they are enlarged"))
        self.problems_note.setText(
            "Files with a problem are left untouched: fix or remove them and check again. Small images are "
            "one line, last; they are used." if problems or small else "No problems found.")

    def _load_thumbnails(self, report: Any) -> None:
        self.thumbnails.clear()
        per_class: dict[int | None, list[Path]] = defaultdict(list)
        for sample in report.usable_samples:
            # One thumbnail per file: the frames of a series are one picture here (the viewer steps them).
            if len(per_class[sample.label]) < THUMBNAILS_PER_CLASS and sample.path not in per_class[sample.label]:
                per_class[sample.label].append(sample.path)
        items = []
        for label_index in sorted(per_class, key=lambda x: -1 if x is None else x):
            caption = "no label" if label_index is None else report.classes[label_index]
            items.extend((path, caption) for path in per_class[label_index])
        if items:
            self._thumb_job = self.context.runner.start(
                make_thumbnails, items, name="thumbnails", on_event=self.thumbnails.add_thumbnail)

    def _save_report(self) -> None:
        if self.report is None:
            return
        chosen = save_file(self, self.context.folders, "export", "Save the report", "validation-report.json",
                           "JSON (*.json)")
        if chosen is not None:
            self.save_report(chosen)

    def save_report(self, path: Path) -> None:
        try:
            Path(path).write_text(self.report.to_json(), encoding="utf-8")
        except OSError as exc:
            show_error(self, exc)
            return
        saved(self, path, "the validation report")


def escape(text: str) -> str:
    from html import escape as html_escape

    return html_escape(text, quote=False)


def _validate(path: Path, *, min_size: int, expected_classes: list[str] | None, expected_from: str,
              progress, cancel) -> Any:
    from core.data import validate

    return validate(path, min_size=min_size, expected_classes=expected_classes, expected_from=expected_from,
                    progress=progress, cancel=cancel)

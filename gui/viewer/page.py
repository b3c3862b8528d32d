"""Viewer: diagnose images offline with a signed model package.

Open or drop a model (.dpm), images, folders or DICOM files; zoom and pan in a large, resizable pane with a
real zoom readout; the region the model sees outlined, at the input size the model sees it, with the saliency
heatmap over it and its colour legend; probability bars; the model card with its signature status (trusted
signer, green; valid signature by an unknown signer, amber: the card's claims are unverified; does not
verify, red) and its validation (a red "not validated" or "no better than always answering <class>" banner
beside every answer of such a model); warnings when an image is far from the ones the model was tested on;
the DICOM header (non-identifying fields unless asked: the eye, camera and field of view first); the frames
of a multi-frame DICOM file one by one (Up/Down, or the frame buttons); batch runs (gui.viewer.batch) with
the grade folder and true label, and CSV/HTML export, each confirmed. Decoding, prediction, saliency and
file writing all run on the JobRunner, never on the UI thread.

It is one module past 400 lines because it is one page's wiring: the image, the side panel and the batch
render in their own widgets (image_view, panels, batch); what stays here is which job feeds which widget.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QScrollArea,
    QSlider,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from core.errors import SignatureError
from gui import dialogs
from gui.context import AppContext
from gui.file_dialogs import open_file, open_files, open_folder, save_file
from gui.model_jobs import check_signer, home_of, open_for_viewer
from gui.viewer.batch import COLUMNS, BatchPanel
from gui.viewer.image_view import (
    FRAME_KEYS,
    NAVIGATION_KEYS,
    ElidedLabel,
    FrameStepper,
    HeatmapLegend,
    ImageView,
    ZoomReadout,
)
from gui.viewer.jobs import Analysis, add_saliency, analyse, legend_gradient, run_batch_job
from gui.viewer.panels import PlainForm, ProbabilityBars, escape, grouped, signer_word
from gui.widgets.common import Banner, button, label
from gui.widgets.page import Page

MODEL_SUFFIX = ".dpm"
# The image pane's share of the page when it opens (the splitters let the user change it).
IMAGE_PANE_SIZES = (860, 360)
BATCH_SIZES_IDLE = (1000, 90)
BATCH_SIZES_RUNNING = (620, 230)


class ViewerPage(Page):
    key = "viewer"
    title = "Viewer"
    subtitle = ""  # the toolbar shares the title's line: the image pane gets the height
    scrolls = False

    BATCH_COLUMNS = COLUMNS

    def __init__(self, context: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(context, parent)
        self.predictor = None  # core.inference.Predictor
        self.files: list[Path] = []
        self.index = -1
        self.frame = 0  # the frame of the current file to show (multi-frame DICOM)
        self.analysis: Analysis | None = None
        self.batch = None  # core.inference.BatchResult
        self._serial = 0
        self._opening: Path | None = None
        self._batch_handle = None
        self._analysis_handle = None
        self._analysing: Path | None = None
        self.setAcceptDrops(True)
        self._build()
        self._refresh_model_panel()
        self._update_navigation()
        self._show_placeholder()
        # Trusted signers change in Settings, and joining a federation trusts its coordinator.
        context.models_changed.connect(self.recheck_signer)

    # ---- layout -------------------------------------------------------------------------------------------
    def _build(self) -> None:
        outer = self.body
        outer.setContentsMargins(16, 12, 16, 10)
        outer.setSpacing(6)

        toolbar = QHBoxLayout()
        outer.removeWidget(self.title_label)
        toolbar.addWidget(self.title_label)
        toolbar.addSpacing(16)
        self.open_model_button = button("Open model…", primary=True)
        self.open_images_button = button("Open images…")
        self.open_folder_button = button("Open folder…")
        self.batch_button = button("Batch on folder…")
        for widget in (self.open_model_button, self.open_images_button, self.open_folder_button,
                       self.batch_button):
            toolbar.addWidget(widget)
        toolbar.addStretch(1)
        outer.addLayout(toolbar)
        self.open_model_button.clicked.connect(self._choose_model)
        self.open_images_button.clicked.connect(self._choose_images)
        self.open_folder_button.clicked.connect(self._choose_folder)
        self.batch_button.clicked.connect(self._choose_batch_folder)

        self.model_banner = Banner("", "info")
        self.validation_banner = Banner("", "error")
        self.validation_banner.setVisible(False)
        self.notice = Banner("", "warning")
        self.notice.setVisible(False)
        outer.addWidget(self.model_banner)
        outer.addWidget(self.validation_banner)
        outer.addWidget(self.notice)

        self.vertical = vertical = QSplitter(Qt.Orientation.Vertical)
        self.horizontal = horizontal = QSplitter(Qt.Orientation.Horizontal)
        horizontal.addWidget(self._image_area())
        horizontal.addWidget(self._side_panel())
        horizontal.setStretchFactor(0, 1)
        horizontal.setStretchFactor(1, 0)
        horizontal.setChildrenCollapsible(False)
        horizontal.setSizes(list(IMAGE_PANE_SIZES))
        vertical.addWidget(horizontal)
        vertical.addWidget(self._batch_area())
        vertical.setStretchFactor(0, 1)
        vertical.setStretchFactor(1, 0)
        vertical.setChildrenCollapsible(False)
        vertical.setSizes(list(BATCH_SIZES_IDLE))
        outer.addWidget(vertical, 1)
        self._sized = False

    def showEvent(self, event) -> None:  # noqa: N802 (Qt override)
        super().showEvent(event)
        if not self._sized:  # the first time the page has its real width: most of it for the image
            self._sized = True
            total = sum(self.horizontal.sizes())
            side = max(self.tabs.minimumWidth(), min(IMAGE_PANE_SIZES[1], total // 3))
            self.horizontal.setSizes([total - side, side])

    def _image_area(self) -> QWidget:
        area = QWidget()
        layout = QVBoxLayout(area)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        top = QHBoxLayout()
        self.previous_button = button("◀")
        self.previous_button.setToolTip("Previous image (Left, Page Up)")
        self.next_button = button("▶")
        self.next_button.setToolTip("Next image (Right, Page Down)")
        self.position_label = ElidedLabel("")
        self.previous_button.clicked.connect(lambda: self.step(-1))
        self.next_button.clicked.connect(lambda: self.step(1))
        top.addWidget(self.previous_button)
        top.addWidget(self.next_button)
        top.addWidget(self.position_label, 1)
        layout.addLayout(top)
        self.view = ImageView()
        self.view.navigate.connect(self.step)
        self.view.navigate_frame.connect(self.step_frame)
        self.zoom_readout = ZoomReadout()
        self.view.zoom_changed.connect(self.zoom_readout.show_zoom)
        for text, tip, slot in (("Fit", "Fit the image to the pane (0)", self.view.fit),
                                ("1:1", "One image pixel per screen pixel", self.view.actual_size),
                                ("−", "Zoom out (-, wheel)", self.view.zoom_out),
                                ("+", "Zoom in (+, wheel)", self.view.zoom_in)):
            zoom = button(text)
            zoom.setToolTip(tip)
            zoom.clicked.connect(slot)
            top.addWidget(zoom)
        top.addWidget(self.zoom_readout)
        layout.addWidget(self.view, 1)
        self.input_label = label("", "muted")
        self.input_label.setTextFormat(Qt.TextFormat.PlainText)
        layout.addWidget(self.input_label)
        self.input_notice = Banner("", "warning")
        self.input_notice.setVisible(False)
        layout.addWidget(self.input_notice)
        self.frame_stepper = FrameStepper()
        self.frame_stepper.step.connect(self.step_frame)
        layout.addWidget(self.frame_stepper)

        controls = QHBoxLayout()
        self.heatmap_check = QCheckBox("Show heatmap")
        self.heatmap_check.setToolTip("Where in the outlined region the model looked for its answer")
        self.opacity_slider = QSlider(Qt.Orientation.Horizontal)
        self.opacity_slider.setRange(0, 100)
        self.opacity_slider.setValue(45)
        self.opacity_slider.setMaximumWidth(110)
        self.opacity_slider.setToolTip("Heatmap opacity")
        self.legend = HeatmapLegend(legend_gradient())
        self.legend.setVisible(False)
        self.heatmap_method = QLabel("")
        self.heatmap_method.setProperty("role", "muted")
        controls.addWidget(self.heatmap_check)
        controls.addWidget(self.opacity_slider)
        controls.addWidget(self.legend)
        controls.addWidget(self.heatmap_method)
        controls.addStretch(1)
        layout.addLayout(controls)
        self.view.set_heatmap_opacity(0.45)
        self.heatmap_check.toggled.connect(self._heatmap_toggled)
        self.opacity_slider.valueChanged.connect(lambda value: self.view.set_heatmap_opacity(value / 100.0))
        area.setMinimumWidth(420)
        return area

    def _side_panel(self) -> QWidget:
        self.tabs = QTabWidget()

        self.tabs.setMinimumWidth(300)
        prediction = QWidget()
        layout = QVBoxLayout(prediction)
        self.prediction_label = QLabel("")
        self.prediction_label.setTextFormat(Qt.TextFormat.PlainText)
        self.prediction_label.setProperty("role", "section")
        self.prediction_label.setWordWrap(True)
        self.prediction_warning = Banner("", "error")
        self.prediction_warning.setVisible(False)
        self.referable_label = QLabel("")
        self.referable_label.setTextFormat(Qt.TextFormat.PlainText)
        self.referable_label.setWordWrap(True)
        self.verification_label = QLabel("")
        self.verification_label.setTextFormat(Qt.TextFormat.PlainText)
        self.bars = ProbabilityBars()
        layout.addWidget(self.prediction_label)
        layout.addWidget(self.prediction_warning)
        layout.addWidget(self.bars)
        layout.addWidget(self.referable_label)
        layout.addWidget(self.verification_label)
        layout.addWidget(label("Decision support only: a clinician makes the diagnosis.", "muted"))
        layout.addStretch(1)
        prediction_scroll = QScrollArea()
        prediction_scroll.setWidgetResizable(True)
        prediction_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        prediction_scroll.setWidget(prediction)
        self.tabs.addTab(prediction_scroll, "Prediction")

        self.card_form = PlainForm()
        card_scroll = QScrollArea()
        card_scroll.setWidgetResizable(True)
        card_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        card_scroll.setWidget(self.card_form)
        self.tabs.addTab(card_scroll, "Model card")

        dicom = QWidget()
        dicom_layout = QVBoxLayout(dicom)
        self.identifying_check = QCheckBox("Show identifying fields")
        self.identifying_check.setToolTip("Patient name, ID, birth date and other fields that identify a patient")
        self.identifying_check.toggled.connect(self._identifying_toggled)
        self.dicom_table = QTableWidget(0, 2)
        self.dicom_table.setHorizontalHeaderLabels(["Field", "Value"])
        self.dicom_table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.dicom_table.verticalHeader().setVisible(False)
        self.dicom_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.dicom_note = QLabel("No DICOM file shown.")
        self.dicom_note.setProperty("role", "muted")
        dicom_layout.addWidget(self.identifying_check)
        dicom_layout.addWidget(self.dicom_table, 1)
        dicom_layout.addWidget(self.dicom_note)
        self.tabs.addTab(dicom, "DICOM")
        return self.tabs

    def _batch_area(self) -> QWidget:
        self.batch_panel = panel = BatchPanel()
        # The names the page used before the panel had its own module (tests and the screenshots read them).
        self.batch_progress, self.batch_summary, self.batch_table = panel.progress, panel.summary, panel.table
        self.export_csv_button, self.export_html_button = panel.export_csv_button, panel.export_html_button
        self.export_csv_button.clicked.connect(self._choose_csv)
        self.export_html_button.clicked.connect(self._choose_html)
        panel.row_opened.connect(lambda file, frame: self._open_batch_file(Path(file), frame))
        return panel

    # ---- model --------------------------------------------------------------------------------------------
    def open_model(self, path: Path, *, allow_unverified: bool = False) -> None:
        """Open a .dpm on a worker; a model whose signature fails is opened only after a confirmation."""
        path = Path(path)
        self._opening = path
        self.model_banner.show_message(f"Opening {escape(path.name)}…", "info")
        self._show_placeholder()
        self.context.runner.start(
            open_for_viewer, path, home_of(self.context), allow_unverified=allow_unverified, name="Open model",
            on_done=self._model_opened,
            on_error=lambda exc: self._model_failed(path, exc, allow_unverified),
        )

    def _model_failed(self, path: Path, exc: BaseException, allowed: bool) -> None:
        self._opening = None
        self._refresh_model_panel()
        self._show_placeholder()
        if isinstance(exc, SignatureError) and not allowed:
            if dialogs.confirm(
                self, "Model signature does not verify",
                f"{exc}\n\nThe file may have been changed after it was signed. Results from an unverified "
                "model are marked UNVERIFIED and must not be used for patient care unless you know "
                "where the file came from. Open it anyway?",
                yes="Open unverified",
            ):
                self.open_model(path, allow_unverified=True)
            return
        dialogs.show_error(self, exc)

    def _model_opened(self, predictor) -> None:
        self._opening = None
        self.predictor = predictor
        self.bars.set_classes(predictor.classes)
        self._refresh_model_panel()
        self.batch = None
        self.batch_table.setRowCount(0)
        self.batch_panel.validation.setVisible(False)
        self._set_exports_enabled(False)
        self._show_placeholder()
        if self.index >= 0:
            self._analyse_current()

    def _refresh_model_panel(self) -> None:
        predictor = self.predictor
        if predictor is None:
            self.model_banner.show_message("No model open. Open a model package (.dpm) or drop one here. Images "
                                           "are diagnosed offline and stay on this computer.", "info")
            self.validation_banner.setVisible(False)
            self.card_form.set_rows([])
            self.verification_label.setText("")
            return
        verdict = predictor.assessment
        if verdict.trustworthy:
            self.validation_banner.setVisible(False)
        else:
            self.validation_banner.show_message(
                f"<b>{escape(verdict.headline.upper())}.</b> {escape(verdict.short)} Every answer is marked "
                f"{escape(verdict.marker)}; the Model card tab says why.", "error")
        from core.inference import card_fields  # torch loads only once a model is opened

        name = predictor.path.name
        signer = predictor.signer
        if signer.level == "trusted":
            self.model_banner.show_message(
                f"Model <b>{escape(name)}</b>: signed by a trusted signer ({escape(signer.signer_described)}). "
                f"{escape(', '.join(predictor.classes))}.", "ok")
            self.verification_label.setText(f"Signed by a trusted signer ({signer.signer_described}).")
        elif signer.level == "unknown signer":
            self.model_banner.show_message(
                f"<b>Unknown signer:</b> {escape(name)} has a valid signature, but by a key this hospital does not "
                "trust, so its card's claims (privacy ε, training, accuracy) are unverified. To trust it, compare "
                "the signer fingerprint on the Model card tab with its sender, then add it under Settings → "
                "Trusted signers.", "warning")
            self.verification_label.setText("Valid signature, unknown signer: the card's claims are unverified.")
        else:
            self.model_banner.show_message(
                f"<b>UNVERIFIED MODEL</b> {escape(name)}: its signature does not verify. Every result is marked "
                "unverified; do not use them for patient care.", "error")
            self.verification_label.setText("UNVERIFIED MODEL: results are not trustworthy.")
        # Long hex digests get spaces (every 8 characters) so the panel can wrap them.
        rows = [(key, grouped(value) if key == "Model file SHA-256" else value)
                for key, value in card_fields(predictor.package, signer)]
        self.card_form.set_rows(rows)

    def recheck_signer(self) -> None:
        """Ask again whether the open model's signer is trusted (on a worker: it reads the key files)."""
        predictor = self.predictor
        if predictor is None:
            return
        self.context.runner.start(
            check_signer, predictor.package, home_of(self.context), name="Check model signer",
            on_done=lambda status: self._signer_checked(predictor, status),
            on_error=lambda exc: dialogs.show_error(self, exc))

    def _signer_checked(self, predictor, status) -> None:
        if predictor is not self.predictor:
            return  # another model was opened meanwhile
        predictor.signer = status
        self._refresh_model_panel()
        if self.analysis is not None:
            self._show_prediction(self.analysis.prediction)

    # ---- images -------------------------------------------------------------------------------------------
    def open_paths(self, paths: list[Path]) -> None:
        """Models are opened; images and folders (searched recursively) become the browsing list."""
        from core.inference import find_images

        paths = [Path(p) for p in paths]
        models = [p for p in paths if p.suffix.lower() == MODEL_SUFFIX and p.is_file()]
        others = [p for p in paths if p not in models]
        if models:
            self.open_model(models[0])
        if others:
            self.context.runner.start(find_images, others, name="List images", on_done=self._files_listed,
                                      on_error=lambda exc: dialogs.show_error(self, exc))

    def _files_listed(self, files: list[Path]) -> None:
        if not files:
            self._show_notice("No images found there (PNG, JPEG, BMP, TIFF or DICOM).")
            return
        self.files = list(files)
        self.show_index(0)

    def show_index(self, index: int, frame: int = 0) -> None:
        if not self.files:
            return
        self.index = max(0, min(len(self.files) - 1, index))
        self.frame = max(0, frame)
        self._update_navigation()
        self._analyse_current()

    def step_frame(self, delta: int) -> None:
        """The previous or next frame of a multi-frame file (nothing for a single image)."""
        current = self.analysis
        if current is None or current.path != self.current_path:
            return
        target = current.frame + delta
        if 0 <= target < current.frames:
            self.frame = target
            self._analyse_current()

    def step(self, delta: int) -> None:
        if self.files:
            target = self.index + delta
            if 0 <= target < len(self.files):
                self.show_index(target)

    @property
    def current_path(self) -> Path | None:
        return self.files[self.index] if 0 <= self.index < len(self.files) else None

    def _update_navigation(self) -> None:
        count = len(self.files)
        if count:
            path = self.files[self.index]
            # The name whole (the folder is in the tooltip): the file name is what staff look for.
            self.position_label.set_full_text(f"{self.index + 1} of {count}:  {path.name}", tooltip=str(path))
        else:
            self.position_label.set_full_text("No image open. Open images or a folder, or drop them here.")
        self.previous_button.setEnabled(self.index > 0)
        self.next_button.setEnabled(0 <= self.index < count - 1)

    def _analyse_current(self) -> None:
        path = self.current_path
        if path is None:
            return
        self._serial += 1
        serial = self._serial
        if self._analysis_handle is not None:
            self._analysis_handle.cancel()
        self._analysing = path
        self._show_placeholder()
        self._analysis_handle = self.context.runner.start(
            analyse, path, self.predictor, saliency=self.heatmap_check.isChecked(),
            identifying=self.identifying_check.isChecked(), frame=self.frame, name="Analyse image",
            on_done=lambda result: self._analysed(serial, result),
            on_error=lambda exc: self._analysis_failed(serial, path, exc),
        )

    def _analysed(self, serial: int, result: Analysis) -> None:
        if serial != self._serial:
            return  # the user has moved on to another image
        self._analysing = None
        self.notice.setVisible(False)
        previous = self.analysis
        new_image = previous is None or previous.path != result.path or previous.frame != result.frame
        self.analysis = result
        if new_image:
            self.view.set_image(result.image)
            self.view.setFocus()
        self.frame = result.frame
        self.frame_stepper.show_frame(result.frame, result.frames)
        self.view.set_heatmap(result.heatmap, result.crop_box)
        self.view.set_region(result.crop_box)
        self.heatmap_method.setText(f"Heatmap: {result.saliency_method}" if result.saliency_method else "")
        self._show_prediction(result.prediction)
        self._show_input(result)
        self._show_dicom(result.dicom)

    def _analysis_failed(self, serial: int, path: Path, exc: BaseException) -> None:
        if serial != self._serial:
            return
        from core.errors import DataError

        self._analysing = None
        if isinstance(exc, DataError):
            # Browsing a folder: a broken file is reported in place and the user can go on.
            self.analysis = None
            self.view.set_image(None)
            self._show_prediction(None)
            self._show_input(None)
            self._show_dicom(None)
            self._show_notice(str(exc))
        else:
            self._show_placeholder()
            dialogs.show_error(self, exc)

    def _show_notice(self, text: str) -> None:
        self.notice.show_message(escape(text), "warning")
        self.notice.setVisible(True)

    def _placeholder(self) -> str:
        """What the Prediction tab says while there is no answer to show, from what is open right now."""
        if self._opening is not None:
            return f"Opening the model {self._opening.name}…"
        if self._analysing is not None and self.predictor is not None:
            return f"Diagnosing {self._analysing.name}…"
        if self.predictor is None:
            return "Open a model to predict."
        if self.current_path is None:
            return "Open an image or a folder (or drop them here) to diagnose it."
        return ""

    def _show_placeholder(self) -> None:
        current = self.analysis
        if current is None or current.prediction is None or self._analysing is not None:
            self.prediction_label.setText(self._placeholder())

    def _show_prediction(self, prediction) -> None:
        if prediction is None:
            self.prediction_label.setText(self._placeholder())
            self.prediction_warning.setVisible(False)
            self.bars.clear()
            self.referable_label.setText("")
            return
        top = prediction.probabilities[prediction.predicted_class]
        signer = ("  [UNVERIFIED MODEL]" if not prediction.signature_verified
                  else "" if self.predictor is not None and self.predictor.signer_trusted else "  [UNKNOWN SIGNER]")
        validation = f"  {prediction.model_marker}" if prediction.model_marker else ""
        self.prediction_label.setText(f"{prediction.predicted_class} ({100 * top:.1f}%){validation}{signer}")
        if prediction.model_warning:
            headline = self.predictor.assessment.headline if self.predictor is not None else "Not validated"
            self.prediction_warning.show_message(f"Do not rely on this answer: the model is "
                                                 f"<b>{escape(headline[0].lower() + headline[1:])}</b>.", "error")
        else:
            self.prediction_warning.setVisible(False)
        self.bars.set_probabilities(prediction.probabilities)
        if prediction.referable_dr is None:
            self.referable_label.setText("")
        else:
            verdict = "Referable" if prediction.referable_dr else "Not referable"
            marker = f"  {prediction.model_marker}" if prediction.model_marker else ""
            self.referable_label.setText(f"{verdict} diabetic retinopathy: P(grade ≥ 2) = "
                                         f"{100 * prediction.referable_dr_probability:.1f}%{marker}")

    def _show_input(self, result: Analysis | None) -> None:
        """The size the model sees the image at, the outlined region, and warnings for unusual images."""
        prediction = result.prediction if result is not None else None
        check = getattr(prediction, "input_check", None)
        if check is None:
            self.input_notice.setVisible(False)
            self.input_label.setText("" if self.predictor is None else
                                     f"The model sees {self.predictor.input_size} × {self.predictor.input_size} px "
                                     "of each image: the dashed box.")
            return
        self.input_label.setText(f"{check.summary} The dashed box is the region it sees.")
        if check.warnings:
            self.input_notice.show_message("<b>Unlike the images the model was tested on:</b> "
                                           + escape(" ".join(check.warnings)), "warning")
        else:
            self.input_notice.setVisible(False)

    def _show_dicom(self, rows: list[tuple[str, str]] | None) -> None:
        rows = rows or []
        self.dicom_table.setRowCount(len(rows))
        for row, (name, value) in enumerate(rows):
            self.dicom_table.setItem(row, 0, QTableWidgetItem(name))
            self.dicom_table.setItem(row, 1, QTableWidgetItem(value))
        if rows:
            self.dicom_note.setText("Identifying fields shown." if self.identifying_check.isChecked()
                                    else "Only non-identifying fields are shown.")
        else:
            self.dicom_note.setText("No DICOM file shown.")

    def _identifying_toggled(self, _checked: bool) -> None:
        if self.analysis is not None and self.analysis.dicom is not None:
            self._analyse_current()

    def _heatmap_toggled(self, checked: bool) -> None:
        self.view.set_heatmap_visible(checked)
        self.legend.setVisible(checked)
        current = self.analysis
        if checked and current is not None and current.heatmap is None and self.predictor is not None:
            self._serial += 1
            serial = self._serial
            self.context.runner.start(
                add_saliency, current, self.predictor, name="Heatmap",
                on_done=lambda result: self._analysed(serial, result),
                on_error=lambda exc: self._analysis_failed(serial, current.path, exc),
            )

    # ---- batch --------------------------------------------------------------------------------------------
    def run_batch(self, inputs: list[Path]) -> None:
        if self.predictor is None:
            self._show_notice("Open a model first, then run the batch.")
            return
        if self._batch_handle is not None and self._batch_handle.running:
            self._show_notice("A batch is already running; cancel it or wait for it to finish.")
            return
        self.batch = None
        self.batch_panel.start(self.predictor.classes, signer_word(self.predictor.signer), self.predictor.assessment)
        self.batch_button.setEnabled(False)
        # Room for the results once, now: rows arriving never move the layout again.
        if self.vertical.sizes()[1] < BATCH_SIZES_RUNNING[1]:
            self.vertical.setSizes(list(BATCH_SIZES_RUNNING))
        self._batch_handle = self.context.runner.start(
            run_batch_job, self.predictor, [Path(p) for p in inputs], name="Batch prediction",
            on_event=self._batch_item, on_done=self._batch_done, on_error=self._batch_failed,
            on_cancelled=self._batch_cancelled,
        )
        self.batch_progress.bind(self._batch_handle, "Listing images…")

    def _batch_item(self, item) -> None:
        self.batch_panel.add_item(item)

    def _batch_done(self, result) -> None:
        self.batch = result
        self.batch_button.setEnabled(True)
        self._set_exports_enabled(True)
        done, failed = len(result.predictions), len(result.failures)
        text = f"{done} image(s) predicted, {failed} could not be read."
        known, right = self.batch_panel.agreement()
        if known:
            text += f" Where the folder gives the grade: {right} of {known} agree."
        if not result.signature_verified:
            text += " UNVERIFIED MODEL: these results are marked unverified."
        elif not result.signer_trusted:
            text += " UNKNOWN SIGNER: the model card's claims are unverified."
        self.batch_summary.setText(text)
        self.batch_summary.setToolTip(text)

    def _batch_failed(self, exc: BaseException) -> None:
        self.batch_button.setEnabled(True)
        self.batch_summary.setText("The batch stopped.")
        dialogs.show_error(self, exc)

    def _batch_cancelled(self) -> None:
        self.batch_button.setEnabled(True)
        self.batch_summary.setText("Batch cancelled; nothing was exported.")

    def _batch_row_opened(self, row: int, column: int) -> None:
        self.batch_panel._opened(row, column)

    def _open_batch_file(self, path: Path, frame: int) -> None:
        # One entry per file (a multi-frame file has a row per frame): open the row's file at its frame.
        self.files = self.batch_panel.files()
        self.show_index(self.files.index(path), frame=frame)

    def _set_exports_enabled(self, enabled: bool) -> None:
        self.export_csv_button.setEnabled(enabled)
        self.export_html_button.setEnabled(enabled)

    def export_csv(self, path: Path) -> None:
        from core.inference import write_csv

        if self.batch is not None:
            self._export(write_csv, Path(path), self.batch)

    def export_html(self, path: Path) -> None:
        from core.inference import write_html

        if self.batch is not None and self.predictor is not None:
            self._export(write_html, Path(path), self.batch, self.predictor.package)

    def _export(self, writer, path: Path, *args) -> None:
        what = "the CSV file" if path.suffix.lower() == ".csv" else "the HTML report"
        before = self.batch_summary.text()
        self.batch_summary.setText(f"Writing {path.name}…")
        self.context.runner.start(
            writer, path, *args, name="Export results",
            on_done=lambda _result: (self.batch_summary.setText(f"{before} Saved {path}."),
                                     dialogs.saved(self, path, what)),
            on_error=lambda exc: (self.batch_summary.setText(before), dialogs.show_error(self, exc)),
        )

    # ---- file dialogs, drag and drop, keys ----------------------------------------------------------------
    def _choose_model(self) -> None:
        # Models start where this hospital's models are, until another folder was used.
        path = open_file(self, self.context.folders, "model", "Open a model package", "Dopamine models (*.dpm)",
                         fallback=self.context.models_folder)
        if path is not None:
            self.open_model(path)

    def _choose_images(self) -> None:
        paths = open_files(self, self.context.folders, "viewer images", "Open images",
                           "Images (*.png *.jpg *.jpeg *.bmp *.tif *.tiff *.dcm);;All files (*)")
        if paths:
            self.open_paths(paths)

    def _choose_folder(self) -> None:
        folder = open_folder(self, self.context.folders, "viewer images", "Open a folder of images")
        if folder is not None:
            self.open_paths([folder])

    def _choose_batch_folder(self) -> None:
        folder = open_folder(self, self.context.folders, "viewer images", "Predict every image in a folder")
        if folder is not None:
            self.run_batch([folder])

    def _choose_csv(self) -> None:
        path = save_file(self, self.context.folders, "export", "Export results as CSV", "predictions.csv",
                         "CSV (*.csv)")
        if path is not None:
            self.export_csv(path)

    def _choose_html(self) -> None:
        path = save_file(self, self.context.folders, "export", "Export an HTML report", "predictions.html",
                         "HTML (*.html)")
        if path is not None:
            self.export_html(path)

    def dragEnterEvent(self, event) -> None:  # noqa: N802 (Qt override)
        if event.mimeData().hasUrls() and any(url.isLocalFile() for url in event.mimeData().urls()):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event) -> None:  # noqa: N802 (Qt override)
        paths = [Path(url.toLocalFile()) for url in event.mimeData().urls() if url.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.open_paths(paths)

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 (Qt override)
        step = NAVIGATION_KEYS.get(Qt.Key(event.key()))
        frame_step = FRAME_KEYS.get(Qt.Key(event.key()))
        if step is not None:
            self.step(step)
            event.accept()
        elif frame_step is not None:
            self.step_frame(frame_step)
            event.accept()
        else:
            super().keyPressEvent(event)



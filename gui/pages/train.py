"""Train locally: modes C and CDP on this hospital's images, with live plots and a result card."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from core.errors import ConfigError
from gui.context import AppContext, ExpectedImages
from gui.dialogs import saved, show_error
from gui.file_dialogs import save_file
from gui.pages.data import serious_problems
from gui.pages.privacy import parse_delta
from gui.training_jobs import TrainingCost, estimate_training_cost, train_in_child
from gui.widgets.common import Banner, Card, KeyValueCard, button, label
from gui.widgets.job_progress import JobProgress
from gui.widgets.page import Page
from gui.widgets.path_picker import PathPicker
from gui.widgets.plots import LivePlot

# core.models.registry.MODEL_NAMES, described for the people choosing (a test keeps them in step).
MODELS = {
    "squeezenet1_1": "SqueezeNet 1.1 (the paper's model)",
    "small_cnn": "Small CNN (fast, for trials)",
    "resnet18_gn": "ResNet-18 GroupNorm (large, slow)",
}
ACCOUNTANTS = {"rdp": "RDP (Rényi DP, standard)", "prv": "PRV (tighter, slower)"}
MODE_TEXT = {
    "cdp": "CDP: with differential privacy",
    "c": "C: without privacy",
}


class TrainPage(Page):
    key = "train"
    title = "Train locally"
    subtitle = "Train a model on this hospital's images only. Nothing is sent anywhere."

    def __init__(self, context: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(context, parent)
        columns = QHBoxLayout()
        columns.setSpacing(16)
        left = QVBoxLayout()
        left.setSpacing(10)
        right = QVBoxLayout()
        right.setSpacing(10)
        columns.addLayout(left, 0)
        columns.addLayout(right, 1)
        self.body.addLayout(columns)

        images = Card("Images")
        self.data_picker = PathPicker(folder=True, placeholder="Choose on the Data page, or here",
                                      memory=context.folders, purpose="images")
        images.body.addWidget(self.data_picker)
        self.data_note = label("", "muted")
        images.body.addWidget(self.data_note)
        left.addWidget(images)

        training = Card("Model and training")
        form = QFormLayout()
        self.mode = QComboBox()
        for key, text in MODE_TEXT.items():
            self.mode.addItem(text, key)
        self.model = QComboBox()
        for key, text in MODELS.items():
            self.model.addItem(text, key)
        self.epochs = _spin(1, 1000, 10)
        self.batch_size = _spin(1, 4096, 32)
        self.image_size = QComboBox()
        for size in (64, 128, 224):
            self.image_size.addItem(f"{size} px", size)
        self.image_size.setCurrentIndex(2)
        self.lr = _dspin(0.0001, 10.0, 0.05, decimals=4, step=0.01)
        form.addRow("Mode", self.mode)
        form.addRow("Model", self.model)
        form.addRow("Epochs", self.epochs)
        form.addRow("Batch size", self.batch_size)
        form.addRow("Image size", self.image_size)
        form.addRow("Learning rate", self.lr)
        training.body.addLayout(form)
        left.addWidget(training)

        self.privacy_card = Card("Privacy (DP-SGD)")
        pform = QFormLayout()
        by = QHBoxLayout()
        self.by_epsilon = QRadioButton("Target ε")
        self.by_sigma = QRadioButton("Noise σ")
        self.by_epsilon.setChecked(True)
        group = QButtonGroup(self)
        group.addButton(self.by_epsilon)
        group.addButton(self.by_sigma)
        by.addWidget(self.by_epsilon)
        by.addWidget(self.by_sigma)
        by.addStretch(1)
        self.target_epsilon = _dspin(0.05, 100.0, 8.0, decimals=2, step=0.5)
        self.noise_multiplier = _dspin(0.1, 50.0, 1.0, decimals=3, step=0.1)
        self.max_grad_norm = _dspin(0.01, 100.0, 1.0, decimals=2, step=0.1)
        self.delta = QLineEdit()
        self.delta.setPlaceholderText("automatic (the ledger's δ; a new ledger: 1e-5, or below 1/N)")
        self.accountant = QComboBox()
        for key, text in ACCOUNTANTS.items():
            self.accountant.addItem(text, key)
        self.accountant.setCurrentIndex(max(0, self.accountant.findData(context.settings.accountant)))
        pform.addRow("Choose by", by)
        pform.addRow("Target ε", self.target_epsilon)
        pform.addRow("Noise σ", self.noise_multiplier)
        pform.addRow("Clipping C", self.max_grad_norm)
        pform.addRow("δ (delta)", self.delta)
        pform.addRow("Accountant", self.accountant)
        self.privacy_card.body.addLayout(pform)
        left.addWidget(self.privacy_card)

        self.cost = Banner("", "privacy")
        self.cost.setMaximumWidth(440)
        left.addWidget(self.cost)
        self.start_button = button("Start training", primary=True)
        left.addWidget(self.start_button)
        left.addStretch(1)
        for card in (images, training, self.privacy_card):
            card.setMaximumWidth(440)

        self.status = Banner("Results appear here while the model trains: one point per epoch.", "info")
        right.addWidget(self.status)
        self.progress = JobProgress(keep_space=True)
        right.addWidget(self.progress)
        self.loss_plot = LivePlot("Loss (lower is better)", "loss")
        self.accuracy_plot = LivePlot("Validation accuracy", "accuracy", y_range=(0.0, 1.0))
        self.epsilon_plot = LivePlot("Privacy spent by this run", "ε")
        for plot in (self.loss_plot, self.accuracy_plot, self.epsilon_plot):
            right.addWidget(plot)

        self.result_card = KeyValueCard("Result")
        self.result_card.setVisible(False)
        self.body.addWidget(self.result_card)
        result_buttons = QHBoxLayout()
        self.open_viewer_button = button("Open in viewer")
        self.save_as_button = button("Save a copy as .dpm…")
        self.show_models_button = button("Show in Models")
        for widget in (self.open_viewer_button, self.save_as_button, self.show_models_button):
            widget.setVisible(False)
            result_buttons.addWidget(widget)
        result_buttons.addStretch(1)
        self.body.addLayout(result_buttons)

        self.result: Any = None
        self.verdict: Any = None  # core.inference.assessment.ModelAssessment of the last model
        self.job = None
        self.last_cost: TrainingCost | None = None
        self._cost_job = None
        self._cost_timer = QTimer(self)
        self._cost_timer.setSingleShot(True)
        self._cost_timer.setInterval(300)
        self._cost_timer.timeout.connect(self.update_cost)

        self.start_button.clicked.connect(self.start)
        self.open_viewer_button.clicked.connect(lambda: self.result and context.open_in_viewer(
            Path(self.result.model_path)))
        self.save_as_button.clicked.connect(self.save_copy)
        self.show_models_button.clicked.connect(lambda: context.navigate("models"))
        self.mode.currentIndexChanged.connect(self._mode_changed)
        self.by_epsilon.toggled.connect(self._mode_changed)
        for signal in (self.epochs.valueChanged, self.batch_size.valueChanged, self.target_epsilon.valueChanged,
                       self.noise_multiplier.valueChanged, self.accountant.currentIndexChanged,
                       self.delta.editingFinished, self.mode.currentIndexChanged, self.by_epsilon.toggled):
            signal.connect(self._cost_timer.start)
        self.data_picker.path_chosen.connect(lambda _p: self._show_dataset())
        self.image_size.currentIndexChanged.connect(lambda _i: self._tell_input_size())
        self._tell_input_size()
        context.dataset_changed.connect(lambda _r: self._show_dataset())
        context.ledger_changed.connect(self._ledger_changed)
        self._show_dataset()
        self._mode_changed()

    def _tell_input_size(self) -> None:
        """The Data page counts small images at the input size chosen here (unless a federation's plan says)."""
        self.context.set_expected_images("train", ExpectedImages(
            size=int(self.image_size.currentData()), classes=None, source="the image size on Train locally"))

    def _ledger_changed(self) -> None:
        # While this page's own run charges the ledger, the preview waits for the run to end.
        if not (self.job is not None and self.job.running):
            self._cost_timer.start()

    # ---- form -------------------------------------------------------------------------------
    def _mode_changed(self) -> None:
        private = self.mode.currentData() == "cdp"
        self.privacy_card.setEnabled(private)
        self.target_epsilon.setEnabled(private and self.by_epsilon.isChecked())
        self.noise_multiplier.setEnabled(private and self.by_sigma.isChecked())
        self.epsilon_plot.setVisible(private)

    def _show_dataset(self) -> None:
        report = self.context.dataset_report
        if self.data_picker.path() is None and self.context.settings.dataset is not None:
            self.data_picker.set_path(self.context.settings.dataset)
        chosen = self.data_picker.path()
        if report is not None and chosen is not None and Path(report.root) in (chosen, chosen.parent):
            self.data_note.setText(f"{report.usable} usable images in {len(report.classes)} classes "
                                   f"({serious_problems(report)} problem(s); see the Data page).")
        elif chosen is not None:
            self.data_note.setText("Not checked yet: the trainer checks the images first. "
                                   "Check them on the Data page to see the privacy cost here.")
        else:
            self.data_note.setText("Choose this hospital's images first.")
        self._cost_timer.start()

    def config(self) -> Any:
        """The TrainConfig the form describes (ConfigError when something is missing)."""
        from core.training.config import TrainConfig

        data = self.data_picker.path()
        if data is None:
            raise ConfigError("Choose the images to train on (on the Data page or above).")
        private = self.mode.currentData() == "cdp"
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        config = TrainConfig(
            data=data, out=self.context.models_folder / f"local-{self.mode.currentData()}-"
                                                        f"{self.model.currentData()}-{stamp}.dpm",
            mode=self.mode.currentData(), model=self.model.currentData(), epochs=self.epochs.value(),
            batch_size=self.batch_size.value(), lr=self.lr.value(), image_size=self.image_size.currentData(),
            noise_multiplier=self.noise_multiplier.value() if private and self.by_sigma.isChecked() else None,
            target_epsilon=self.target_epsilon.value() if private and self.by_epsilon.isChecked() else None,
            max_grad_norm=self.max_grad_norm.value(), delta=parse_delta(self.delta.text()) if private else None,
            accountant=self.accountant.currentData(), home=self.context.home.root,
            threads=self.context.settings.cpu_threads, device=self.context.settings.device,
        )
        config.validate()
        return config

    # ---- privacy cost preview -----------------------------------------------------------------
    def update_cost(self) -> None:
        if self.mode.currentData() != "cdp":
            self.cost.show_message("Mode C adds no noise: the model is not protected by differential privacy "
                                   "and must stay inside the hospital. Nothing is charged to the budget.",
                                   "warning")
            return
        report = self.context.dataset_report
        if report is None:
            self.cost.show_message("Check the images on the Data page to see what this run would cost "
                                   "in privacy before it starts.", "privacy")
            return
        try:
            config = self.config()
        except ConfigError as exc:
            self.cost.show_message(str(exc), "warning")
            return
        if self._cost_job is not None and self._cost_job.running:
            self._cost_job.cancel()
        labels = [s.label for s in report.usable_samples if s.label is not None]
        self._cost_job = self.context.runner.start(
            estimate_training_cost, labels, val_fraction=config.val_fraction, seed=config.seed,
            batch_size=config.batch_size, epochs=config.epochs, noise_multiplier=config.noise_multiplier,
            target_epsilon=config.target_epsilon, delta=config.delta, accountant=config.accountant,
            ledger_path=self.context.ledger_path, name="privacy cost",
            on_done=self._show_cost, on_error=lambda exc: self.cost.show_message(str(exc), "warning"))

    def _show_cost(self, cost: TrainingCost) -> None:
        self.last_cost = cost
        v = cost.verdict
        text = (f"<b>This run costs ε = {cost.epsilon:.3g}</b> at δ = {cost.delta:.2g} "
                f"({cost.accountant.upper()}): σ = {cost.noise_multiplier:.3g}, q = {cost.sample_rate:.4g}, "
                f"{cost.steps} steps on {cost.train_images} training images. ")
        text += (f"This hospital's total would go from {v.epsilon_before:.3g} to {v.epsilon_after:.3g}"
                 + (f" (cap {v.max_epsilon:g})." if v.max_epsilon is not None else " (no cap set)."))
        if not v.allowed:
            text += " <b>Refused: this passes the cap.</b> Lower the epochs or ε, or raise the cap on the Privacy page."
        self.cost.show_message(text, "privacy" if v.allowed else "error")

    # ---- running ----------------------------------------------------------------------------------
    def start(self) -> None:
        if self.job is not None and self.job.running:
            return
        try:
            config = self.config()
        except ConfigError as exc:
            show_error(self, exc)
            return
        for plot in (self.loss_plot, self.accuracy_plot, self.epsilon_plot):
            plot.clear_series()
            plot.set_x_range(0.5, config.epochs + 0.5)
        self.result_card.setVisible(False)
        for widget in (self.open_viewer_button, self.save_as_button, self.show_models_button):
            widget.setVisible(False)
        self.start_button.setEnabled(False)
        self.status.show_message(f"Training {self.model.currentText().split(' (')[0]} on {config.data}. "
                                 "The window stays usable; Cancel stops at the next batch.", "info")
        self.job = self.context.runner.start(
            train_in_child, config, name="local training", on_event=self.add_epoch, event_kwarg="on_epoch", precious=True,
            on_done=self.show_result, on_error=self._failed, on_cancelled=self._cancelled)
        self.job.finished.connect(self._ended)
        self.progress.bind(self.job, "Preparing…")

    def cancel(self) -> None:
        self.progress.cancel()

    def add_epoch(self, stats: Any) -> None:
        self.loss_plot.append("training", stats.epoch, stats.train_loss)
        self.loss_plot.append("validation", stats.epoch, stats.val_loss)
        self.accuracy_plot.append("accuracy", stats.epoch, stats.val_accuracy)
        self.accuracy_plot.append("quadratic κ", stats.epoch, stats.val_kappa)
        if stats.epsilon is not None:
            self.epsilon_plot.append("ε", stats.epoch, stats.epsilon)

    def _ended(self) -> None:
        self.start_button.setEnabled(True)
        self._cost_timer.start()

    def _failed(self, exc: BaseException) -> None:
        self.status.show_message(f"Training stopped: {exc}", "error")
        show_error(self, exc)
        self.context.ledger_changed.emit()

    def _cancelled(self) -> None:
        self.status.show_message("Training cancelled. No model was saved. Privacy already spent on epochs "
                                 "that started stays in the ledger (it is charged before each epoch).", "warning")
        self.context.ledger_changed.emit()

    def show_result(self, result: Any) -> None:
        self.result = result
        m = result.metrics
        rows: list[tuple[str, object]] = [
            ("Model file", result.model_path),
            ("Mode", MODE_TEXT.get(result.mode, result.mode)),
            ("Validation accuracy", f"{m['accuracy']:.3f} (always guessing the largest class: "
                                    f"{result.majority_baseline:.3f})"),
            ("Quadratic κ", f"{m['kappa']:.3f}"),
            ("Images", f"{result.train_images} for training, {result.val_images} for validation"),
        ]
        if result.epsilon is not None:
            rows += [
                ("Privacy", f"ε = {result.epsilon:.3f} at δ = {result.delta:.2g} ({result.accountant.upper()})"),
                ("DP-SGD", f"σ = {result.noise_multiplier:.3f}, C = {result.max_grad_norm:g}, "
                           f"q = {result.sample_rate:.4g}, {result.steps} steps"),
                ("Hospital budget", f"ε = {result.ledger_spent:.3f} spent in total"),
            ]
        else:
            rows.append(("Privacy", "none: keep this model inside the hospital"))
        rows += [("Time", f"{result.seconds:.0f} s"), ("Training log", result.log_path)]
        self.result_card.set_rows(rows)
        self.result_card.setVisible(True)
        for widget in (self.open_viewer_button, self.save_as_button, self.show_models_button):
            widget.setVisible(True)
        done = f"Done. The signed model is saved as {Path(result.model_path).name} and listed on the Models page."
        self.status.show_message(done, "ok")
        # Whether the model beat always answering the largest class, read from its signed card (on a worker).
        self.context.runner.start(model_verdict, Path(result.model_path), name="model verdict",
                                  on_done=lambda verdict: self._show_verdict(done, verdict))
        self.context.models_changed.emit()
        self.context.ledger_changed.emit()

    def _show_verdict(self, done: str, verdict: Any) -> None:
        self.verdict = verdict
        if not verdict.trustworthy:
            self.status.show_message(f"{done} <b>But: {verdict.headline}.</b> {verdict.message}", "error")

    def save_copy(self) -> None:
        if self.result is None:
            return
        source = Path(self.result.model_path)
        chosen = save_file(self, self.context.folders, "model", "Save the model", source.name,
                           "Dopamine model (*.dpm)")
        if chosen is not None:
            self.save_copy_to(chosen)

    def save_copy_to(self, chosen: Path) -> None:
        source = Path(self.result.model_path)
        target = chosen if chosen.suffix == ".dpm" else chosen.with_name(chosen.name + ".dpm")
        self.context.runner.start(shutil.copy2, source, target, name="copy model",
                                  on_done=lambda _r: saved(self, target, "a copy of the model"),
                                  on_error=lambda e: show_error(self, e))


def _spin(low: int, high: int, value: int) -> QSpinBox:
    widget = QSpinBox()
    widget.setRange(low, high)
    widget.setValue(value)
    return widget


def _dspin(low: float, high: float, value: float, *, decimals: int, step: float) -> QDoubleSpinBox:
    widget = QDoubleSpinBox()
    widget.setRange(low, high)
    widget.setDecimals(decimals)
    widget.setSingleStep(step)
    widget.setValue(value)
    return widget


def model_verdict(path: Path) -> Any:
    """core.inference.assessment.assess on the card of the model just written (a worker job)."""
    from core.inference.assessment import assess
    from core.models.package import read_package

    return assess(read_package(Path(path)).card)

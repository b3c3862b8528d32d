"""Home: what the app does, what never leaves the hospital, three ways to start, federation status."""

from __future__ import annotations

from PySide6.QtWidgets import QGridLayout, QHBoxLayout, QWidget

from gui.context import AppContext, FederationStatus
from gui.pages.data import serious_problems
from gui.widgets.common import Banner, Card, button, label
from gui.widgets.page import Page

WHAT_IT_DOES = (
    "Dopamine trains an image model (for example, diabetic-retinopathy grading of fundus photographs) "
    "on this hospital's own images, alone or together with other hospitals in a federation. Training "
    "uses differential privacy, so the finished model cannot reveal whether any one patient's image "
    "was used. Trained models diagnose new images offline, on this computer."
)
STAYS_HERE = (
    "<b>Never leaves this computer:</b> patient images, their labels, file names, and anything "
    "computed from a single patient. No image is uploaded, ever."
)
KEPT_ON_DISK = (
    "<b>Kept on this computer, in the hospital home folder:</b> decoded, resized copies of the hospital's "
    "images in the image cache (so training does not decode them again; clear them in Settings), the "
    "privacy ledger of every ε spent, the signed audit log of everything sent, this hospital's identity "
    "key, and the models. The original images are read where they are."
)
LEAVES = (
    "<b>Leaves only when you join a federation:</b> model updates computed from many images at once, "
    "with noise added and masked by secure aggregation, so the coordinator sees only the sum over "
    "several hospitals. Every byte sent is recorded first in the signed audit log (Activity page), and "
    "its privacy cost is charged to this hospital's budget (Privacy page) before it is sent."
)

STATE_TEXT = {
    "none": "This hospital is not part of a federation.",
    "invited": "An invitation is open but this hospital has not joined yet.",
    "joining": "Joining the federation…",
    "running": "Taking part in the federation.",
    "paused": "Paused: this hospital is not taking part in rounds right now.",
    "left": "This hospital left the federation.",
    "finished": "The federation has finished.",
    "error": "The federation stopped with a problem.",
}


def federation_summary(status: FederationStatus) -> str:
    if status.state == "none":
        return STATE_TEXT["none"]
    parts = [f"<b>{status.name or 'Federation'}</b> — {STATE_TEXT.get(status.state, status.state)}"]
    if status.rounds:
        parts.append(f"Round {status.round} of {status.rounds}.")
    if status.epsilon_spent is not None:
        cap = f" of the cap {status.epsilon_cap:g}" if status.epsilon_cap is not None else ""
        parts.append(f"Privacy spent by this hospital: ε = {status.epsilon_spent:.3g}{cap}.")
    if status.message:
        parts.append(status.message)
    return " ".join(parts)


class HomePage(Page):
    key = "home"
    title = "Welcome to Dopamine"
    subtitle = "Train diagnostic image models with other hospitals, without sharing patient images."

    def __init__(self, context: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(context, parent)
        about = Card("What Dopamine does")
        about.body.addWidget(label(WHAT_IT_DOES))
        self.body.addWidget(about)

        data_cards = QHBoxLayout()
        data_cards.setSpacing(12)
        data_cards.addWidget(Banner(STAYS_HERE, "ok"), 1)
        data_cards.addWidget(Banner(LEAVES, "privacy"), 1)
        self.body.addLayout(data_cards)
        self.kept_on_disk = Banner(KEPT_ON_DISK, "info")
        self.body.addWidget(self.kept_on_disk)
        self.home_label = label("", "muted", selectable=True)
        self.body.addWidget(self.home_label)

        self.body.addWidget(label("Start here", "section"))
        actions = QGridLayout()
        actions.setSpacing(12)
        self.join_button = button("Join a federation\nOpen the coordinator's invitation",
                                  action=True, primary=True)
        self.train_button = button("Train a model here\nOn this hospital's images only", action=True)
        self.viewer_button = button("Open the viewer\nDiagnose images with a model", action=True)
        for column, widget in enumerate((self.join_button, self.train_button, self.viewer_button)):
            actions.addWidget(widget, 0, column)
        self.body.addLayout(actions)
        self.join_button.clicked.connect(lambda: context.navigate("federation"))
        self.train_button.clicked.connect(lambda: context.navigate("train"))
        self.viewer_button.clicked.connect(lambda: context.navigate("viewer"))

        status_card = Card("Federation status")
        self.federation_label = label("", selectable=True)
        status_card.body.addWidget(self.federation_label)
        self.body.addWidget(status_card)

        dataset_card = Card("This hospital's images")
        self.dataset_label = label("")
        dataset_card.body.addWidget(self.dataset_label)
        self.body.addWidget(dataset_card)
        self.body.addStretch(1)

        context.federation_changed.connect(self._show_federation)
        context.dataset_changed.connect(lambda _report: self._show_dataset())
        context.settings_changed.connect(self._show_dataset)
        self._show_federation(context.federation)
        self._show_dataset()

    def _show_federation(self, status: FederationStatus) -> None:
        self.federation_label.setText(federation_summary(status))

    def _show_home(self) -> None:
        self.home_label.setText(f"Hospital home folder: {self.context.home.root} (change it in Settings).")

    def _show_dataset(self) -> None:
        self._show_home()
        report = self.context.dataset_report
        dataset = self.context.settings.dataset
        if report is not None:
            self.dataset_label.setText(
                f"{report.root}: {report.usable} usable images in {len(report.classes)} classes "
                f"({serious_problems(report)} problem(s) found). The originals stay where they are.")
        elif dataset is not None:
            self.dataset_label.setText(f"{dataset} (open the Data page to check it again).")
        else:
            self.dataset_label.setText("No images chosen yet. Choose a folder or CSV file on the Data page.")

    def on_shown(self) -> None:
        self._show_dataset()

"""Federation: review an invitation (who, where, the plan, its privacy cost) and take part in it.

The page renders and asks the user; gui.federation_session.FederationSession owns the membership's
state, jobs and events.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QHBoxLayout,
    QHeaderView,
    QListWidget,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from gui.context import AppContext
from gui.dialogs import confirm, show_error
from gui.federation_jobs import CoordinatorView, InvitationReview
from gui.federation_session import FederationSession, Membership
from gui.widgets.common import Banner, Card, KeyValueCard, button, label
from gui.widgets.job_progress import JobProgress
from gui.widgets.page import Page
from gui.widgets.path_picker import PathPicker
from gui.widgets.plots import LivePlot

MODE_WORDS = {
    "f": "F — federated averaging, no differential privacy",
    "fpdp": "FPDP — each hospital trains with DP-SGD and sends a noised model update",
    "fscdp": "FSCDP (Dopamine) — one DP-SGD step per round, noise shared out, secure aggregation",
}
EXPLAIN = (
    "In a federation, hospitals train one model together. <b>Patient images never leave this hospital.</b> "
    "Each round, this computer computes an update from many images at once, adds noise (differential "
    "privacy) and masks it (secure aggregation), so the coordinator only learns the sum over several "
    "hospitals. Every byte sent is logged on the Activity page; the privacy cost is charged to this "
    "hospital's budget before anything is sent."
)


def plan_rows(review: InvitationReview) -> list[tuple[str, object]]:
    plan = review.invitation.plan
    rows: list[tuple[str, object]] = [
        ("Training mode", MODE_WORDS.get(plan.mode, plan.mode)),
        ("Rounds", plan.rounds),
        ("Hospitals", f"{plan.hospitals} invited"
                      + (f" ({', '.join(plan.hospital_names)})" if plan.hospital_names else "")
                      + f"; a sum is only revealed over at least m = {plan.threshold}, so up to "
                      f"{plan.hospitals - plan.threshold} may drop out of a round"),
        ("Model", f"{plan.model}, {plan.image_size} px, {len(plan.classes)} classes"),
        ("Secure aggregation", "yes" if plan.secagg else "no"),
    ]
    if plan.mode == "fscdp":
        rows.append(("Each round", f"one DP-SGD step on a sample of q = {plan.sample_rate:g} of the images"))
    else:
        rows.append(("Each round", f"{plan.local_epochs} local epoch(s), batch {plan.batch_size}"))
    if plan.is_private:
        rows += [("Noise σ", f"{plan.noise_multiplier:g}"), ("Clipping C", f"{plan.max_grad_norm:g}"),
                 ("δ", f"{plan.delta:g}"), ("Accountant", review.accountant.upper())]
    if plan.secagg:
        rows.append(("Colluding hospitals", f"t = {plan.colluders}: the privacy holds even if the coordinator and "
                                            f"{plan.colluders} other hospital(s) combine what they know"))
    from core.federation.plan import threat_model_text

    rows.append(("Threat model", threat_model_text(plan)))
    return rows


class FederationPage(Page):
    key = "federation"
    title = "Federation"
    subtitle = "Train one model with other hospitals, without sharing patient images."

    def __init__(self, context: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(context, parent)
        self.body.addWidget(Banner(EXPLAIN, "privacy"))
        row = QHBoxLayout()
        self.picker = PathPicker(folder=False, file_filter="Dopamine invitations (*.invite *.json);;All files (*)",
                                 placeholder="The invitation file the coordinator gave you (.invite)",
                                 button_text="Open invitation…")
        row.addWidget(self.picker, 1)
        self.body.addLayout(row)

        columns = QHBoxLayout()
        columns.setSpacing(16)
        left = QVBoxLayout()
        right = QVBoxLayout()
        columns.addLayout(left, 0)
        columns.addLayout(right, 1)
        self.body.addLayout(columns)

        self.federation_card = KeyValueCard("Federation")
        self.plan_card = KeyValueCard("The plan every hospital agreed to")
        self.check_note = Banner(
            "Before joining, phone the coordinator and compare the <b>CA fingerprint</b>: if it differs, "
            "someone else made this invitation.", "warning")
        self.cost = Banner("", "privacy")
        self.until_cap = QCheckBox("Take part until this hospital's cap is reached, then stop")
        self.until_cap.setVisible(False)
        buttons = QHBoxLayout()
        self.join_button = button("Join", primary=True)
        self.pause_button = button("Pause")
        self.leave_button = button("Leave", danger=True)
        for widget in (self.join_button, self.pause_button, self.leave_button):
            buttons.addWidget(widget)
        buttons.addStretch(1)
        for widget in (self.federation_card, self.check_note, self.plan_card, self.cost, self.until_cap):
            widget.setMaximumWidth(500)
            left.addWidget(widget)
        left.addLayout(buttons)
        self.privacy_link = button("Go to the Privacy page")
        self.privacy_link.setVisible(False)
        left.addWidget(self.privacy_link)
        left.addStretch(1)

        status = Card("Now")
        self.state_label = label("Open an invitation to begin.", "section")
        self.detail_label = label("", "muted")
        self.network = Banner("", "warning")
        self.network.setVisible(False)
        self.progress = JobProgress(cancel_text="Pause")
        status.body.addWidget(self.state_label)
        status.body.addWidget(self.detail_label)
        status.body.addWidget(self.network)
        status.body.addWidget(self.progress)
        right.addWidget(status)
        self.metrics_plot = LivePlot("Training progress", "value", "round")
        self.epsilon_plot = LivePlot("Privacy spent by this hospital", "ε", "round")
        right.addWidget(self.metrics_plot)
        right.addWidget(self.epsilon_plot)

        peers_card = Card("Hospitals in this federation")
        peers_card.body.addWidget(label(
            "Compare each fingerprint with that hospital by phone: a match proves the coordinator did not "
            "slip in another key.", "muted"))
        self.roster_note = Banner("", "warning")
        self.roster_note.setVisible(False)
        self.confirm_roster_button = button("I compared every fingerprint with its hospital: confirm", primary=True)
        self.confirm_roster_button.setVisible(False)
        peers_card.body.addWidget(self.roster_note)
        peers_card.body.addWidget(self.confirm_roster_button)
        self.peers = QTableWidget(0, 4)
        self.peers.setHorizontalHeaderLabels(["Hospital", "Status", "Rounds included", "Identity fingerprint"])
        self.peers.verticalHeader().setVisible(False)
        self.peers.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = self.peers.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        self.peers.setMinimumHeight(130)
        peers_card.body.addWidget(self.peers)
        self.body.addWidget(peers_card)

        log_card = Card("What happened")
        self.messages = QListWidget()
        self.messages.setMinimumHeight(140)
        self.messages.setWordWrap(True)
        self.messages.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        log_card.body.addWidget(self.messages)
        self.body.addWidget(log_card)

        self.session = session = FederationSession(context, self)
        session.review_changed.connect(self.show_review)
        session.state_changed.connect(lambda _state: self._update_buttons())
        session.busy_changed.connect(self._update_buttons)
        session.headline.connect(self.state_label.setText)
        session.detail.connect(self.detail_label.setText)
        session.said.connect(self._say)
        session.network.connect(self._show_network)
        session.roster_to_confirm.connect(self.show_roster)
        session.view_changed.connect(self.show_view)
        session.point.connect(lambda plot, series, x, y: self._plots[plot].append(series, x, y))
        session.cap.connect(lambda value: self.epsilon_plot.set_limit("cap", value))
        session.job_started.connect(lambda job: self.progress.bind(job, "Preparing the images…"))
        session.failed.connect(lambda exc: show_error(self, exc))
        self._plots = {"metrics": self.metrics_plot, "epsilon": self.epsilon_plot}

        self.picker.path_chosen.connect(self.open_invitation)
        self.join_button.clicked.connect(self.start)
        self.pause_button.clicked.connect(self.pause)
        self.leave_button.clicked.connect(self.leave)
        self.until_cap.toggled.connect(lambda _checked: self._update_buttons())
        self.privacy_link.clicked.connect(lambda: context.navigate("privacy"))
        self.confirm_roster_button.clicked.connect(self.confirm_roster)
        context.dataset_changed.connect(lambda _r: self.reload())
        context.ledger_changed.connect(self._ledger_changed)
        self._update_buttons()
        if context.settings.invitation is not None and Path(context.settings.invitation).exists():
            self.picker.set_path(context.settings.invitation)
            self.open_invitation(Path(context.settings.invitation))

    # What tests and the screenshots read: the session's state, seen from the page.
    review = property(lambda self: self.session.review)
    view = property(lambda self: self.session.view)
    job = property(lambda self: self.session.job)
    my_fingerprint = property(lambda self: self.session.my_fingerprint)
    running = property(lambda self: self.session.running)

    def handle_event(self, event: Any) -> None:
        self.session.handle_event(event)

    # ---- reviewing -------------------------------------------------------------------------------
    def _num_images(self) -> int | None:
        report = self.context.dataset_report
        if report is None:
            return None
        return sum(1 for s in report.usable_samples if s.label is not None)

    def open_invitation(self, path: Path) -> None:
        if not self.session.open_invitation(Path(path), self._num_images()):
            show_error(self, _federation_error("Pause or leave the current federation before opening another invitation."))

    def reload(self) -> None:
        if self.review is not None and not self.running:
            self.open_invitation(self.review.path)

    def _ledger_changed(self) -> None:
        if not self.running:
            self.reload()

    def show_review(self, review: InvitationReview) -> None:
        inv = review.invitation
        self.federation_card.set_rows([
            ("Federation", inv.federation_name),
            ("Coordinator address", inv.coordinator_url),
            ("CA fingerprint", inv.ca_fingerprint),
            ("Invited as", f"{inv.hospital_name} ({inv.hospital_id})"),
            ("Plan hash", inv.plan_hash[:32] + "…"),
        ])
        self.plan_card.set_rows(plan_rows(review))
        self._show_cost(review)
        self._update_buttons()

    def _show_cost(self, review: InvitationReview) -> None:
        plan = review.invitation.plan
        self.privacy_link.setVisible(bool(review.problem) and "Privacy page" in review.problem)
        if not plan.is_private:
            text = ("<b>Mode F adds no noise</b>: the updates this hospital sends are not differentially private"
                    + (" (they are hidden in a secure sum)." if plan.secagg else ".")
                    + " Nothing is charged to the privacy budget.")
            self.cost.show_message(text + (f" {review.problem}" if review.problem else ""), "warning")
            self.until_cap.setVisible(False)
            return
        if review.epsilon_cost is None:
            self.cost.show_message(review.problem, "warning")
            return
        text = (f"<b>Taking part in all {plan.rounds} rounds costs this hospital ε = {review.epsilon_cost:.3g}</b> "
                f"at δ = {plan.delta:g} ({review.accountant.upper()}).")
        v = review.verdict
        if v is not None:
            cap = f"cap {v.max_epsilon:g}" if v.max_epsilon is not None else "no cap set"
            text += f" This hospital's budget: {v.epsilon_before:.3g} spent → {v.epsilon_after:.3g} after ({cap})."
        over = v is not None and not v.allowed
        if over:
            text += (" <b>That passes the cap:</b> this hospital would stop taking part when the cap is reached "
                     "and the other hospitals continue without it.")
        if review.problem:
            text += f" <b>{review.problem}</b>"
        self.cost.show_message(text, "error" if over or review.problem else "privacy")
        self.until_cap.setVisible(over)

    # ---- taking part -------------------------------------------------------------------------------
    def _update_buttons(self) -> None:
        review, state = self.review, self.session.state
        over = review is not None and review.verdict is not None and not review.verdict.allowed
        ready = review is not None and not review.problem and (not over or self.until_cap.isChecked())
        self.join_button.setEnabled(ready and not self.running and state != Membership.FINISHED)
        self.join_button.setText("Resume" if review is not None and review.resumable else "Join")
        self.pause_button.setEnabled(self.running)
        self.leave_button.setEnabled(review is not None and state not in (Membership.LEFT, Membership.FINISHED))

    def start(self) -> None:
        review = self.review
        if review is None or self.running:
            return
        dataset = self.context.settings.dataset
        if dataset is None:
            show_error(self, _federation_error("Choose this hospital's images on the Data page first."))
            return
        for plot in (self.metrics_plot, self.epsilon_plot):
            plot.set_x_range(0.5, review.invitation.plan.rounds + 0.5)
        self.session.start(Path(dataset))

    def pause(self) -> None:
        if not self.running:
            return
        plan = self.review.invitation.plan if self.review is not None else None
        if plan is not None and plan.secagg and plan.threshold >= plan.hospitals and not confirm(
                self, "Pause the federation?",
                f"This federation needs all {plan.hospitals} hospitals in every round. While this hospital is "
                "paused, rounds cannot finish, and after several failed tries the coordinator stops the "
                "federation for everyone.", yes="Pause anyway"):
            return
        self.session.pause()

    def leave(self) -> None:
        if self.review is None:
            return
        if not confirm(self, "Leave the federation?",
                       "This hospital stops taking part. The others continue without it. Models already "
                       "received and the privacy ledger stay on this computer.", yes="Leave"):
            return
        self.session.leave()

    def confirm_roster(self) -> None:
        """The user compared every fingerprint by phone: sign this roster and take part."""
        code = self.session.roster_code
        if code is None or not confirm(
                self, "Confirm the roster?",
                "Only confirm if every hospital read out exactly the fingerprint shown for it. This hospital then "
                f"signs the roster {code} and takes part in its rounds.", yes="Confirm and take part"):
            return
        self.confirm_roster_button.setVisible(False)
        self.roster_note.setVisible(False)
        for plot in (self.metrics_plot, self.epsilon_plot):
            plot.set_x_range(0.5, self.review.invitation.plan.rounds + 0.5)
        self.session.confirm_roster()

    # ---- what the session says ---------------------------------------------------------------------
    def _show_network(self, text: str, kind: str) -> None:
        if text:
            self.network.show_message(text, kind)
        else:
            self.network.setVisible(False)

    def show_roster(self, event: Any) -> None:
        """The frozen roster, shown for the user to confirm out of band before this hospital signs it."""
        self.peers.setRowCount(len(event.hospitals))
        for row, hospital in enumerate(event.hospitals):
            name = f"{hospital['name']} ({hospital['hospital_id']})" + (
                " — this hospital" if hospital["this_hospital"] else "")
            values = (name, f"enrolled, {hospital['num_images']} images", "", _two_lines(hospital["fingerprint"]))
            for column, value in enumerate(values):
                self.peers.setItem(row, column, QTableWidgetItem(value))
        self.peers.resizeRowsToContents()
        self.roster_note.show_message(
            f"<b>Confirm the roster {event.code} before any round.</b> Call each hospital and compare the "
            "fingerprint it reads out with the one shown here. If one differs, do not confirm: the coordinator "
            f"may have enrolled someone else. {event.threat_model}", "warning")
        self.confirm_roster_button.setVisible(True)

    def show_view(self, view: CoordinatorView) -> None:
        self.peers.setRowCount(len(view.peers))
        for row, peer in enumerate(view.peers):
            name = f"{peer.name} ({peer.hospital_id})" + (" — this hospital" if peer.is_this_hospital else "")
            fingerprint = _two_lines(peer.fingerprint)
            if not peer.coordinator_agrees:
                fingerprint += "\n⚠ differs from the fingerprint the coordinator reports"
            values = (name, peer.status, "" if peer.rounds_included is None else str(peer.rounds_included),
                      fingerprint)
            for column, value in enumerate(values):
                self.peers.setItem(row, column, QTableWidgetItem(value))
        self.peers.resizeRowsToContents()

    def _say(self, text: str) -> None:
        self.messages.addItem(f"{datetime.now():%H:%M:%S}  {text}")
        self.messages.scrollToBottom()


def _two_lines(fingerprint: str) -> str:
    """Two lines of eight groups: easier to read out over the phone, and it fits the table."""
    groups = fingerprint.split()
    return " ".join(groups[:8]) + "\n" + " ".join(groups[8:])


def _federation_error(message: str) -> Exception:
    from core.errors import FederationError

    return FederationError(message)

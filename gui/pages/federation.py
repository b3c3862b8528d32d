"""Federation: review an invitation (who, where, the plan, its privacy cost) and take part in it.

The page renders and asks the user; gui.federation_session.FederationSession owns the membership's
state, jobs and events. A privacy cap a join needs is set right here (prefilled with the plan's δ), and the
moment the coordinator publishes the last model the page shows a completion card (the final evaluation,
the ε spent, Open in Viewer) and hides what no longer applies.

It is one module past 400 lines because it is one page the user walks down in order (the invitation, the
plan and its cost, the cap, the run, its end, the peers); the state and the jobs are in the session.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLineEdit,
    QListWidget,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from gui.context import AppContext
from gui.dialogs import confirm, show_error
from gui.federation_jobs import CoordinatorView, InvitationReview
from gui.federation_session import Completion, FederationSession, Membership
from gui.ledger_jobs import set_cap
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
    from core.federation.plan import EVALUATION_NOTE, threat_model_text

    rows.append(("Threat model", threat_model_text(plan)))
    rows.append(("Model evaluation", EVALUATION_NOTE))
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
                                 button_text="Open invitation…", memory=context.folders, purpose="invitation")
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
        self.cap_box = self._cap_box()
        self.completion_card = self._completion_card()
        buttons = QHBoxLayout()
        self.join_button = button("Join", primary=True)
        self.pause_button = button("Pause")
        self.leave_button = button("Leave", danger=True)
        for widget in (self.join_button, self.pause_button, self.leave_button):
            buttons.addWidget(widget)
        buttons.addStretch(1)
        for widget in (self.completion_card, self.federation_card, self.check_note, self.plan_card, self.cost,
                       self.cap_box, self.until_cap):
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
        right.addStretch(1)  # the "Now" card keeps its own height beside a long plan

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
        session.completed.connect(self.show_completion)
        self._plots = {"metrics": self.metrics_plot, "epsilon": self.epsilon_plot}

        self.picker.path_chosen.connect(self.open_invitation)
        self.join_button.clicked.connect(self.start)
        self.pause_button.clicked.connect(self.pause)
        self.leave_button.clicked.connect(self.leave)
        self.until_cap.toggled.connect(lambda _checked: self._update_buttons())
        self.privacy_link.clicked.connect(lambda: context.navigate("privacy"))
        self.set_cap_button.clicked.connect(self.set_cap)
        self.open_final_button.clicked.connect(self._open_final)
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
        self.privacy_link.setVisible(False)
        self._show_cap_box(review)
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
        # A missing cap is no error: the box below sets it.
        blocked = bool(review.problem) and not (review.needs_cap and review.problem.startswith("This federation uses"))
        self.cost.show_message(text, "error" if over or blocked else "privacy")
        self.until_cap.setVisible(over)

    # ---- the privacy cap, where a join needs it ------------------------------------------------------
    def _cap_box(self) -> Card:
        box = Card("Set this hospital's privacy cap")
        self.cap_text = label("", "muted")
        self.cap_text.setTextFormat(Qt.TextFormat.RichText)
        box.body.addWidget(self.cap_text)
        form = QFormLayout()
        self.cap_value = QDoubleSpinBox()
        self.cap_value.setRange(0.01, 1000.0)
        self.cap_value.setDecimals(2)
        self.cap_value.setSingleStep(1.0)
        self.cap_delta = QLineEdit()
        form.addRow("Cap ε (epsilon)", self.cap_value)
        form.addRow("δ (delta)", self.cap_delta)
        box.body.addLayout(form)
        self.set_cap_button = button("Set the cap", primary=True)
        box.body.addWidget(self.set_cap_button)
        box.setVisible(False)
        return box

    def _show_cap_box(self, review: InvitationReview) -> None:
        needed = review.needs_cap and self.session.state != Membership.FINISHED
        self.cap_box.setVisible(needed)
        if not needed:
            return
        plan = review.invitation.plan
        cost = review.epsilon_cost
        if not self.cap_delta.text().strip():
            self.cap_delta.setText(f"{plan.delta:g}")
        if cost is not None and self.cap_value.value() in (0.01, self.cap_value.minimum()):
            self.cap_value.setValue(_round_up(cost))
        costs = f" Taking part in the whole plan costs ε = {cost:.3g}; a lower cap stops this hospital early." \
            if cost is not None else ""
        self.cap_text.setText(
            "This hospital has no privacy cap yet. The cap is the most privacy loss (ε) this hospital will ever "
            "spend, over all its training and federations together; any work that would pass it is refused "
            f"before it starts.{costs} δ is the plan's ({plan.delta:g}): keep it unless your privacy officer "
            "chose another. Later changes are made on the Privacy page; every change is recorded in the signed "
            "audit log.")

    def set_cap(self) -> None:
        from core.errors import PrivacyError

        try:
            delta = float(self.cap_delta.text().strip())
        except ValueError:
            show_error(self, PrivacyError("Give δ as a number, for example 1e-5 (the plan's δ is prefilled)."))
            return
        self.set_cap_button.setEnabled(False)
        self.context.runner.start(
            set_cap, self.context.home.root, float(self.cap_value.value()), delta,
            source="the app's Federation page, before joining", name="set cap",
            on_done=self._cap_set, on_error=lambda exc: (self.set_cap_button.setEnabled(True), show_error(self, exc)))

    def _cap_set(self, snapshot: Any) -> None:
        self.set_cap_button.setEnabled(True)
        self._say(snapshot.notice)
        self.context.ledger_changed.emit()  # the review is made again against the new cap

    # ---- the end -------------------------------------------------------------------------------------
    def _completion_card(self) -> Card:
        card = Card("The federation finished")
        self.completion_text = label("", "")
        self.completion_text.setTextFormat(Qt.TextFormat.RichText)
        card.body.addWidget(self.completion_text)
        self.completion_banner = Banner("", "ok")
        card.body.addWidget(self.completion_banner)
        self.completion_rows = KeyValueCard("Final model")
        card.body.addWidget(self.completion_rows)
        self.open_final_button = button("Open in Viewer", primary=True)
        card.body.addWidget(self.open_final_button)
        card.setVisible(False)
        return card

    def show_completion(self, done: Completion) -> None:
        from core.inference.assessment import assess

        plan = self.review.invitation.plan if self.review is not None else None
        classes = list(plan.classes) if plan is not None else []
        evaluation = done.metrics or {}
        verdict = assess(type("Card", (), {"classes": classes, "metrics": {"evaluation": evaluation}})())
        rows: list[tuple[str, object]] = [("Rounds", f"{done.rounds} of {done.rounds}")]
        if isinstance(evaluation.get("accuracy"), int | float):
            baseline = evaluation.get("majority_baseline")
            rows.append(("Accuracy", f"{evaluation['accuracy']:.3f}" + (
                f" (always answering “{evaluation.get('majority_class')}”: {baseline:.3f})"
                if isinstance(baseline, int | float) else "")))
        if isinstance(evaluation.get("kappa"), int | float):
            rows.append(("Quadratic κ", f"{evaluation['kappa']:.3f}"))
        if isinstance(evaluation.get("images"), int):
            rows.append(("Test images", f"{evaluation['images']}, held by the coordinator"))
        if done.epsilon is not None:
            cap = f" (cap {done.cap:g})" if done.cap is not None else ""
            rows.append(("ε spent by this hospital", f"{done.epsilon:.3g} in total{cap}"))
        if done.participated is not None:
            rows.append(("This hospital's rounds", f"its update is in {done.participated} round(s)"))
        self.completion_rows.set_rows(rows)
        self.completion_text.setText("The coordinator published the final model. Nothing more is sent or "
                                     "charged for this federation.")
        if verdict.trustworthy:
            self.completion_banner.show_message(escape_html(verdict.message), "ok")
        else:  # the reasons are in the model card (Models page, Viewer)
            self.completion_banner.show_message(f"<b>{escape_html(verdict.headline)}.</b> "
                                                f"{escape_html(verdict.short)}", "error")
        self.open_final_button.setEnabled(done.model_path is not None and Path(done.model_path).exists())
        self.open_final_button.setText("Open in Viewer" if self.open_final_button.isEnabled()
                                       else "Open in Viewer (fetching the final model…)")
        self.completion_card.setVisible(True)
        self._update_buttons()

    def _open_final(self) -> None:
        done = self.session.completion
        if done is not None and done.model_path is not None:
            self.context.open_in_viewer(Path(done.model_path))

    # ---- taking part -------------------------------------------------------------------------------
    def _update_buttons(self) -> None:
        review, state = self.review, self.session.state
        finished = state == Membership.FINISHED
        over = review is not None and review.verdict is not None and not review.verdict.allowed
        ready = review is not None and not review.problem and (not over or self.until_cap.isChecked())
        self.join_button.setEnabled(ready and not self.running and not finished)
        self.join_button.setText("Resume" if review is not None and review.resumable else "Join")
        self.pause_button.setEnabled(self.running and not finished)
        self.leave_button.setEnabled(review is not None and state not in (Membership.LEFT, Membership.FINISHED))
        # A finished federation has no cost ahead, nothing to resume and nothing to leave.
        for widget in (self.join_button, self.pause_button, self.leave_button, self.cost):
            widget.setVisible(not finished and (widget is not self.cost or bool(self.cost.text())))
        if finished:
            self.until_cap.setVisible(False)
            self.cap_box.setVisible(False)
            self.progress.setVisible(False)
        self.completion_card.setVisible(finished and self.session.completion is not None)

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
            values = (name, peer_status(view, peer.status),
                      "" if peer.rounds_included is None else str(peer.rounds_included), fingerprint)
            for column, value in enumerate(values):
                self.peers.setItem(row, column, QTableWidgetItem(value))
        self.peers.resizeRowsToContents()

    def _say(self, text: str) -> None:
        self.messages.addItem(f"{datetime.now():%H:%M:%S}  {text}")
        self.messages.scrollToBottom()


def peer_status(view: CoordinatorView, status: str) -> str:
    """A hospital's state as of this view: once the federation finished, nobody is still "active"."""
    if view.status == "finished" and status in ("active", "enrolled", "waiting"):
        return "finished"
    if view.status == "stopped" and status == "active":
        return "stopped"
    return status


def escape_html(text: str) -> str:
    from html import escape

    return escape(text, quote=False)


def _round_up(cost: float) -> float:
    """A round cap at or just above ``cost``: 29.4 -> 30, 2.31 -> 2.4, 0.123 -> 0.13."""
    import math

    if cost >= 10:
        return float(math.ceil(cost))
    if cost >= 1:
        return math.ceil(cost * 10) / 10
    return max(0.01, math.ceil(cost * 100) / 100)


def _two_lines(fingerprint: str) -> str:
    """Two lines of eight groups: easier to read out over the phone, and it fits the table."""
    groups = fingerprint.split()
    return " ".join(groups[:8]) + "\n" + " ".join(groups[8:])


def _federation_error(message: str) -> Exception:
    from core.errors import FederationError

    return FederationError(message)

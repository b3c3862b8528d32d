"""Federation: review an invitation (who, where, the plan, its privacy cost) and take part in it."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer
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

from gui.context import AppContext, FederationStatus
from gui.dialogs import confirm, show_error
from gui.federation_jobs import CoordinatorView, InvitationReview, coordinator_view, join, review_invitation
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
PHASE_WORDS = {
    "update": "training locally and sending the update",
    "advertise": "exchanging keys for secure aggregation",
    "share": "sending encrypted key shares",
    "mask": "computing and sending the masked, noised update",
    "consistency": "confirming which hospitals' updates are in the sum",
    "unmask": "helping to unmask the sum",
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

        self.review: InvitationReview | None = None
        self.view: CoordinatorView | None = None
        self.job = None
        self._view_job = None
        self._offline = False
        self._leaving = False
        self.my_fingerprint = ""
        self._roster_code: str | None = None  # shown to the user, waiting for confirmation
        self._accepted_roster: str | None = None
        self._round_losses: dict[int, list[float]] = {}
        self._state = "none"
        self._poll = QTimer(self)
        self._poll.setInterval(5000)
        self._poll.timeout.connect(self.refresh_view)

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

    # ---- reviewing -------------------------------------------------------------------------------
    def _num_images(self) -> int | None:
        report = self.context.dataset_report
        if report is None:
            return None
        return sum(1 for s in report.usable_samples if s.label is not None)

    def open_invitation(self, path: Path) -> None:
        if self.running:
            show_error(self, _federation_error("Pause or leave the current federation before opening another invitation."))
            return
        self.context.runner.start(
            review_invitation, Path(path), num_images=self._num_images(), home=self.context.home,
            name="review invitation", on_done=self.show_review, on_error=lambda e: show_error(self, e))

    def reload(self) -> None:
        if self.review is not None and not self.running:
            self.open_invitation(self.review.path)

    def _ledger_changed(self) -> None:
        if not self.running:
            self.reload()

    def show_review(self, review: InvitationReview) -> None:
        self.review = review
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
        if self.context.settings.invitation != review.path:
            self.context.settings.invitation = review.path
            self.context.save_settings()
        if self._state in ("none", "invited", "left", "error"):
            self._set_state("paused" if review.resumable else "invited")
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
    @property
    def running(self) -> bool:
        return self.job is not None and self.job.running

    def _update_buttons(self) -> None:
        review = self.review
        over = review is not None and review.verdict is not None and not review.verdict.allowed
        ready = review is not None and not review.problem and (not over or self.until_cap.isChecked())
        self.join_button.setEnabled(ready and not self.running and self._state != "finished")
        self.join_button.setText("Resume" if review is not None and review.resumable else "Join")
        self.pause_button.setEnabled(self.running)
        self.leave_button.setEnabled(review is not None and self._state not in ("left", "finished"))

    def start(self) -> None:
        review = self.review
        if review is None or self.running:
            return
        dataset = self.context.settings.dataset
        if dataset is None:
            show_error(self, _federation_error("Choose this hospital's images on the Data page first."))
            return
        self._offline = False
        self.network.setVisible(False)
        self._say(f"{'Resuming' if review.resumable else 'Joining'} {review.invitation.federation_name} "
                  f"at {review.invitation.coordinator_url}.")
        self._set_state("joining")
        for plot in (self.metrics_plot, self.epsilon_plot):
            plot.set_x_range(0.5, review.invitation.plan.rounds + 0.5)
        self.job = self.context.runner.start(
            join, review, data=Path(dataset), home=self.context.home.root, accept_roster=self._accepted_roster,
            threads=self.context.settings.cpu_threads, name="federation", precious=True,
            on_event=self.handle_event, on_done=self._done, on_error=self._failed, on_cancelled=self._paused)
        self.job.finished.connect(self._job_ended)
        self.progress.bind(self.job, "Preparing the images…")
        self._update_buttons()

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
        self._say("Pausing at the next safe point…")
        self.job.cancel()

    def leave(self) -> None:
        if self.review is None:
            return
        if not confirm(self, "Leave the federation?",
                       "This hospital stops taking part. The others continue without it. Models already "
                       "received and the privacy ledger stay on this computer.", yes="Leave"):
            return
        self._leaving = True
        if self.running:
            self.job.cancel()
        else:
            self._left()

    def _left(self) -> None:
        self._leaving = False
        self._poll.stop()
        self.context.settings.invitation = None
        self.context.save_settings()
        self._say("This hospital left the federation.")
        self._set_state("left")
        self._update_buttons()

    def _job_ended(self) -> None:
        self._poll.stop()
        self.reload()  # the cost against the cap, now from the ledger as it is after this run
        self._update_buttons()

    def _paused(self) -> None:
        if self._leaving:
            self._left()
            return
        self._say("Paused. Nothing is lost: Resume continues where this hospital stopped.")
        if self.review is not None:
            self.review.resumable = True
        self._set_state("paused")

    def _failed(self, exc: BaseException) -> None:
        self._say(f"Stopped: {exc}")
        self._set_state("error", str(exc))
        show_error(self, exc)
        self.context.ledger_changed.emit()

    def confirm_roster(self) -> None:
        """The user compared every fingerprint by phone: sign this roster and take part."""
        if self._roster_code is None or not confirm(
                self, "Confirm the roster?",
                "Only confirm if every hospital read out exactly the fingerprint shown for it. This hospital then "
                f"signs the roster {self._roster_code} and takes part in its rounds.", yes="Confirm and take part"):
            return
        self._accepted_roster = self._roster_code
        self.confirm_roster_button.setVisible(False)
        self.roster_note.setVisible(False)
        self._say(f"Roster {self._roster_code} confirmed.")
        self.start()

    def _done(self, result: Any) -> None:
        if result.reason == "roster":
            self._say("Every hospital has enrolled. Compare the fingerprints below with each hospital, then confirm.")
            self._set_state("paused")
            return
        words = {"completed": "The federation finished", "declined": "This hospital stopped at its privacy cap",
                 "stopped": "The coordinator stopped the federation"}
        self._say(f"{words.get(result.reason, result.reason)}: took part in {len(result.rounds_participated)} "
                  f"round(s), ε = {result.epsilon:.3g} spent in total, {result.bytes_sent:,} bytes sent."
                  + (" The final model is on the Models page." if result.model_path else ""))
        self._set_state("finished" if result.reason == "completed" else "left" if result.reason == "declined"
                        else "error", epsilon=result.epsilon)
        self.context.models_changed.emit()
        self.context.ledger_changed.emit()
        self.refresh_view()

    # ---- events from the client ------------------------------------------------------------------
    def handle_event(self, event: Any) -> None:
        kind = event.kind
        if kind != "error" and self._offline:
            self._offline = False
            self.network.show_message("Contact with the coordinator restored.", "ok")
            self._say("Contact with the coordinator restored.")
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(event)

    def _on_plan(self, event: Any) -> None:
        self._say(f"Images checked: {event.num_images} usable. Plan confirmed (hash {event.plan_hash[:12]}…).")

    def _on_enrolled(self, event: Any) -> None:
        self._say(f"Enrolled as {event.hospital_name}. This hospital's identity fingerprint: {event.fingerprint}")
        self.my_fingerprint = event.fingerprint
        self._set_state("running")
        self.refresh_view()
        self._poll.start()

    def _on_roster(self, event: Any) -> None:
        """The frozen roster, shown for the user to confirm out of band before this hospital signs it."""
        self._roster_code = event.code
        self.peers.setRowCount(len(event.hospitals))
        for row, hospital in enumerate(event.hospitals):
            name = f"{hospital['name']} ({hospital['hospital_id']})" + (
                " — this hospital" if hospital["this_hospital"] else "")
            groups = hospital["fingerprint"].split()
            values = (name, f"enrolled, {hospital['num_images']} images", "",
                      " ".join(groups[:8]) + "\n" + " ".join(groups[8:]))
            for column, value in enumerate(values):
                self.peers.setItem(row, column, QTableWidgetItem(value))
        self.peers.resizeRowsToContents()
        self.roster_note.show_message(
            f"<b>Confirm the roster {event.code} before any round.</b> Call each hospital and compare the "
            "fingerprint it reads out with the one shown here. If one differs, do not confirm: the coordinator "
            f"may have enrolled someone else. {event.threat_model}", "warning")
        self.confirm_roster_button.setVisible(True)

    def _on_round_started(self, event: Any) -> None:
        self._set_state("running", round=event.round, rounds=event.rounds)
        self.state_label.setText(f"Round {event.round} of {event.rounds}")
        self._say(f"Round {event.round} of {event.rounds} started.")
        self.refresh_view()

    def _on_phase(self, event: Any) -> None:
        self.detail_label.setText(f"Phase: {PHASE_WORDS.get(event.phase, event.phase)}")

    def _on_local_step(self, event: Any) -> None:
        self._round_losses.setdefault(event.round, []).append(event.loss)

    def _on_uploaded(self, event: Any) -> None:
        self._say(f"Round {event.round}: sent {event.what} ({event.bytes:,} bytes).")
        losses = self._round_losses.get(event.round)
        if losses:
            self.metrics_plot.append("local loss", event.round, sum(losses) / len(losses))

    def _on_budget_charged(self, event: Any) -> None:
        self.epsilon_plot.append("ε spent", event.round, event.epsilon)
        self.epsilon_plot.set_limit("cap", event.max_epsilon)
        self._set_state(self._state, epsilon=event.epsilon, cap=event.max_epsilon)
        self.context.ledger_changed.emit()

    def _on_model_received(self, event: Any) -> None:
        evaluation = event.metrics or {}
        for name, words in (("accuracy", "shared model accuracy"), ("kappa", "shared model κ")):
            if isinstance(evaluation.get(name), int | float):
                self.metrics_plot.append(words, event.round, float(evaluation[name]))
        self._say(f"New shared model after round {event.round}"
                  + (" (this hospital's update is in it)." if event.included else "."))
        self.context.models_changed.emit()

    def _on_declined(self, event: Any) -> None:
        self._say(f"Stopped taking part: {event.reason}.")

    def _on_finished(self, event: Any) -> None:
        self.state_label.setText("Finished" if event.reason == "completed" else event.reason.capitalize())
        self.detail_label.setText(f"Took part in {len(event.rounds_participated)} round(s); "
                                  f"ε = {event.epsilon:.3g} spent by this hospital in total.")

    def _on_error(self, event: Any) -> None:
        if event.fatal:
            self._say(event.message)
            return
        if not self._offline:
            self._offline = True
            text = (f"Lost contact with the coordinator ({event.message}). Retrying automatically; "
                    "nothing is lost and nothing is sent twice.")
            self.network.show_message(text, "warning")
            self._say(text)

    # ---- coordinator view and status -------------------------------------------------------------
    def refresh_view(self) -> None:
        review = self.review
        if review is None or (self._view_job is not None and self._view_job.running):
            return
        if not (review.workdir / "state.json").exists():
            return
        self._view_job = self.context.runner.start(
            coordinator_view, review.path, review.workdir, self.context.home, name="coordinator status",
            on_done=self.show_view, on_error=lambda e: self.detail_label.setText(f"Status unavailable: {e}"))

    def show_view(self, view: CoordinatorView) -> None:
        self.view = view
        self.peers.setRowCount(len(view.peers))
        for row, peer in enumerate(view.peers):
            name = f"{peer.name} ({peer.hospital_id})" + (" — this hospital" if peer.is_this_hospital else "")
            groups = peer.fingerprint.split()
            # Two lines of eight groups: easier to read out over the phone, and it fits the table.
            fingerprint = " ".join(groups[:8]) + "\n" + " ".join(groups[8:])
            if not peer.coordinator_agrees:
                fingerprint += "\n⚠ differs from the fingerprint the coordinator reports"
            values = (name, peer.status, "" if peer.rounds_included is None else str(peer.rounds_included),
                      fingerprint)
            for column, value in enumerate(values):
                self.peers.setItem(row, column, QTableWidgetItem(value))
        self.peers.resizeRowsToContents()
        if view.status == "running" and self._state == "running":
            self.state_label.setText(f"Round {view.round} of {view.rounds}")
            participants = ", ".join(view.last_included) if view.last_included else "—"
            self.detail_label.setText(
                f"Phase: {PHASE_WORDS.get(view.phase, view.phase) or 'waiting'}. "
                f"{len(view.peers)} hospitals enrolled; last round included: {participants}.")

    def _set_state(self, state: str, message: str = "", *, round: int | None = None, rounds: int | None = None,
                   epsilon: float | None = None, cap: float | None = None) -> None:
        self._state = state
        old = self.context.federation
        review = self.review
        status = FederationStatus(
            state=state, name=review.invitation.federation_name if review else "",
            coordinator=review.invitation.coordinator_url if review else "",
            round=round if round is not None else old.round,
            rounds=rounds if rounds is not None else (review.invitation.plan.rounds if review else 0),
            epsilon_spent=epsilon if epsilon is not None else old.epsilon_spent,
            epsilon_cap=cap if cap is not None else old.epsilon_cap, message=message)
        self.context.set_federation(status)
        if state in ("invited", "paused", "joining", "left", "finished", "error"):
            self.state_label.setText({"invited": "Not joined yet", "paused": "Paused", "joining": "Joining…",
                                      "left": "Left", "finished": "Finished", "error": "Stopped"}[state])

    def _say(self, text: str) -> None:
        self.messages.addItem(f"{datetime.now():%H:%M:%S}  {text}")
        self.messages.scrollToBottom()


def _federation_error(message: str) -> Exception:
    from core.errors import FederationError

    return FederationError(message)

"""The app's side of one federation membership: its state, its jobs and the client's events.

``FederationSession`` owns what the Federation page shows: the reviewed invitation, the membership
state, the running join job, the roster waiting for confirmation, the coordinator's view. It runs every
job through the context's runner (worker threads; the membership itself in a child process) and tells
the page what changed through signals; the page only renders and asks the user. Events from the client
(core.federation.events) are dispatched by type, not by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from core.federation import events as ev
from gui.context import AppContext, ExpectedImages, FederationStatus
from gui.federation_jobs import (
    CoordinatorView,
    InvitationReview,
    coordinator_view,
    join,
    leave_federation,
    review_invitation,
)


class Membership(StrEnum):
    NONE = "none"  # no invitation open
    INVITED = "invited"  # reviewed, not joined yet
    JOINING = "joining"  # the join job is starting
    RUNNING = "running"
    PAUSED = "paused"  # stopped by the user (or waiting for the roster to be confirmed); Resume continues
    LEFT = "left"
    FINISHED = "finished"
    ERROR = "error"


PHASE_WORDS = {
    "update": "training locally and sending the update",
    "advertise": "exchanging keys for secure aggregation",
    "share": "sending encrypted key shares",
    "mask": "computing and sending the masked, noised update",
    "consistency": "confirming which hospitals' updates are in the sum",
    "unmask": "helping to unmask the sum",
}
STATE_WORDS = {Membership.INVITED: "Not joined yet", Membership.PAUSED: "Paused", Membership.JOINING: "Joining…",
               Membership.LEFT: "Left", Membership.FINISHED: "Finished", Membership.ERROR: "Stopped"}


@dataclass
class Completion:
    """What the page shows the moment the coordinator publishes the last round's model."""

    rounds: int
    metrics: dict = field(default_factory=dict)  # the coordinator's evaluation of the final model
    epsilon: float | None = None  # spent by this hospital in total
    cap: float | None = None
    model_path: Path | None = None  # None while the final model is being fetched
    participated: int | None = None  # rounds this hospital's update is in


class FederationSession(QObject):
    review_changed = Signal(object)  # InvitationReview
    state_changed = Signal(str)  # Membership
    headline = Signal(str)  # what the "Now" card says in one line
    detail = Signal(str)  # and under it
    said = Signal(str)  # a line for the log of what happened
    network = Signal(str, str)  # banner text and kind ("" hides it)
    roster_to_confirm = Signal(object)  # ev.RosterReview
    roster_confirmed = Signal()
    view_changed = Signal(object)  # CoordinatorView
    point = Signal(str, str, float, float)  # plot ("metrics" | "epsilon"), series, round, value
    cap = Signal(object)  # the epsilon cap for the plot's limit line (or None)
    job_started = Signal(object)  # the join job, for the progress bar
    busy_changed = Signal()  # running or not: the page updates its buttons
    failed = Signal(object)  # an exception to show in a dialog
    models_changed = Signal()
    completed = Signal(object)  # Completion: shown at once, updated as the model and the figures arrive

    def __init__(self, context: AppContext, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.context = context
        self.review: InvitationReview | None = None
        self.view: CoordinatorView | None = None
        self.job = None
        self.state = Membership.NONE
        self.my_fingerprint = ""
        self.roster_code: str | None = None  # shown to the user, waiting for confirmation
        self.accepted_roster: str | None = None
        self._view_job = None
        self._offline = False
        self._leaving = False
        self._round_losses: dict[int, list[float]] = {}
        self.completion: Completion | None = None
        self._poll = QTimer(self)
        self._poll.setInterval(5000)
        self._poll.timeout.connect(self.refresh_view)
        self._handlers = {
            ev.PlanReview: self._on_plan, ev.Enrolled: self._on_enrolled, ev.RosterReview: self._on_roster,
            ev.RoundStarted: self._on_round_started, ev.PhaseChanged: self._on_phase,
            ev.LocalStepDone: self._on_local_step, ev.Uploaded: self._on_uploaded,
            ev.BudgetCharged: self._on_budget_charged, ev.ModelReceived: self._on_model_received,
            ev.Declined: self._on_declined, ev.Finished: self._on_finished, ev.ErrorEvent: self._on_error,
        }

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.running

    # ---- reviewing -------------------------------------------------------------------------------
    def open_invitation(self, path: Path, num_images: int | None) -> bool:
        if self.running:
            return False
        report = self.context.dataset_report
        classes = list(report.classes) if report is not None else None
        self.context.runner.start(review_invitation, Path(path), num_images=num_images, home=self.context.home,
                                  classes=classes, name="review invitation", on_done=self._reviewed,
                                  on_error=self.failed.emit)
        return True

    def _reviewed(self, review: InvitationReview) -> None:
        if self.review is None or self.review.path != review.path:
            self.completion = None
        self.review = review
        plan = review.invitation.plan
        # The Data page checks the images for this plan: its input size and classes.
        self.context.set_expected_images("federation", ExpectedImages(
            size=int(plan.image_size), classes=list(plan.classes),
            source=f"the plan of {review.invitation.federation_name}"))
        if self.context.settings.invitation != review.path:
            self.context.settings.invitation = review.path
            self.context.save_settings()
        if self.state in (Membership.NONE, Membership.INVITED, Membership.LEFT, Membership.ERROR):
            self._set_state(Membership.PAUSED if review.resumable else Membership.INVITED)
        self.review_changed.emit(review)

    # ---- taking part -------------------------------------------------------------------------------
    def start(self, dataset: Path) -> None:
        review = self.review
        if review is None or self.running:
            return
        self._offline = False
        self.network.emit("", "")
        self.said.emit(f"{'Resuming' if review.resumable else 'Joining'} {review.invitation.federation_name} "
                       f"at {review.invitation.coordinator_url}.")
        self._set_state(Membership.JOINING)
        self.job = self.context.runner.start(
            join, review, data=Path(dataset), home=self.context.home.root, accept_roster=self.accepted_roster,
            threads=self.context.settings.cpu_threads, device=self.context.settings.device, name="federation",
            precious=True,
            on_event=self.handle_event, on_done=self._done, on_error=self._failed, on_cancelled=self._paused)
        self.job.finished.connect(self._job_ended)
        self.job_started.emit(self.job)
        self.busy_changed.emit()

    def pause(self) -> None:
        if self.running:
            self.said.emit("Pausing at the next safe point…")
            self.job.cancel()

    def leave(self) -> None:
        self._leaving = True
        if self.running:
            self.job.cancel()
        else:
            self._left()

    def confirm_roster(self) -> None:
        """The user compared every fingerprint by phone: sign this roster and take part."""
        self.accepted_roster = self.roster_code
        self.said.emit(f"Roster {self.roster_code} confirmed.")
        self.roster_confirmed.emit()
        self.start(Path(self.context.settings.dataset))

    def _left(self) -> None:
        self._leaving = False
        self._poll.stop()
        review = self.review
        if review is not None and (review.workdir / "state.json").exists():
            # The coordinator records it: the others are not kept waiting for this hospital.
            self.context.runner.start(
                leave_federation, review.path, self.context.home, name="leave federation",
                on_done=lambda _r: self.said.emit("The coordinator was told that this hospital left."),
                on_error=lambda e: self.said.emit(f"The coordinator could not be told ({e}); it will stop waiting "
                                                  "for this hospital when it no longer answers."))
        self.context.settings.invitation = None
        self.context.save_settings()
        self.context.set_expected_images("federation", None)
        self.said.emit("This hospital left the federation.")
        self._set_state(Membership.LEFT)
        self.busy_changed.emit()

    def _job_ended(self) -> None:
        self._poll.stop()
        if self.review is not None:
            self.open_invitation(self.review.path, self._num_images())  # the cost, from the ledger as it is now
        self.busy_changed.emit()

    def _num_images(self) -> int | None:
        report = self.context.dataset_report
        return None if report is None else sum(1 for s in report.usable_samples if s.label is not None)

    def _paused(self) -> None:
        if self._leaving:
            self._left()
            return
        self.said.emit("Paused. Nothing is lost: Resume continues where this hospital stopped.")
        if self.review is not None:
            self.review.resumable = True
        self._set_state(Membership.PAUSED)

    def _failed(self, exc: BaseException) -> None:
        self.said.emit(f"Stopped: {exc}")
        self._set_state(Membership.ERROR, str(exc))
        self.failed.emit(exc)
        self.context.ledger_changed.emit()

    def _done(self, result: Any) -> None:
        if result.reason == "roster":
            self.said.emit("Every hospital has enrolled. Compare the fingerprints below with each hospital, "
                           "then confirm.")
            self._set_state(Membership.PAUSED)
            return
        words = {"completed": "The federation finished", "declined": "This hospital stopped at its privacy cap",
                 "stopped": "The coordinator stopped the federation", "left": "This hospital left the federation"}
        self.said.emit(f"{words.get(result.reason, result.reason)}: took part in {len(result.rounds_participated)} "
                       f"round(s), ε = {result.epsilon:.3g} spent in total, {result.bytes_sent:,} bytes sent."
                       + (" The final model is on the Models page." if result.model_path else ""))
        state = {"completed": Membership.FINISHED, "declined": Membership.LEFT, "left": Membership.LEFT}
        self._set_state(state.get(result.reason, Membership.ERROR), epsilon=result.epsilon)
        if result.reason == "completed":
            self._complete(epsilon=result.epsilon, participated=len(result.rounds_participated),
                           model_path=Path(result.model_path) if result.model_path else None)
        self.context.models_changed.emit()
        self.context.ledger_changed.emit()
        self.refresh_view()

    # ---- events from the client ------------------------------------------------------------------
    def handle_event(self, event: Any) -> None:
        if not isinstance(event, ev.ErrorEvent) and self._offline:
            self._offline = False
            self.network.emit("Contact with the coordinator restored.", "ok")
            self.said.emit("Contact with the coordinator restored.")
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)

    def _on_plan(self, event: ev.PlanReview) -> None:
        self.said.emit(f"Images checked: {event.num_images} usable. Plan confirmed (hash {event.plan_hash[:12]}…).")

    def _on_enrolled(self, event: ev.Enrolled) -> None:
        self.said.emit(f"Enrolled as {event.hospital_name}. This hospital's identity fingerprint: {event.fingerprint}")
        self.my_fingerprint = event.fingerprint
        self._set_state(Membership.RUNNING)
        self.refresh_view()
        self._poll.start()

    def _on_roster(self, event: ev.RosterReview) -> None:
        self.roster_code = event.code
        self.roster_to_confirm.emit(event)

    def _on_round_started(self, event: ev.RoundStarted) -> None:
        self._set_state(Membership.RUNNING, round=event.round, rounds=event.rounds)
        self.headline.emit(f"Round {event.round} of {event.rounds}")
        self.said.emit(f"Round {event.round} of {event.rounds} started.")
        self.refresh_view()

    def _on_phase(self, event: ev.PhaseChanged) -> None:
        self.detail.emit(f"Phase: {PHASE_WORDS.get(event.phase, event.phase)}")

    def _on_local_step(self, event: ev.LocalStepDone) -> None:
        self._round_losses.setdefault(event.round, []).append(event.loss)

    def _on_uploaded(self, event: ev.Uploaded) -> None:
        self.said.emit(f"Round {event.round}: sent {event.what} ({event.bytes:,} bytes).")
        losses = self._round_losses.get(event.round)
        if losses:
            self.point.emit("metrics", "local loss", event.round, sum(losses) / len(losses))

    def _on_budget_charged(self, event: ev.BudgetCharged) -> None:
        self.point.emit("epsilon", "ε spent", event.round, event.epsilon)
        self.cap.emit(event.max_epsilon)
        self._set_state(self.state, epsilon=event.epsilon, cap=event.max_epsilon)
        self.context.ledger_changed.emit()

    def _on_model_received(self, event: ev.ModelReceived) -> None:
        evaluation = event.metrics or {}
        for name, words in (("accuracy", "shared model accuracy"), ("kappa", "shared model κ")):
            if isinstance(evaluation.get(name), int | float):
                self.point.emit("metrics", words, event.round, float(evaluation[name]))
        self.said.emit(f"New shared model after round {event.round}"
                       + (" (this hospital's update is in it)." if event.included else "."))
        self.context.models_changed.emit()
        if self.review is not None and event.round >= self.review.invitation.plan.rounds:
            self._complete(metrics=dict(evaluation))  # the last round: finished, whatever the client does next

    def _on_declined(self, event: ev.Declined) -> None:
        self.said.emit(f"Stopped taking part: {event.reason}.")

    def _on_finished(self, event: ev.Finished) -> None:
        self.headline.emit("Finished" if event.reason == "completed" else event.reason.capitalize())
        self.detail.emit(f"Took part in {len(event.rounds_participated)} round(s); "
                         f"ε = {event.epsilon:.3g} spent by this hospital in total.")
        if event.reason == "completed":
            self._complete(epsilon=event.epsilon, participated=len(event.rounds_participated),
                           model_path=Path(event.model_path) if event.model_path else None)

    def _complete(self, *, metrics: dict | None = None, epsilon: float | None = None,
                  participated: int | None = None, model_path: Path | None = None) -> None:
        """The federation is over: say so at once, and fill in what is known (called again as more arrives)."""
        review = self.review
        if review is None:
            return
        status = self.context.federation
        done = self.completion or Completion(rounds=review.invitation.plan.rounds)
        if metrics:
            done.metrics = metrics
        done.epsilon = epsilon if epsilon is not None else (done.epsilon if done.epsilon is not None
                                                             else status.epsilon_spent)
        done.cap = status.epsilon_cap if status.epsilon_cap is not None else review.ledger.max_epsilon
        done.participated = participated if participated is not None else done.participated
        if model_path is None and done.model_path is None:
            final = review.workdir / "models" / "final.dpm"
            model_path = final if final.exists() else None
        done.model_path = model_path or done.model_path
        first = self.completion is None
        self.completion = done
        if self.state != Membership.FINISHED:
            self._set_state(Membership.FINISHED, epsilon=done.epsilon)
        if first:
            self.said.emit(f"The federation finished: the coordinator published the model of round {done.rounds}.")
            self.refresh_view()
        self.completed.emit(done)

    def _on_error(self, event: ev.ErrorEvent) -> None:
        if event.fatal:
            self.said.emit(event.message)
            return
        if not self._offline:
            self._offline = True
            text = (f"Lost contact with the coordinator ({event.message}). Retrying automatically; "
                    "nothing is lost and nothing is sent twice.")
            self.network.emit(text, "warning")
            self.said.emit(text)

    # ---- the coordinator's view --------------------------------------------------------------------
    def refresh_view(self) -> None:
        review = self.review
        if review is None or (self._view_job is not None and self._view_job.running):
            return
        if not (review.workdir / "state.json").exists():
            return
        self._view_job = self.context.runner.start(
            coordinator_view, review.path, self.context.home, name="coordinator status",
            on_done=self._viewed, on_error=lambda e: self.detail.emit(f"Status unavailable: {e}"))

    def _viewed(self, view: CoordinatorView) -> None:
        self.view = view
        self.view_changed.emit(view)
        if view.status == "finished" and self.state in (Membership.RUNNING, Membership.JOINING, Membership.FINISHED):
            self._complete(metrics=dict(view.last_metrics) if view.last_metrics else None)
        if view.status == "running" and self.state == Membership.RUNNING:
            self.headline.emit(f"Round {view.round} of {view.rounds}")
            participants = ", ".join(view.last_included) if view.last_included else "—"
            self.detail.emit(f"Phase: {PHASE_WORDS.get(view.phase, view.phase) or 'waiting'}. "
                             f"{len(view.peers)} hospitals enrolled; last round included: {participants}.")

    def _set_state(self, state: Membership, message: str = "", *, round: int | None = None,
                   rounds: int | None = None, epsilon: float | None = None, cap: float | None = None) -> None:
        self.state = state
        old = self.context.federation
        review = self.review
        self.context.set_federation(FederationStatus(
            state=state.value, name=review.invitation.federation_name if review else "",
            coordinator=review.invitation.coordinator_url if review else "",
            round=round if round is not None else old.round,
            rounds=rounds if rounds is not None else (review.invitation.plan.rounds if review else 0),
            epsilon_spent=epsilon if epsilon is not None else old.epsilon_spent,
            epsilon_cap=cap if cap is not None else old.epsilon_cap, message=message))
        if state in STATE_WORDS:
            self.headline.emit(STATE_WORDS[state])
        self.state_changed.emit(state.value)

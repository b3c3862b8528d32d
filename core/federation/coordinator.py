"""The coordinator's federation logic, without HTTP: enrollment, the roster, intake, and carrying out
what the round machine decides. One ``Coordinator`` per federation folder.

The parts (each testable on its own):

- ``RoundState`` (round_state.py): where the federation is, persisted in SQLite with every change;
- ``RoundMachine`` (round_machine.py): a pure function of the state, the clock and who answered,
  returning the next action (freeze the roster, open an attempt, close a step, stop);
- ``SecureAggregation`` / ``PlainAggregation`` (aggregation.py): how a round's messages become an
  aggregate, per mode, streaming;
- ``ModelPublisher`` (publisher.py): the global weights, the server optimizer and the signed model
  package with its ε bound and card, with numpy only (the serving process does not import torch);
- ``EvaluationProcess`` (evaluation.py): the evaluation on the coordinator's own held-out images, in a
  child process;
- ``Presence`` (presence.py): which hospitals are there.

This class holds the lock: request handlers call ``enroll``, ``sign_roster``, ``submit``, ``leave_round``,
``leave``, ``decline`` and read the views; one background thread (``start``) asks the machine what to do
whenever something changed or a deadline may have passed. Every accepted message is committed to SQLite
before it is acknowledged; after a restart the open attempt's messages are replayed into a fresh
aggregation, so the federation resumes where it stopped. An attempt that ends without a release (fewer
than m hospitals left) is followed by a new attempt with fresh keys: nothing of it was revealed.

Why one module (about 600 lines): everything here runs under the coordinator's one lock and
changes its persisted state; each part it drives (below) lives in its own module.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import FederationError, Refused, RoundAborted, SecAggAborted, SecAggError, StorageError
from core.federation.aggregation import Aggregate, PlainAggregation, SecureAggregation, server_gradient
from core.federation.layout import FederationPaths, load_settings
from core.federation.plan import load_plan, plan_hash
from core.federation.presence import Presence
from core.federation.protocol import (
    ANSWERED_STEPS,
    UPLOAD_STEPS,
    HospitalStatus,
    PeerInfo,
    PublicStatus,
    RosterView,
    RoundSummary,
    StateView,
    Status,
    Step,
    steps_for,
)
from core.federation.roster import FederationRoster, RosterEntry, roster_message, secagg_params
from core.federation.round_machine import (
    CloseStep,
    FreezeRoster,
    Observation,
    OpenAttempt,
    RoundMachine,
    StopFederation,
)
from core.federation.round_state import RoundState

if TYPE_CHECKING:
    from core.federation.evaluation import EvaluationProcess
    from core.federation.store import RoundRecord
    from core.secagg import RoundParams

log = logging.getLogger("dopamine.coordinator")
STORAGE_RETRY_S = 10.0  # how soon a round whose model could not be written is tried again

CONTROL_BODY_LIMIT = 64 * 1024
LONG_POLL_S = 20.0


class Coordinator:
    def __init__(self, folder: Path) -> None:
        from core.federation.publisher import ModelPublisher
        from core.federation.store import CoordinatorStore
        from core.signing import load_private_key

        self.paths = FederationPaths(Path(folder))
        if not self.paths.plan.exists():
            raise FederationError(f"{folder} is not a federation folder (no plan.toml); run `dopamine coordinator init`.")
        self.plan = load_plan(self.paths.plan)
        self.plan_hash = plan_hash(self.plan)
        self.settings = load_settings(self.paths)
        self.store = CoordinatorStore(self.paths.state)
        self.federation_id = self.plan.federation_id
        self.steps = steps_for(self.plan.secagg)
        self.machine = RoundMachine(self.plan, self.settings)
        self.state = RoundState.from_meta(self.store.all_meta())
        self.roster = FederationRoster.from_dict(self.state.roster) if self.state.roster else None
        self.publisher = ModelPublisher(self.paths, self.plan, load_private_key(self.paths.signing_key),
                                        model_round=self.state.model_round)
        self.layout = self.publisher.layout
        # Upload limit: a masked input or a float32 delta of every parameter, plus room for headers.
        self.update_body_limit = 8 * self.layout.length + 256 * 1024
        self.presence = Presence()
        self._lock = threading.RLock()
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listeners: list[Callable[[], object]] = []  # their results are ignored
        self._serving_since = time.time()
        self._boot = secrets.token_hex(4)
        self._version = 0
        self._aggregation: SecureAggregation | PlainAggregation | None = None
        self._unpublished: Aggregate | None = None  # the released sum of the open attempt while its model could not be written
        self._submitted: dict[Step, set[str]] = {}
        self._left: set[str] = set()
        self._evaluation: EvaluationProcess | None = None
        self._hospitals = {h.hospital_id: h for h in self.store.hospitals()}
        last = self.store.last_round()
        self._last_round = self._summary(last) if last is not None else None
        try:
            self._resume_attempt()
        except (SecAggError, FederationError) as exc:
            # The open attempt cannot be rebuilt (e.g. killed between aborting it and opening the next):
            # start a fresh attempt of the same round; nothing of the old one was revealed.
            self._aggregation = None
            self._abort_attempt(f"could not resume after a restart ({exc})")
        self._views: dict = {}
        self._refresh_views()

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the evaluation (if any), publish the initial model and start advancing."""
        from core.federation.evaluation import EvaluationProcess

        if self.settings.eval_data:
            self._evaluation = EvaluationProcess(self.paths.root, self.settings, self.plan, self.layout)
        with self._lock:
            if self.state.model_round == 0 and not self.paths.model_package(0).exists():
                self.publisher.publish(0, contributors={}, rounds_taken={}, metrics={})
        self._thread = threading.Thread(target=self._advance_loop, name="coordinator-advance", daemon=True)
        self._thread.start()
        self._kick.set()

    def stop(self) -> None:
        self._stop.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._evaluation is not None:
            self._evaluation.close()
        self.store.close()

    def add_listener(self, callback: Callable[[], object]) -> None:
        """``callback()`` runs (on the advancing thread) after every state change."""
        self._listeners.append(callback)

    # -- read side ------------------------------------------------------------------------------

    @property
    def status(self) -> str:
        return self.state.status

    def hospital(self, hospital_id: str):
        return self._hospitals.get(hospital_id)

    def view(self, hospital_id: str) -> StateView:
        """What ``hospital_id`` should do now (the long-poll answer)."""
        snap = self._views
        record = self._hospitals.get(hospital_id)
        active = record is not None and record.status == HospitalStatus.ACTIVE
        step = snap["phase"]
        if snap["status"] != Status.RUNNING or not active:
            participant = False
        elif step == self.steps[0]:
            participant = True
        else:
            participant = hospital_id in snap["expected"] and hospital_id not in snap["left"]
        view = StateView(
            status=snap["status"], stop_reason=snap["stop_reason"], round=snap["round"], rounds=self.plan.rounds,
            attempt=snap["attempt"], phase=step, deadline=snap["deadline"], participant=participant,
            submitted=hospital_id in snap["submitted"], in_round=hospital_id in snap["members"],
            model_round=snap["model_round"], secagg=snap["secagg"], version=snap["version"],
            hospital_status=record.status if record else "unknown", max_images=snap["max_images"],
            last_round=self._last_round)
        return view

    def peers(self) -> list[PeerInfo]:
        return [PeerInfo(hospital_id=h.hospital_id, name=h.name, fingerprint=h.fingerprint, public_key=h.public_key,
                         num_images=h.num_images, status=h.status, rounds_included=h.rounds_included)
                for h in self._hospitals.values()]

    def public_status(self) -> PublicStatus:
        state, last = self.state, self.store.last_round()
        return PublicStatus(
            federation_id=self.federation_id, name=self.plan.name, mode=self.plan.mode, status=state.status,
            stop_reason=state.stop_reason, round=state.round, rounds=self.plan.rounds, phase=state.phase,
            model_round=state.model_round, invitations=self.store.invitation_count(), hospitals=self.peers(),
            roster_code=self.roster.code if self.roster else "", roster_signed=sorted(state.roster_signatures),
            last_round=self._summary(last) if last is not None else None)

    def roster_view(self) -> RosterView:
        return RosterView(status=self.state.status, roster=self.roster.to_dict() if self.roster else None,
                          digest=self.roster.digest() if self.roster else "",
                          signatures=dict(self.state.roster_signatures))

    def round_result(self, round: int) -> RoundSummary:
        record = self.store.round_record(round)
        if record is None:
            raise Refused(404, f"Round {round} has not finished (latest finished: {self.state.model_round}).")
        return self._summary(record)

    def model_package_path(self, round: int) -> Path:
        path = self.paths.model_package(round)
        if round > self.state.model_round or not path.exists():
            raise Refused(404, f"The global model of round {round} is not available (latest: {self.state.model_round}).")
        return path

    def broadcast_for(self, hospital_id: str, round: int, attempt: int, step: str) -> bytes:
        """The coordinator's answer to ``step`` (key roster, share bundle, survivor set, unmask request)."""
        if step not in ANSWERED_STEPS:
            raise Refused(404, f"There is no coordinator answer for step {step!r}.")
        body = self.store.broadcast(round, attempt, step, hospital_id)
        if body is None:
            raise Refused(409, f"Round {round} attempt {attempt} has not finished step {step} yet (or this hospital is not in it).")
        return body

    @staticmethod
    def _summary(record: RoundRecord) -> RoundSummary:
        return RoundSummary(round=record.round, attempts=record.attempts,
                            seconds=round(record.finished_at - record.started_at, 4), included=list(record.included),
                            images=record.images, metrics=record.metrics, model_file=record.model_file,
                            model_sha256=record.model_sha256)

    # -- presence (called by the HTTP layer) ----------------------------------------------------

    def touch(self, hospital_id: str) -> None:
        self.presence.touch(hospital_id)

    def poll_started(self, hospital_id: str) -> None:
        self.presence.poll_started(hospital_id)

    def poll_ended(self, hospital_id: str, *, disconnected: bool) -> None:
        self.presence.poll_ended(hospital_id, disconnected=disconnected)
        if disconnected:
            self._kick.set()

    # -- enrollment and the roster ----------------------------------------------------------------

    def enroll(self, *, token: str, hospital_id: str, public_key: bytes, num_images: int) -> dict:
        from core.signing import fingerprint

        token_sha = hashlib.sha256(token.encode()).hexdigest()
        with self._lock:
            found = self.store.invitation_for_token(token_sha)
            if found is None:
                raise Refused(403, "This enrollment token is not valid for this federation; check the invitation file.")
            invited_id, name, used_at = found
            if invited_id != hospital_id:
                raise Refused(403, "This enrollment token belongs to another hospital's invitation.")
            existing = self._hospitals.get(hospital_id)
            if used_at is not None or existing is not None:
                if existing is not None and existing.public_key == public_key:
                    return self._enrollment_answer(existing)  # the same hospital retrying: idempotent
                raise Refused(409, "This invitation was already used; ask the coordinator for a new one.")
            if self.status != Status.ENROLLING:
                raise Refused(409, "The federation has already started; it no longer accepts new hospitals.")
            if isinstance(num_images, bool) or not isinstance(num_images, int) or not 1 <= num_images <= 10_000_000:
                raise Refused(400, "num_images must be a whole number of images between 1 and 10,000,000.")
            self.store.enroll(hospital_id=hospital_id, name=name, public_key=public_key,
                              fingerprint=fingerprint(public_key), num_images=num_images, token_sha256=token_sha)
            self._hospitals = {h.hospital_id: h for h in self.store.hospitals()}
            log.info("enrolled %s (%s), %d images, key %s", hospital_id, name, num_images,
                     self._hospitals[hospital_id].fingerprint)
            self.touch(hospital_id)
            self._changed()
            return self._enrollment_answer(self._hospitals[hospital_id])

    def _enrollment_answer(self, record) -> dict:
        return {"hospital_id": record.hospital_id, "name": record.name, "fingerprint": record.fingerprint,
                "federation_id": self.federation_id, "plan_hash": self.plan_hash}

    def sign_roster(self, hospital_id: str, digest: str, signature: bytes) -> None:
        """A hospital's signature on the roster; round 1 opens once every hospital of it has signed."""
        from core.signing import verify

        with self._lock:
            if self.roster is None:
                raise Refused(409, "The roster is not frozen yet: not every hospital has enrolled.")
            entry = self.roster.entry(hospital_id)
            if entry is None:
                raise Refused(403, "This hospital is not on the federation's roster.")
            if digest != self.roster.digest():
                raise Refused(409, "This signature is for another roster than the frozen one.")
            if not verify(entry.public_key, signature, roster_message(digest)):
                raise Refused(400, "The roster signature does not verify with this hospital's identity key.")
            if hospital_id in self.state.roster_signatures:
                return
            signatures = {**self.state.roster_signatures, hospital_id: base64.b64encode(signature).decode()}
            self._save(roster_signatures=signatures)
            log.info("%s signed the roster (%d of %d)", hospital_id, len(signatures), len(self.roster.entries))
            self._changed()
        self._kick.set()

    # -- hospital messages ----------------------------------------------------------------------

    def submit(self, hospital_id: str, round: int, attempt: int, step: str, body: bytes) -> None:
        """Accept one message of the open round (Refused with the reason otherwise)."""
        if step not in self.steps:
            raise Refused(404, f"Unknown round step {step!r}; this federation uses {', '.join(self.steps)}.")
        step = Step(step)
        limit = self.update_body_limit if step in UPLOAD_STEPS else CONTROL_BODY_LIMIT * 16
        if len(body) > limit:
            raise Refused(413, f"The {step} message is {len(body)} bytes, above the limit of {limit}.")
        with self._lock:
            if self._already_sent(hospital_id, round, attempt, step):
                # A retry whose first try got through, though its answer was lost (the coordinator was
                # killed, the link cut): the step or the round may have moved on since. "duplicate" tells the
                # hospital that its message is in; any other refusal would end its run.
                raise Refused(409, f"This hospital already sent its {step} message for round {round}.", "duplicate")
            self._check_open(hospital_id, round, attempt, step)
            if step != self.steps[0] and hospital_id not in self._expected(step):
                raise Refused(409, f"This hospital is not part of round {round} step {step} (it joined late or dropped out).")
            self._receive(hospital_id, step, body)
            with self.store.transaction() as db:
                self.store.add_message(db, round, attempt, step, hospital_id, body)
            self._submitted.setdefault(step, set()).add(hospital_id)
            self._changed()
        self._kick.set()

    def _already_sent(self, hospital_id: str, round: int, attempt: int, step: Step) -> bool:
        if self.status == Status.RUNNING and (round, attempt) == (self.state.round, self.state.attempt):
            return hospital_id in self._submitted.get(step, set())
        released = self.store.round_record(round)
        if released is not None:  # its messages are gone: was the hospital's update in the released attempt?
            return released.attempts == attempt and hospital_id in released.included
        return hospital_id in self.store.message_senders(round, attempt, step)

    def _receive(self, hospital_id: str, step: Step, body: bytes) -> None:
        assert self._aggregation is not None  # an attempt is open
        self._aggregation.receive(step, hospital_id, body)  # Refused (4xx) with the reason

    def leave_round(self, hospital_id: str, round: int, attempt: int) -> None:
        """A hospital that cannot finish the open attempt (it restarted, or refused a reopened attempt)."""
        with self._lock:
            if self.status != Status.RUNNING or (round, attempt) != (self.state.round, self.state.attempt):
                return
            if hospital_id in self._left:
                return
            with self.store.transaction() as db:
                self.store.add_message(db, round, attempt, "leave", hospital_id, b"")
            self._left.add(hospital_id)
            log.info("hospital %s left round %d attempt %d", hospital_id, round, attempt)
            self._changed()
        self._kick.set()

    def decline(self, hospital_id: str, reason: str) -> None:
        """The hospital takes part in no further rounds: its privacy cap would be passed."""
        self._set_hospital_status(hospital_id, HospitalStatus.DECLINED, reason)

    def leave(self, hospital_id: str, reason: str) -> None:
        """The hospital's people chose to leave the federation; it takes part in no further rounds."""
        self._set_hospital_status(hospital_id, HospitalStatus.LEFT, reason or "left by its people")

    def _set_hospital_status(self, hospital_id: str, status: HospitalStatus, reason: str) -> None:
        with self._lock:
            with self.store.transaction() as db:
                self.store.set_hospital_status(db, hospital_id, status.value, reason[:500])
            self._hospitals = {h.hospital_id: h for h in self.store.hospitals()}
            self._left.add(hospital_id)
            log.info("hospital %s %s: %s", hospital_id, status.value, reason[:200])
            self._changed()
        self._kick.set()

    def _check_open(self, hospital_id: str, round: int, attempt: int, step: Step) -> None:
        record = self._hospitals.get(hospital_id)
        if record is None or record.status != HospitalStatus.ACTIVE:
            raise Refused(403, "This hospital is not an active member of the federation.")
        if self.status != Status.RUNNING:
            raise Refused(409, f"The federation is {self.status}; no round is open.")
        if (round, attempt) != (self.state.round, self.state.attempt):
            raise Refused(409, f"Round {round} attempt {attempt} is not open (open: round {self.state.round} "
                               f"attempt {self.state.attempt}).")
        if step != self.state.phase:
            raise Refused(409, f"Round {round} is in step {self.state.phase}, not {step}.", "step_closed")
        if hospital_id in self._left:
            raise Refused(409, f"This hospital left round {round}; it can take part in the next one.")

    # -- the open attempt -----------------------------------------------------------------------

    def _expected(self, step: Step) -> set[str]:
        if step == self.steps[0]:
            return set(self.state.expected)
        return set(self._secure_aggregation().expected(step))

    def _active_ids(self) -> list[str]:
        return [h for h, record in self._hospitals.items() if record.status == HospitalStatus.ACTIVE]

    def _round_params(self, round: int, attempt: int) -> RoundParams:
        assert self.roster is not None  # rounds with secure aggregation open only once the roster is frozen
        return secagg_params(self.plan, self.roster, round, attempt, self.layout.length)

    def _new_aggregation(self) -> SecureAggregation | PlainAggregation:
        if self.plan.secagg:
            assert self.roster is not None  # rounds with secure aggregation open only once the roster is frozen
            return SecureAggregation(self._round_params(self.state.round, self.state.attempt), self.roster.keys())
        return PlainAggregation(self.layout, self.plan.threshold)

    # Only secure aggregation has steps after the first (plain rounds have one: the update).
    def _secure_aggregation(self) -> SecureAggregation:
        assert isinstance(self._aggregation, SecureAggregation)
        return self._aggregation

    def _plain_aggregation(self) -> PlainAggregation:
        assert isinstance(self._aggregation, PlainAggregation)
        return self._aggregation

    def _resume_attempt(self) -> None:
        """Rebuild the open attempt from SQLite after a restart: replay its messages, step by step."""
        state = self.state
        if state.status != Status.RUNNING:
            return
        if state.model_round >= state.round:
            # Killed after the round was released and committed, before the next one opened: never resume
            # or retry a released round (its messages are gone, and every hospital that has its model
            # would refuse it): open the next one.
            following = self.machine.after_round(state)
            if following is not None:
                self._open_attempt(following)
            return
        self._left = set(self.store.message_senders(state.round, state.attempt, "leave"))
        self._submitted = {}
        self._aggregation = self._new_aggregation()
        for step in self.steps:
            senders = set()
            for sender, body in self.store.iter_messages(state.round, state.attempt, step):
                self._receive(sender, step, body)
                senders.add(sender)
            self._submitted[step] = senders
            if step == state.phase:
                break
            self._secure_aggregation().close(step)  # the answers were stored when the step first closed
        # Hospitals need time to notice the restart and reconnect: restart the step's clock.
        state.phase_deadline = time.time() + self.machine.phase_timeout(Step(state.phase))
        log.info("resumed round %d attempt %d in step %s", state.round, state.attempt, state.phase)

    # -- advancing ------------------------------------------------------------------------------

    def _advance_loop(self) -> None:
        if self.plan.is_private:  # load the accountant now (seconds) rather than at the end of round 1
            self.publisher.epsilon_bound(1, [(1, max(1, self.state.max_images))])
        while not self._stop.is_set():
            self._kick.wait(timeout=1.0)
            self._kick.clear()
            if self._stop.is_set():
                break
            try:
                self.advance()
            except StorageError as exc:  # a full disk or a read-only folder: one line, retried until it is fixed
                log.error("%s", exc)
                self._stop.wait(STORAGE_RETRY_S)
                self._kick.set()
            except Exception:  # noqa: BLE001 -- keep serving; the error is in the log
                log.exception("advancing the federation failed")
                time.sleep(1.0)
            self._forget_old_nonces()

    def _forget_old_nonces(self) -> None:
        from core.federation.auth import TIMESTAMP_WINDOW_S

        now = time.time()
        if now - getattr(self, "_nonces_forgotten", 0.0) > 60:
            self._nonces_forgotten = now
            self.store.forget_nonces(now - 2 * TIMESTAMP_WINDOW_S)

    def advance(self) -> None:
        """Carry out every action the round machine asks for now (the advancing thread; also tests)."""
        with self._lock:
            for _ in range(len(self.steps) + 2):
                action = self.machine.next_action(self.state, self._observe(time.time()))
                if action is None:
                    break
                self._carry_out(action)

    def _observe(self, now: float) -> Observation:
        state = self.state
        step = Step(state.phase) if state.status == Status.RUNNING else None
        active = frozenset(self._active_ids())
        signed = self.roster is not None and set(state.roster_signatures) >= set(self.roster.ids)
        return Observation(
            now=now, serving_since=self._serving_since, enrolled=len(self._hospitals), active=active,
            gone=self.presence.gone(active, now), expected=frozenset(self._expected(step)) if step else frozenset(),
            submitted=frozenset(self._submitted.get(step, set())) if step else frozenset(),
            left=frozenset(self._left), roster_signed=signed, held=self.paths.hold.exists())

    def _carry_out(self, action) -> None:
        if isinstance(action, FreezeRoster):
            self._freeze_roster()
        elif isinstance(action, OpenAttempt):
            self._open_attempt(action)
        elif isinstance(action, CloseStep):
            self._close_step(action.step)
        elif isinstance(action, StopFederation):
            self._stop_federation(action.reason)

    def _freeze_roster(self) -> None:
        entries = tuple(RosterEntry(h.hospital_id, h.name, h.public_key, h.num_images)
                        for h in sorted(self._hospitals.values(), key=lambda h: h.hospital_id))
        self.roster = FederationRoster(self.federation_id, self.plan_hash, entries)
        self._save(roster=self.roster.to_dict(), roster_signatures={}, status=Status.CONFIRMING.value,
                   max_images=self.roster.max_images)
        log.info("roster frozen with %d hospitals (code %s); waiting for their signatures", len(entries),
                 self.roster.code)
        self._changed()

    def _open_attempt(self, action: OpenAttempt) -> None:
        now = time.time()
        active = self._active_ids()
        gone = self.presence.gone(active, now)
        expected = [h for h in active if h not in gone]
        max_images = self.state.max_images if self.roster else max(h.num_images for h in self._hospitals.values())
        values = dict(status=Status.RUNNING.value, round=action.round, attempt=action.attempt,
                      phase=self.steps[0].value, phase_deadline=now + self.machine.phase_timeout(self.steps[0]),
                      expected=expected, max_images=max_images)
        if action.first:
            values["round_started"] = now
        self._save(**values)
        self._unpublished = None  # a sum belongs to its attempt: a new attempt never publishes an older one
        self._submitted = {}
        self._left = set()
        self._aggregation = self._new_aggregation()
        log.info("round %d attempt %d open; expecting %s", action.round, action.attempt,
                 ", ".join(expected) or "nobody yet")
        self._changed()

    def _close_step(self, step: Step) -> None:
        state = self.state
        if self._unpublished is not None:  # this attempt's sum is known; writing its model failed: try again
            self._finish_round(self._unpublished)
            return
        try:
            if not self.machine.is_last(step):
                answers = self._secure_aggregation().close(step)
                following = self.machine.next_step(step)
                with self.store.transaction() as db:
                    for hospital_id, body in answers.items():
                        self.store.add_broadcast(db, state.round, state.attempt, step, hospital_id, body)
                    self._save(db=db, phase=following.value,
                               phase_deadline=time.time() + self.machine.phase_timeout(following))
                log.info("round %d attempt %d: %s closed with %d hospitals", state.round, state.attempt, step,
                         len(self._submitted.get(step, ())))
                self._changed()
                return
            if self.plan.secagg:
                aggregate = self._secure_aggregation().finish()
            else:
                updates = self.store.iter_messages(state.round, state.attempt, Step.UPDATE)
                aggregate = self._plain_aggregation().finish_from(
                    updates, {h: r.num_images for h, r in self._hospitals.items()})
        except (SecAggAborted, RoundAborted) as exc:
            self._abort_attempt(f"step {step}: {exc}")
            return
        self._unpublished = aggregate
        self._finish_round(aggregate)

    def _abort_attempt(self, reason: str) -> None:
        state = self.state
        log.warning("round %d attempt %d aborted: %s", state.round, state.attempt, reason)
        if self._aggregation is not None:
            self._aggregation.abort()
            self._aggregation = None
        with self.store.transaction() as db:
            self.store.delete_attempt_data(db, state.round, state.attempt)
        self._carry_out(self.machine.after_abort(state, reason))

    def _stop_federation(self, reason: str) -> None:
        log.warning("federation stopped: %s", reason)
        self._save(status=Status.STOPPED.value, stop_reason=reason, phase="")
        self._changed()

    def _finish_round(self, aggregate) -> None:
        """Step the server optimizer on the aggregate, evaluate, publish the signed model, go on.

        When the model or the round cannot be written (a full disk, a read-only folder), nothing of the
        round is kept -- the weights, the optimizer and the state in memory go back to before it -- and
        StorageError says why; the advancing loop tries again (``_unpublished``) until it works.
        """
        import dataclasses
        import sqlite3

        saved, state_before = self.publisher.snapshot(), dataclasses.replace(self.state)
        try:
            self._publish_round(aggregate)
        except (OSError, sqlite3.Error) as exc:
            self.publisher.restore(saved)
            for field in dataclasses.fields(state_before):
                setattr(self.state, field.name, getattr(state_before, field.name))
            reason = getattr(exc, "strerror", None) or str(exc)
            raise StorageError(
                f"Could not write round {self.state.round}'s model to {self.paths.root} ({reason}); free disk space "
                f"or make the folder writable - the coordinator tries again every {STORAGE_RETRY_S:.0f} s and the "
                "hospitals wait.") from exc
        self._unpublished = None
        self._aggregation = None
        following = self.machine.after_round(self.state)
        if following is None:
            self._changed()
        else:
            self._open_attempt(following)

    def _publish_round(self, aggregate) -> None:
        from core.federation.store import RoundRecord

        state = self.state
        round, included = state.round, aggregate.included
        images = {h: r.num_images for h, r in self._hospitals.items()}
        self.publisher.step(server_gradient(self.plan, aggregate, images, state.max_images))
        metrics: dict = {}
        if self._evaluation is not None and self._evaluation.due(round):
            metrics = self._evaluation.evaluate(self.publisher.weights)
        records = self._hospitals.values()
        taken = {h.hospital_id: (h.rounds_included + (h.hospital_id in included), h.num_images) for h in records}
        contributors = {h.name: h.num_images for h in records if taken[h.hospital_id][0] > 0}
        sha = self.publisher.publish(round, contributors=contributors, rounds_taken=taken, metrics=metrics)
        started = state.round_started or time.time()
        record = RoundRecord(round=round, attempts=state.attempt, started_at=started, finished_at=time.time(),
                             included=included, images=sum(images[h] for h in included), metrics=metrics,
                             model_file=self.paths.model_package(round).name, model_sha256=sha)
        finished = round >= self.plan.rounds
        with self.store.transaction() as db:
            self.store.add_round(db, record)
            self.store.delete_round_data(db, round)
            values: dict[str, int | str] = {"model_round": round}
            if finished:
                values.update(status=Status.FINISHED.value, phase="", stop_reason="")
            self._save(db=db, **values)
        self._last_round = self._summary(record)
        self._hospitals = {h.hospital_id: h for h in self.store.hospitals()}
        log.info("round %d done in %.3fs with %s (%d images) %s", round, record.finished_at - started,
                 ", ".join(included), record.images, {k: v for k, v in metrics.items() if isinstance(v, float)})
        try:
            self.publisher.prune(round, self.settings.keep_models)
        except OSError as exc:  # the round is committed; an old model left on disk is only untidy
            log.warning("could not delete old models: %s", exc)

    # -- persistence and notification -------------------------------------------------------------

    def _save(self, db=None, **values) -> None:
        """Write fields of the RoundState (in ``db``'s transaction, or a new one) and keep them in memory."""
        values = self.state.changes(**values)
        if db is None:
            with self.store.transaction() as own:
                self.store.set_meta(own, values)
        else:
            self.store.set_meta(db, values)
        for name, value in values.items():
            setattr(self.state, name, value)

    def _refresh_views(self) -> None:
        state = self.state
        step = Step(state.phase) if state.status == Status.RUNNING else None
        self._views = {
            "status": state.status, "stop_reason": state.stop_reason, "round": state.round,
            "attempt": state.attempt, "phase": state.phase, "deadline": state.phase_deadline or None,
            "model_round": state.model_round,
            "expected": self._expected(step) if step else set(),
            "submitted": set(self._submitted.get(step, set())) if step else set(),
            "members": set().union(*self._submitted.values()) if step and self._submitted else set(),
            "left": set(self._left),
            "secagg": self._round_params(state.round, state.attempt).to_dict() if step and self.plan.secagg else None,
            "max_images": int(state.max_images),
            "version": f"{self._boot}:{self._version}",
        }

    def _changed(self) -> None:
        self._version += 1
        self._refresh_views()
        for callback in self._listeners:
            try:
                callback()
            except Exception:  # noqa: BLE001
                log.exception("state listener failed")

"""The hospital client: ``dopamine join``/``leave`` and the app's Federation page.

Job API (for the app; everything runs on the caller's worker thread)::

    invitation = read_invitation(path)          # federation name, coordinator URL, CA fingerprint, plan
    epsilon = invitation.plan.epsilon_cost(num_images)                  # before joining
    result = run(JoinConfig(invitation=..., data=..., home=..., max_epsilon=..., accept_roster=...),
                 progress=..., cancel=..., on_event=...)                # -> JoinResult
    status(invitation, home) -> PublicStatus; peers(invitation, home) -> list[PeerInfo]
    leave(invitation, home, reason)             # tells the coordinator; no further rounds

``on_event`` receives core.federation.events dataclasses: PlanReview (before enrolling), Enrolled,
RosterReview (the frozen roster, for the hospital's people to confirm), RoundStarted, PhaseChanged,
LocalStepDone, BudgetCharged, Uploaded, ModelReceived, Declined, Finished, ErrorEvent (fatal=False:
transient, being retried). Cancel raises Cancelled.

Everything lives in the hospital home (core.home): its one privacy ledger, its one signed audit log,
its identity key and image cache, and one membership folder per federation (core.federation.membership).
Running ``run`` again resumes: it never enrolls twice, never computes a (plan, round, attempt) twice
(the ledger refuses a second charge of one release), and resends a stored upload unchanged rather than
computing it again. With secure aggregation the first run stops with reason "roster" once every
hospital enrolled: its people compare each peer's key fingerprint out of band, then run again with
``accept_roster`` set to the roster's code; the client signs the roster and takes part only when every
hospital of the roster signed the same one.

Why one module (about 600 lines): one membership's decisions (enroll, confirm the roster, which
attempt to take part in, when to refuse or decline) read best in one place; the steps, the budget,
the membership folder and the coordinator calls are in their own modules.
"""

from __future__ import annotations

import base64
import logging
import math
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.audit import AuditLog
from core.config import atomic_write_bytes, storage_errors
from core.device import DEFAULT_DEVICE, check_device_name
from core.errors import (
    Cancelled,
    ConfigError,
    DataError,
    FederationError,
    PrivacyBudgetExceeded,
    ReleaseRefused,
    RequestFailure,
)
from core.federation.events import (
    BudgetCharged,
    Declined,
    Enrolled,
    ErrorEvent,
    EventFn,
    Finished,
    ModelReceived,
    PhaseChanged,
    PlanReview,
    RosterReview,
    RoundStarted,
    no_events,
)
from core.federation.hospital_budget import HospitalBudget
from core.federation.hospital_round import HospitalRound
from core.federation.invitation import Invitation, read_invitation
from core.federation.membership import MembershipFolder, membership_folder, roster_matches
from core.federation.plan import FederationPlan, threat_model_text
from core.federation.protocol import PeerInfo, PublicStatus, RoundContext, StateView, Status, steps_for
from core.home import HospitalHome
from core.jobs import NEVER_CANCELLED, CancelToken, ProgressFn, no_progress

__all__ = ["JoinConfig", "JoinResult", "leave", "membership_folder", "peers", "read_invitation", "run", "status"]

if TYPE_CHECKING:
    import torch

    from core.federation.roster import FederationRoster

log = logging.getLogger("dopamine.federation.client")

PRESENCE_WAIT_S = 15.0
ACCEPT_ANY_ROSTER = "any"  # simulations on one computer: one person runs every hospital


@dataclass
class JoinConfig:
    invitation: Path
    data: Path
    home: Path | None = None  # the hospital home (default: this user's, the one the app uses)
    # This run's epsilon limit; it sets the ledger's cap only when the ledger has none yet, and never raises it.
    max_epsilon: float | None = None
    # The roster code (or full digest) the hospital's people confirmed with every peer; "any" accepts the
    # roster the coordinator shows without a person checking it (only for simulations on one computer).
    accept_roster: str | None = None
    labels_csv: Path | None = None
    accountant: str | None = None  # used only when the ledger has none yet; default the plan's
    threads: int | None = None
    device: str = DEFAULT_DEVICE  # where the local work computes (core.device): auto, cpu or cuda
    poll_wait_s: float = 10.0  # long-poll length: also bounds how quickly cancel takes effect
    max_backoff_s: float = 30.0
    give_up_after_s: float | None = None  # None: keep retrying an unreachable coordinator until cancelled
    # The HTTPS proxy (CONNECT) to reach the coordinator through, "none" for a direct connection, and the
    # dead-link timeout; None: the hospital home's network settings (core.federation.network).
    proxy: str | None = None
    timeout_s: float | None = None


@dataclass
class JoinResult:
    federation_id: str
    hospital_id: str
    reason: str  # "completed" | "declined" | "stopped" | "left" | "roster" (the people must confirm it first)
    rounds_participated: list[int]
    epsilon: float
    bytes_sent: int
    model_path: str | None
    workdir: str
    roster_code: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


# ---- what the app and the CLI ask outside a run --------------------------------------------------

def _session(invitation: Invitation, home: HospitalHome, *, proxy: str | None = None, **connection):
    from core.federation.network import network_for
    from core.federation.session import CoordinatorSession

    folder = MembershipFolder.of(home, invitation)
    if not folder.state.exists():
        raise FederationError(f"This hospital has not joined {invitation.federation_name} from {home.root}; join it first.")
    return CoordinatorSession(invitation, folder.ca, home.identity(), proxy=network_for(home, proxy=proxy).proxy,
                              **connection)


def status(invitation: Invitation, home: HospitalHome, *, cancel: CancelToken = NEVER_CANCELLED) -> PublicStatus:
    """The coordinator's federation summary (a signed GET; nothing of the hospital's is sent)."""
    session = _session(invitation, home, cancel=cancel, read_timeout_s=20.0, give_up_after_s=10.0)
    try:
        return session.status()
    finally:
        session.close()


def peers(invitation: Invitation, home: HospitalHome, *, cancel: CancelToken = NEVER_CANCELLED) -> list[PeerInfo]:
    """The enrolled hospitals and their identity keys, for out-of-band comparison."""
    session = _session(invitation, home, cancel=cancel, read_timeout_s=20.0, give_up_after_s=10.0)
    try:
        return session.peers().hospitals
    finally:
        session.close()


def leave(invitation: Invitation, home: HospitalHome, reason: str = "",
          *, cancel: CancelToken = NEVER_CANCELLED, proxy: str | None = None) -> None:
    """Tell the coordinator this hospital takes part in no further rounds, and remember it.

    ``proxy``: the HTTPS proxy for this call ("none": direct); None: the home's network settings."""
    folder = MembershipFolder.of(home, invitation)
    session = _session(invitation, home, audit=AuditLog(home.audit_log, key=home.identity()), cancel=cancel,
                       read_timeout_s=20.0, give_up_after_s=30.0, proxy=proxy)
    try:
        session.leave(reason or "its people chose to leave")
    finally:
        session.close()
    state = folder.load_state(invitation)
    state.finished = "left"
    folder.save_state(state)


# ---- a run ----------------------------------------------------------------------------------------

def _count_and_load(config: JoinConfig, plan: FederationPlan, cache: Path, progress: ProgressFn,
                    cancel: CancelToken):
    from core.data import Preprocessing, validate
    from core.data.cache import load_images
    from core.data.validation import class_mismatch

    report = validate(Path(config.data), labels_csv=config.labels_csv, min_size=plan.image_size,
                      progress=lambda f, m: progress(0.02 + 0.03 * f, m), cancel=cancel)
    samples = [s for s in report.usable_samples if s.label is not None]
    if not samples:
        raise DataError(f"{config.data}: no usable labelled images; check the folder with `dopamine inspect`.")
    mismatch = class_mismatch(list(report.classes), list(plan.classes), "the federation's plan")
    if mismatch:  # the same rule the app's Federation page applies before joining
        raise DataError(f"{config.data}: {mismatch}")
    spec = Preprocessing(size=plan.image_size)
    images, labels = load_images(samples, spec, cache_dir=cache,
                                 progress=lambda f, m: progress(0.05 + 0.05 * f, m), cancel=cancel)
    return images, labels, spec


class _Participant:
    """One hospital's membership: enrollment, the roster, then every round until the plan ends.

    HospitalRound (hospital_round.py) takes the steps of one attempt; this class decides which
    attempt to take part in, charges the ledger and keeps the membership state.
    """

    def __init__(self, config: JoinConfig, invitation: Invitation, progress: ProgressFn, cancel: CancelToken,
                 on_event: EventFn) -> None:
        self.config, self.invitation, self.plan = config, invitation, invitation.plan
        self.progress, self.cancel, self.emit = progress, cancel, on_event
        self.steps = steps_for(self.plan.secagg)
        self.home = HospitalHome.at(config.home).ensure()
        self.folder = MembershipFolder.of(self.home, invitation)
        self.state = self.folder.load_state(invitation)
        self.round: HospitalRound | None = None
        self.budget: HospitalBudget  # set by prepare(), before anything else reads it
        self.etag = ""
        self.roster: FederationRoster | None = None  # once confirmed and signed by all
        self.pending_roster: FederationRoster | None = None
        self.global_state: dict[str, torch.Tensor] | None = None
        self.global_round = -1
        self.last_error = ""
        self.refused: set[tuple[int, int]] = set()  # reopened attempts this hospital refused
        # FSCDP computes an attempt's step here while the main thread exchanges its round keys (hospital_round);
        # one worker, so a dropped attempt's step finishes before the next attempt's starts on the same model.
        self.compute_thread = ThreadPoolExecutor(max_workers=1,
                                                 thread_name_prefix=f"{threading.current_thread().name}/compute")

    # -- set-up ---------------------------------------------------------------------------------

    def prepare(self) -> None:
        import torch

        from core.device import resolve_device
        from core.federation.network import network_for
        from core.federation.session import CoordinatorSession
        from core.federation.weights import ParameterLayout
        from core.models.registry import build_model
        from core.signing import fingerprint, public_key_bytes

        plan = self.plan
        self.device = resolve_device(self.config.device)  # before any work: cuda without a GPU stops here
        log.info("local work computes on %s (device %s)", self.device, self.config.device)
        self.network = network_for(self.home, proxy=self.config.proxy, timeout_s=self.config.timeout_s)
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        self.progress(0.01, "Checking the images")
        self.images, self.labels, self.spec = _count_and_load(self.config, plan, self.home.image_cache,
                                                              self.progress, self.cancel)
        self.num_images = int(self.labels.shape[0])
        self.key = self.home.identity()
        self.fingerprint = fingerprint(public_key_bytes(self.key))
        self.audit = AuditLog(self.home.audit_log, key=self.key)
        self.budget = budget = HospitalBudget(
            self.home, plan, plan_hash=self.invitation.plan_hash, federation_name=self.invitation.federation_name,
            num_images=self.num_images, max_epsilon=self.config.max_epsilon, accountant=self.config.accountant)
        self.emit(PlanReview(
            federation_name=self.invitation.federation_name, coordinator_url=self.invitation.coordinator_url,
            ca_fingerprint=self.invitation.ca_fingerprint, plan_hash=self.invitation.plan_hash,
            plan_lines=plan.summary_lines(), num_images=self.num_images,
            epsilon_cost=plan.epsilon_cost(self.num_images, budget.accountant, budget.delta) if plan.is_private
            else 0.0, max_epsilon=budget.limit, delta=budget.delta, accountant=budget.accountant,
        ))
        self.folder.create(self.invitation)
        self.session = CoordinatorSession(
            self.invitation, self.folder.ca, self.key, audit=self.audit, cancel=self.cancel,
            on_retry=self._on_retry, read_timeout_s=self.network.timeout_s, proxy=self.network.proxy,
            max_backoff_s=self.config.max_backoff_s, give_up_after_s=self.config.give_up_after_s)
        self.session.bytes_sent = self.state.bytes_sent
        torch.manual_seed(plan.seed)  # the initial weights are public: every party builds the same model
        self.model = build_model(plan.model, len(plan.classes)).to(self.device)
        self.layout = ParameterLayout(self.model)

    def _keep_present(self) -> None:
        """Hold a long poll open at all times (own connection), so the coordinator notices at once,
        from the dropped connection, when this process dies, and does not wait for it."""
        from core.federation.session import CoordinatorSession

        session = CoordinatorSession(self.invitation, self.folder.ca, self.key, cancel=self.presence_stop,
                                     read_timeout_s=PRESENCE_WAIT_S + min(30.0, self.network.timeout_s),
                                     max_backoff_s=self.config.max_backoff_s, proxy=self.network.proxy)
        try:
            while not self.presence_stop.cancelled:
                try:
                    session.presence(PRESENCE_WAIT_S)
                except Cancelled:
                    break
                except FederationError:
                    self.presence_stop.wait(1.0)  # refused (e.g. not enrolled yet): try again shortly
        except Cancelled:
            pass
        finally:
            session.close()

    def start_presence(self) -> None:
        self.presence_stop = CancelToken()
        threading.Thread(target=self._keep_present, name="dopamine-presence", daemon=True).start()

    def _on_retry(self, message: str) -> None:
        problem = message.split("; retrying")[0]
        if problem != self.last_error:  # once per kind of trouble, not on every retry
            self.last_error = problem
            self.emit(ErrorEvent(message=message, fatal=False))

    def close(self) -> None:
        self.compute_thread.shutdown(wait=True, cancel_futures=True)
        if getattr(self, "presence_stop", None) is not None:
            self.presence_stop.cancel()
        if getattr(self, "session", None) is not None:
            self.session.close()
        if getattr(self, "budget", None) is not None:
            self.budget.close()

    def save(self) -> None:
        self.state.bytes_sent = self.session.bytes_sent
        self.folder.save_state(self.state)

    # -- enrollment and the roster ----------------------------------------------------------------

    def enroll(self) -> None:
        from core.signing import public_key_bytes

        if self.state.enrolled and self.state.num_images != self.num_images:
            log.warning("image count changed from %d to %d since enrollment; the coordinator keeps %d",
                        self.state.num_images, self.num_images, self.state.num_images)
        if not self.state.enrolled:
            self.progress(0.1, "Enrolling with the coordinator")
            answer = self.session.enroll(public_key_bytes(self.key), self.num_images)
            if answer["plan_hash"] != self.invitation.plan_hash:
                raise FederationError("The coordinator runs a different plan than the invitation's; not taking part.")
            self.state.enrolled = True
            self.state.fingerprint = self.fingerprint
            self.state.num_images = self.num_images
            self.save()
        if self.session.plan_hash() != self.invitation.plan_hash:
            raise FederationError("The coordinator's plan differs from the invitation's plan; not taking part.")
        self.emit(Enrolled(federation_id=self.invitation.federation_id, hospital_id=self.invitation.hospital_id,
                           hospital_name=self.invitation.hospital_name, fingerprint=self.fingerprint))

    def confirm_roster(self) -> bool:
        """Wait for the frozen roster, check it, sign it once confirmed, and wait for every signature.

        False when the hospital's people still have to confirm it (a RosterReview event was sent).
        """
        from core.federation.roster import FederationRoster, sign_roster, verify_roster_signatures
        from core.signing import public_key_bytes

        if not self.plan.secagg:
            return True
        while True:
            self.cancel.check()
            view = self.session.roster()
            if view.roster is None:
                self.progress(0.1, "Waiting for the other hospitals to enroll")
                self._wait_for_change()
                continue
            roster = FederationRoster.from_dict(view.roster)
            roster.check(self.plan, self.invitation.plan_hash, hospital_id=self.invitation.hospital_id,
                         public_key=public_key_bytes(self.key), num_images=self.state.num_images)
            digest = roster.digest()
            if self.state.roster_digest and self.state.roster_digest != digest:
                raise FederationError(
                    "The coordinator now shows another roster than the one this hospital confirmed and signed "
                    "(a hospital was added or a key changed); not taking part.")
            if not self.state.roster_digest:
                accepted = self.config.accept_roster
                if accepted != ACCEPT_ANY_ROSTER and not roster_matches(accepted, digest):
                    self._review_roster(roster, refused=accepted)
                    self.pending_roster = roster
                    return False
                self.state.roster_digest = digest
                self.save()
            signatures = {}
            for hospital, text in view.signatures.items():
                try:
                    signatures[str(hospital)] = base64.b64decode(str(text), validate=True)
                except ValueError:
                    continue
            if self.invitation.hospital_id not in signatures:
                self.session.sign_roster(digest, sign_roster(self.key, roster))
                continue
            if set(signatures) >= set(roster.ids):
                verify_roster_signatures(roster, signatures)
                self.roster = roster
                return True
            self.progress(0.1, f"Waiting for {len(set(roster.ids) - set(signatures))} hospital(s) to confirm the roster")
            self._wait_for_change()

    def _review_roster(self, roster, *, refused: str | None) -> None:
        if refused:
            raise FederationError(
                f"The roster's code is {roster.code}, not the {refused!r} this hospital confirmed: the coordinator "
                "shows a roster other than the one agreed. Compare the fingerprints with every hospital again.")
        me = self.invitation.hospital_id
        self.emit(RosterReview(
            federation_name=self.invitation.federation_name, code=roster.code, digest=roster.digest(),
            hospitals=[{"hospital_id": e.hospital_id, "name": e.name, "fingerprint": e.fingerprint,
                        "num_images": e.num_images, "this_hospital": e.hospital_id == me} for e in roster.entries],
            threat_model=threat_model_text(self.plan),
        ))

    def _wait_for_change(self) -> StateView:
        view = self.session.state(since=self.etag, wait=self.config.poll_wait_s)
        self.etag = view.etag
        return view

    # -- the round loop -------------------------------------------------------------------------

    def participate(self) -> JoinResult:
        if self.state.finished:
            return self._result(self.state.finished)
        # Read the state now: confirm_roster's last poll may already have seen round 1 open, and waiting for a
        # change of that view would hold round 1 up for a whole long poll (found by the scale run, issue 13).
        self.etag = ""
        while True:
            self.cancel.check()
            view = self._wait_for_change()
            self.last_error = ""
            if view.model_round > self.state.model_round:
                self._record_rounds(view.model_round, view.last_round)
            if view.hospital_status == "declined":
                return self._finish("declined")
            if view.hospital_status == "left":
                return self._finish("left")
            if view.status == Status.FINISHED:
                return self._finish("completed")
            if view.status == Status.STOPPED:
                self.emit(ErrorEvent(message=f"The coordinator stopped the federation: {view.stop_reason}", fatal=True))
                return self._finish("stopped")
            if view.status != Status.RUNNING:
                self.progress(0.1, "Waiting for the other hospitals")
                continue
            self._act(view)

    def _act(self, view: StateView) -> None:
        round, attempt, step = view.round, view.attempt, view.step
        current = self.round
        if current is not None and ((current.ctx.round, current.ctx.attempt) != (round, attempt)
                                    or view.model_round >= round):
            current = self.round = None  # another attempt, or this one finished (and a coordinator reopened it)
        if current is None:
            if round <= self.state.model_round:
                self._refuse_finished(round, attempt, step)
                return
            if self._resume_attempt(view):
                return
            if step != self.steps[0] or not view.participant or view.submitted:
                return
            if attempt > self.plan.max_attempts:
                raise FederationError(
                    f"The coordinator opened attempt {attempt} of round {round}; the plan allows {self.plan.max_attempts}. "
                    "Every attempt is a new release charged to this hospital's budget: not taking part any more.")
            if not self.budget.allows_another():
                self._decline(round)
                return
            current = self.round = HospitalRound(self, RoundContext(round, attempt))
            self.emit(RoundStarted(round=round, rounds=self.plan.rounds))
            self.progress(0.1 + 0.9 * (round - 1) / self.plan.rounds, f"Round {round} of {self.plan.rounds}")
            self._ensure_global_model(view.model_round)
            current.start_compute()
        if not view.participant or view.submitted:
            return
        assert step is not None  # the coordinator expects participants only in an open step
        if step == self.steps[0] and current.ctx.started:
            # The coordinator shows this attempt's first step again after this hospital took it: the attempt
            # was reset (a coordinator restored from a backup). Never compute it a second time.
            self.round = None
            self._refuse_reopened(round, attempt, step)
            return
        current.ctx.started = True
        self.emit(PhaseChanged(round=round, phase=step))
        try:
            current.take(step, view)
        except PrivacyBudgetExceeded:
            return  # charge() declined for us; the next poll ends the membership as "declined"
        except ReleaseRefused:
            self.round = None
            self._refuse_reopened(round, attempt, step)
        except RequestFailure as exc:
            if exc.code != "step_closed":
                raise
            # The step closed while this message was on its way (this hospital came back after a crash as
            # the others went on, or its link is slow): the attempt goes on without it. It is never computed
            # again (a stored upload stays unsent, its charge stays counted); the next attempt or round is.
            self.round = None
            log.info("round %d attempt %d: step %s closed before this hospital's message arrived; waiting for "
                     "the next attempt", round, attempt, step)

    def _resume_attempt(self, view: StateView) -> bool:
        """An attempt this hospital already worked on before (a restart, or a coordinator that reopened it):
        resend a stored upload unchanged, then leave the attempt (its round keys are gone); never compute
        it again. True when this attempt was handled here."""
        from core.federation.protocol import UPLOAD_STEPS

        round, attempt, step = view.round, view.attempt, view.step
        pending = self.folder.pending_upload(round, attempt)
        charged = self.budget.charged(round, attempt)
        if pending.exists() and step in UPLOAD_STEPS and view.participant and not view.submitted:
            self.session.send_step(round, attempt, step, pending.read_bytes(),
                                   "the stored upload of this attempt, resent unchanged")
            self.save()
            log.info("round %d attempt %d: resent the stored upload after a restart", round, attempt)
            if not self.plan.secagg:
                return True
        elif charged and not view.in_round:
            self._refuse_reopened(round, attempt, step or "")  # "": the audit log's "no step"
            return True
        if not (view.in_round or pending.exists() or charged):
            return False
        if view.participant and (self.plan.secagg or not view.submitted):
            # Tell the coordinator not to wait for us (a masked input we sent is still included; the
            # others rebuild its mask).
            self.session.leave_round(round, attempt, step or "", "leaving the round after a restart")
        return True

    def _refuse_reopened(self, round: int, attempt: int, step: str) -> None:
        if (round, attempt) in self.refused:
            return
        self.refused.add((round, attempt))
        message = (f"The coordinator reopened round {round} attempt {attempt}, which this hospital already computed "
                   "and charged; it computes a release at most once, so it refused and left that attempt "
                   "(a coordinator restored from a backup?).")
        log.warning(message)
        self.emit(ErrorEvent(message=message, fatal=False))
        self.session.leave_round(round, attempt, step, "refusing a reopened round attempt")

    def _refuse_finished(self, round: int, attempt: int, step: str | None) -> None:
        # A coordinator put back to an old backup (or lying) opens a round whose model this hospital has:
        # under a fresh attempt number the ledger would allow it, but it would be a second update of that round.
        if (round, attempt) in self.refused:
            return
        self.refused.add((round, attempt))
        message = (f"The coordinator opened round {round} again (attempt {attempt}), but this hospital already received "
                   f"the model of round {self.state.model_round}; it never computes a finished round again, so it "
                   "refused and left that attempt (a coordinator restored from an old backup?).")
        log.warning(message)
        self.emit(ErrorEvent(message=message, fatal=False))
        self.session.leave_round(round, attempt, step or "", "refusing a round that already finished")

    # -- privacy budget -------------------------------------------------------------------------

    def _decline(self, round: int) -> None:
        reason = self.budget.decline_reason(round)
        self.session.decline(round, "privacy budget cap reached")
        self.emit(Declined(round=round, reason=reason, epsilon=self.budget.spent()))
        self.state.finished = "declined"
        self.save()

    def charge(self, round: int, attempt: int) -> str:
        """Charge the ledger (durably) before anything noised leaves this process; returns the release's key.

        A key already charged raises ReleaseRefused: this hospital never computes one release twice.
        """
        try:
            key, entry = self.budget.charge(round, attempt)
        except PrivacyBudgetExceeded:
            self._decline(round)
            raise
        if entry is not None:
            self.emit(BudgetCharged(round=round, epsilon=entry.epsilon_after, max_epsilon=self.budget.limit))
        return key

    # -- models ---------------------------------------------------------------------------------

    def _ensure_global_model(self, model_round: int) -> None:
        if self.global_round == model_round and self.global_state is not None:
            return
        from core.models.package import read_package

        self.folder.models.mkdir(parents=True, exist_ok=True)
        target = self.folder.models / f"global-r{model_round:04d}.dpm"
        if not target.exists():
            atomic_write_bytes(target, self.session.model(model_round))
        package = read_package(target, require_signature=True, trusted_keys=[self.invitation.coordinator_signing_key])
        if package.card.architecture != self.plan.model:
            raise FederationError("The coordinator published a model of another architecture than the plan's.")
        self.global_state = package.state_dict
        self.global_round = model_round
        for old in self.folder.models.glob("global-r*.dpm"):
            if old != target:
                old.unlink(missing_ok=True)

    def load_global_into_model(self) -> None:
        from core.models.registry import load_weights

        assert self.global_state is not None  # _ensure_global_model ran first
        load_weights(self.model, self.global_state, source=f"global model of round {self.global_round}")

    def _record_rounds(self, model_round: int, last_round) -> None:
        """Learn which finished rounds included this hospital (also those finished while it was away)."""
        metrics: dict = {}
        included_latest = False
        for round in range(max(self.state.model_round + 1, 1), model_round + 1):
            if str(round) not in self.state.rounds_uploaded and round != model_round:
                continue
            result = last_round if last_round is not None and last_round.round == round else \
                self.session.round_result(round)
            included = self.invitation.hospital_id in result.included
            if included and round not in self.state.rounds_participated:
                self.state.rounds_participated.append(round)
            if round == model_round:
                metrics, included_latest = result.metrics, included
        self.state.model_round = model_round
        self.save()
        self.folder.forget_uploads_up_to(model_round)
        self.emit(ModelReceived(round=model_round, metrics=metrics, included=included_latest))

    # -- the end --------------------------------------------------------------------------------

    def _finish(self, reason: str) -> JoinResult:
        model_path = None
        if reason == "completed":
            final_round = self.state.model_round
            self._ensure_global_model(final_round)
            shutil.copyfile(self.folder.models / f"global-r{final_round:04d}.dpm", self.folder.final_model)
            model_path = str(self.folder.final_model.resolve())
        elif self.folder.final_model.exists():
            model_path = str(self.folder.final_model.resolve())
        self.state.finished = reason
        self.save()
        result = self._result(reason, model_path)
        self.emit(Finished(reason=reason, rounds_participated=list(result.rounds_participated),
                           epsilon=result.epsilon, bytes_sent=result.bytes_sent, model_path=model_path))
        self.progress(1.0, f"Federation {reason}")
        return result

    def _result(self, reason: str, model_path: str | None = None) -> JoinResult:
        if model_path is None and self.folder.final_model.exists():
            model_path = str(self.folder.final_model.resolve())
        roster = self.pending_roster or self.roster
        return JoinResult(
            federation_id=self.invitation.federation_id, hospital_id=self.invitation.hospital_id, reason=reason,
            rounds_participated=sorted(self.state.rounds_participated),
            epsilon=self.budget.spent() if getattr(self, "budget", None) is not None else 0.0,
            bytes_sent=self.session.bytes_sent, model_path=model_path, workdir=str(self.folder.root.resolve()),
            roster_code=roster.code if roster is not None else "",
        )


def run(
    config: JoinConfig,
    *,
    progress: ProgressFn = no_progress,
    cancel: CancelToken = NEVER_CANCELLED,
    on_event: EventFn = no_events,
) -> JoinResult:
    """Enroll (once), confirm the roster, and take part in every round until the plan ends, the cap is
    reached, or cancel. Returns reason "roster" when the hospital's people must confirm the roster first."""
    invitation = read_invitation(Path(config.invitation))
    if config.max_epsilon is not None and (not math.isfinite(config.max_epsilon) or config.max_epsilon <= 0):
        raise ConfigError("--max-epsilon must be a positive number.")
    check_device_name(config.device)
    # A full disk or a read-only home: one line (StorageError); every write is atomic or a transaction, and
    # a noised upload is charged before it is stored and stored before it is sent, so nothing is torn.
    with storage_errors(config.home or "this hospital's folder"):
        participant = _Participant(config, invitation, progress, cancel, on_event)
        started = time.monotonic()
        try:
            participant.prepare()
            participant.enroll()
            participant.start_presence()
            if not participant.confirm_roster():
                progress(1.0, "Waiting for this hospital to confirm the roster")
                return participant._result("roster")
            result = participant.participate()
            log.info("federation %s ended (%s) after %.1f s", invitation.federation_id, result.reason,
                     time.monotonic() - started)
            return result
        finally:
            participant.close()

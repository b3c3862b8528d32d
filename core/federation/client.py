"""The hospital client: ``dopamine join`` and the GUI's Federation page.

Job API (for the GUI; everything runs on the caller's worker thread)::

    invitation = read_invitation(path)          # federation name, coordinator URL, CA fingerprint,
                                                # plan, plan hash (FederationError if unusable)
    epsilon = plan_cost(invitation.plan, num_images, accountant=None)   # before joining
    result = run(JoinConfig(invitation=..., data=..., home=..., max_epsilon=..., accept_roster=...),
                 progress=..., cancel=..., on_event=...)                # -> JoinResult

``on_event`` receives core.federation.events dataclasses: PlanReview (before enrolling),
Enrolled, RosterReview (the frozen roster, for the hospital's people to confirm), RoundStarted,
PhaseChanged, LocalStepDone, BudgetCharged, Uploaded, ModelReceived, Declined, Finished,
ErrorEvent (fatal=False: transient, being retried). Cancel raises Cancelled.

Everything lives in the hospital home (core.home): its one privacy ledger, its one signed audit
log, its identity key and image cache, and one folder per federation (state.json, ca.pem,
coordinator-signing-key.txt, models/, pending/). Running ``run`` again resumes: it never enrolls
twice, never computes a (plan, round, attempt) twice (the ledger refuses a second charge of one
release), and resends a stored upload unchanged rather than computing it again.

With secure aggregation the first run stops with reason "roster" once every hospital enrolled:
the hospital's people compare each peer's key fingerprint out of band, then run again with
``accept_roster`` set to the roster's code; the client signs the roster and takes part only when
every hospital of the roster signed the same one.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.audit import AuditLog, check_ledger_not_behind
from core.config import atomic_write_bytes
from core.errors import (
    Cancelled,
    ConfigError,
    DataError,
    FederationError,
    PrivacyBudgetExceeded,
    ReleaseRefused,
)
from core.federation.events import (
    BudgetCharged,
    Declined,
    Enrolled,
    ErrorEvent,
    EventFn,
    Finished,
    LocalStepDone,
    ModelReceived,
    PhaseChanged,
    PlanReview,
    RosterReview,
    RoundStarted,
    Uploaded,
    no_events,
)
from core.federation.invitation import Invitation, read_invitation
from core.federation.plan import FederationPlan, fpdp_round_cost, plan_cost, threat_model_text
from core.home import HospitalHome
from core.jobs import NEVER_CANCELLED, CancelToken, ProgressFn, no_progress

__all__ = ["JoinConfig", "JoinResult", "plan_cost", "read_invitation", "run"]

log = logging.getLogger("dopamine.federation.client")

STATE_VERSION = 2
PRESENCE_WAIT_S = 15.0
ACCEPT_ANY_ROSTER = "any"  # simulations on one computer: one person runs every hospital
UPLOAD_STEPS = ("mask", "update")  # the steps whose upload carries the noised release


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
    poll_wait_s: float = 10.0  # long-poll length: also bounds how quickly cancel takes effect
    max_backoff_s: float = 30.0
    give_up_after_s: float | None = None  # None: keep retrying an unreachable coordinator until cancelled


@dataclass
class JoinResult:
    federation_id: str
    hospital_id: str
    reason: str  # "completed" | "declined" | "stopped" | "roster" (waiting for the people to confirm it)
    rounds_participated: list[int]
    epsilon: float
    bytes_sent: int
    model_path: str | None
    workdir: str
    roster_code: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _State:
    """state.json: what must survive a restart of the hospital client."""

    federation_id: str
    hospital_id: str
    enrolled: bool = False
    fingerprint: str = ""
    num_images: int = 0
    roster_digest: str = ""  # the roster this hospital's people confirmed; no other is ever accepted
    rounds_uploaded: dict[str, int] = field(default_factory=dict)  # round -> attempt
    rounds_participated: list[int] = field(default_factory=list)  # included by the coordinator
    model_round: int = 0
    bytes_sent: int = 0
    finished: str = ""
    version: int = STATE_VERSION


class _Workdir:
    """This hospital's folder for one federation, inside its home."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.state = self.root / "state.json"
        self.ca = self.root / "ca.pem"
        self.coordinator_key = self.root / "coordinator-signing-key.txt"
        self.models = self.root / "models"
        self.final_model = self.models / "final.dpm"
        self.pending = self.root / "pending"

    def pending_upload(self, round: int, attempt: int) -> Path:
        return self.pending / f"r{round:05d}-a{attempt:03d}.bin"

    def load_state(self, invitation: Invitation) -> _State:
        if not self.state.exists():
            return _State(invitation.federation_id, invitation.hospital_id)
        try:
            data = json.loads(self.state.read_text(encoding="utf-8"))
            if data.get("version") != STATE_VERSION:
                raise ValueError("version")
            state = _State(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise FederationError(f"{self.state} is damaged or from another version ({exc.__class__.__name__}); "
                                  "restore it from a backup.") from exc
        if state.federation_id != invitation.federation_id or state.hospital_id != invitation.hospital_id:
            raise FederationError(f"The folder {self.root} belongs to another federation or hospital.")
        return state

    def save_state(self, state: _State) -> None:
        atomic_write_bytes(self.state, json.dumps(asdict(state), indent=2).encode(), mode=0o600)


def membership_folder(home: HospitalHome, invitation: Invitation) -> Path:
    return home.federation_dir(invitation.federation_name, invitation.federation_id, invitation.hospital_id)


def _count_and_load(config: JoinConfig, plan: FederationPlan, cache: Path, progress: ProgressFn,
                    cancel: CancelToken):
    from core.data import Preprocessing, load_tensors, validate

    report = validate(Path(config.data), labels_csv=config.labels_csv, min_size=plan.image_size,
                      progress=lambda f, m: progress(0.02 + 0.03 * f, m), cancel=cancel)
    samples = [s for s in report.usable_samples if s.label is not None]
    if not samples:
        raise DataError(f"{config.data}: no usable labelled images; check the folder with `dopamine inspect`.")
    if list(report.classes) != list(plan.classes) and len(report.classes) != len(plan.classes):
        raise DataError(
            f"{config.data} has {len(report.classes)} classes but the federation trains {len(plan.classes)} "
            f"({', '.join(plan.classes)}); arrange the images by those classes."
        )
    spec = Preprocessing(size=plan.image_size)
    images, labels = load_tensors(samples, spec, cache_dir=cache,
                                  progress=lambda f, m: progress(0.05 + 0.05 * f, m), cancel=cancel)
    return images, labels, spec


def roster_matches(accepted: str | None, digest: str) -> bool:
    """True when ``accepted`` (a roster code, with or without spaces, or the digest) names ``digest``."""
    if not accepted:
        return False
    typed = "".join(accepted.split()).lower()
    return len(typed) >= 16 and digest.startswith(typed)


class _Participant:
    """One hospital's membership: enrollment, the roster, then every round until the plan ends."""

    def __init__(self, config: JoinConfig, invitation: Invitation, progress: ProgressFn, cancel: CancelToken,
                 on_event: EventFn) -> None:
        self.config = config
        self.invitation = invitation
        self.plan = invitation.plan
        self.progress = progress
        self.cancel = cancel
        self.emit = on_event
        self.home = HospitalHome.at(config.home).ensure()
        self.work = _Workdir(membership_folder(self.home, invitation))
        self.state = self.work.load_state(invitation)
        self.round_ctx: dict | None = None
        self.allowance: int | None = None  # rounds the cap allows, counted from this start
        self.charged_here = 0
        self.etag = ""
        self.roster = None  # core.federation.roster.FederationRoster, once confirmed and signed by all
        self.global_state: dict | None = None
        self.global_round = -1
        self.last_error = ""
        self.ledger = None
        self.refused: set[tuple[int, int]] = set()  # reopened attempts this hospital refused

    # -- set-up ---------------------------------------------------------------------------------

    def prepare(self) -> None:
        import torch

        from core.federation.weights import ParameterLayout
        from core.models.registry import build_model
        from core.signing import fingerprint, public_key_bytes

        plan = self.plan
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        self.progress(0.01, "Checking the images")
        self.images, self.labels, self.spec = _count_and_load(self.config, plan, self.home.image_cache,
                                                              self.progress, self.cancel)
        self.num_images = int(self.labels.shape[0])
        self.key = self.home.identity()
        self.fingerprint = fingerprint(public_key_bytes(self.key))
        self.audit = AuditLog(self.home.audit_log, key=self.key)
        accountant = self._open_ledger()
        cost = plan_cost(plan, self.num_images, accountant) if plan.is_private else 0.0
        self.emit(PlanReview(
            federation_name=self.invitation.federation_name, coordinator_url=self.invitation.coordinator_url,
            ca_fingerprint=self.invitation.ca_fingerprint, plan_hash=self.invitation.plan_hash,
            plan_lines=plan.summary_lines(), num_images=self.num_images, epsilon_cost=cost,
            max_epsilon=self._limit(), delta=self.ledger.delta if self.ledger else plan.delta,
            accountant=accountant if plan.is_private else None,
        ))
        atomic_write_bytes(self.work.ca, self.invitation.ca_certificate.encode())
        atomic_write_bytes(self.work.coordinator_key,
                           base64.b64encode(self.invitation.coordinator_signing_key) + b"\n")
        from core.federation.transport import CoordinatorConnection

        self.net = CoordinatorConnection(
            self.invitation.coordinator_url, self.work.ca, federation_id=self.invitation.federation_id,
            hospital_id=self.invitation.hospital_id, key=self.key, audit=self.audit, cancel=self.cancel,
            on_retry=self._on_retry, read_timeout_s=max(60.0, self.config.poll_wait_s + 30.0),
            max_backoff_s=self.config.max_backoff_s, give_up_after_s=self.config.give_up_after_s,
        )
        self.net.bytes_sent = self.state.bytes_sent
        torch.manual_seed(plan.seed)  # the initial weights are public: every party builds the same model
        self.model = build_model(plan.model, len(plan.classes))
        self.layout = ParameterLayout(self.model)

    def _open_ledger(self) -> str | None:
        """The home's one ledger: its delta and accountant if it has them, else the plan's. Returns the accountant."""
        from core.privacy.accountant import check_delta
        from core.privacy.ledger import PrivacyLedger, change_cap

        plan = self.plan
        if not plan.is_private:
            return None
        # delta < 1/N for this hospital's own images, at the plan's delta and at the ledger's.
        check_delta(float(plan.delta), self.num_images)
        ledger = PrivacyLedger(self.home.ledger)
        try:
            if ledger.max_epsilon is None and self.config.max_epsilon is None:
                raise ConfigError("This federation uses differential privacy: set this hospital's privacy cap "
                                  "(--max-epsilon, or `dopamine ledger set-cap`).")
            cap, delta = ledger.max_epsilon, ledger.delta
            if delta is None or cap is None:
                ledger.close()
                change_cap(self.home, cap if cap is not None else self.config.max_epsilon,
                           delta=delta if delta is not None else float(plan.delta),
                           accountant=None if delta is not None else (self.config.accountant or plan.accountant),
                           source=f"joining federation {self.invitation.federation_name}")
                ledger = PrivacyLedger(self.home.ledger)
            check_delta(float(ledger.delta), self.num_images)
            check_ledger_not_behind(ledger, self.home.audit_log)
        except BaseException:
            ledger.close()
            raise
        self.ledger = ledger
        return ledger.accountant

    def _limit(self) -> float | None:
        """The epsilon this run may reach: the ledger's cap, or this run's lower limit."""
        if self.ledger is None:
            return None
        bounds = [b for b in (self.ledger.max_epsilon, self.config.max_epsilon) if b is not None]
        return min(bounds) if bounds else None

    def _keep_present(self) -> None:
        """Hold a long poll open at all times (own connection), so the coordinator notices at once,
        from the dropped connection, when this process dies, and does not wait for it."""
        from core.federation.transport import CoordinatorConnection

        connection = CoordinatorConnection(
            self.invitation.coordinator_url, self.work.ca, federation_id=self.invitation.federation_id,
            hospital_id=self.invitation.hospital_id, key=self.key, cancel=self.presence_stop,
            read_timeout_s=PRESENCE_WAIT_S + 30.0, max_backoff_s=self.config.max_backoff_s)
        try:
            while not self.presence_stop.cancelled:
                try:
                    connection.request("GET", "/v1/presence", params={"wait": PRESENCE_WAIT_S})
                except Cancelled:
                    break
                except FederationError:
                    self.presence_stop.wait(1.0)  # refused (e.g. not enrolled yet): try again shortly
        except Cancelled:
            pass
        finally:
            connection.close()

    def start_presence(self) -> None:
        self.presence_stop = CancelToken()
        threading.Thread(target=self._keep_present, name="dopamine-presence", daemon=True).start()

    def _on_retry(self, message: str) -> None:
        problem = message.split("; retrying")[0]
        if problem != self.last_error:  # once per kind of trouble, not on every retry
            self.last_error = problem
            self.emit(ErrorEvent(message=message, fatal=False))

    def close(self) -> None:
        if getattr(self, "presence_stop", None) is not None:
            self.presence_stop.cancel()
        if getattr(self, "net", None) is not None:
            self.net.close()
        if self.ledger is not None:
            self.ledger.close()

    def _save(self) -> None:
        self.state.bytes_sent = self.net.bytes_sent
        self.work.save_state(self.state)

    # -- enrollment and the roster ----------------------------------------------------------------

    def enroll(self) -> None:
        from core.signing import public_key_bytes

        if self.state.enrolled and self.state.num_images != self.num_images:
            log.warning("image count changed from %d to %d since enrollment; the coordinator keeps %d",
                        self.state.num_images, self.num_images, self.state.num_images)
        if not self.state.enrolled:
            self.progress(0.1, "Enrolling with the coordinator")
            answer = self.net.post_json("/v1/enroll", {
                "token": self.invitation.token, "hospital_id": self.invitation.hospital_id,
                "public_key": base64.b64encode(public_key_bytes(self.key)).decode(), "num_images": self.num_images,
            }, what="enrollment (token, public identity key, image count)", federation=self.invitation.federation_id)
            if answer.get("plan_hash") != self.invitation.plan_hash:
                raise FederationError("The coordinator runs a different plan than the invitation's; not taking part.")
            self.state.enrolled = True
            self.state.fingerprint = self.fingerprint
            self.state.num_images = self.num_images
            self._save()
        served = self.net.get_json("/v1/plan")
        if served.get("plan_hash") != self.invitation.plan_hash:
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
            view = self.net.get_json("/v1/roster")
            if view.get("roster") is None:
                self.progress(0.1, "Waiting for the other hospitals to enroll")
                self._wait_for_change()
                continue
            roster = FederationRoster.from_dict(view["roster"])
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
                self._save()
            signatures = {}
            for hospital, text in (view.get("signatures") or {}).items():
                try:
                    signatures[str(hospital)] = base64.b64decode(str(text), validate=True)
                except ValueError:
                    continue
            if self.invitation.hospital_id not in signatures:
                signature = sign_roster(self.key, roster)
                self.net.post_json("/v1/roster/signature",
                                   {"digest": digest, "signature": base64.b64encode(signature).decode()},
                                   what="signature on the federation roster", federation=self.invitation.federation_id)
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

    def _wait_for_change(self) -> None:
        view = self.net.get_json("/v1/state", params={"since": self.etag, "wait": self.config.poll_wait_s},
                                 read_timeout_s=self.config.poll_wait_s + 60.0)
        self.etag = str(view.get("etag", ""))

    # -- the round loop -------------------------------------------------------------------------

    def participate(self) -> JoinResult:
        if self.state.finished:
            return self._result(self.state.finished)
        steps = ("advertise", "share", "mask", "consistency", "unmask") if self.plan.secagg else ("update",)
        while True:
            self.cancel.check()
            view = self.net.get_json("/v1/state", params={"since": self.etag, "wait": self.config.poll_wait_s},
                                     read_timeout_s=self.config.poll_wait_s + 60.0)
            self.etag = str(view.get("etag", ""))
            self.last_error = ""
            if view["model_round"] > self.state.model_round:
                self._record_rounds(view["model_round"], view.get("last_round"))
            status = view["status"]
            if view.get("hospital_status") == "declined":
                return self._finish("declined")
            if status == "finished":
                return self._finish("completed")
            if status == "stopped":
                self.emit(ErrorEvent(message=f"The coordinator stopped the federation: {view.get('stop_reason')}", fatal=True))
                return self._finish("stopped")
            if status != "running":
                self.progress(0.1, "Waiting for the other hospitals")
                continue
            self._act(view, steps)

    def _act(self, view: dict, steps: tuple[str, ...]) -> None:
        round, attempt, step = view["round"], view["attempt"], view["phase"]
        ctx = self.round_ctx
        if ctx is not None and ((ctx["round"], ctx["attempt"]) != (round, attempt) or view["model_round"] >= round):
            ctx = self.round_ctx = None  # another attempt, or this one finished (and a coordinator reopened it)
        if ctx is None:
            if self._resume_attempt(view):
                return
            if step != steps[0] or not view["participant"] or view["submitted"]:
                return
            if attempt > self.plan.max_attempts:
                raise FederationError(
                    f"The coordinator opened attempt {attempt} of round {round}; the plan allows {self.plan.max_attempts}. "
                    "Every attempt is a new release charged to this hospital's budget: not taking part any more.")
            if not self._budget_allows(round):
                self._decline(round)
                return
            self.round_ctx = ctx = {"round": round, "attempt": attempt, "client": None}
            self.emit(RoundStarted(round=round, rounds=self.plan.rounds))
            self.progress(0.1 + 0.9 * (round - 1) / self.plan.rounds, f"Round {round} of {self.plan.rounds}")
            self._ensure_global_model(view["model_round"])
        if not view["participant"] or view["submitted"]:
            return
        if step == steps[0] and ctx.get("started"):
            # The coordinator shows this attempt's first step again after this hospital took it: the attempt
            # was reset (a coordinator restored from a backup). Never compute it a second time.
            self.round_ctx = None
            self._refuse_reopened(round, attempt, step)
            return
        ctx["started"] = True
        self.emit(PhaseChanged(round=round, phase=step))
        try:
            {"update": self._plain_update, "advertise": self._advertise, "share": self._share, "mask": self._mask,
             "consistency": self._consistency, "unmask": self._unmask}[step](ctx, view)
        except PrivacyBudgetExceeded:
            return  # _charge declined for us; the next poll ends the membership as "declined"
        except ReleaseRefused:
            self.round_ctx = None
            self._refuse_reopened(round, attempt, step)

    def _resume_attempt(self, view: dict) -> bool:
        """An attempt this hospital already worked on before (a restart, or a coordinator that reopened it):
        resend a stored upload unchanged, then leave the attempt (its round keys are gone); never compute
        it again. True when this attempt was handled here."""
        round, attempt, step = view["round"], view["attempt"], view["phase"]
        pending = self.work.pending_upload(round, attempt)
        charged = self.ledger is not None and self.ledger.has_charge(self._ledger_key(round, attempt))
        if pending.exists() and step in UPLOAD_STEPS and view["participant"] and not view["submitted"]:
            body = pending.read_bytes()
            self._upload(round, attempt, step, body, "the stored upload of this attempt, resent unchanged")
            log.info("round %d attempt %d: resent the stored upload after a restart", round, attempt)
            if not self.plan.secagg:
                return True
        elif charged and not view["in_round"]:
            self._refuse_reopened(round, attempt, step)
            return True
        if not (view["in_round"] or pending.exists() or charged):
            return False
        if view["participant"] and (self.plan.secagg or not view["submitted"]):
            # Tell the coordinator not to wait for us (a masked input we sent is still included; the
            # others rebuild its mask).
            self.net.request("POST", f"/v1/rounds/{round}/{attempt}/leave", body=b"{}",
                             what="leaving the round after a restart", round=round, phase=step,
                             content_type="application/json", federation=self.invitation.federation_id)
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
        self.net.request("POST", f"/v1/rounds/{round}/{attempt}/leave", body=b"{}",
                         what="refusing a reopened round attempt", round=round, phase=step,
                         content_type="application/json", federation=self.invitation.federation_id)

    # -- privacy budget -------------------------------------------------------------------------

    def _round_cost(self) -> tuple[float, float, int]:
        plan = self.plan
        if plan.mode == "fscdp":
            return float(plan.noise_multiplier), float(plan.sample_rate), 1
        steps, rate = fpdp_round_cost(plan, self.num_images)
        return float(plan.noise_multiplier), rate, steps

    def _ledger_key(self, round: int, attempt: int) -> str:
        return f"fed:{self.invitation.plan_hash}:round:{round}:attempt:{attempt}"

    def _budget_allows(self, round: int) -> bool:
        limit = self._limit()
        if limit is None:
            return True
        if self.allowance is None:
            self.allowance = self._rounds_within(limit)
        return self.charged_here < self.allowance

    def _rounds_within(self, limit: float) -> int:
        """How many more charged attempts the limit allows, from the ledger as it is now: a binary search with
        the accountant (a few calls once, instead of one every round). charge() still checks the cap itself,
        so another job charging the same ledger meanwhile cannot take the hospital past it."""
        noise, rate, steps = self._round_cost()
        low, high = 0, self.plan.rounds * self.plan.max_attempts
        while low < high:
            middle = (low + high + 1) // 2
            if self.ledger.epsilon_if(noise, rate, steps * middle) <= limit:
                low = middle
            else:
                high = middle - 1
        return low

    def _decline(self, round: int) -> None:
        spent = self.ledger.spent()
        after = self.ledger.epsilon_if(*self._round_cost())
        reason = (f"round {round} would bring this hospital's epsilon from {spent:.4g} to {after:.4g}, "
                  f"above its cap of {self._limit():.4g}")
        self.net.post_json("/v1/decline", {"reason": "privacy budget cap reached"}, what="declining further rounds",
                           round=round, federation=self.invitation.federation_id)
        self.emit(Declined(round=round, reason=reason, epsilon=spent))
        self.state.finished = "declined"
        self._save()

    def _charge(self, round: int, attempt: int) -> str:
        """Charge the ledger (durably) before anything noised leaves this process; returns the release's key.

        A key already charged raises ReleaseRefused: this hospital never computes one release twice.
        """
        key = self._ledger_key(round, attempt)
        if self.ledger is None:
            return ""
        noise, rate, steps = self._round_cost()
        try:
            entry = self.ledger.charge(
                noise_multiplier=noise, sample_rate=rate, steps=steps, key=key, limit=self.config.max_epsilon,
                description=f"federation {self.invitation.federation_name} ({self.plan.mode.upper()}) round {round} "
                            f"attempt {attempt}. {threat_model_text(self.plan)}")
        except PrivacyBudgetExceeded:
            self._decline(round)
            raise
        self.charged_here += 1
        self.emit(BudgetCharged(round=round, epsilon=entry.epsilon_after, max_epsilon=self._limit()))
        return key

    # -- models ---------------------------------------------------------------------------------

    def _ensure_global_model(self, model_round: int) -> None:
        if self.global_round == model_round and self.global_state is not None:
            return
        from core.models.package import read_package

        self.work.models.mkdir(parents=True, exist_ok=True)
        target = self.work.models / f"global-r{model_round:04d}.dpm"
        if not target.exists():
            response = self.net.request("GET", f"/v1/models/{model_round}.dpm")
            atomic_write_bytes(target, response.content)
        package = read_package(target, require_signature=True, trusted_keys=[self.invitation.coordinator_signing_key])
        if package.card.architecture != self.plan.model:
            raise FederationError("The coordinator published a model of another architecture than the plan's.")
        self.global_state = package.state_dict
        self.global_round = model_round
        for old in self.work.models.glob("global-r*.dpm"):
            if old != target:
                old.unlink(missing_ok=True)

    def _load_global_into_model(self) -> None:
        from core.models.registry import load_weights

        load_weights(self.model, self.global_state, source=f"global model of round {self.global_round}")

    def _record_rounds(self, model_round: int, last_round: dict | None) -> None:
        """Learn which finished rounds included this hospital (also those finished while it was away)."""
        metrics: dict = {}
        included_latest = False
        first = max(self.state.model_round + 1, 1)
        for round in range(first, model_round + 1):
            if str(round) not in self.state.rounds_uploaded and round != model_round:
                continue
            if last_round is not None and last_round.get("round") == round:
                result = last_round
            else:
                result = self.net.get_json(f"/v1/rounds/{round}/result")
            included = self.invitation.hospital_id in result.get("included", [])
            if included and round not in self.state.rounds_participated:
                self.state.rounds_participated.append(round)
            if round == model_round:
                metrics, included_latest = result.get("metrics", {}), included
        self.state.model_round = model_round
        self._save()
        for stored in self.work.pending.glob("r*-a*.bin") if self.work.pending.exists() else ():
            if int(stored.name[1:6]) <= model_round:
                stored.unlink(missing_ok=True)  # that round is over: its upload can never be needed again
        self.emit(ModelReceived(round=model_round, metrics=metrics, included=included_latest))

    # -- steps ----------------------------------------------------------------------------------

    def _upload(self, round: int, attempt: int, step: str, body: bytes, what: str, ledger_key: str = "") -> None:
        self.net.request("POST", f"/v1/rounds/{round}/{attempt}/{step}", body=body, what=what, round=round,
                         phase=step, accept_duplicate=True, federation=self.invitation.federation_id,
                         ledger_key=ledger_key)
        self._save()

    def _release(self, round: int, attempt: int, step: str, body: bytes, what: str, key: str,
                 compute_s: float) -> None:
        """Store the noised upload durably, then send it: a restart resends these bytes, never new ones."""
        atomic_write_bytes(self.work.pending_upload(round, attempt), body, mode=0o600)
        self.state.rounds_uploaded[str(round)] = attempt
        self._upload(round, attempt, step, body, what, ledger_key=key)
        self.emit(Uploaded(round=round, what=what, bytes=len(body), compute_s=compute_s))

    def _plain_update(self, ctx: dict, view: dict) -> None:
        from core.federation.local_work import train_delta
        from core.federation.weights import tensors_to_bytes

        round, attempt = ctx["round"], ctx["attempt"]
        self._load_global_into_model()
        key = self._charge(round, attempt)
        started = time.perf_counter()
        result = train_delta(self.model, self.layout, self.images, self.labels, self.spec, self.plan,
                             on_step=lambda step, loss: self.emit(LocalStepDone(round=round, step=step, loss=loss)),
                             cancel=self.cancel)
        body = tensors_to_bytes(self.layout.unflatten(result.vector))
        self._release(round, attempt, "update", body, f"model delta ({self.plan.mode.upper()})", key,
                      time.perf_counter() - started)

    def _secagg_client(self, ctx: dict, view: dict):
        from core.federation.roster import secagg_params
        from core.secagg import RoundParams, SecAggClient

        expected = secagg_params(self.plan, self.roster, ctx["round"], ctx["attempt"], self.layout.length)
        announced = RoundParams.from_dict(view["secagg"])
        if announced != expected:
            differ = sorted(k for k, v in expected.to_dict().items() if announced.to_dict().get(k) != v)
            raise FederationError(
                f"The coordinator announced secure-aggregation parameters ({', '.join(differ)}) that differ from "
                "what the plan and the signed roster give; not taking part.")
        return SecAggClient(expected, self.invitation.hospital_id, self.key, self.roster.keys())

    def _advertise(self, ctx: dict, view: dict) -> None:
        ctx["client"] = self._secagg_client(ctx, view)
        message = ctx["client"].advertise()
        self._upload(ctx["round"], ctx["attempt"], "advertise", message.to_bytes(),
                     "secure aggregation: public keys for this round")

    def _answer(self, ctx: dict, step: str) -> bytes:
        return self.net.request("GET", f"/v1/rounds/{ctx['round']}/{ctx['attempt']}/{step}").content

    def _share(self, ctx: dict, view: dict) -> None:
        from core.secagg import KeyRoster

        message = ctx["client"].share_keys(KeyRoster.from_bytes(self._answer(ctx, "advertise")))
        self._upload(ctx["round"], ctx["attempt"], "share", message.to_bytes(),
                     "secure aggregation: encrypted key shares for the other hospitals")

    def _mask(self, ctx: dict, view: dict) -> None:
        from core.federation.local_work import clip_l2, fscdp_step, train_delta
        from core.secagg import ShareBundle

        round, attempt = ctx["round"], ctx["attempt"]
        bundle = ShareBundle.from_bytes(self._answer(ctx, "share"))
        self._load_global_into_model()
        if self.plan.mode == "fscdp":
            started = time.perf_counter()
            result = fscdp_step(self.model, self.layout, self.images, self.labels, self.spec, self.plan)
            compute_s = time.perf_counter() - started
            self.emit(LocalStepDone(round=round, step=1, loss=result.loss))
            values = result.vector
            what = "masked, noised clipped-gradient sum (FSCDP)"
            key = self._charge(round, attempt)
        else:
            key = self._charge(round, attempt)
            started = time.perf_counter()
            result = train_delta(self.model, self.layout, self.images, self.labels, self.spec, self.plan,
                                 on_step=lambda s, loss: self.emit(LocalStepDone(round=round, step=s, loss=loss)),
                                 cancel=self.cancel)
            compute_s = time.perf_counter() - started
            weight = self.num_images / max(1, int(view.get("max_images") or self.num_images))
            values = weight * clip_l2(result.vector, float(self.plan.update_bound))
            what = f"masked model delta ({self.plan.mode.upper()})"
        body = ctx["client"].mask_input(bundle, values).to_bytes()
        del values, result  # the noised vector exists only in this attempt, masked under its keys only
        self._release(round, attempt, "mask", body, what, key, compute_s)

    def _consistency(self, ctx: dict, view: dict) -> None:
        from core.secagg import SurvivorSet

        message = ctx["client"].sign_survivors(SurvivorSet.from_bytes(self._answer(ctx, "mask")))
        self._upload(ctx["round"], ctx["attempt"], "consistency", message.to_bytes(),
                     "secure aggregation: signature on the survivor set this hospital was shown")

    def _unmask(self, ctx: dict, view: dict) -> None:
        from core.secagg import UnmaskRequest

        message = ctx["client"].unmask(UnmaskRequest.from_bytes(self._answer(ctx, "consistency")))
        self._upload(ctx["round"], ctx["attempt"], "unmask", message.to_bytes(),
                     "secure aggregation: shares to remove the masks of the released sum")

    # -- the end --------------------------------------------------------------------------------

    def _finish(self, reason: str) -> JoinResult:
        model_path = None
        if reason == "completed":
            final_round = self.state.model_round
            self._ensure_global_model(final_round)
            shutil.copyfile(self.work.models / f"global-r{final_round:04d}.dpm", self.work.final_model)
            model_path = str(self.work.final_model.resolve())
        elif self.work.final_model.exists():
            model_path = str(self.work.final_model.resolve())
        self.state.finished = reason
        self._save()
        result = self._result(reason, model_path)
        self.emit(Finished(reason=reason, rounds_participated=list(result.rounds_participated),
                           epsilon=result.epsilon, bytes_sent=result.bytes_sent, model_path=model_path))
        self.progress(1.0, f"Federation {reason}")
        return result

    def _result(self, reason: str, model_path: str | None = None) -> JoinResult:
        if model_path is None and self.work.final_model.exists():
            model_path = str(self.work.final_model.resolve())
        roster = getattr(self, "pending_roster", None) or self.roster
        return JoinResult(
            federation_id=self.invitation.federation_id, hospital_id=self.invitation.hospital_id, reason=reason,
            rounds_participated=sorted(self.state.rounds_participated),
            epsilon=self.ledger.spent() if self.ledger is not None else 0.0,
            bytes_sent=self.net.bytes_sent, model_path=model_path, workdir=str(self.work.root.resolve()),
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

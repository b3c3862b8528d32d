"""The hospital client: ``dopamine join`` and the GUI's Federation page.

Job API (for the GUI; everything runs on the caller's worker thread)::

    invitation = read_invitation(path)          # federation name, coordinator URL, CA fingerprint,
                                                # plan, plan hash (FederationError if unusable)
    epsilon = plan_cost(invitation.plan, num_images, accountant=None)   # before joining
    result = run(JoinConfig(invitation=..., data=..., workdir=..., max_epsilon=...),
                 progress=..., cancel=..., on_event=...)                # -> JoinResult

``on_event`` receives core.federation.events dataclasses: PlanReview (before enrolling),
Enrolled, RoundStarted, PhaseChanged, LocalStepDone, BudgetCharged, Uploaded, ModelReceived,
Declined, Finished, ErrorEvent (fatal=False: transient, being retried). Cancel raises Cancelled.

The work folder holds everything of this hospital's membership and survives restarts:
identity.key (Ed25519, 0600), state.json, ledger.sqlite (core.privacy.ledger), audit.jsonl
(core.federation.audit), ca.pem, and models/ (the latest global model; final.dpm at the end).
Running ``run`` again with the same work folder resumes: it never enrolls or charges twice (the
ledger key is per federation, round and attempt) and keeps every round it completed.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.config import atomic_write_bytes
from core.errors import Cancelled, ConfigError, DataError, FederationError, PrivacyBudgetExceeded
from core.federation.audit import AuditLog
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
    RoundStarted,
    Uploaded,
    no_events,
)
from core.federation.invitation import Invitation, read_invitation
from core.federation.plan import FederationPlan, fpdp_round_cost, plan_cost
from core.jobs import NEVER_CANCELLED, CancelToken, ProgressFn, no_progress

__all__ = ["JoinConfig", "JoinResult", "plan_cost", "read_invitation", "run"]

log = logging.getLogger("dopamine.federation.client")

STATE_VERSION = 1
PRESENCE_WAIT_S = 15.0


@dataclass
class JoinConfig:
    invitation: Path
    data: Path
    workdir: Path
    max_epsilon: float | None = None  # required for fpdp/fscdp: the hospital's cap on its ledger
    labels_csv: Path | None = None
    ledger: Path | None = None  # default: workdir/ledger.sqlite
    accountant: str | None = None  # default: the plan's
    threads: int | None = None
    poll_wait_s: float = 10.0  # long-poll length: also bounds how quickly cancel takes effect
    max_backoff_s: float = 30.0
    give_up_after_s: float | None = None  # None: keep retrying an unreachable coordinator until cancelled


@dataclass
class JoinResult:
    federation_id: str
    hospital_id: str
    reason: str  # "completed" | "declined" | "stopped"
    rounds_participated: list[int]
    epsilon: float
    bytes_sent: int
    model_path: str | None
    workdir: str

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
    rounds_uploaded: dict[str, int] = field(default_factory=dict)  # round -> attempt
    rounds_participated: list[int] = field(default_factory=list)  # included by the coordinator
    model_round: int = 0
    bytes_sent: int = 0
    finished: str = ""
    version: int = STATE_VERSION


class _Workdir:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.identity = self.root / "identity.key"
        self.state = self.root / "state.json"
        self.ledger = self.root / "ledger.sqlite"
        self.audit = self.root / "audit.jsonl"
        self.ca = self.root / "ca.pem"
        self.models = self.root / "models"
        self.final_model = self.models / "final.dpm"

    def load_state(self, invitation: Invitation) -> _State:
        if not self.state.exists():
            return _State(invitation.federation_id, invitation.hospital_id)
        try:
            data = json.loads(self.state.read_text(encoding="utf-8"))
            state = _State(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise FederationError(f"{self.state} is damaged ({exc.__class__.__name__}); restore it or use a new work folder.") from exc
        if state.federation_id != invitation.federation_id or state.hospital_id != invitation.hospital_id:
            raise FederationError(
                f"The work folder {self.root} belongs to another federation or hospital; use a new work folder."
            )
        return state

    def save_state(self, state: _State) -> None:
        atomic_write_bytes(self.state, json.dumps(asdict(state), indent=2).encode(), mode=0o600)


def _count_and_load(config: JoinConfig, plan: FederationPlan, progress: ProgressFn, cancel: CancelToken):
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
    images, labels = load_tensors(samples, spec, progress=lambda f, m: progress(0.05 + 0.05 * f, m), cancel=cancel)
    return images, labels, spec


class _Participant:
    """One hospital's membership: enrollment, then every round until the plan ends."""

    def __init__(self, config: JoinConfig, invitation: Invitation, progress: ProgressFn, cancel: CancelToken,
                 on_event: EventFn) -> None:
        self.config = config
        self.invitation = invitation
        self.plan = invitation.plan
        self.progress = progress
        self.cancel = cancel
        self.emit = on_event
        self.work = _Workdir(config.workdir)
        self.state = self.work.load_state(invitation)
        self.round_ctx: dict | None = None
        self.allowance: int | None = None  # rounds the cap allows, counted from this start
        self.charged_here = 0
        self.etag = ""
        self.peers: dict[str, bytes] | None = None
        self.global_state: dict | None = None
        self.global_round = -1
        self.last_error = ""

    # -- set-up ---------------------------------------------------------------------------------

    def prepare(self) -> None:
        import torch

        from core.federation.weights import ParameterLayout
        from core.models.registry import build_model
        from core.privacy.ledger import PrivacyLedger
        from core.signing import fingerprint, load_or_create_private_key, public_key_bytes

        plan = self.plan
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        if plan.is_private and self.config.max_epsilon is None:
            raise ConfigError("This federation uses differential privacy: set this hospital's cap with --max-epsilon.")
        self.progress(0.01, "Checking the images")
        self.images, self.labels, self.spec = _count_and_load(self.config, plan, self.progress, self.cancel)
        self.num_images = int(self.labels.shape[0])
        accountant = self.config.accountant or plan.accountant
        cost = plan_cost(plan, self.num_images, accountant) if plan.is_private else 0.0
        self.emit(PlanReview(
            federation_name=self.invitation.federation_name, coordinator_url=self.invitation.coordinator_url,
            ca_fingerprint=self.invitation.ca_fingerprint, plan_hash=self.invitation.plan_hash,
            plan_lines=plan.summary_lines(), num_images=self.num_images, epsilon_cost=cost,
            max_epsilon=self.config.max_epsilon, delta=plan.delta, accountant=accountant if plan.is_private else None,
        ))
        self.key = load_or_create_private_key(self.work.identity)
        self.fingerprint = fingerprint(public_key_bytes(self.key))
        self.ledger = None
        if plan.is_private:
            self.ledger = PrivacyLedger(self.config.ledger or self.work.ledger, max_epsilon=self.config.max_epsilon,
                                        delta=float(plan.delta), accountant=accountant)
        atomic_write_bytes(self.work.ca, self.invitation.ca_certificate.encode())
        self.audit = AuditLog(self.work.audit)
        from core.federation.transport import CoordinatorConnection

        self.net = CoordinatorConnection(
            self.invitation.coordinator_url, self.work.ca, federation_id=self.invitation.federation_id,
            hospital_id=self.invitation.hospital_id, key=self.key, audit=self.audit, cancel=self.cancel,
            on_retry=self._on_retry, read_timeout_s=max(60.0, self.config.poll_wait_s + 30.0),
            max_backoff_s=self.config.max_backoff_s, give_up_after_s=self.config.give_up_after_s,
        )
        self.net.bytes_sent = self.state.bytes_sent
        torch.manual_seed(plan.seed)
        self.model = build_model(plan.model, len(plan.classes))
        self.layout = ParameterLayout(self.model)

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
        if getattr(self, "ledger", None) is not None:
            self.ledger.close()

    def _save(self) -> None:
        self.state.bytes_sent = self.net.bytes_sent
        self.work.save_state(self.state)

    # -- enrollment -----------------------------------------------------------------------------

    def enroll(self) -> None:
        import base64

        from core.signing import public_key_bytes

        if self.state.enrolled and self.state.num_images != self.num_images:
            log.warning("image count changed from %d to %d since enrollment; the coordinator keeps %d",
                        self.state.num_images, self.num_images, self.state.num_images)
        if not self.state.enrolled:
            self.progress(0.1, "Enrolling with the coordinator")
            answer = self.net.post_json("/v1/enroll", {
                "token": self.invitation.token, "hospital_id": self.invitation.hospital_id,
                "public_key": base64.b64encode(public_key_bytes(self.key)).decode(), "num_images": self.num_images,
            }, what="enrollment (token, public identity key, image count)")
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

    # -- the round loop -------------------------------------------------------------------------

    def participate(self) -> JoinResult:
        if self.state.finished:
            return self._result(self.state.finished)
        steps = ("advertise", "share", "mask", "unmask") if self.plan.secagg else ("update",)
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
                self.progress(0.1, "Waiting for the other hospitals to enroll")
                continue
            self._act(view, steps)

    def _act(self, view: dict, steps: tuple[str, ...]) -> None:
        round, attempt, step = view["round"], view["attempt"], view["phase"]
        ctx = self.round_ctx
        if ctx is not None and (ctx["round"], ctx["attempt"]) != (round, attempt):
            ctx = self.round_ctx = None
        if ctx is None:
            if view["in_round"]:
                if self.plan.secagg and view["participant"]:
                    # We restarted mid-round and lost this attempt's keys: tell the coordinator not to
                    # wait for us (a masked input we sent is still included; others rebuild its mask).
                    self.net.request("POST", f"/v1/rounds/{round}/{attempt}/leave", body=b"{}",
                                     what="leaving the round after a restart", round=round, phase=step,
                                     content_type="application/json")
                return
            if step != steps[0] or not view["participant"] or view["submitted"]:
                return
            if not self._budget_allows(round):
                self._decline(round)
                return
            self.round_ctx = ctx = {"round": round, "attempt": attempt, "client": None}
            self.emit(RoundStarted(round=round, rounds=self.plan.rounds))
            self.progress(0.1 + 0.9 * (round - 1) / self.plan.rounds, f"Round {round} of {self.plan.rounds}")
            self._ensure_global_model(view["model_round"])
        if not view["participant"] or view["submitted"]:
            return
        self.emit(PhaseChanged(round=round, phase=step))
        try:
            self._do_step(ctx, view, step)
        except PrivacyBudgetExceeded:
            return  # _charge declined for us; the next poll ends the membership as "declined"

    def _do_step(self, ctx: dict, view: dict, step: str) -> None:
        if step == "update":
            self._plain_update(ctx, view)
        elif step == "advertise":
            self._advertise(ctx, view)
        elif step == "share":
            self._share(ctx)
        elif step == "mask":
            self._mask(ctx, view)
        elif step == "unmask":
            self._unmask(ctx)

    # -- privacy budget -------------------------------------------------------------------------

    def _round_cost(self) -> tuple[float, float, int]:
        plan = self.plan
        if plan.mode == "fscdp":
            return float(plan.noise_multiplier), float(plan.sample_rate), 1
        steps, rate = fpdp_round_cost(plan, self.num_images)
        return float(plan.noise_multiplier), rate, steps

    def _ledger_key(self, round: int, attempt: int) -> str:
        return f"fed:{self.invitation.federation_id}:round:{round}:attempt:{attempt}"

    def _budget_allows(self, round: int) -> bool:
        if self.ledger is None or self.ledger.max_epsilon is None:
            return True
        if self.allowance is None:
            self.allowance = self._rounds_within_cap()
        return self.charged_here < self.allowance

    def _rounds_within_cap(self) -> int:
        """How many more rounds the cap allows, from the ledger as it is now: a binary search with the
        accountant (a few calls once, instead of one every round). charge() still checks the cap itself,
        so another job charging the same ledger meanwhile cannot take the hospital past it."""
        noise, rate, steps = self._round_cost()
        low, high = 0, self.plan.rounds
        while low < high:
            middle = (low + high + 1) // 2
            if self.ledger.epsilon_if(noise, rate, steps * middle) <= self.ledger.max_epsilon:
                low = middle
            else:
                high = middle - 1
        return low

    def _decline(self, round: int) -> None:
        spent = self.ledger.spent()
        after = self.ledger.epsilon_if(*self._round_cost())
        reason = (f"round {round} would bring this hospital's epsilon from {spent:.4g} to {after:.4g}, "
                  f"above its cap of {self.ledger.max_epsilon:.4g}")
        self.net.post_json("/v1/decline", {"reason": "privacy budget cap reached"}, what="declining further rounds",
                           round=round)
        self.emit(Declined(round=round, reason=reason, epsilon=spent))
        self.state.finished = "declined"
        self._save()

    def _charge(self, round: int, attempt: int) -> None:
        """Charge the ledger (durably) before anything noised leaves this process."""
        if self.ledger is None:
            return
        noise, rate, steps = self._round_cost()
        key = self._ledger_key(round, attempt)
        new_charge = key not in {e.key for e in self.ledger.entries()}
        try:
            entry = self.ledger.charge(noise_multiplier=noise, sample_rate=rate, steps=steps,
                                       description=f"federation {self.invitation.federation_name} "
                                                   f"({self.plan.mode.upper()}) round {round} attempt {attempt}",
                                       key=key)
        except PrivacyBudgetExceeded:
            self._decline(round)
            raise
        self.charged_here += new_charge
        self.emit(BudgetCharged(round=round, epsilon=entry.epsilon_after, max_epsilon=self.ledger.max_epsilon))

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
        self.emit(ModelReceived(round=model_round, metrics=metrics, included=included_latest))

    # -- steps ----------------------------------------------------------------------------------

    def _upload(self, round: int, attempt: int, step: str, body: bytes, what: str) -> None:
        self.net.request("POST", f"/v1/rounds/{round}/{attempt}/{step}", body=body, what=what, round=round,
                         phase=step, accept_duplicate=True)
        self._save()

    def _plain_update(self, ctx: dict, view: dict) -> None:
        from core.federation.local_work import train_delta
        from core.federation.weights import tensors_to_bytes

        round, attempt = ctx["round"], ctx["attempt"]
        self._load_global_into_model()
        self._charge(round, attempt)
        started = time.perf_counter()
        result = train_delta(self.model, self.layout, self.images, self.labels, self.spec, self.plan,
                             on_step=lambda step, loss: self.emit(LocalStepDone(round=round, step=step, loss=loss)),
                             cancel=self.cancel)
        compute_s = time.perf_counter() - started
        body = tensors_to_bytes(self.layout.unflatten(result.vector))
        self.state.rounds_uploaded[str(round)] = attempt
        self._upload(round, attempt, "update", body, f"model delta ({self.plan.mode.upper()})")
        self.emit(Uploaded(round=round, what="model delta", bytes=len(body), compute_s=compute_s))

    def _secagg_client(self, ctx: dict, view: dict):
        import base64

        from core.secagg import RoundParams, SecAggClient

        params = RoundParams.from_dict(view["secagg"])
        # The noise each hospital adds assumes the sum is only released over >= m hospitals, and the
        # vector must be this model's: refuse parameters that differ from the plan.
        expected_id = f"{self.invitation.federation_id}:r{ctx['round']}:a{ctx['attempt']}"
        if params.threshold < self.plan.threshold or params.round_id != expected_id:
            raise FederationError("The coordinator announced secure-aggregation parameters that differ from the plan; not taking part.")
        if params.vector_length != self.layout.length:
            raise FederationError("The coordinator announced a vector length that does not match the model.")
        if self.peers is None:
            peers = self.net.get_json("/v1/hospitals")["hospitals"]
            self.peers = {p["hospital_id"]: base64.b64decode(p["public_key"]) for p in peers}
        return SecAggClient(params, self.invitation.hospital_id, self.key, self.peers)

    def _advertise(self, ctx: dict, view: dict) -> None:
        ctx["client"] = self._secagg_client(ctx, view)
        ctx["view"] = view
        message = ctx["client"].advertise()
        self._upload(ctx["round"], ctx["attempt"], "advertise", message.to_bytes(),
                     "secure aggregation: public keys for this round")

    def _share(self, ctx: dict) -> None:
        from core.secagg import KeyRoster

        roster = KeyRoster.from_bytes(self.net.request("GET", f"/v1/rounds/{ctx['round']}/{ctx['attempt']}/advertise").content)
        message = ctx["client"].share_keys(roster)
        self._upload(ctx["round"], ctx["attempt"], "share", message.to_bytes(),
                     "secure aggregation: encrypted key shares for the other hospitals")

    def _mask(self, ctx: dict, view: dict) -> None:
        from core.federation.local_work import clip_l2, fscdp_step, train_delta
        from core.secagg import ShareBundle

        round, attempt = ctx["round"], ctx["attempt"]
        bundle = ShareBundle.from_bytes(self.net.request("GET", f"/v1/rounds/{round}/{attempt}/share").content)
        self._load_global_into_model()
        if self.plan.mode == "fscdp":
            started = time.perf_counter()
            result = fscdp_step(self.model, self.layout, self.images, self.labels, self.spec, self.plan)
            compute_s = time.perf_counter() - started
            self.emit(LocalStepDone(round=round, step=1, loss=result.loss))
            values = result.vector
            what = "masked, noised clipped-gradient sum (FSCDP)"
            self._charge(round, attempt)
        else:
            self._charge(round, attempt)
            started = time.perf_counter()
            result = train_delta(self.model, self.layout, self.images, self.labels, self.spec, self.plan,
                                 on_step=lambda s, loss: self.emit(LocalStepDone(round=round, step=s, loss=loss)),
                                 cancel=self.cancel)
            compute_s = time.perf_counter() - started
            weight = self.num_images / max(1, int(view.get("max_images") or self.num_images))
            values = weight * clip_l2(result.vector, float(self.plan.update_bound))
            what = f"masked model delta ({self.plan.mode.upper()})"
        message = ctx["client"].mask_input(bundle, values)
        body = message.to_bytes()
        self.state.rounds_uploaded[str(round)] = attempt
        self._upload(round, attempt, "mask", body, what)
        self.emit(Uploaded(round=round, what=what, bytes=len(body), compute_s=compute_s))

    def _unmask(self, ctx: dict) -> None:
        from core.secagg import UnmaskRequest

        round, attempt = ctx["round"], ctx["attempt"]
        request = UnmaskRequest.from_bytes(self.net.request("GET", f"/v1/rounds/{round}/{attempt}/mask").content)
        message = ctx["client"].unmask(request)
        self._upload(round, attempt, "unmask", message.to_bytes(),
                     "secure aggregation: key shares of the hospitals that dropped out")

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
        return JoinResult(
            federation_id=self.invitation.federation_id, hospital_id=self.invitation.hospital_id, reason=reason,
            rounds_participated=sorted(self.state.rounds_participated),
            epsilon=self.ledger.spent() if self.ledger is not None else 0.0,
            bytes_sent=self.net.bytes_sent, model_path=model_path, workdir=str(self.work.root.resolve()),
        )


def run(
    config: JoinConfig,
    *,
    progress: ProgressFn = no_progress,
    cancel: CancelToken = NEVER_CANCELLED,
    on_event: EventFn = no_events,
) -> JoinResult:
    """Enroll (once) and take part in every round until the plan ends, the cap is reached, or cancel."""
    invitation = read_invitation(Path(config.invitation))
    if config.max_epsilon is not None and (not math.isfinite(config.max_epsilon) or config.max_epsilon <= 0):
        raise ConfigError("--max-epsilon must be a positive number.")
    participant = _Participant(config, invitation, progress, cancel, on_event)
    started = time.monotonic()
    try:
        participant.prepare()
        participant.enroll()
        participant.start_presence()
        result = participant.participate()
        log.info("federation %s ended (%s) after %.1f s", invitation.federation_id, result.reason,
                 time.monotonic() - started)
        return result
    finally:
        participant.close()

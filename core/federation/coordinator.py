"""The coordinator's federation logic, without HTTP: enrollment, rounds, phases, aggregation.

One ``Coordinator`` per federation folder. Request handlers call ``enroll``, ``submit``,
``leave``, ``decline`` and read ``view(hospital_id)``; one background thread (``start``) closes
phases when everybody expected has answered or the deadline passed, aggregates and publishes.

Enrollment closes when every invited hospital enrolled (or, with a start timeout, at least m did).
With secure aggregation the coordinator then freezes the roster (core.federation.roster) and
waits, in status "confirming", until every hospital of the roster has signed it; only then does
round 1 open, and only roster keys take part in secure aggregation.

Rounds (DESIGN §2). With secure aggregation a round has five steps, each a message from every
participant followed by the coordinator's answer: ``advertise`` (keys) -> key roster, ``share``
(encrypted key shares) -> one bundle per hospital, ``mask`` (the masked update) -> survivor set,
``consistency`` (each survivor's signature on that set) -> unmask request with the signatures,
``unmask`` (shares) -> the sum. Without it, a single ``update`` step
carries each hospital's model delta. Every accepted message is committed to SQLite before it is
acknowledged; after a restart the open round's messages are replayed into a fresh state machine.
A round whose secure aggregation aborts (fewer than m hospitals left) is tried again as a new
attempt with fresh keys; nothing of the aborted attempt was revealed.

Aggregation streams: masked inputs are summed by core.secagg as they arrive and plain updates are
read back from SQLite one at a time, so memory does not grow with the number of hospitals beyond
the secure-aggregation state. The coordinator never sees an individual update in FSCDP.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core import __version__
from core.config import atomic_write_bytes
from core.errors import DopamineError, FederationError, SecAggAborted, SecAggError
from core.federation.layout import FederationPaths, load_settings
from core.federation.plan import fpdp_round_cost, load_plan, plan_hash, threat_model_text
from core.federation.roster import FederationRoster, RosterEntry, roster_message, secagg_params

log = logging.getLogger("dopamine.coordinator")

SECAGG_STEPS = ("advertise", "share", "mask", "consistency", "unmask")
PLAIN_STEPS = ("update",)
CONTROL_BODY_LIMIT = 64 * 1024
LONG_POLL_S = 20.0
STALE_AFTER_S = 90.0  # a hospital silent this long (and not waiting in a poll) is not waited for


class Refused(DopamineError):
    """A request the coordinator will not act on; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code  # machine-readable reason where a client acts on it ("duplicate")


@dataclass
class _Presence:
    last_seen: float
    polls: int = 0
    gone: bool = False


def _iso(ts: float | None = None) -> str:
    return dt.datetime.fromtimestamp(time.time() if ts is None else ts, dt.UTC).isoformat(timespec="seconds")


class Coordinator:
    def __init__(self, folder: Path) -> None:
        import torch

        from core.federation.store import CoordinatorStore
        from core.federation.weights import ParameterLayout
        from core.models.registry import build_model
        from core.signing import load_private_key

        self.paths = FederationPaths(Path(folder))
        if not self.paths.plan.exists():
            raise FederationError(f"{folder} is not a federation folder (no plan.toml); run `dopamine coordinator init`.")
        self.plan = load_plan(self.paths.plan)
        self.plan_hash = plan_hash(self.plan)
        self.settings = load_settings(self.paths)
        self.signing_key = load_private_key(self.paths.signing_key)
        self.store = CoordinatorStore(self.paths.state)
        self.federation_id = self.plan.federation_id
        self.steps = SECAGG_STEPS if self.plan.secagg else PLAIN_STEPS
        torch.manual_seed(self.plan.seed)
        self._model = build_model(self.plan.model, len(self.plan.classes))
        self.layout = ParameterLayout(self._model)
        # Upload limit: a masked input or a float32 delta of every parameter, plus room for headers.
        self.update_body_limit = 8 * self.layout.length + 256 * 1024
        self._lock = threading.RLock()
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listeners: list[Callable[[], None]] = []
        self._presence: dict[str, _Presence] = {}
        self._boot = secrets.token_hex(4)
        self._version = 0
        self._started_at = time.time()
        self._server = None  # core.secagg.SecAggServer of the open attempt
        self._submitted: dict[str, set[str]] = {}
        self._left: set[str] = set()
        self._evaluation = None
        self._epsilon_cache: dict[tuple[float, int], float] = {}
        self._hospitals = {h.hospital_id: h for h in self.store.hospitals()}
        self._meta = self.store.all_meta()
        self.roster = FederationRoster.from_dict(self._meta["roster"]) if self._meta.get("roster") else None
        self._load_global_model()
        last = self.store.last_round()
        self._last_round = {"round": last.round, "included": last.included, "metrics": last.metrics} if last else None
        self._snapshot = {}
        try:
            self._resume_round()
        except (SecAggError, FederationError, Refused) as exc:
            # The open attempt cannot be rebuilt (e.g. killed between aborting it and opening the next):
            # start a fresh attempt of the same round; nothing of the old one was revealed.
            self._server = None
            self._abort_attempt(f"could not resume after a restart ({exc})")
        self._snapshot = self._build_snapshot()

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Load the evaluation data (if any) and start the thread that advances phases."""
        self._load_evaluation()
        self._publish_initial_model()
        self._thread = threading.Thread(target=self._advance_loop, name="coordinator-advance", daemon=True)
        self._thread.start()
        self._kick.set()

    def stop(self) -> None:
        self._stop.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.store.close()

    def add_listener(self, callback: Callable[[], None]) -> None:
        """``callback()`` runs (on the advancing thread) after every state change."""
        self._listeners.append(callback)

    # -- read side ------------------------------------------------------------------------------

    @property
    def status(self) -> str:
        return self._meta.get("status", "enrolling")

    @property
    def version(self) -> str:
        return self._snapshot["version"]

    def hospital(self, hospital_id: str):
        return self._hospitals.get(hospital_id)

    def view(self, hospital_id: str) -> dict:
        """What ``hospital_id`` should do now (the long-poll answer)."""
        snap = self._snapshot
        step = snap["phase"]
        record = self._hospitals.get(hospital_id)
        active = record is not None and record.status == "active"
        if snap["status"] != "running" or not active:
            participant = False
        elif step == self.steps[0]:
            participant = True
        else:
            participant = hospital_id in snap["expected"] and hospital_id not in snap["left"]
        return {
            "status": snap["status"],
            "stop_reason": snap["stop_reason"],
            "round": snap["round"],
            "rounds": self.plan.rounds,
            "attempt": snap["attempt"],
            "phase": step,
            "deadline": snap["deadline"],
            "participant": participant,
            "submitted": hospital_id in snap["submitted"],
            "in_round": hospital_id in snap["members"],
            "model_round": snap["model_round"],
            "secagg": snap["secagg"],
            "version": snap["version"],
            "hospital_status": record.status if record else "unknown",
            "max_images": snap["max_images"],
            "last_round": snap["last_round"],
        }

    def public_status(self) -> dict:
        hospitals = [
            {"hospital_id": h.hospital_id, "name": h.name, "fingerprint": h.fingerprint, "num_images": h.num_images,
             "status": h.status, "rounds_included": h.rounds_included}
            for h in self._hospitals.values()
        ]
        last = self.store.last_round()
        return {
            "federation_id": self.federation_id,
            "name": self.plan.name,
            "mode": self.plan.mode,
            "status": self.status,
            "stop_reason": self._meta.get("stop_reason", ""),
            "round": self._meta.get("round", 0),
            "rounds": self.plan.rounds,
            "phase": self._meta.get("phase", ""),
            "model_round": self._meta.get("model_round", 0),
            "invitations": self.store.invitation_count(),
            "hospitals": hospitals,
            "roster_code": self.roster.code if self.roster else "",
            "roster_signed": sorted(self._meta.get("roster_signatures", {})),
            "last_round": last.to_dict() if last else None,
        }

    def round_result(self, round: int) -> dict:
        record = self.store.round_record(round)
        if record is not None:
            return record.to_dict()
        raise Refused(404, f"Round {round} has not finished (latest finished: {self._meta.get('model_round', 0)}).")

    def model_package_path(self, round: int) -> Path:
        path = self.paths.model_package(round)
        if round > self._meta.get("model_round", 0) or not path.exists():
            raise Refused(404, f"The global model of round {round} is not available (latest: {self._meta.get('model_round', 0)}).")
        return path

    def broadcast_for(self, hospital_id: str, round: int, attempt: int, step: str) -> bytes:
        """The coordinator's answer to ``step`` (roster, share bundle, unmask request) for this hospital."""
        if step not in ("advertise", "share", "mask", "consistency"):
            raise Refused(404, f"There is no coordinator answer for step {step!r}.")
        body = self.store.broadcast(round, attempt, step, hospital_id)
        if body is None:
            raise Refused(409, f"Round {round} attempt {attempt} has not finished step {step} yet (or this hospital is not in it).")
        return body

    # -- presence -------------------------------------------------------------------------------

    def touch(self, hospital_id: str) -> None:
        presence = self._presence.setdefault(hospital_id, _Presence(time.time()))
        presence.last_seen = time.time()
        presence.gone = False

    def poll_started(self, hospital_id: str) -> None:
        self.touch(hospital_id)
        self._presence[hospital_id].polls += 1

    def poll_ended(self, hospital_id: str, *, disconnected: bool) -> None:
        presence = self._presence.setdefault(hospital_id, _Presence(time.time()))
        presence.polls = max(0, presence.polls - 1)
        if disconnected:
            # The hospital's process died (or lost the network) while waiting for us: stop waiting for
            # it. Its next request, if it comes back, makes it present again.
            presence.gone = True
            log.info("hospital %s disconnected while waiting", hospital_id)
            self._kick.set()
        else:
            presence.last_seen = time.time()

    def _is_gone(self, hospital_id: str, now: float) -> bool:
        presence = self._presence.get(hospital_id)
        if presence is None:
            return now - self._started_at > STALE_AFTER_S
        if presence.gone:
            return True
        return presence.polls == 0 and now - presence.last_seen > STALE_AFTER_S

    # -- enrollment -----------------------------------------------------------------------------

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
            if self.status != "enrolling":
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

    # -- the roster -----------------------------------------------------------------------------

    def roster_view(self) -> dict:
        """The frozen roster (None while enrolling) and the hospitals' signatures on it."""
        signatures = self._meta.get("roster_signatures", {})
        return {"status": self.status, "roster": self.roster.to_dict() if self.roster else None,
                "digest": self.roster.digest() if self.roster else "", "signatures": dict(signatures)}

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
            signatures = dict(self._meta.get("roster_signatures", {}))
            if hospital_id in signatures:
                return
            signatures[hospital_id] = base64.b64encode(signature).decode()
            with self.store.transaction() as db:
                self.store.set_meta(db, {"roster_signatures": signatures})
            self._meta["roster_signatures"] = signatures
            log.info("%s signed the roster (%d of %d)", hospital_id, len(signatures), len(self.roster.entries))
            self._changed()
        self._kick.set()

    def _freeze_roster(self) -> None:
        entries = tuple(RosterEntry(h.hospital_id, h.name, h.public_key, h.num_images)
                        for h in sorted(self._hospitals.values(), key=lambda h: h.hospital_id))
        self.roster = FederationRoster(self.federation_id, self.plan_hash, entries)
        meta = {"roster": self.roster.to_dict(), "roster_signatures": {}, "status": "confirming",
                "max_images": self.roster.max_images}
        with self.store.transaction() as db:
            self.store.set_meta(db, meta)
        self._meta.update(meta)
        log.info("roster frozen with %d hospitals (code %s); waiting for their signatures",
                 len(entries), self.roster.code)
        self._changed()

    def _enrollment_answer(self, record) -> dict:
        return {"hospital_id": record.hospital_id, "name": record.name, "fingerprint": record.fingerprint,
                "federation_id": self.federation_id, "plan_hash": self.plan_hash}

    def peers(self) -> list[dict]:
        return [
            {"hospital_id": h.hospital_id, "name": h.name, "fingerprint": h.fingerprint,
             "public_key": base64.b64encode(h.public_key).decode(), "num_images": h.num_images, "status": h.status}
            for h in self._hospitals.values()
        ]

    # -- hospital messages ----------------------------------------------------------------------

    def submit(self, hospital_id: str, round: int, attempt: int, step: str, body: bytes) -> None:
        """Accept one message of the open round (Refused with the reason otherwise)."""
        if step not in self.steps:
            raise Refused(404, f"Unknown round step {step!r}; this federation uses {', '.join(self.steps)}.")
        limit = self.update_body_limit if step in ("mask", "update") else CONTROL_BODY_LIMIT * 16
        if len(body) > limit:
            raise Refused(413, f"The {step} message is {len(body)} bytes, above the limit of {limit}.")
        with self._lock:
            self._check_open(hospital_id, round, attempt, step)
            if hospital_id in self._submitted.get(step, set()):
                raise Refused(409, f"This hospital already sent its {step} message for round {round}.", "duplicate")
            if step != self.steps[0] and hospital_id not in self._expected(step):
                raise Refused(409, f"This hospital is not part of round {round} step {step} (it joined late or dropped out).")
            if self.plan.secagg:
                self._receive_secagg(hospital_id, step, body)
            else:
                self._check_plain_update(body)
            with self.store.transaction() as db:
                self.store.add_message(db, round, attempt, step, hospital_id, body)
            self._submitted.setdefault(step, set()).add(hospital_id)
            self._changed()
        self._kick.set()

    def leave(self, hospital_id: str, round: int, attempt: int) -> None:
        """A hospital that lost its round state (it restarted) says it will not finish this attempt."""
        with self._lock:
            if self.status != "running" or round != self._meta["round"] or attempt != self._meta["attempt"]:
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
        """The hospital takes part in no further rounds (e.g. its privacy cap would be passed)."""
        with self._lock:
            with self.store.transaction() as db:
                self.store.set_hospital_status(db, hospital_id, "declined", reason[:500])
            self._hospitals = {h.hospital_id: h for h in self.store.hospitals()}
            self._left.add(hospital_id)
            log.info("hospital %s declined further rounds: %s", hospital_id, reason[:200])
            self._changed()
        self._kick.set()

    def _check_open(self, hospital_id: str, round: int, attempt: int, step: str) -> None:
        record = self._hospitals.get(hospital_id)
        if record is None or record.status != "active":
            raise Refused(403, "This hospital is not an active member of the federation.")
        if self.status != "running":
            raise Refused(409, f"The federation is {self.status}; no round is open.")
        if round != self._meta["round"] or attempt != self._meta["attempt"]:
            raise Refused(409, f"Round {round} attempt {attempt} is not open (open: round {self._meta['round']} "
                               f"attempt {self._meta['attempt']}).")
        if step != self._meta["phase"]:
            raise Refused(409, f"Round {round} is in step {self._meta['phase']}, not {step}.")
        if hospital_id in self._left:
            raise Refused(409, f"This hospital left round {round}; it can take part in the next one.")

    def _receive_secagg(self, hospital_id: str, step: str, body: bytes) -> None:
        from core.secagg import AdvertiseKeys, EncryptedShares, MaskedInput, SurvivorSignature, UnmaskResponse

        cls, receive = {
            "advertise": (AdvertiseKeys, self._server.receive_advertise),
            "share": (EncryptedShares, self._server.receive_shares),
            "mask": (MaskedInput, self._server.receive_masked_input),
            "consistency": (SurvivorSignature, self._server.receive_survivor_signature),
            "unmask": (UnmaskResponse, self._server.receive_unmask),
        }[step]
        try:
            message = cls.from_bytes(body)
        except SecAggError as exc:
            raise Refused(400, f"Malformed {step} message: {exc}") from exc
        if message.sender != hospital_id:
            raise Refused(403, f"The {step} message claims to come from {message.sender!r}, not from this hospital.")
        try:
            receive(message)
        except SecAggError as exc:
            raise Refused(400, f"The {step} message was refused: {exc}") from exc

    def _check_plain_update(self, body: bytes) -> None:
        from core.federation.weights import tensors_from_bytes

        try:
            tensors_from_bytes(body, expected=self.layout.shapes, what="model update")
        except FederationError as exc:
            raise Refused(400, str(exc)) from exc

    # -- round state ----------------------------------------------------------------------------

    def _expected(self, step: str) -> set[str]:
        if step == self.steps[0]:
            return set(self._meta.get("expected", []))
        server = self._server
        return set({"share": server.advertised, "mask": server.shared, "consistency": server.masked,
                    "unmask": server.signed}[step])

    def _active_ids(self) -> list[str]:
        return [h for h, rec in self._hospitals.items() if rec.status == "active"]

    def _round_params(self, round: int, attempt: int):
        return secagg_params(self.plan, self.roster, round, attempt, self.layout.length)

    def _new_server(self):
        from core.secagg import SecAggServer

        return SecAggServer(self._round_params(self._meta["round"], self._meta["attempt"]), self.roster.keys())

    def _resume_round(self) -> None:
        """Rebuild the open attempt's in-memory state from SQLite (after a restart)."""
        if self.status != "running":
            return
        round, attempt, phase = self._meta["round"], self._meta["attempt"], self._meta["phase"]
        self._left = set(self.store.message_senders(round, attempt, "leave"))
        self._submitted = {}
        if self.plan.secagg:
            self._server = self._new_server()
            for step in self.steps:
                self._replay_step(step, round, attempt)
                if step == phase:
                    break
                self._close_secagg_step(step)  # answers were stored when the step first closed
        else:
            self._submitted["update"] = set(self.store.message_senders(round, attempt, "update"))
        # Hospitals need time to notice the restart and reconnect: restart the step's clock.
        self._meta["phase_deadline"] = time.time() + self._phase_timeout(phase)
        log.info("resumed round %d attempt %d in step %s", round, attempt, phase)

    def _replay_step(self, step: str, round: int, attempt: int) -> None:
        senders = set()
        for sender, body in self.store.iter_messages(round, attempt, step):
            self._receive_secagg(sender, step, body)
            senders.add(sender)
        self._submitted[step] = senders

    # -- advancing ------------------------------------------------------------------------------

    def _advance_loop(self) -> None:
        if self.plan.is_private:  # load the accountant now (seconds) rather than at the end of round 1
            from core.privacy.accountant import compute_epsilon

            compute_epsilon(sample_rate=float(self.plan.sample_rate or 0.01), steps=1, delta=float(self.plan.delta),
                            noise_multiplier=float(self.plan.noise_multiplier), accountant=self.plan.accountant)
        while not self._stop.is_set():
            self._kick.wait(timeout=1.0)
            self._kick.clear()
            if self._stop.is_set():
                break
            try:
                self.advance()
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
        """Close every phase that can close now (called by the advancing thread; also by tests)."""
        with self._lock:
            for _ in range(len(self.steps) + 2):
                if not self._advance_once():
                    break

    def _advance_once(self) -> bool:
        now = time.time()
        status = self.status
        if status == "enrolling":
            return self._maybe_start(now)
        if status == "confirming":
            return self._maybe_confirmed()
        if status != "running":
            return False
        active = self._active_ids()
        if len(active) < self.plan.threshold:
            self._stop_federation(f"only {len(active)} hospitals remain, fewer than the threshold {self.plan.threshold}")
            return False
        step = self._meta["phase"]
        submitted = self._submitted.get(step, set())
        waiting = [h for h in self._expected(step) - submitted - self._left
                   if h in active and not self._is_gone(h, now)]
        if waiting and now < self._meta["phase_deadline"]:
            return False
        if step == self.steps[0] and not submitted and now < self._meta["phase_deadline"]:
            return False
        self._close_step(step)
        return True

    def _maybe_start(self, now: float) -> bool:
        enrolled = len(self._hospitals)
        timeout = self.settings.start_timeout_s
        if enrolled >= self.plan.hospitals or (
            timeout is not None and now - self._started_at >= timeout and enrolled >= self.plan.threshold
        ):
            if self.plan.secagg:
                self._freeze_roster()  # round 1 opens once every hospital of the roster signed it
                return True
            self._meta["max_images"] = max(h.num_images for h in self._hospitals.values())
            self._open_attempt(round=self._meta.get("model_round", 0) + 1, attempt=1, first=True)
            return True
        return False

    def _maybe_confirmed(self) -> bool:
        if set(self._meta.get("roster_signatures", {})) < set(self.roster.ids):
            return False
        self._open_attempt(round=self._meta.get("model_round", 0) + 1, attempt=1, first=True)
        return True

    def _phase_timeout(self, step: str) -> float:
        return self.settings.compute_phase_timeout_s if step in ("mask", "update") else self.settings.key_phase_timeout_s

    def _open_attempt(self, *, round: int, attempt: int, first: bool) -> None:
        now = time.time()
        expected = [h for h in self._active_ids() if not self._is_gone(h, now)]
        meta = {
            "status": "running", "round": round, "attempt": attempt, "phase": self.steps[0],
            "phase_deadline": now + self._phase_timeout(self.steps[0]), "expected": expected,
            "max_images": self._meta.get("max_images", 1),
        }
        if first:
            meta["round_started"] = now
        with self.store.transaction() as db:
            self.store.set_meta(db, meta)
        self._meta.update(meta)
        self._submitted = {}
        self._left = set()
        self._server = self._new_server() if self.plan.secagg else None
        log.info("round %d attempt %d open; expecting %s", round, attempt, ", ".join(expected) or "nobody yet")
        self._changed()

    def _set_phase(self, db, step: str) -> None:
        meta = {"phase": step, "phase_deadline": time.time() + self._phase_timeout(step)}
        self.store.set_meta(db, meta)
        self._meta.update(meta)

    def _close_step(self, step: str) -> None:
        round, attempt = self._meta["round"], self._meta["attempt"]
        try:
            if self.plan.secagg and step != "unmask":
                answers = self._close_secagg_step(step)
                next_step = self.steps[self.steps.index(step) + 1]
                with self.store.transaction() as db:
                    for hospital_id, body in answers.items():
                        self.store.add_broadcast(db, round, attempt, step, hospital_id, body)
                    self._set_phase(db, next_step)
                log.info("round %d attempt %d: %s closed with %d hospitals", round, attempt, step,
                         len(self._submitted.get(step, ())))
                self._changed()
                return
            if self.plan.secagg:
                result = self._server.finish()
                included = sorted(result.included)
                aggregate = np.asarray(result.values, dtype=np.float64)
                self._server = None
                self._finish_round(included, aggregate)
            else:
                self._finish_plain_round()
        except SecAggAborted as exc:
            self._abort_attempt(f"secure aggregation aborted in step {step}: {exc}")

    def _close_secagg_step(self, step: str) -> dict[str, bytes]:
        server = self._server
        if step == "advertise":
            return {"*": server.close_advertise().to_bytes()}
        if step == "share":
            return {h: bundle.to_bytes() for h, bundle in server.close_sharing().items()}
        if step == "mask":
            return {"*": server.close_masking().to_bytes()}
        if step == "consistency":
            return {"*": server.close_consistency().to_bytes()}
        raise AssertionError(step)

    def _abort_attempt(self, reason: str) -> None:
        round, attempt = self._meta["round"], self._meta["attempt"]
        log.warning("round %d attempt %d aborted: %s", round, attempt, reason)
        if self._server is not None:
            self._server.abort()
            self._server = None
        with self.store.transaction() as db:
            self.store.delete_attempt_data(db, round, attempt)
        if attempt >= self.plan.max_attempts:
            self._stop_federation(f"round {round} failed {attempt} times (last: {reason})")
            return
        self._open_attempt(round=round, attempt=attempt + 1, first=False)

    def _stop_federation(self, reason: str) -> None:
        log.warning("federation stopped: %s", reason)
        with self.store.transaction() as db:
            self.store.set_meta(db, {"status": "stopped", "stop_reason": reason, "phase": ""})
        self._meta.update({"status": "stopped", "stop_reason": reason, "phase": ""})
        self._changed()

    # -- aggregation ----------------------------------------------------------------------------

    def _finish_plain_round(self) -> None:
        from core.federation.weights import tensors_from_bytes

        round, attempt = self._meta["round"], self._meta["attempt"]
        senders = self.store.message_senders(round, attempt, "update")
        if len(senders) < self.plan.threshold:
            self._abort_attempt(f"only {len(senders)} updates arrived, fewer than the threshold {self.plan.threshold}")
            return
        total = np.zeros(self.layout.length, dtype=np.float64)
        weight = 0.0
        for sender, body in self.store.iter_messages(round, attempt, "update"):
            delta = self.layout.flatten(tensors_from_bytes(body, expected=self.layout.shapes, what="model update"))
            n = self._hospitals[sender].num_images
            total += n * delta
            weight += n
            del delta
        self._finish_round(sorted(senders), total / weight, averaged=True)

    def _finish_round(self, included: list[str], aggregate: np.ndarray, *, averaged: bool = False) -> None:
        """Turn the aggregate into the server optimizer's gradient, step, evaluate, publish, go on."""
        plan = self.plan
        round = self._meta["round"]
        images = sum(self._hospitals[h].num_images for h in included)
        if plan.mode == "fscdp":
            # The noisy sum of clipped per-example gradients over the union's Poisson sample, divided
            # by the expected batch size: the centralized DP-SGD gradient estimate.
            gradient = aggregate / (float(plan.sample_rate) * images)
        elif averaged:
            gradient = -aggregate
        else:
            weights = sum(self._update_weight(h) for h in included)
            gradient = -aggregate / weights
        self._weights = self._optimizer.step(self._weights, gradient)
        started = self._meta.get("round_started", time.time())
        metrics = {}
        if self._evaluation is not None and (round % self.settings.eval_every == 0 or round == plan.rounds):
            metrics = self._evaluate()
        sha = self._publish(round, included, metrics)
        from core.federation.store import RoundRecord

        record = RoundRecord(round=round, attempts=self._meta["attempt"], started_at=started, finished_at=time.time(),
                             included=included, images=images, metrics=metrics,
                             model_file=self.paths.model_package(round).name, model_sha256=sha)
        finished = round >= plan.rounds
        with self.store.transaction() as db:
            self.store.add_round(db, record)
            self.store.delete_round_data(db, round)
            meta = {"model_round": round}
            if finished:
                meta.update({"status": "finished", "phase": "", "stop_reason": ""})
            self.store.set_meta(db, meta)
        self._meta.update(meta)
        self._last_round = {"round": round, "included": included, "metrics": metrics}
        self._hospitals = {h.hospital_id: h for h in self.store.hospitals()}
        log.info("round %d done in %.3fs with %s (%d images) %s", round, record.finished_at - started,
                 ", ".join(included), images, {k: v for k, v in metrics.items() if isinstance(v, float)})
        self._prune_models(round)
        if finished:
            self._changed()
        else:
            self._open_attempt(round=round + 1, attempt=1, first=True)

    def _update_weight(self, hospital_id: str) -> float:
        """F/FPDP with secure aggregation: hospital k sends (n_k / n_max) * delta_k (weights <= 1)."""
        return self._hospitals[hospital_id].num_images / max(1, int(self._meta.get("max_images", 1)))

    # -- models ---------------------------------------------------------------------------------

    def _load_global_model(self) -> None:
        from core.federation.server_optimizer import ServerOptimizer
        from core.federation.weights import tensors_from_bytes

        plan = self.plan
        self._optimizer = ServerOptimizer(plan.server_optimizer, lr=plan.server_lr, momentum=plan.server_momentum,
                                          length=self.layout.length, schedule=plan.server_lr_schedule,
                                          total_steps=plan.rounds)
        round = int(self._meta.get("model_round", 0))
        path = self.paths.server_state(round)
        if round == 0 and not path.exists():
            self._weights = self.layout.flatten(dict(self._model.named_parameters()))
            return
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise FederationError(f"The coordinator's model state {path} is missing ({exc}); restore the folder from a backup.") from exc
        shapes = {f"{part}/{k}": v for part in "wmv" for k, v in self.layout.shapes.items()} | {"steps": (1,)}
        tensors = tensors_from_bytes(data, expected=shapes, what="coordinator model state")
        self._weights = self.layout.flatten({k: tensors[f"w/{k}"] for k in self.layout.names})
        self._optimizer.first = self.layout.flatten({k: tensors[f"m/{k}"] for k in self.layout.names})
        self._optimizer.second = self.layout.flatten({k: tensors[f"v/{k}"] for k in self.layout.names})
        self._optimizer.steps = int(tensors["steps"][0])

    def _state_dict(self, weights: np.ndarray) -> dict:
        params = self.layout.unflatten(weights)
        state = {}
        for name, tensor in self._model.state_dict().items():
            state[name] = params.get(name, tensor.detach().clone()).contiguous()
        return state

    def _publish_initial_model(self) -> None:
        with self._lock:
            if self._meta.get("model_round", 0) == 0 and not self.paths.model_package(0).exists():
                self._publish(0, [], {})

    def _publish(self, round: int, included: list[str], metrics: dict) -> str:
        """Write the optimizer state and the signed global model of ``round`` (atomically)."""
        import torch

        from core.data.preprocess import Preprocessing
        from core.federation.weights import tensors_to_bytes
        from core.models.package import ModelCard, write_package

        state = {f"w/{k}": v for k, v in self.layout.unflatten(self._weights).items()}
        state |= {f"m/{k}": v for k, v in self.layout.unflatten(self._optimizer.first).items()}
        state |= {f"v/{k}": v for k, v in self.layout.unflatten(self._optimizer.second).items()}
        state["steps"] = torch.tensor([float(self._optimizer.steps)], dtype=torch.float32)
        atomic_write_bytes(self.paths.server_state(round), tensors_to_bytes(state))
        plan = self.plan
        contributors = [h for h in self._hospitals.values() if h.rounds_included + (h.hospital_id in included) > 0]
        epsilon, steps = self._epsilon_bound(round, included)
        card = ModelCard(
            architecture=plan.model, classes=list(plan.classes),
            preprocessing=Preprocessing(size=plan.image_size).to_dict(), mode=plan.mode,
            epsilon=epsilon, delta=plan.delta if plan.is_private else None,
            accountant=plan.accountant if plan.is_private else None,
            noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate,
            max_grad_norm=plan.max_grad_norm, steps=steps, rounds=round, hospitals=len(contributors),
            image_counts={h.name: h.num_images for h in contributors},
            metrics={"evaluation": metrics} if metrics else {},
            created=_iso(), software_version=__version__,
            description=f"Federated {plan.mode.upper()} model of {plan.name}, round {round} of {plan.rounds}. "
                        f"{threat_model_text(plan)}",
        )
        return write_package(self.paths.model_package(round), self._state_dict(self._weights), card, self.signing_key)

    def _epsilon_bound(self, round: int, included: list[str]) -> tuple[float | None, int | None]:
        """The largest epsilon any hospital has spent on this model, from the declared image counts."""
        plan = self.plan
        if not plan.is_private or round == 0:
            return (None, None) if not plan.is_private else (0.0, 0)
        counts = {h.hospital_id: h.rounds_included + (h.hospital_id in included) for h in self._hospitals.values()}
        costs = []  # (sample rate, steps, steps one round later) per hospital
        for hospital_id, rounds in counts.items():
            if plan.mode == "fscdp":
                costs.append((float(plan.sample_rate), rounds, rounds + 1))
            else:
                per_round, rate = fpdp_round_cost(plan, self._hospitals[hospital_id].num_images)
                costs.append((rate, per_round * rounds, per_round * (rounds + 1)))
        best, best_steps = 0.0, 0
        for rate, steps, _ in costs:
            if steps > 0:
                eps = self._epsilon(rate, steps)
                if eps >= best:
                    best, best_steps = eps, steps
        # The accountant takes a noticeable fraction of a second: work out the next round's values
        # while the hospitals compute, so publishing the next model does not wait for it.
        upcoming = {(rate, later) for rate, _, later in costs}
        threading.Thread(target=lambda: [self._epsilon(r, n) for r, n in upcoming], daemon=True).start()
        return best, best_steps

    def _epsilon(self, sample_rate: float, steps: int) -> float:
        from core.privacy.accountant import compute_epsilon

        key = (sample_rate, steps)
        if key not in self._epsilon_cache:
            self._epsilon_cache[key] = compute_epsilon(
                sample_rate=sample_rate, noise_multiplier=float(self.plan.noise_multiplier), steps=steps,
                delta=float(self.plan.delta), accountant=self.plan.accountant)
        return self._epsilon_cache[key]

    def _prune_models(self, round: int) -> None:
        keep = self.settings.keep_models
        for old in range(max(0, round - keep - 5), round - keep):
            self.paths.model_package(old).unlink(missing_ok=True)
            self.paths.server_state(old).unlink(missing_ok=True)

    # -- evaluation -----------------------------------------------------------------------------

    def _load_evaluation(self) -> None:
        if not self.settings.eval_data:
            return
        from core.data import Preprocessing, load_tensors, validate

        report = validate(Path(self.settings.eval_data), min_size=16)
        samples = [s for s in report.usable_samples if s.label is not None]
        if not samples:
            raise FederationError(f"The evaluation folder {self.settings.eval_data} has no usable labelled images.")
        spec = Preprocessing(size=self.plan.image_size)
        images, labels = load_tensors(samples, spec)
        self._evaluation = (images, labels, spec)
        log.info("evaluation set: %d images from %s", len(samples), self.settings.eval_data)

    def _evaluate(self) -> dict:
        import torch

        from core.training.loop import evaluate_model

        images, labels, spec = self._evaluation
        model = self._model
        with torch.no_grad():
            for name, tensor in self.layout.unflatten(self._weights).items():
                model.get_parameter(name).copy_(tensor)
        metrics = evaluate_model(model, images, labels, spec, num_classes=len(self.plan.classes))
        metrics["images"] = int(labels.shape[0])
        return metrics

    # -- notification ---------------------------------------------------------------------------

    def _build_snapshot(self) -> dict:
        meta = self._meta
        step = meta.get("phase", "")
        status = meta.get("status", "enrolling")
        members: set[str] = set()
        expected: set[str] = set()
        secagg = None
        if status == "running":
            expected = self._expected(step)
            members = set().union(*self._submitted.values()) if self._submitted else set()
            if self.plan.secagg:
                secagg = self._round_params(meta["round"], meta["attempt"]).to_dict()
        return {
            "status": status,
            "stop_reason": meta.get("stop_reason", ""),
            "round": meta.get("round", 0),
            "attempt": meta.get("attempt", 0),
            "phase": step,
            "deadline": meta.get("phase_deadline"),
            "model_round": meta.get("model_round", 0),
            "expected": expected,
            "submitted": set(self._submitted.get(step, set())),
            "members": members,
            "left": set(self._left),
            "secagg": secagg,
            "max_images": int(meta.get("max_images", 0)),
            "last_round": self._last_round,
            "version": f"{self._boot}:{self._version}",
        }

    def _changed(self) -> None:
        self._version += 1
        self._snapshot = self._build_snapshot()
        for callback in self._listeners:
            try:
                callback()
            except Exception:  # noqa: BLE001
                log.exception("state listener failed")

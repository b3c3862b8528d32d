"""The coordinator's wire protocol: routes, round steps, and the typed JSON views both sides exchange.

The coordinator (core.federation.app) serves these routes and builds these views; the hospital client
(core.federation.client) and the app read them only through ``from_dict``, which refuses a view with
missing, unknown or mistyped fields with one clear FederationError. Binary bodies (secure-aggregation
messages, model updates, model packages) have their own strict formats (core.secagg.messages,
core.federation.weights, core.models.package).

Every route but HEALTH is authenticated by a request signature (core.federation.auth).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, TypeVar

from core.errors import FederationError

API_VERSION = "v1"


class Step(StrEnum):
    """One message from every participant, then the coordinator's answer."""

    ADVERTISE = "advertise"  # round keys -> key roster
    SHARE = "share"  # encrypted key shares -> one bundle per hospital
    MASK = "mask"  # the masked, noised update -> survivor set
    CONSISTENCY = "consistency"  # each survivor's signature on the survivor set -> unmask request
    UNMASK = "unmask"  # shares -> the released sum
    UPDATE = "update"  # without secure aggregation: the model delta itself


SECAGG_STEPS: tuple[Step, ...] = (Step.ADVERTISE, Step.SHARE, Step.MASK, Step.CONSISTENCY, Step.UNMASK)
PLAIN_STEPS: tuple[Step, ...] = (Step.UPDATE,)
UPLOAD_STEPS = frozenset({Step.MASK, Step.UPDATE})  # the uploads that carry a noised release
ANSWERED_STEPS = frozenset({Step.ADVERTISE, Step.SHARE, Step.MASK, Step.CONSISTENCY})


def steps_for(secagg: bool) -> tuple[Step, ...]:
    return SECAGG_STEPS if secagg else PLAIN_STEPS


class Status(StrEnum):
    ENROLLING = "enrolling"  # waiting for the invited hospitals
    CONFIRMING = "confirming"  # roster frozen, waiting for every hospital's signature on it
    RUNNING = "running"
    FINISHED = "finished"
    STOPPED = "stopped"


class HospitalStatus(StrEnum):
    ACTIVE = "active"
    DECLINED = "declined"  # its privacy cap would be passed
    LEFT = "left"  # its people chose to leave


class Route:
    """Paths on the coordinator. Templates (with {round} ...) are FastAPI's; the functions fill them."""

    HEALTH = "/v1/health"
    ENROLL = "/v1/enroll"
    PLAN = "/v1/plan"
    HOSPITALS = "/v1/hospitals"
    ROSTER = "/v1/roster"
    ROSTER_SIGNATURE = "/v1/roster/signature"
    STATE = "/v1/state"
    PRESENCE = "/v1/presence"
    STATUS = "/v1/status"
    DECLINE = "/v1/decline"
    LEAVE = "/v1/leave"
    MODEL = "/v1/models/{round}.dpm"
    ROUND_RESULT = "/v1/rounds/{round}/result"
    LEAVE_ROUND = "/v1/rounds/{round}/{attempt}/leave"
    STEP = "/v1/rounds/{round}/{attempt}/{step}"

    @staticmethod
    def model(round: int) -> str:
        return f"/v1/models/{int(round)}.dpm"

    @staticmethod
    def round_result(round: int) -> str:
        return f"/v1/rounds/{int(round)}/result"

    @staticmethod
    def leave_round(round: int, attempt: int) -> str:
        return f"/v1/rounds/{int(round)}/{int(attempt)}/leave"

    @staticmethod
    def step(round: int, attempt: int, step: Step) -> str:
        return f"/v1/rounds/{int(round)}/{int(attempt)}/{Step(step).value}"


# ---- strict views ---------------------------------------------------------------------------------

V = TypeVar("V", bound="View")


def _matches(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arm) for arm in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if isinstance(annotation, type) and issubclass(annotation, View):
        return isinstance(value, annotation)
    return isinstance(value, annotation)


class View:
    """A frozen dataclass sent as JSON. ``from_dict`` is strict: exact keys, checked types."""

    kind: ClassVar[str] = "view"
    binary_fields: ClassVar[tuple[str, ...]] = ()  # bytes on this side, base64 text on the wire

    def to_dict(self) -> dict[str, Any]:
        data = {}
        for item in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, item.name)
            if item.name in self.binary_fields:
                value = base64.b64encode(value).decode()
            elif isinstance(value, View):
                value = value.to_dict()
            elif isinstance(value, list):
                value = [v.to_dict() if isinstance(v, View) else v for v in value]
            data[item.name] = value
        return data

    @classmethod
    def from_dict(cls: type[V], data: Any) -> V:
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        if not isinstance(data, dict):
            raise _bad(cls, "not a JSON object")
        missing = [n for n in names if n not in data and not _has_default(cls, n)]
        unknown = sorted(set(data) - set(names))
        if missing or unknown:
            raise _bad(cls, f"missing {missing}" if missing else f"unknown fields {unknown}")
        values = {}
        for name in names:
            if name not in data:
                continue
            value, annotation = data[name], hints[name]
            if name in cls.binary_fields:
                try:
                    value = base64.b64decode(str(value), validate=True)
                except (binascii.Error, ValueError) as exc:
                    raise _bad(cls, f"{name} is not base64") from exc
            else:
                value = _nested(cls, name, value, annotation)
            if not _matches(value, annotation):
                raise _bad(cls, f"{name} has the wrong type")
            values[name] = value
        return cls(**values)


def _has_default(cls: type, name: str) -> bool:
    item = next(f for f in dataclasses.fields(cls) if f.name == name)
    return item.default is not dataclasses.MISSING or item.default_factory is not dataclasses.MISSING


def _nested(cls: type, name: str, value: Any, annotation: Any) -> Any:
    """Parse views nested in a field (``X``, ``X | None`` or ``list[X]`` for a View X)."""
    arms = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else (annotation,)
    for arm in arms:
        if isinstance(arm, type) and issubclass(arm, View) and isinstance(value, dict):
            return arm.from_dict(value)
        if typing.get_origin(arm) is list and isinstance(value, list):
            (item,) = typing.get_args(arm)
            if isinstance(item, type) and issubclass(item, View):
                return [item.from_dict(v) for v in value]
    return value


def _bad(cls: type, why: str) -> FederationError:
    return FederationError(f"The coordinator sent a malformed {cls.__name__} ({why}); is it the same Dopamine "
                           "version? Not going on.")


@dataclass(frozen=True)
class RoundSummary(View):
    """A finished round: who was in the released sum, and the global model's evaluation after it."""

    round: int
    attempts: int
    seconds: float
    included: list[str]
    images: int
    metrics: dict
    model_file: str
    model_sha256: str


@dataclass(frozen=True)
class StateView(View):
    """The long-poll answer (Route.STATE): what this hospital should do now."""

    status: str
    stop_reason: str
    round: int
    rounds: int
    attempt: int
    phase: str
    deadline: float | None
    participant: bool  # it is expected in the open step
    submitted: bool  # its message for the open step arrived
    in_round: bool  # it sent something in the open attempt
    model_round: int  # the newest published global model
    secagg: dict | None  # core.secagg.RoundParams.to_dict() of the open attempt
    version: str
    hospital_status: str
    max_images: int
    last_round: RoundSummary | None
    etag: str = ""

    def stable_etag(self) -> str:
        """Changes when anything but ``version`` and ``etag`` changes (the long poll's wake-up test)."""
        stable = {k: v for k, v in self.to_dict().items() if k not in ("version", "etag")}
        return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:24]

    @property
    def step(self) -> Step | None:
        return Step(self.phase) if self.phase else None


@dataclass(frozen=True)
class PeerInfo(View):
    """An enrolled hospital (Route.HOSPITALS), with its identity key for out-of-band comparison."""

    binary_fields: ClassVar[tuple[str, ...]] = ("public_key",)
    hospital_id: str
    name: str
    fingerprint: str
    public_key: bytes
    num_images: int
    status: str
    rounds_included: int = 0


@dataclass(frozen=True)
class Peers(View):
    hospitals: list[PeerInfo]


@dataclass(frozen=True)
class PublicStatus(View):
    """The federation summary (Route.STATUS)."""

    federation_id: str
    name: str
    mode: str
    status: str
    stop_reason: str
    round: int
    rounds: int
    phase: str
    model_round: int
    invitations: int
    hospitals: list[PeerInfo]
    roster_code: str
    roster_signed: list[str]
    last_round: RoundSummary | None = None


@dataclass(frozen=True)
class RosterView(View):
    """The frozen roster (None while enrolling) and the hospitals' signatures on it (Route.ROSTER)."""

    status: str
    roster: dict | None  # core.federation.roster.FederationRoster.to_dict()
    digest: str
    signatures: dict  # hospital id -> base64 Ed25519 signature of the digest


@dataclass
class RoundContext:
    """The hospital's working state in one round attempt (never sent)."""

    round: int
    attempt: int
    client: Any = None  # core.secagg.SecAggClient, made in the first step
    started: bool = False  # this hospital took the first step of the attempt
    extra: dict = field(default_factory=dict)

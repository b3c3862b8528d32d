"""What a hospital client reports while it takes part in a federation (for the GUI and the CLI).

``core.federation.client.run(config, progress=..., cancel=..., on_event=...)`` calls ``on_event``
with one of these from the job's thread. Every event has a ``kind`` and ``to_dict()`` (JSON-safe,
with ``"event": kind``); ``event_from_dict`` turns such a dict back into the event.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import ClassVar


@dataclass(frozen=True)
class FederationEvent:
    kind: ClassVar[str] = "event"

    def to_dict(self) -> dict:
        return {"event": self.kind, **asdict(self)}


@dataclass(frozen=True)
class PlanReview(FederationEvent):
    """Before enrolling: the plan and what it would cost this hospital if it took part in every round."""

    kind: ClassVar[str] = "plan"
    federation_name: str
    coordinator_url: str
    ca_fingerprint: str
    plan_hash: str
    plan_lines: list[str]
    num_images: int
    epsilon_cost: float  # 0.0 for mode F (no differential privacy)
    max_epsilon: float | None
    delta: float | None
    accountant: str | None


@dataclass(frozen=True)
class Enrolled(FederationEvent):
    kind: ClassVar[str] = "enrolled"
    federation_id: str
    hospital_id: str
    hospital_name: str
    fingerprint: str  # of this hospital's identity key, to compare out of band


@dataclass(frozen=True)
class RosterReview(FederationEvent):
    """Every hospital enrolled: the frozen roster, for this hospital's people to confirm out of band.

    Each peer's key fingerprint is compared with that hospital (by phone); then ``join`` runs again
    with the roster's ``code`` as its confirmation. Until every hospital signs it, no round starts.
    """

    kind: ClassVar[str] = "roster"
    federation_name: str
    code: str  # the digest's first 16 hex digits, in groups of four
    digest: str
    hospitals: list[dict]  # hospital_id, name, fingerprint, num_images, this_hospital
    threat_model: str


@dataclass(frozen=True)
class RoundStarted(FederationEvent):
    kind: ClassVar[str] = "round_started"
    round: int
    rounds: int  # planned total


@dataclass(frozen=True)
class PhaseChanged(FederationEvent):
    kind: ClassVar[str] = "phase"
    round: int
    phase: str


@dataclass(frozen=True)
class LocalStepDone(FederationEvent):
    kind: ClassVar[str] = "local_step"
    round: int
    step: int
    loss: float


@dataclass(frozen=True)
class Uploaded(FederationEvent):
    kind: ClassVar[str] = "uploaded"
    round: int
    what: str
    bytes: int
    compute_s: float = 0.0  # local computation for this upload (training or the DP-SGD step)


@dataclass(frozen=True)
class ModelReceived(FederationEvent):
    kind: ClassVar[str] = "model_received"
    round: int  # rounds completed by the global model
    metrics: dict = field(default_factory=dict)
    included: bool = False  # whether this hospital's update is inside this model


@dataclass(frozen=True)
class BudgetCharged(FederationEvent):
    kind: ClassVar[str] = "budget_charged"
    round: int
    epsilon: float  # spent so far in this hospital's ledger
    max_epsilon: float | None


@dataclass(frozen=True)
class Declined(FederationEvent):
    kind: ClassVar[str] = "declined"
    round: int
    reason: str
    epsilon: float


@dataclass(frozen=True)
class Finished(FederationEvent):
    kind: ClassVar[str] = "finished"
    reason: str  # "completed" | "declined" | "stopped"
    rounds_participated: list[int]
    epsilon: float
    bytes_sent: int
    model_path: str | None


@dataclass(frozen=True)
class ErrorEvent(FederationEvent):
    kind: ClassVar[str] = "error"
    message: str
    fatal: bool = False  # False: a transient problem the client is retrying


EventFn = Callable[[FederationEvent], None]

EVENT_TYPES: dict[str, type[FederationEvent]] = {
    cls.kind: cls
    for cls in (PlanReview, Enrolled, RosterReview, RoundStarted, PhaseChanged, LocalStepDone, Uploaded, ModelReceived,
                BudgetCharged, Declined, Finished, ErrorEvent)
}


def no_events(event: FederationEvent) -> None:
    """The default event callback: does nothing."""


def event_from_dict(data: dict) -> FederationEvent:
    payload = dict(data)
    cls = EVENT_TYPES[payload.pop("event")]
    return cls(**payload)

"""The coordinator's persisted state: where the federation is, in one dataclass with one set of defaults.

It lives in the SQLite ``meta`` table (one key per field, JSON values), written in the transaction
that makes each change, so a restarted coordinator resumes exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from core.errors import FederationError
from core.federation.protocol import Status


@dataclass
class RoundState:
    federation_id: str = ""
    hospital_ids: list[str] = field(default_factory=list)  # the invited hospitals
    status: str = Status.ENROLLING.value
    stop_reason: str = ""
    round: int = 0  # the open round (0 before the first)
    attempt: int = 0  # the open attempt of that round
    phase: str = ""  # the open step
    phase_deadline: float = 0.0  # when the coordinator stops waiting for the open step
    expected: list[str] = field(default_factory=list)  # hospitals asked to take the first step
    round_started: float = 0.0
    model_round: int = 0  # the newest published global model
    max_images: int = 1  # the largest declared image count (sets F/FPDP secure-aggregation weights)
    roster: dict | None = None  # core.federation.roster.FederationRoster.to_dict(), once frozen
    roster_signatures: dict[str, str] = field(default_factory=dict)  # hospital id -> base64 signature

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> RoundState:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(meta) - names)
        if unknown:
            raise FederationError(f"The coordinator state has unknown entries {unknown}; it was written by another "
                                  "Dopamine version.")
        return cls(**meta)

    def to_meta(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def changes(self, **values: Any) -> dict[str, Any]:
        """``values`` checked against the fields (a typo is a software error, not a new key in SQLite)."""
        names = {f.name for f in dataclasses.fields(self)}
        wrong = sorted(set(values) - names)
        if wrong:
            raise AttributeError(f"RoundState has no field(s) {wrong}")
        return values

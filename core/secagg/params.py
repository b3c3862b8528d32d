"""Round parameters every party of one secure-aggregation round agrees on, and id rules.

Only the complete graph is offered: every hospital masks with every other and shares its secrets
with all of them. With a sparse graph an honest-but-curious coordinator could unmask a connected
piece of the survivors' graph on its own (a sum over fewer than m hospitals).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from core.errors import SecAggError
from core.secagg.crypto import canonical
from core.secagg.encoding import FixedPoint

COORDINATOR = "coordinator"
HOSPITAL_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
ROUND_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_VECTOR_LENGTH = 1 << 28  # 1 GiB of uint32: far above any model we train


def check_hospital_id(value: Any, what: str = "hospital id") -> str:
    if not isinstance(value, str) or not HOSPITAL_ID.fullmatch(value) or value == COORDINATOR:
        raise SecAggError(f"Invalid {what} {str(value)[:80]!r}: use 1-64 letters, digits, '.', '_' or '-'.")
    return value


def check_round_id(value: Any) -> str:
    if not isinstance(value, str) or not ROUND_ID.fullmatch(value):
        raise SecAggError(
            f"Invalid round id {str(value)[:80]!r}: use 1-128 letters, digits, '.', '_', ':' or '-'."
        )
    return value


def _whole(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SecAggError(
            f"Secure-aggregation {name} must be a whole number from {low} to {high}, not {value!r}."
        )
    return value


def check_threshold_rule(threshold: int, hospitals: int, colluders: int) -> None:
    """Refuse unless 2m > K + t and m > t (SecAggError saying why).

    With the consistency round (survivors sign the survivor set they were shown, shares are revealed
    only after m signatures on one set), a coordinator that shows hospitals different survivor sets
    needs m signatures on each of two sets; honest hospitals sign once, the t colluders twice, so
    2m > K + t leaves it at most one set. m > t keeps at least one noise share the coalition does not know.
    """
    if threshold <= colluders:
        raise SecAggError(
            f"Secure aggregation needs the threshold m = {threshold} above the colluding hospitals t = {colluders}."
        )
    if 2 * threshold <= hospitals + colluders:
        raise SecAggError(
            f"Secure aggregation needs 2m > K + t, but m = {threshold}, K = {hospitals}, t = {colluders}: a lying "
            f"coordinator could unmask one hospital or a sum over fewer than m; raise m to at least "
            f"{(hospitals + colluders) // 2 + 1}."
        )


@dataclass(frozen=True)
class RoundParams:
    """What the coordinator announces for a round; hospitals sign its digest into their keys.

    ``threshold`` (m) is the fewest hospitals a sum may be released over (at least 2).
    ``colluders`` (t) is how many hospitals may collude with the coordinator; every party refuses a
    round unless 2m > K + t for the K hospitals that may take part (core.secagg.params.check_threshold_rule).
    """

    round_id: str
    threshold: int
    vector_length: int
    encoding: FixedPoint
    colluders: int = 0

    def __post_init__(self) -> None:
        check_round_id(self.round_id)
        _whole(self.threshold, "threshold", 2, 1 << 20)
        _whole(self.colluders, "colluders", 0, 1 << 20)
        _whole(self.vector_length, "vector length", 1, MAX_VECTOR_LENGTH)
        if not isinstance(self.encoding, FixedPoint):
            raise SecAggError("Secure-aggregation encoding must be a FixedPoint.")
        if self.threshold <= self.colluders:
            raise SecAggError("Secure-aggregation threshold must be above the number of colluding hospitals.")

    def to_dict(self) -> dict[str, Any]:
        return {
            "round_id": self.round_id,
            "threshold": self.threshold,
            "colluders": self.colluders,
            "vector_length": self.vector_length,
            "encoding": self.encoding.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Any) -> RoundParams:
        keys = {"round_id", "threshold", "colluders", "vector_length", "encoding"}
        if not isinstance(data, dict) or set(data) != keys:
            raise SecAggError(f"Invalid secure-aggregation parameters: expected exactly {sorted(keys)}.")
        return cls(
            round_id=data["round_id"],
            threshold=data["threshold"],
            vector_length=data["vector_length"],
            encoding=FixedPoint.from_dict(data["encoding"]),
            colluders=data["colluders"],
        )

    def digest(self) -> bytes:
        """32 bytes that change with any parameter; signed into every hospital's advertised keys."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical("params", text)).digest()

"""Round parameters every party of one secure-aggregation round agrees on, and id rules."""

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
MAX_GRAPH_SEED_BYTES = 64


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


@dataclass(frozen=True)
class RoundParams:
    """What the coordinator announces for a round; hospitals sign its digest into their keys.

    ``threshold`` (m) is the fewest hospitals a sum may be released over (at least 2).
    ``graph_degree`` None masks every pair; k uses a sparse random graph of degree 2*ceil(k/2).
    ``graph_seed`` is public; empty means "derived from the round id".
    """

    round_id: str
    threshold: int
    vector_length: int
    encoding: FixedPoint
    graph_degree: int | None = None
    graph_seed: bytes = b""

    def __post_init__(self) -> None:
        check_round_id(self.round_id)
        _whole(self.threshold, "threshold", 2, 1 << 20)
        _whole(self.vector_length, "vector length", 1, MAX_VECTOR_LENGTH)
        if not isinstance(self.encoding, FixedPoint):
            raise SecAggError("Secure-aggregation encoding must be a FixedPoint.")
        if self.graph_degree is not None:
            _whole(self.graph_degree, "graph degree", 2, 1 << 20)
        if not isinstance(self.graph_seed, bytes) or len(self.graph_seed) > MAX_GRAPH_SEED_BYTES:
            raise SecAggError(f"Secure-aggregation graph seed must be at most {MAX_GRAPH_SEED_BYTES} bytes.")

    @property
    def effective_graph_seed(self) -> bytes:
        return self.graph_seed or hashlib.sha256(canonical("graph", self.round_id)).digest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "round_id": self.round_id,
            "threshold": self.threshold,
            "vector_length": self.vector_length,
            "encoding": self.encoding.to_dict(),
            "graph_degree": self.graph_degree,
            "graph_seed": self.graph_seed.hex(),
        }

    @classmethod
    def from_dict(cls, data: Any) -> RoundParams:
        keys = {"round_id", "threshold", "vector_length", "encoding", "graph_degree", "graph_seed"}
        if not isinstance(data, dict) or set(data) != keys:
            raise SecAggError(f"Invalid secure-aggregation parameters: expected exactly {sorted(keys)}.")
        seed = data["graph_seed"]
        if not isinstance(seed, str) or len(seed) > 2 * MAX_GRAPH_SEED_BYTES:
            raise SecAggError("Invalid secure-aggregation graph seed.")
        try:
            seed_bytes = bytes.fromhex(seed)
        except ValueError as exc:
            raise SecAggError("Invalid secure-aggregation graph seed: not hex.") from exc
        return cls(
            round_id=data["round_id"],
            threshold=data["threshold"],
            vector_length=data["vector_length"],
            encoding=FixedPoint.from_dict(data["encoding"]),
            graph_degree=data["graph_degree"],
            graph_seed=seed_bytes,
        )

    def digest(self) -> bytes:
        """32 bytes that change with any parameter; signed into every hospital's advertised keys."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical("params", text)).digest()

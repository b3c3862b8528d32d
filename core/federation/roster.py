"""The federation roster: the hospitals that may hold secure-aggregation shares, fixed by the hospitals.

The coordinator is the federation's CA and writes the invitations, so it could enroll hospitals
that do not exist and hold their shares itself: then any threshold is void. So once enrollment
closes, the coordinator freezes the roster (each enrolled hospital's id, name, identity key and
declared image count, bound to the plan hash); every hospital checks it against the plan, its
people confirm each peer's key fingerprint out of band (by phone), and it signs the roster's
digest. Rounds start only when every hospital of the roster has signed the same digest, and a
hospital accepts round keys, shares and survivor signatures from roster members only. The roster
never changes after that (the hospital keeps its digest and refuses any other).

Every secure-aggregation round parameter follows from the plan and the roster
(``secagg_params``), so a hospital recomputes them and refuses a round announced otherwise.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.errors import FederationError
from core.federation.plan import FederationPlan

if TYPE_CHECKING:
    from core.secagg import RoundParams

ROSTER_SIGNATURE_DOMAIN = b"dopamine-roster-v1\n"
MAX_ROSTER_ENTRIES = 10_000


@dataclass(frozen=True)
class RosterEntry:
    hospital_id: str
    name: str
    public_key: bytes  # raw Ed25519 identity key
    num_images: int  # declared at enrollment; sets the secure-aggregation encoding bound

    @property
    def fingerprint(self) -> str:
        from core.signing import fingerprint

        return fingerprint(self.public_key)

    def to_dict(self) -> dict[str, Any]:
        return {"hospital_id": self.hospital_id, "name": self.name, "num_images": self.num_images,
                "public_key": base64.b64encode(self.public_key).decode()}


@dataclass(frozen=True)
class FederationRoster:
    federation_id: str
    plan_hash: str
    entries: tuple[RosterEntry, ...]  # sorted by hospital id

    def digest(self) -> str:
        """SHA-256 (hex) of the canonical roster: what every hospital signs and what people compare."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def code(self) -> str:
        """The digest's first 16 hex digits in groups of four, short enough to read out over the phone."""
        digest = self.digest()
        return " ".join(digest[i : i + 4] for i in range(0, 16, 4))

    @property
    def ids(self) -> list[str]:
        return [entry.hospital_id for entry in self.entries]

    def keys(self) -> dict[str, bytes]:
        return {entry.hospital_id: entry.public_key for entry in self.entries}

    def entry(self, hospital_id: str) -> RosterEntry | None:
        return next((e for e in self.entries if e.hospital_id == hospital_id), None)

    @property
    def max_images(self) -> int:
        return max(entry.num_images for entry in self.entries)

    def to_dict(self) -> dict[str, Any]:
        return {"federation_id": self.federation_id, "plan_hash": self.plan_hash,
                "entries": [entry.to_dict() for entry in self.entries]}

    @classmethod
    def from_dict(cls, data: Any) -> FederationRoster:
        """Strict parse of what a coordinator served (FederationError on anything odd)."""
        bad = FederationError("The coordinator sent a malformed roster; not taking part.")
        if not isinstance(data, dict) or set(data) != {"federation_id", "plan_hash", "entries"}:
            raise bad
        items = data["entries"]
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_ROSTER_ENTRIES:
            raise bad
        entries = []
        for item in items:
            if not isinstance(item, dict) or set(item) != {"hospital_id", "name", "num_images", "public_key"}:
                raise bad
            try:
                key = base64.b64decode(item["public_key"], validate=True)
            except (ValueError, TypeError) as exc:
                raise bad from exc
            count = item["num_images"]
            if (not isinstance(item["hospital_id"], str) or not isinstance(item["name"], str) or len(key) != 32
                    or isinstance(count, bool) or not isinstance(count, int) or count < 1):
                raise bad
            entries.append(RosterEntry(item["hospital_id"], item["name"], key, count))
        ids = [e.hospital_id for e in entries]
        if ids != sorted(set(ids)) or len({e.public_key for e in entries}) != len(entries):
            raise FederationError("The coordinator's roster repeats a hospital or an identity key; not taking part.")
        if not isinstance(data["federation_id"], str) or not isinstance(data["plan_hash"], str):
            raise bad
        return cls(data["federation_id"], data["plan_hash"], tuple(entries))

    def check(self, plan: FederationPlan, plan_hash: str, *, hospital_id: str, public_key: bytes,
              num_images: int) -> None:
        """What a hospital checks before showing the roster to its people (FederationError otherwise)."""
        if self.federation_id != plan.federation_id or self.plan_hash != plan_hash:
            raise FederationError("The coordinator's roster belongs to another federation or plan; not taking part.")
        names = dict(zip(plan.hospital_ids, plan.hospital_names, strict=True)) if plan.hospital_names else {}
        for entry in self.entries:
            if entry.hospital_id not in plan.hospital_ids:
                raise FederationError(
                    f"The roster names {entry.hospital_id}, a hospital the plan does not have; not taking part.")
            if names and entry.name != names[entry.hospital_id]:
                raise FederationError(
                    f"The roster calls {entry.hospital_id} {entry.name!r}, the plan {names[entry.hospital_id]!r}; "
                    "not taking part.")
        mine = self.entry(hospital_id)
        if mine is None or mine.public_key != public_key or mine.num_images != num_images:
            raise FederationError("The roster does not hold this hospital's own identity key and image count as "
                                  "it enrolled them; the coordinator changed them. Not taking part.")
        if len(self.entries) < plan.threshold:
            raise FederationError(f"The roster has {len(self.entries)} hospitals, fewer than the threshold "
                                  f"{plan.threshold}; the federation cannot run.")


def roster_message(digest: str) -> bytes:
    return ROSTER_SIGNATURE_DOMAIN + digest.encode()


def sign_roster(key, roster: FederationRoster) -> bytes:
    """This hospital's signature on the roster (only after its people confirmed every fingerprint)."""
    return key.sign(roster_message(roster.digest()))


def verify_roster_signatures(roster: FederationRoster, signatures: dict[str, bytes]) -> None:
    """Every hospital of the roster signed its digest (FederationError naming who did not)."""
    from core.signing import verify

    message = roster_message(roster.digest())
    for entry in roster.entries:
        signature = signatures.get(entry.hospital_id, b"")
        if not verify(entry.public_key, signature, message):
            raise FederationError(
                f"{entry.hospital_id} ({entry.name}) has not signed this roster; the coordinator may be showing "
                "hospitals different rosters. Not taking part.")


def round_id(federation_id: str, round: int, attempt: int) -> str:
    return f"{federation_id}:r{round}:a{attempt}"


def secagg_params(
    plan: FederationPlan, roster: FederationRoster, round: int, attempt: int, vector_length: int
) -> RoundParams:
    """Every secure-aggregation parameter of one round attempt, from the plan and the roster alone."""
    from core.secagg import RoundParams, derive_encoding, fixed_point_for_bound

    hospitals = len(roster.entries)
    if plan.mode == "fscdp":
        # Every coordinate of a clipped-gradient sum is within C times the batch size, and a Poisson
        # batch never holds more than the hospital's images: nothing is clipped by the encoding.
        assert plan.max_grad_norm is not None  # validate(): FSCDP sets it
        encoding = derive_encoding(max_grad_norm=float(plan.max_grad_norm), max_batch_size=roster.max_images,
                                   noise_std=plan.noise_std_per_hospital(), num_hospitals=hospitals)
    else:
        assert plan.update_bound is not None  # validate(): secure aggregation in F/FPDP sets it
        encoding = fixed_point_for_bound(float(plan.update_bound), hospitals)
    return RoundParams(round_id=round_id(plan.federation_id, round, attempt), threshold=plan.threshold,
                       vector_length=vector_length, encoding=encoding, colluders=plan.colluders)

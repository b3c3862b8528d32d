"""A hospital's membership of one federation, as kept in its home: ``HOME/federations/<name>-<id>-<hospital>/``.

    state.json                    what must survive a restart (MembershipState)
    ca.pem                        the federation CA from the invitation (pinned on every request)
    invitation.json               the invitation's public part (no token): the federation's name, the
                                  coordinator's address and its model-signing key (a trusted signer,
                                  core.models.trust)
    models/                       the latest global model; final.dpm at the end
    pending/r<round>-a<attempt>.bin   the noised upload of an attempt, kept until its round is over so a
                                  restart resends these bytes and never computes new ones
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.config import atomic_write_bytes, remove_temporaries
from core.errors import FederationError
from core.home import HospitalHome

STATE_VERSION = 2


@dataclass
class MembershipState:
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
    finished: str = ""  # "completed" | "declined" | "stopped" | "left"
    version: int = STATE_VERSION


def membership_folder(home: HospitalHome, invitation) -> Path:
    return home.federation_dir(invitation.federation_name, invitation.federation_id, invitation.hospital_id)


class MembershipFolder:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.state = self.root / "state.json"
        self.ca = self.root / "ca.pem"
        self.public_invitation = self.root / "invitation.json"
        self.models = self.root / "models"
        self.final_model = self.models / "final.dpm"
        self.pending = self.root / "pending"

    @classmethod
    def of(cls, home: HospitalHome, invitation) -> MembershipFolder:
        return cls(membership_folder(home, invitation))

    def create(self, invitation) -> None:
        """Write what the federation needs locally: the pinned CA and the invitation's public part."""
        import base64

        self.root.mkdir(parents=True, exist_ok=True)
        # Left by a run killed mid-write (one run per membership at a time: nothing else writes here now).
        for folder in (self.root, self.models, self.pending):
            remove_temporaries(folder)
        atomic_write_bytes(self.ca, invitation.ca_certificate.encode())
        public = {"federation_id": invitation.federation_id, "federation_name": invitation.federation_name,
                  "coordinator_url": invitation.coordinator_url, "hospital_id": invitation.hospital_id,
                  "hospital_name": invitation.hospital_name, "plan_hash": invitation.plan_hash,
                  "ca_fingerprint": invitation.ca_fingerprint,
                  "coordinator_signing_key": base64.b64encode(invitation.coordinator_signing_key).decode()}
        atomic_write_bytes(self.public_invitation, (json.dumps(public, indent=2) + "\n").encode())

    def pending_upload(self, round: int, attempt: int) -> Path:
        return self.pending / f"r{round:05d}-a{attempt:03d}.bin"

    def forget_uploads_up_to(self, round: int) -> None:
        """Those rounds are over: their uploads can never be needed again."""
        if self.pending.exists():
            for stored in self.pending.glob("r*-a*.bin"):
                if int(stored.name[1:6]) <= round:
                    stored.unlink(missing_ok=True)

    def load_state(self, invitation) -> MembershipState:
        if not self.state.exists():
            return MembershipState(invitation.federation_id, invitation.hospital_id)
        try:
            data = json.loads(self.state.read_text(encoding="utf-8"))
            if data.get("version") != STATE_VERSION:
                raise ValueError("version")
            state = MembershipState(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise FederationError(f"{self.state} is damaged or from another version ({exc.__class__.__name__}); "
                                  "restore it from a backup.") from exc
        if state.federation_id != invitation.federation_id or state.hospital_id != invitation.hospital_id:
            raise FederationError(f"The folder {self.root} belongs to another federation or hospital.")
        return state

    def save_state(self, state: MembershipState) -> None:
        atomic_write_bytes(self.state, json.dumps(asdict(state), indent=2).encode(), mode=0o600)


def roster_matches(accepted: str | None, digest: str) -> bool:
    """True when ``accepted`` (a roster code, with or without spaces, or the digest) names ``digest``."""
    if not accepted:
        return False
    typed = "".join(accepted.split()).lower()
    return len(typed) >= 16 and digest.startswith(typed)

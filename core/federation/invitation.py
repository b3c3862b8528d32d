"""Invitation files: everything a hospital needs to join, handed over out of band (USB stick, e-mail).

An invitation holds the coordinator URL, the federation CA certificate (pinned by the client), the
coordinator's model-signing public key, a one-time enrollment token and the plan with its hash.
It is a secret until used (the token enrolls whoever holds it), so it is written 0600.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from core.config import atomic_write_bytes
from core.errors import FederationError
from core.federation.plan import FederationPlan, plan_hash
from core.federation.tls import certificate_fingerprint

INVITATION_FORMAT = "dopamine-invitation"
INVITATION_VERSION = 1
MAX_INVITATION_BYTES = 256 * 1024


@dataclass(frozen=True)
class Invitation:
    federation_id: str
    federation_name: str
    coordinator_url: str
    hospital_id: str
    hospital_name: str
    token: str
    ca_certificate: str  # PEM
    coordinator_signing_key: bytes  # raw Ed25519 public key that signs every published model
    plan: FederationPlan
    plan_hash: str

    @property
    def ca_fingerprint(self) -> str:
        return certificate_fingerprint(self.ca_certificate)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": INVITATION_FORMAT,
                "version": INVITATION_VERSION,
                "federation_id": self.federation_id,
                "federation_name": self.federation_name,
                "coordinator_url": self.coordinator_url,
                "hospital_id": self.hospital_id,
                "hospital_name": self.hospital_name,
                "token": self.token,
                "ca_certificate": self.ca_certificate,
                "coordinator_signing_key": base64.b64encode(self.coordinator_signing_key).decode(),
                "plan": self.plan.to_dict(),
                "plan_hash": self.plan_hash,
            },
            indent=2,
        )


def check_https_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise FederationError(f"The coordinator address {url!r} is not an https:// URL; Dopamine only talks HTTPS.")
    return url.rstrip("/")


def write_invitation(path: Path, invitation: Invitation) -> None:
    atomic_write_bytes(Path(path), invitation.to_json().encode(), mode=0o600)


def read_invitation(path: Path) -> Invitation:
    """Parse and check an invitation file (FederationError with the reason when it cannot be used)."""
    path = Path(path)
    bad = f"{path.name} is not a usable Dopamine invitation"
    try:
        if path.stat().st_size > MAX_INVITATION_BYTES:
            raise FederationError(f"{bad} (too large); ask the coordinator for a new one.")
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise FederationError(f"Invitation file {path} does not exist.") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # RecursionError: nested
        raise FederationError(f"{bad} ({exc.__class__.__name__}); ask the coordinator for a new one.") from exc
    if not isinstance(data, dict) or data.get("format") != INVITATION_FORMAT:
        raise FederationError(f"{bad} (wrong format); ask the coordinator for a new one.")
    if data.get("version") != INVITATION_VERSION:
        raise FederationError(f"{bad} (version {data.get('version')!r}); update Dopamine.")
    try:
        plan = FederationPlan.from_dict(data["plan"])
        signing_key = base64.b64decode(data["coordinator_signing_key"], validate=True)
        invitation = Invitation(
            federation_id=str(data["federation_id"]),
            federation_name=str(data["federation_name"]),
            coordinator_url=check_https_url(str(data["coordinator_url"])),
            hospital_id=str(data["hospital_id"]),
            hospital_name=str(data["hospital_name"]),
            token=str(data["token"]),
            ca_certificate=str(data["ca_certificate"]),
            coordinator_signing_key=signing_key,
            plan=plan,
            plan_hash=str(data["plan_hash"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise FederationError(f"{bad} (missing or invalid {exc}); ask the coordinator for a new one.") from exc
    if len(signing_key) != 32:
        raise FederationError(f"{bad} (bad signing key); ask the coordinator for a new one.")
    if plan_hash(plan) != invitation.plan_hash:
        raise FederationError(f"{bad}: its plan does not match its plan hash (edited?); ask for a new one.")
    if plan.federation_id != invitation.federation_id:
        raise FederationError(f"{bad}: the plan belongs to another federation.")
    invitation.ca_fingerprint  # noqa: B018 -- parse the CA now, so a broken one fails here
    return invitation

"""Request authentication: each request is signed with the hospital's Ed25519 identity key.

The signature covers the method, path with query, timestamp, nonce, hospital id, federation id and
the SHA-256 of the body, so a request cannot be altered, replayed (the coordinator remembers nonces
for longer than the timestamp window) or carried to another federation.
"""

from __future__ import annotations

import base64
import hashlib
import math
import secrets
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from core.errors import AuthFailure

HEADER_HOSPITAL = "X-Dopamine-Hospital"
HEADER_TIMESTAMP = "X-Dopamine-Timestamp"
HEADER_NONCE = "X-Dopamine-Nonce"
HEADER_SIGNATURE = "X-Dopamine-Signature"
TIMESTAMP_WINDOW_S = 300.0


def signed_message(
    *, method: str, path: str, timestamp: str, nonce: str, hospital_id: str, federation_id: str, body: bytes
) -> bytes:
    return "\n".join(
        [
            "dopamine-request-v1",
            method.upper(),
            path,
            timestamp,
            nonce,
            hospital_id,
            federation_id,
            hashlib.sha256(body).hexdigest(),
        ]
    ).encode()


def sign_request(
    key: Ed25519PrivateKey, *, method: str, path: str, body: bytes, hospital_id: str, federation_id: str,
    now: float | None = None,
) -> dict[str, str]:
    """The headers that authenticate one request (a fresh nonce every time)."""
    timestamp = f"{(time.time() if now is None else now):.3f}"
    nonce = secrets.token_hex(16)
    message = signed_message(
        method=method, path=path, timestamp=timestamp, nonce=nonce, hospital_id=hospital_id,
        federation_id=federation_id, body=body,
    )
    return {
        HEADER_HOSPITAL: hospital_id,
        HEADER_TIMESTAMP: timestamp,
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: base64.b64encode(key.sign(message)).decode(),
    }


@dataclass(frozen=True)
class SignedHeaders:
    hospital_id: str
    timestamp: float
    timestamp_text: str
    nonce: str
    signature: bytes


def parse_signed_headers(headers) -> SignedHeaders:
    """Read the authentication headers (AuthFailure 401 when missing or malformed)."""
    values = {name: headers.get(name) for name in (HEADER_HOSPITAL, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)}
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise AuthFailure(401, f"Request is not signed (missing {', '.join(missing)}); use the Dopamine client.")
    nonce = values[HEADER_NONCE]
    if not (16 <= len(nonce) <= 64) or not all(c in "0123456789abcdef" for c in nonce):
        raise AuthFailure(401, "Malformed request nonce; use the Dopamine client.")
    try:
        timestamp = float(values[HEADER_TIMESTAMP])
        signature = base64.b64decode(values[HEADER_SIGNATURE], validate=True)
    except ValueError as exc:
        raise AuthFailure(401, "Malformed request timestamp or signature; use the Dopamine client.") from exc
    if not math.isfinite(timestamp):  # "nan" parses, and no time is ever more than a window away from it
        raise AuthFailure(401, "Malformed request timestamp; use the Dopamine client.")
    if len(values[HEADER_HOSPITAL]) > 64:
        raise AuthFailure(401, "Malformed hospital id.")
    return SignedHeaders(values[HEADER_HOSPITAL], timestamp, values[HEADER_TIMESTAMP], nonce, signature)


def verify_request(
    public_key: Ed25519PublicKey, signed: SignedHeaders, *, method: str, path: str, body: bytes,
    federation_id: str, now: float | None = None, window_s: float = TIMESTAMP_WINDOW_S,
) -> None:
    """Check the timestamp window and the signature (AuthFailure 401 otherwise). Nonces: the caller."""
    now = time.time() if now is None else now
    if abs(now - signed.timestamp) > window_s:
        way = "ahead of" if signed.timestamp > now else "behind"
        raise AuthFailure(
            401, f"The request's time is {abs(now - signed.timestamp):.0f} s {way} the coordinator's clock (at most "
            f"{window_s:.0f} s are accepted); set this computer's clock (NTP) and retry.", code="clock",
        )
    message = signed_message(
        method=method, path=path, timestamp=signed.timestamp_text, nonce=signed.nonce,
        hospital_id=signed.hospital_id, federation_id=federation_id, body=body,
    )
    try:
        public_key.verify(signed.signature, message)
    except InvalidSignature as exc:
        raise AuthFailure(401, "Request signature does not verify; it was altered or signed with another key.") from exc

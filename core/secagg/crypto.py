"""The few cryptographic operations the protocol needs, all from the `cryptography` package.

X25519 agreement + HKDF-SHA256 for pairwise keys, AES-256-GCM for the encrypted shares,
Ed25519 for signatures. Every derived key and every signature is bound to a purpose label
and to the round's context (length-prefixed), so nothing from one round or role verifies in
another.
"""

from __future__ import annotations

import os
from functools import lru_cache

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from core.errors import SecAggError

DOMAIN = b"dopamine-secagg/v1"
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
NONCE_BYTES = 12
TAG_BYTES = 16

Field = bytes | str | int


def canonical(*fields: Field) -> bytes:
    """An unambiguous byte string for a tuple of fields (each length-prefixed)."""
    parts = [DOMAIN]
    for field in fields:
        if isinstance(field, str):
            field = field.encode()
        elif isinstance(field, int):
            field = field.to_bytes(8, "big", signed=True)
        parts.append(len(field).to_bytes(4, "big") + bytes(field))
    return b"".join(parts)


def new_x25519() -> tuple[X25519PrivateKey, bytes]:
    key = X25519PrivateKey.generate()
    return key, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def x25519_private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def x25519_from_private_bytes(raw: bytes) -> tuple[X25519PrivateKey, bytes]:
    key = X25519PrivateKey.from_private_bytes(raw)
    return key, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def agree(private: X25519PrivateKey, peer_public: bytes, *context: Field) -> bytes:
    """A 32-byte key shared with the owner of ``peer_public``, bound to ``context``."""
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:  # low-order point or malformed key
        raise SecAggError("A hospital advertised an invalid key; the round cannot use it.") from exc
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=canonical(*context)).derive(shared)


def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def unseal(key: bytes, blob: bytes, associated: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], associated)
    except InvalidTag as exc:
        raise SecAggError(
            "An encrypted share failed authentication (forged, corrupted or from another round)."
        ) from exc


def ed25519_public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def sign(key: Ed25519PrivateKey, *fields: Field) -> bytes:
    return key.sign(canonical(*fields))


def verify(public_key: bytes, signature: bytes, *fields: Field) -> bool:
    return _verify(bytes(public_key), bytes(signature), canonical(*fields))


@lru_cache(maxsize=4096)
def _verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    # Memoised because every hospital checks every other hospital's advertised keys: where several
    # parties share a process (the coordinator, the in-memory driver) each triple is checked once.
    # Verification is a pure function of the three byte strings, so this is exact.
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True

"""Ed25519 keys for signing model packages and identifying hospitals (``cryptography`` package).

Private keys are stored as unencrypted PKCS#8 PEM files readable only by their owner (0600),
written atomically. Public keys travel as their raw 32 bytes; people compare them by fingerprint.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from core.config import atomic_write_bytes
from core.errors import KeyFileError, SignatureError

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
# A PEM Ed25519 key is about 120 bytes; anything much larger is not one.
_MAX_KEY_FILE_BYTES = 64 * 1024


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def save_private_key(key: Ed25519PrivateKey, path: Path) -> None:
    """Write ``key`` as PEM, mode 0600, atomically (never a half-written key file)."""
    pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    try:
        atomic_write_bytes(Path(path), pem, mode=0o600)
    except OSError as exc:
        raise KeyFileError(f"Cannot write the key file {path}: {exc.strerror or exc}.") from exc


def load_private_key(path: Path) -> Ed25519PrivateKey:
    path = Path(path)
    try:
        if path.stat().st_size > _MAX_KEY_FILE_BYTES:
            raise KeyFileError(f"{path} is too large to be a signing key; choose the right key file.")
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise KeyFileError(f"The signing key file {path} does not exist; create one or choose another file.") from exc
    except OSError as exc:
        raise KeyFileError(f"Cannot read the signing key file {path}: {exc.strerror or exc}.") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(
            f"{path} is not a usable private key (damaged, password-protected or not PEM); "
            "restore it from a backup or create a new one."
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__.removeprefix('_')}, not an Ed25519 key; choose an Ed25519 key.")
    return key


def load_or_create_private_key(path: Path) -> Ed25519PrivateKey:
    """The key in ``path``, creating and saving a new one if the file does not exist yet."""
    path = Path(path)
    if not path.exists():
        save_private_key(generate_private_key(), path)
    # Read back what is on disk, so two processes creating at once both end up using the same key.
    return load_private_key(path)


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The raw 32-byte public key of a private or public key."""
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return key.public_bytes(encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw)


def public_key_from_bytes(raw: bytes) -> Ed25519PublicKey:
    if not isinstance(raw, bytes | bytearray) or len(raw) != PUBLIC_KEY_BYTES:
        raise SignatureError(f"A public key must be {PUBLIC_KEY_BYTES} bytes.")
    return Ed25519PublicKey.from_public_bytes(bytes(raw))


def fingerprint(public_key_bytes: bytes) -> str:
    """SHA-256 of the raw public key, as 16 groups of 4 hex digits ("ab12 cd34 ...")."""
    digest = hashlib.sha256(bytes(public_key_bytes)).hexdigest()
    return " ".join(digest[i : i + 4] for i in range(0, len(digest), 4))


def sign(key: Ed25519PrivateKey, message: bytes) -> bytes:
    return key.sign(message)


def verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True when ``signature`` is ``public_key``'s signature of ``message``; never raises on bad input."""
    try:
        public_key_from_bytes(public_key).verify(bytes(signature), message)
    except (InvalidSignature, SignatureError, ValueError, TypeError):
        return False
    return True

"""Which model signers this hospital trusts, and what a package's signature is worth here.

A valid signature only proves that a package is what the holder of the key inside it produced; anyone
can make a key and sign a card claiming any epsilon. A card's claims count only when its signer is
trusted. A hospital trusts:

    this hospital          its own identity key (HospitalHome.identity_key): models trained here
    federation coordinator the model-signing key of every federation it joined, read from that
                           federation's folder (``coordinator-signing-key.txt``, base64 raw key, or the
                           ``coordinator_signing_key`` of the ``invitation.json`` kept there)
    added by user          keys added by hand after comparing fingerprints with the sender
                           (HospitalHome.trusted_keys, a JSON file written atomically)

This module needs no torch itself; the core.models package imports it, so GUI code reaches this
module only from worker threads.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from core.config import atomic_write_bytes
from core.errors import ConfigError, KeyFileError, SignatureError
from core.signing import PUBLIC_KEY_BYTES, fingerprint

if TYPE_CHECKING:  # pragma: no cover
    from core.home import HospitalHome
    from core.models.package import ModelPackage

THIS_HOSPITAL = "this hospital"
FEDERATION_COORDINATOR = "federation coordinator"
ADDED_BY_USER = "added by user"
KINDS = (THIS_HOSPITAL, FEDERATION_COORDINATOR, ADDED_BY_USER)

COORDINATOR_KEY_FILE = "coordinator-signing-key.txt"
INVITATION_FILE = "invitation.json"
# Before the hospital home, local models were signed with a key of this name in the same folder.
LEGACY_IDENTITY_NAME = "hospital_ed25519.pem"

TRUST_FORMAT = "dopamine-trusted-keys"
TRUST_VERSION = 1
MAX_TRUST_FILE_BYTES = 1024 * 1024
MAX_SMALL_FILE_BYTES = 256 * 1024
MAX_NAME_CHARS = 100
MIN_PREFIX_HEX = 8

TRUSTED = "trusted"
UNKNOWN_SIGNER = "unknown signer"
INVALID = "invalid"


@dataclass(frozen=True)
class TrustedSigner:
    public_key: bytes
    fingerprint: str
    name: str
    kind: str  # one of KINDS
    source: str  # the file the key came from
    added: str = ""  # ISO time, for keys added by the user

    @property
    def described(self) -> str:
        """Who signed, in words: "this hospital", "the coordinator of X", "X (added by you)"."""
        if self.kind == THIS_HOSPITAL:
            return "this hospital"
        if self.kind == FEDERATION_COORDINATOR:
            return f"the coordinator of {self.name}"
        return f"{self.name} (added by you)"


@dataclass(frozen=True)
class SignerStatus:
    """Two separate facts about a package: does its signature verify, and is its signer trusted here."""

    signature_valid: bool
    signer_trusted: bool
    signer_fingerprint: str
    signer_name: str = ""
    signer_kind: str = ""
    signer_described: str = ""

    @property
    def level(self) -> str:
        """"trusted" (green), "unknown signer" (amber) or "invalid" (red)."""
        if not self.signature_valid:
            return INVALID
        return TRUSTED if self.signer_trusted else UNKNOWN_SIGNER

    @property
    def text(self) -> str:
        """One line for people."""
        if not self.signature_valid:
            return ("Signature does not verify: the file was changed after signing, or its signature is "
                    "missing or damaged")
        if self.signer_trusted:
            return f"Signed by a trusted signer ({self.signer_described})"
        return (f"Valid signature, unknown signer ({short_fingerprint(self.signer_fingerprint)}): "
                "the card's claims are unverified")

    def to_dict(self) -> dict:
        return {"signature_valid": self.signature_valid, "signer_trusted": self.signer_trusted,
                "signer_fingerprint": self.signer_fingerprint, "signer_name": self.signer_name,
                "signer_kind": self.signer_kind}


def short_fingerprint(value: str) -> str:
    """The first four groups: enough to tell keys apart on screen, not to confirm one."""
    return " ".join(value.split()[:4]) + (" …" if len(value.split()) > 4 else "") if value else "no key"


def untrusted_message(name: str, status: SignerStatus) -> str:
    """The one-line refusal for ``--require-trusted``, saying how to trust the key after checking it."""
    if not status.signature_valid:
        return (f"{name}: the signature does not verify; do not use this model, get a fresh copy from its "
                "sender.")
    return (f"{name} is signed by a key this hospital does not trust (fingerprint {status.signer_fingerprint}); "
            "its card's claims are unverified. Ask the sender to read you their fingerprint; only if it "
            f"matches, run `dopamine trust add {name} --name SENDER` and try again.")


class TrustStore:
    """The keys one hospital home trusts. Reads files on each call, so changes show at once."""

    def __init__(self, home: HospitalHome) -> None:
        self.home = home

    @property
    def path(self) -> Path:
        return Path(self.home.trusted_keys)

    def trusted_keys(self) -> dict[bytes, TrustedSigner]:
        """Raw public key -> signer; a key known twice is shown as its strongest kind (this hospital first)."""
        keys: dict[bytes, TrustedSigner] = {}
        for signer in self._own() + self._coordinators() + self._user_keys():
            keys.setdefault(signer.public_key, signer)
        return keys

    # Below this method, `list` in an annotation names it: those say builtins.list.
    def list(self) -> list[TrustedSigner]:
        return list(self.trusted_keys().values())

    def add(self, public_key: bytes, name: str, source: str) -> TrustedSigner:
        """Trust ``public_key`` under ``name``; adding a key again renames it. Returns the stored signer."""
        public_key = check_public_key(public_key)
        name = check_name(name)
        entries = [e for e in self._read_entries() if e.public_key != public_key]
        signer = TrustedSigner(public_key=public_key, fingerprint=fingerprint(public_key), name=name,
                               kind=ADDED_BY_USER, source=str(source)[:1000],
                               added=datetime.now(UTC).replace(microsecond=0).isoformat())
        self._write_entries([*entries, signer])
        return signer

    def remove(self, fingerprint_or_prefix: str) -> TrustedSigner:
        """Stop trusting the user-added key whose fingerprint starts with ``fingerprint_or_prefix``."""
        wanted = fingerprint_hex(fingerprint_or_prefix)
        if len(wanted) < MIN_PREFIX_HEX:
            raise ConfigError(f"Give at least {MIN_PREFIX_HEX} hex digits of the fingerprint "
                              "(`dopamine trust list` shows them).")
        entries = self._read_entries()
        matches = [e for e in entries if fingerprint_hex(e.fingerprint).startswith(wanted)]
        if not matches:
            fixed = [s for s in self._own() + self._coordinators() if fingerprint_hex(s.fingerprint).startswith(wanted)]
            if fixed:
                raise ConfigError(
                    f"{fingerprint_or_prefix.strip()} is {fixed[0].described}'s key, trusted because "
                    f"{'it is this hospital' if fixed[0].kind == THIS_HOSPITAL else 'this hospital joined it'}; "
                    "it cannot be removed here.")
            raise ConfigError(f"No key added by you has a fingerprint starting with {fingerprint_or_prefix.strip()}; "
                              "`dopamine trust list` shows them.")
        if len(matches) > 1:
            raise ConfigError(f"{len(matches)} keys start with {fingerprint_or_prefix.strip()}; give more of "
                              "the fingerprint.")
        self._write_entries([e for e in entries if e.public_key != matches[0].public_key])
        return matches[0]

    # ---- the three sources --------------------------------------------------------------------------------
    def _own(self) -> builtins.list[TrustedSigner]:
        from core.signing import load_private_key, public_key_bytes

        signers = []
        identity = Path(self.home.identity_key)
        for path in (identity, identity.with_name(LEGACY_IDENTITY_NAME)):
            if not path.is_file():
                continue
            try:
                key = public_key_bytes(load_private_key(path))
            except KeyFileError:
                continue  # an unreadable key only means this hospital's models show as unknown
            signers.append(TrustedSigner(key, fingerprint(key), THIS_HOSPITAL, THIS_HOSPITAL, str(path)))
        return signers

    def _coordinators(self) -> builtins.list[TrustedSigner]:
        folder = Path(self.home.federations)
        if not folder.is_dir():
            return []
        signers = []
        for federation in sorted(p for p in folder.iterdir() if p.is_dir()):
            invitation = _small_json(federation / INVITATION_FILE)
            name = invitation.get("federation_name") if isinstance(invitation, dict) else None
            if not isinstance(name, str) or not name.strip():
                name = _name_from_folder(federation.name)
            name = name.strip()[:MAX_NAME_CHARS]
            sources = ((federation / COORDINATOR_KEY_FILE, _small_text(federation / COORDINATOR_KEY_FILE)),
                       (federation / INVITATION_FILE,
                        invitation.get("coordinator_signing_key") if isinstance(invitation, dict) else None))
            for path, text in sources:
                key = _decode_key(text)
                if key is not None:
                    signers.append(TrustedSigner(key, fingerprint(key), name, FEDERATION_COORDINATOR, str(path)))
        return signers

    def _user_keys(self) -> builtins.list[TrustedSigner]:
        return self._read_entries()

    # ---- the user's file ----------------------------------------------------------------------------------
    def _read_entries(self) -> builtins.list[TrustedSigner]:
        path = self.path
        damaged = (f"{path} is damaged, so no key you added is trusted; restore it from a backup, or delete it "
                   "and add the keys again after checking their fingerprints.")
        try:
            if path.stat().st_size > MAX_TRUST_FILE_BYTES:
                raise ConfigError(damaged)
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(damaged) from exc
        if not isinstance(data, dict) or data.get("format") != TRUST_FORMAT or not isinstance(data.get("keys"), list):
            raise ConfigError(damaged)
        if data.get("version") != TRUST_VERSION:
            raise ConfigError(f"{path} was written by another Dopamine version; update Dopamine.")
        entries = []
        for item in data["keys"]:
            if not isinstance(item, dict):
                raise ConfigError(damaged)
            key = _decode_key(item.get("public_key"))
            name, source, added = item.get("name"), item.get("source", ""), item.get("added", "")
            if key is None or not isinstance(name, str) or not isinstance(source, str) or not isinstance(added, str):
                raise ConfigError(damaged)
            entries.append(TrustedSigner(key, fingerprint(key), name[:MAX_NAME_CHARS], ADDED_BY_USER, source, added))
        return entries

    def _write_entries(self, entries: builtins.list[TrustedSigner]) -> None:
        data = {
            "format": TRUST_FORMAT,
            "version": TRUST_VERSION,
            "keys": [{"public_key": base64.b64encode(e.public_key).decode(), "fingerprint": e.fingerprint,
                      "name": e.name, "added": e.added, "source": e.source} for e in entries],
        }
        self.home.ensure()
        try:
            atomic_write_bytes(self.path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode(),
                               mode=0o600)
        except OSError as exc:
            raise ConfigError(f"Cannot write {self.path}: {exc.strerror or exc}; check the hospital folder.") from exc


def signer_status(package: ModelPackage,
                  store: TrustStore | Mapping[bytes, TrustedSigner] | None) -> SignerStatus:
    """Whether ``package``'s signature verifies and whether its signer is trusted by ``store``.

    ``store`` may be a TrustStore, the mapping its ``trusted_keys()`` returned (to check many packages
    with one read), or None (nobody is trusted). A signature that does not verify is never trusted,
    whoever the key inside claims to be.
    """
    keys = store.trusted_keys() if isinstance(store, TrustStore) else (store or {})
    public_key = bytes(getattr(package, "signer_public_key", b"") or b"")
    valid = bool(package.signature_ok)
    signer = keys.get(public_key) if valid and public_key else None
    return SignerStatus(
        signature_valid=valid,
        signer_trusted=signer is not None,
        signer_fingerprint=package.signer_fingerprint or (fingerprint(public_key) if public_key else ""),
        signer_name=signer.name if signer else "",
        signer_kind=signer.kind if signer else "",
        signer_described=signer.described if signer else "",
    )


def ensure_trusted(name: str, status: SignerStatus) -> None:
    """SignatureError (one line, saying how to trust the key) unless the signer is trusted."""
    if status.level != TRUSTED:
        raise SignatureError(untrusted_message(name, status))


def check_public_key(public_key: bytes) -> bytes:
    from core.signing import public_key_from_bytes

    if not isinstance(public_key, bytes | bytearray) or len(public_key) != PUBLIC_KEY_BYTES:
        raise ConfigError(f"A signer key is {PUBLIC_KEY_BYTES} bytes (44 characters of base64); check what you pasted.")
    try:
        public_key_from_bytes(bytes(public_key))
    except (SignatureError, ValueError) as exc:
        raise ConfigError("That is not an Ed25519 public key; check what you pasted.") from exc
    return bytes(public_key)


def decode_public_key(text: str) -> bytes:
    """A raw key from its base64 text (what ``--key`` takes); ConfigError when it is not one."""
    key = _decode_key(text)
    if key is None:
        raise ConfigError(f"{str(text)[:60]!r} is not a base64 Ed25519 public key (44 characters); check it.")
    return check_public_key(key)


def check_name(name: str) -> str:
    if not isinstance(name, str):
        raise ConfigError("Give the signer a name.")
    cleaned = " ".join(name.split())
    if not cleaned:
        raise ConfigError("Give the signer a name (who they are), for example --name \"City Eye Clinic\".")
    if len(cleaned) > MAX_NAME_CHARS:
        raise ConfigError(f"A signer's name is at most {MAX_NAME_CHARS} characters.")
    return cleaned


def fingerprint_hex(text: str) -> str:
    """A fingerprint (or a prefix) as bare lowercase hex, so "AB12 cd34" and "ab12cd34" compare equal."""
    return re.sub(r"[\s:]", "", str(text)).lower()


def _decode_key(text: object) -> bytes | None:
    if not isinstance(text, str) or len(text) > 200:
        return None
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return key if len(key) == PUBLIC_KEY_BYTES else None


def _small_text(path: Path) -> str | None:
    try:
        if path.stat().st_size > MAX_SMALL_FILE_BYTES:
            return None
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _small_json(path: Path) -> object:
    text = _small_text(path)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _name_from_folder(folder: str) -> str:
    """HospitalHome.federation_dir names folders ``<name>-<federation id>-<hospital id>``."""
    parts = folder.rsplit("-", 2)
    return " ".join((parts[0] if len(parts) == 3 and parts[0] else folder).replace("_", " ").split())

"""Protocol messages and their wire format.

Wire format: b"DSA1", the JSON header's length (uint32, little-endian), the UTF-8 JSON header,
then raw little-endian array bytes (only MaskedInput has any). Binary fields in the header are
base64. Parsing is strict: exact key sets, exact types and lengths, valid ids, no duplicate
JSON keys, payload size exactly as declared. Anything else raises SecAggError. Never pickle.

Signatures (Ed25519, long-term identity key of the sender) cover ``signed_fields()``; the
state machines sign and verify them, this module only carries the bytes.

Why one module (about 520 lines): every message of the protocol and the one strict parser of their
wire format; splitting them would scatter the format's rules.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np

from core.errors import SecAggError
from core.secagg import cores
from core.secagg.crypto import NONCE_BYTES, PUBLIC_KEY_BYTES, SIGNATURE_BYTES, TAG_BYTES, Field
from core.secagg.params import COORDINATOR, MAX_VECTOR_LENGTH, check_hospital_id, check_round_id
from core.secagg.shamir import PRIME, SHARE_BYTES

MAGIC = b"DSA1"
MAX_HEADER_BYTES = 16 << 20
MAX_ENTRIES = 10_000  # hospitals in one round
DIGEST_BYTES = 32
# A share plaintext is the holder's x-coordinate (4 bytes) and two field elements.
SHARE_PLAINTEXT_BYTES = 4 + 2 * SHARE_BYTES
SHARE_CIPHERTEXT_BYTES = NONCE_BYTES + SHARE_PLAINTEXT_BYTES + TAG_BYTES
VECTOR_DIGEST_PIECE = 1 << 18
_DTYPES: dict[str, np.dtype[np.unsignedinteger]] = {"uint32": np.dtype("<u4"), "uint64": np.dtype("<u8")}


def _refuse(what: str) -> SecAggError:
    return SecAggError(f"Refused a secure-aggregation message: {what}.")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _refuse("a JSON key appears twice")
    return result


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _bytes_field(value: Any, length: int, name: str) -> bytes:
    if not isinstance(value, str) or len(value) > 4 * length:
        raise _refuse(f"{name} is not base64 text of the right size")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _refuse(f"{name} is not valid base64") from exc
    if len(raw) != length:
        raise _refuse(f"{name} must be {length} bytes, not {len(raw)}")
    return raw


def _keys(obj: Any, expected: set[str], what: str) -> dict[str, Any]:
    if not isinstance(obj, dict) or set(obj) != expected:
        raise _refuse(f"{what} must have exactly the fields {sorted(expected)}")
    return obj


def _id_map(value: Any, name: str, parse: Callable[[Any], Any]) -> dict[str, Any]:
    if not isinstance(value, dict) or len(value) > MAX_ENTRIES:
        raise _refuse(f"{name} must be a mapping of hospital ids")
    return {
        check_hospital_id(key, f"hospital id in {name}"): parse(item) for key, item in sorted(value.items())
    }


def _id_list(value: Any, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_ENTRIES:
        raise _refuse(f"{name} must be a list of hospital ids")
    ids = tuple(check_hospital_id(item, f"hospital id in {name}") for item in value)
    if list(ids) != sorted(set(ids)):
        raise _refuse(f"{name} must be sorted and without repeats")
    return ids


def _share_value(value: Any) -> int:
    number = int.from_bytes(_bytes_field(value, SHARE_BYTES, "share"), "big")
    if number >= PRIME:
        raise _refuse("a share value is outside the field")
    return number


def _pack(header: dict[str, Any], payload: memoryview | bytes = b"") -> bytes:
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return b"".join((MAGIC, struct.pack("<I", len(text)), text, payload))


def _unpack(data: bytes) -> tuple[dict[str, Any], memoryview]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _refuse("not bytes")
    view = memoryview(data).cast("B")
    if len(view) < 8 or bytes(view[:4]) != MAGIC:
        raise _refuse("not a secure-aggregation message (bad magic)")
    (length,) = struct.unpack("<I", view[4:8])
    if length > MAX_HEADER_BYTES or 8 + length > len(view):
        raise _refuse("header length is out of range")
    try:
        header = json.loads(bytes(view[8 : 8 + length]).decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _refuse("header is not valid JSON") from exc
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise _refuse("header has no message type")
    return header, view[8 + length :]


class Message:
    """Common wire handling. Subclasses set TYPE and implement _header/_from_header."""

    TYPE: ClassVar[str]
    round_id: str
    sender: str

    def _header(self) -> dict[str, Any]:
        raise NotImplementedError

    def _payload(self) -> bytes | memoryview:
        return b""

    @classmethod
    def _from_header(cls, header: dict[str, Any], payload: memoryview) -> Message:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        return _pack(
            {"type": self.TYPE, "round_id": self.round_id, "sender": self.sender, **self._header()},
            self._payload(),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        message = parse_message(data)
        if not isinstance(message, cls):
            raise _refuse(f"expected {cls.TYPE}, got {message.TYPE}")
        return message


def _parse_common(header: dict[str, Any], fields: set[str], coordinator: bool) -> dict[str, Any]:
    _keys(header, {"type", "round_id", "sender"} | fields, header["type"])
    check_round_id(header["round_id"])
    if coordinator:
        if header["sender"] != COORDINATOR:
            raise _refuse(f"{header['type']} must come from the coordinator")
    else:
        check_hospital_id(header["sender"], "sender id")
    return header


def _no_payload(payload: memoryview) -> None:
    if len(payload):
        raise _refuse("unexpected bytes after the header")


@dataclass(frozen=True)
class AdvertiseKeys(Message):
    """Phase 1, hospital -> coordinator: this round's public keys, signed with the identity key."""

    TYPE: ClassVar[str] = "advertise_keys"
    round_id: str
    sender: str
    params_digest: bytes
    enc_public: bytes  # X25519, for encrypting shares
    mask_public: bytes  # X25519, for pairwise mask seeds
    signature: bytes

    def signed_fields(self) -> tuple[Field, ...]:
        return (self.TYPE, self.round_id, self.sender, self.params_digest, self.enc_public, self.mask_public)

    def _body(self) -> dict[str, Any]:
        return {
            "params_digest": _b64(self.params_digest),
            "enc_public": _b64(self.enc_public),
            "mask_public": _b64(self.mask_public),
            "signature": _b64(self.signature),
        }

    def _header(self) -> dict[str, Any]:
        return self._body()

    @classmethod
    def _from_body(cls, round_id: str, sender: str, body: dict[str, Any]) -> AdvertiseKeys:
        return cls(
            round_id=round_id,
            sender=check_hospital_id(sender, "sender id"),
            params_digest=_bytes_field(body["params_digest"], DIGEST_BYTES, "params_digest"),
            enc_public=_bytes_field(body["enc_public"], PUBLIC_KEY_BYTES, "enc_public"),
            mask_public=_bytes_field(body["mask_public"], PUBLIC_KEY_BYTES, "mask_public"),
            signature=_bytes_field(body["signature"], SIGNATURE_BYTES, "signature"),
        )

    @classmethod
    def _from_header(cls, header: dict[str, Any], payload: memoryview) -> AdvertiseKeys:
        _parse_common(header, {"params_digest", "enc_public", "mask_public", "signature"}, coordinator=False)
        _no_payload(payload)
        return cls._from_body(header["round_id"], header["sender"], header)


@dataclass(frozen=True)
class KeyRoster(Message):
    """Phase 1 result, coordinator -> hospitals: every advertisement it accepted, sorted by sender."""

    TYPE: ClassVar[str] = "key_roster"
    round_id: str
    adverts: tuple[AdvertiseKeys, ...]
    sender: str = COORDINATOR

    def _header(self) -> dict[str, Any]:
        return {"adverts": [{"sender": a.sender, **a._body()} for a in self.adverts]}

    @classmethod
    def _from_header(cls, header: dict[str, Any], payload: memoryview) -> KeyRoster:
        _parse_common(header, {"adverts"}, coordinator=True)
        _no_payload(payload)
        items = header["adverts"]
        if not isinstance(items, list) or len(items) > MAX_ENTRIES:
            raise _refuse("adverts must be a list")
        fields = {"sender", "params_digest", "enc_public", "mask_public", "signature"}
        adverts = tuple(
            AdvertiseKeys._from_body(header["round_id"], checked["sender"], checked)
            for checked in (_keys(item, fields, "advert") for item in items)
        )
        senders = [a.sender for a in adverts]
        if senders != sorted(set(senders)):
            raise _refuse("roster must be sorted by sender without repeats")
        return cls(round_id=header["round_id"], adverts=adverts)


@dataclass(frozen=True)
class EncryptedShares(Message):
    """Phase 2, hospital -> coordinator: one AES-GCM ciphertext of shares per neighbour."""

    TYPE: ClassVar[str] = "encrypted_shares"
    round_id: str
    sender: str
    self_mask_digest: bytes  # commitment to the self-mask seed, checked after reconstruction
    ciphertexts: dict[str, bytes]
    signature: bytes

    def signed_fields(self) -> tuple[Field, ...]:
        pairs = [part for key in sorted(self.ciphertexts) for part in (key, self.ciphertexts[key])]
        return (self.TYPE, self.round_id, self.sender, self.self_mask_digest, *pairs)

    def _header(self) -> dict[str, Any]:
        return {
            "self_mask_digest": _b64(self.self_mask_digest),
            "ciphertexts": {k: _b64(v) for k, v in self.ciphertexts.items()},
            "signature": _b64(self.signature),
        }

    @classmethod
    def _from_header(cls, header: dict[str, Any], payload: memoryview) -> EncryptedShares:
        _parse_common(header, {"self_mask_digest", "ciphertexts", "signature"}, coordinator=False)
        _no_payload(payload)
        return cls(
            round_id=header["round_id"],
            sender=header["sender"],
            self_mask_digest=_bytes_field(header["self_mask_digest"], DIGEST_BYTES, "self_mask_digest"),
            ciphertexts=_id_map(
                header["ciphertexts"],
                "ciphertexts",
                lambda v: _bytes_field(v, SHARE_CIPHERTEXT_BYTES, "ciphertext"),
            ),
            signature=_bytes_field(header["signature"], SIGNATURE_BYTES, "signature"),
        )


@dataclass(frozen=True)
class ShareBundle(Message):
    """Phase 2 result, coordinator -> one hospital: the ciphertexts addressed to it, by sender."""

    TYPE: ClassVar[str] = "share_bundle"
    round_id: str
    recipient: str
    ciphertexts: dict[str, bytes]
    sender: str = COORDINATOR

    def _header(self) -> dict[str, Any]:
        return {"recipient": self.recipient, "ciphertexts": {k: _b64(v) for k, v in self.ciphertexts.items()}}

    @classmethod
    def _from_header(cls, header: dict[str, Any], payload: memoryview) -> ShareBundle:
        _parse_common(header, {"recipient", "ciphertexts"}, coordinator=True)
        _no_payload(payload)
        return cls(
            round_id=header["round_id"],
            recipient=check_hospital_id(header["recipient"], "recipient id"),
            ciphertexts=_id_map(
                header["ciphertexts"],
                "ciphertexts",
                lambda v: _bytes_field(v, SHARE_CIPHERTEXT_BYTES, "ciphertext"),
            ),
        )


def vector_digest(vector: np.ndarray) -> bytes:
    """SHA-256 over the byte length and the SHA-256 of each 256 KiB piece of the vector's bytes.

    A one-level hash tree with fixed pieces: collision-resistant as SHA-256 is, and the pieces are
    hashed on every core (a masked SqueezeNet update is 2.9 MB, hashed by its hospital and again by
    the coordinator).
    """
    # ndarray.data, not memoryview(array): numpy types arrays as buffers only from Python 3.12 on.
    data = np.ascontiguousarray(vector).data.cast("B")
    pieces = -(-len(data) // VECTOR_DIGEST_PIECE) or 1
    digests = [b""] * pieces

    def hash_pieces(first: int, end: int) -> None:
        for piece in range(first, end):
            start = piece * VECTOR_DIGEST_PIECE
            digests[piece] = hashlib.sha256(data[start : start + VECTOR_DIGEST_PIECE]).digest()

    cores.split(hash_pieces, pieces)
    return hashlib.sha256(b"".join([b"dopamine-vector/v1", len(data).to_bytes(8, "big"), *digests])).digest()


@dataclass(frozen=True, eq=False)
class MaskedInput(Message):
    """Phase 3, hospital -> coordinator: the masked ring vector, signed over its digest (vector_digest)."""

    TYPE: ClassVar[str] = "masked_input"
    round_id: str
    sender: str
    vector: np.ndarray
    signature: bytes

    def signed_fields(self, digest: bytes | None = None) -> tuple[Field, ...]:
        digest = vector_digest(self.vector) if digest is None else digest
        return (self.TYPE, self.round_id, self.sender, str(self.vector.dtype), self.vector.shape[0], digest)

    def _header(self) -> dict[str, Any]:
        return {
            "dtype": self.vector.dtype.name,
            "length": int(self.vector.shape[0]),
            "signature": _b64(self.signature),
        }

    def _payload(self) -> memoryview:
        return np.ascontiguousarray(self.vector, dtype=self.vector.dtype.newbyteorder("<")).data.cast("B")

    @classmethod
    def _from_header(cls, header: dict[str, Any], payload: memoryview) -> MaskedInput:
        _parse_common(header, {"dtype", "length", "signature"}, coordinator=False)
        dtype = _DTYPES.get(header["dtype"]) if isinstance(header["dtype"], str) else None
        length = header["length"]
        if dtype is None:
            raise _refuse("vector type must be uint32 or uint64")
        if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= MAX_VECTOR_LENGTH:
            raise _refuse("vector length is out of range")
        if len(payload) != length * dtype.itemsize:
            raise _refuse(f"vector has {len(payload)} bytes, header says {length * dtype.itemsize}")
        vector = np.frombuffer(payload, dtype=dtype).astype(dtype.newbyteorder("="), copy=False)
        return cls(
            round_id=header["round_id"],
            sender=header["sender"],
            vector=vector,
            signature=_bytes_field(header["signature"], SIGNATURE_BYTES, "signature"),
        )


def survivor_fields(round_id: str, survivors: tuple[str, ...], dropped: tuple[str, ...]) -> tuple[Field, ...]:
    """What a hospital signs in the consistency step: the exact survivor and dropout lists it was shown."""
    return ("survivor_set", round_id, "survivors", *survivors, "dropped", *dropped)


@dataclass(frozen=True)
class SurvivorSet(Message):
    """Phase 3 result, coordinator -> hospitals: who sent a masked input (survivors) and who did not."""

    TYPE: ClassVar[str] = "survivor_set"
    round_id: str
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    sender: str = COORDINATOR

    def _header(self) -> dict[str, Any]:
        return {"survivors": list(self.survivors), "dropped": list(self.dropped)}

    @classmethod
    def _from_header(cls, header: dict[str, Any], payload: memoryview) -> SurvivorSet:
        _parse_common(header, {"survivors", "dropped"}, coordinator=True)
        _no_payload(payload)
        return cls(
            round_id=header["round_id"],
            survivors=_id_list(header["survivors"], "survivors"),
            dropped=_id_list(header["dropped"], "dropped"),
        )


@dataclass(frozen=True)
class SurvivorSignature(Message):
    """Phase 4 (consistency check), hospital -> coordinator: its signature on the survivor set it was shown."""

    TYPE: ClassVar[str] = "survivor_signature"
    round_id: str
    sender: str
    signature: bytes

    def _header(self) -> dict[str, Any]:
        return {"signature": _b64(self.signature)}

    @classmethod
    def _from_header(cls, header: dict[str, Any], payload: memoryview) -> SurvivorSignature:
        _parse_common(header, {"signature"}, coordinator=False)
        _no_payload(payload)
        return cls(
            round_id=header["round_id"],
            sender=header["sender"],
            signature=_bytes_field(header["signature"], SIGNATURE_BYTES, "signature"),
        )


@dataclass(frozen=True)
class UnmaskRequest(Message):
    """Phase 4 result, coordinator -> hospitals: the survivor set and the survivors' signatures on it.

    A hospital answers only when at least m of them are valid signatures, by survivors, on exactly
    the set it signed itself.
    """

    TYPE: ClassVar[str] = "unmask_request"
    round_id: str
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    signatures: dict[str, bytes]
    sender: str = COORDINATOR

    def _header(self) -> dict[str, Any]:
        return {
            "survivors": list(self.survivors),
            "dropped": list(self.dropped),
            "signatures": {k: _b64(v) for k, v in self.signatures.items()},
        }

    @classmethod
    def _from_header(cls, header: dict[str, Any], payload: memoryview) -> UnmaskRequest:
        _parse_common(header, {"survivors", "dropped", "signatures"}, coordinator=True)
        _no_payload(payload)
        return cls(
            round_id=header["round_id"],
            survivors=_id_list(header["survivors"], "survivors"),
            dropped=_id_list(header["dropped"], "dropped"),
            signatures=_id_map(
                header["signatures"], "signatures", lambda v: _bytes_field(v, SIGNATURE_BYTES, "signature")
            ),
        )


@dataclass(frozen=True)
class UnmaskResponse(Message):
    """Phase 4, hospital -> coordinator: self-mask shares of survivors, key shares of the dropped."""

    TYPE: ClassVar[str] = "unmask_response"
    round_id: str
    sender: str
    seed_shares: dict[str, int]
    key_shares: dict[str, int]
    signature: bytes

    def signed_fields(self) -> tuple[Field, ...]:
        def flat(shares: dict[str, int]) -> list[Field]:
            return [
                part for key in sorted(shares) for part in (key, shares[key].to_bytes(SHARE_BYTES, "big"))
            ]

        return (
            self.TYPE,
            self.round_id,
            self.sender,
            "seed",
            *flat(self.seed_shares),
            "key",
            *flat(self.key_shares),
        )

    def _header(self) -> dict[str, Any]:
        def encode(shares: dict[str, int]) -> dict[str, str]:
            return {k: _b64(v.to_bytes(SHARE_BYTES, "big")) for k, v in shares.items()}

        return {
            "seed_shares": encode(self.seed_shares),
            "key_shares": encode(self.key_shares),
            "signature": _b64(self.signature),
        }

    @classmethod
    def _from_header(cls, header: dict[str, Any], payload: memoryview) -> UnmaskResponse:
        _parse_common(header, {"seed_shares", "key_shares", "signature"}, coordinator=False)
        _no_payload(payload)
        return cls(
            round_id=header["round_id"],
            sender=header["sender"],
            seed_shares=_id_map(header["seed_shares"], "seed_shares", _share_value),
            key_shares=_id_map(header["key_shares"], "key_shares", _share_value),
            signature=_bytes_field(header["signature"], SIGNATURE_BYTES, "signature"),
        )


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        AdvertiseKeys,
        KeyRoster,
        EncryptedShares,
        ShareBundle,
        MaskedInput,
        SurvivorSet,
        SurvivorSignature,
        UnmaskRequest,
        UnmaskResponse,
    )
}


def parse_message(data: bytes) -> Message:
    """Any protocol message from its bytes (SecAggError if it is not exactly one)."""
    header, payload = _unpack(data)
    cls = MESSAGE_TYPES.get(header["type"])
    if cls is None:
        raise _refuse(f"unknown message type {header['type'][:40]!r}")
    return cls._from_header(header, payload)

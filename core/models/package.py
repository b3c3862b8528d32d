"""The model package (.dpm): one zip of ``weights.safetensors``, ``card.json`` and ``signature.json``.

The signature (Ed25519) covers ``b"dopamine-dpm-v1\\n" + sha256(weights) + sha256(card.json)``,
so neither member can change without it failing. Reading never unpickles or executes anything:
the zip is checked for exactly these three members and for size limits before any member is
decompressed, the card is strict JSON validated field by field, and the weights are safetensors
whose names and shapes must fit the declared architecture.

Why one module (about 430 lines): reading and writing the .dpm, and every check between the two
(zip limits, strict JSON, the card's fields, the signature), must stay in step.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import hashlib
import io
import json
import math
import numbers
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

import numpy as np

from core.config import atomic_write_bytes
from core.errors import ModelError, ModelPackageError, SignatureError
from core.models.names import MODEL_NAMES
from core.signing import fingerprint, public_key_bytes, sign, verify

if TYPE_CHECKING:  # torch is imported where weights are read or checked as tensors, not to write a card
    import torch
    from torch import nn

WEIGHTS = "weights.safetensors"
CARD = "card.json"
SIGNATURE = "signature.json"
MEMBERS = (WEIGHTS, CARD, SIGNATURE)

# Member limits: ResNet-18 weights are 45 MB; a card is a few kB.
MAX_MEMBER_BYTES = {WEIGHTS: 512 * 1024 * 1024, CARD: 1024 * 1024, SIGNATURE: 16 * 1024}
MAX_PACKAGE_BYTES = sum(MAX_MEMBER_BYTES.values()) + 64 * 1024

SIGNATURE_ALGORITHM = "ed25519"
SIGNED_MESSAGE_PREFIX = b"dopamine-dpm-v1\n"
CARD_SCHEMA_VERSION = 1
MODES = ("c", "cdp", "f", "fpdp", "fscdp")
DP_MODES = ("cdp", "fpdp", "fscdp")

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed, so the same model and card give the same bytes


@dataclass
class ModelCard:
    """What a model is, how it was trained and what privacy guarantee it carries."""

    architecture: str
    classes: list[str]
    preprocessing: dict
    mode: str
    epsilon: float | None
    delta: float | None
    accountant: str | None
    noise_multiplier: float | None
    sample_rate: float | None
    max_grad_norm: float | None
    steps: int | None
    rounds: int | None
    hospitals: int | None
    image_counts: dict[str, int]
    metrics: dict
    created: str
    software_version: str
    description: str = ""
    schema_version: int = CARD_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCard:
        """A validated card; ModelPackageError naming the first bad field otherwise."""
        if not isinstance(data, Mapping):
            raise ModelPackageError("The model card must be a JSON object.")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        version = data.get("schema_version", CARD_SCHEMA_VERSION)
        if _is_int(version) and version > CARD_SCHEMA_VERSION:
            raise ModelPackageError(
                f"This model card was written by a newer Dopamine (schema {version}); update the app to open it."
            )
        unknown = sorted(set(data) - names)
        if unknown:
            raise ModelPackageError(f"The model card has unknown field(s) {unknown}; it was not written by Dopamine.")
        missing = sorted(required - set(data))
        if missing:
            raise ModelPackageError(f"The model card lacks field(s) {missing}.")
        card = cls(**{k: data[k] for k in data})
        card._validate()
        return card

    def _validate(self) -> None:
        def bad(name: str, expected: str) -> ModelPackageError:
            return ModelPackageError(f"Model card field {name!r} must be {expected} (got {getattr(self, name)!r:.80}).")

        if not _is_int(self.schema_version) or self.schema_version < 1:
            raise bad("schema_version", "a positive whole number")
        if self.architecture not in MODEL_NAMES:
            raise ModelPackageError(
                f"The model card names architecture {self.architecture!r:.60}, which this Dopamine does not know "
                f"({', '.join(MODEL_NAMES)}); update the app."
            )
        if (
            not isinstance(self.classes, list)
            or not 2 <= len(self.classes) <= 1000
            or not all(isinstance(c, str) and 0 < len(c) <= 200 for c in self.classes)
            or len(set(self.classes)) != len(self.classes)
        ):
            raise bad("classes", "a list of 2 to 1000 distinct class names")
        if not isinstance(self.preprocessing, dict) or not all(isinstance(k, str) for k in self.preprocessing):
            raise bad("preprocessing", "an object")
        if self.mode not in MODES:
            raise bad("mode", f"one of {', '.join(MODES)}")
        if not _optional_number(self.epsilon, minimum=0):
            raise bad("epsilon", "a finite number >= 0 or null")
        if self.delta is not None and not (_is_number(self.delta) and 0 < self.delta < 1):
            raise bad("delta", "a number between 0 and 1 or null")
        if self.accountant is not None and self.accountant not in ("rdp", "prv"):
            raise bad("accountant", "'rdp', 'prv' or null")
        if not _optional_number(self.noise_multiplier, minimum=0):
            raise bad("noise_multiplier", "a number >= 0 or null")
        if self.sample_rate is not None and not (_is_number(self.sample_rate) and 0 <= self.sample_rate <= 1):
            raise bad("sample_rate", "a number between 0 and 1 or null")
        if self.max_grad_norm is not None and not (_is_number(self.max_grad_norm) and self.max_grad_norm > 0):
            raise bad("max_grad_norm", "a positive number or null")
        for name in ("steps", "rounds", "hospitals"):
            value = getattr(self, name)
            if value is not None and not (_is_int(value) and value >= 0):
                raise bad(name, "a whole number >= 0 or null")
        if self.mode in DP_MODES and (self.epsilon is None or self.delta is None or self.accountant is None):
            raise ModelPackageError(
                f"A model trained with differential privacy (mode {self.mode}) must state epsilon, delta "
                "and the accountant in its card."
            )
        if not isinstance(self.image_counts, dict) or not all(
            isinstance(k, str) and _is_int(v) and v >= 0 for k, v in self.image_counts.items()
        ):
            raise bad("image_counts", "an object of whole numbers >= 0")
        if not isinstance(self.metrics, dict):
            raise bad("metrics", "an object")
        if not isinstance(self.created, str) or not _is_iso_time(self.created):
            raise bad("created", "an ISO 8601 date and time")
        if not isinstance(self.software_version, str) or len(self.software_version) > 100:
            raise bad("software_version", "a short text")
        if not isinstance(self.description, str) or len(self.description) > 10_000:
            raise bad("description", "a text of at most 10,000 characters")


@dataclass
class ModelPackage:
    """A read package. ``signature_ok`` says only that the signature verifies against the key inside the
    package, which anyone can make: whether that key is trusted is a separate fact (``signer_trusted``
    when ``read_package`` was given trusted keys; core.models.trust.signer_status otherwise)."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    card: ModelCard
    signature_ok: bool
    signer_fingerprint: str
    sha256: str
    signer_public_key: bytes = field(default=b"", repr=False)
    signer_trusted: bool | None = None
    """Among ``read_package``'s ``trusted_keys`` (never for a signature that does not verify); None when
    no trusted keys were given."""


def signed_message(weights: bytes, card: bytes) -> bytes:
    """What the package signature covers: both members, by digest, with a domain prefix."""
    return SIGNED_MESSAGE_PREFIX + hashlib.sha256(weights).digest() + hashlib.sha256(card).digest()


def write_package(
    path: Path, state_dict: Mapping[str, torch.Tensor], card: ModelCard, signing_key
) -> str:
    """Write a signed .dpm atomically and return the SHA-256 (hex) of the file.

    The weights must fit ``card.architecture`` with ``len(card.classes)`` outputs, so that every
    package written can be loaded.
    """
    from safetensors.torch import save

    from core.models.registry import check_weights

    path = Path(path)
    card = ModelCard.from_dict(card.to_dict())
    try:
        check_weights(_empty_model(card), state_dict, source=f"The weights for {path.name}")
    except ModelError as exc:
        raise ModelPackageError(str(exc)) from exc
    tensors = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in state_dict.items()}
    return _write_signed(path, save(tensors), card, signing_key)


def write_package_arrays(
    path: Path, arrays: Mapping[str, np.ndarray], card: ModelCard, signing_key, *, shapes: Mapping[str, tuple]
) -> str:
    """write_package from float32 numpy arrays, without torch (the coordinator's serving process).

    ``shapes`` (name -> shape) are the architecture's, as a model built from it has them: the arrays must
    be exactly those, finite float32, so that the package loads wherever write_package's would.
    """
    from safetensors.numpy import save

    path = Path(path)
    card = ModelCard.from_dict(card.to_dict())
    if set(arrays) != set(shapes):
        raise ModelPackageError(f"The weights for {path.name} do not fit {card.architecture} "
                                f"(names differ: {sorted(set(arrays) ^ set(shapes))[:3]}).")
    for name, array in arrays.items():
        if array.dtype != np.float32 or tuple(array.shape) != tuple(shapes[name]) or not np.isfinite(array).all():
            raise ModelPackageError(f"The weights for {path.name}: tensor {name} must be finite float32 of shape "
                                    f"{tuple(shapes[name])}.")
    return _write_signed(path, save({k: np.ascontiguousarray(v) for k, v in arrays.items()}), card, signing_key)


def _write_signed(path: Path, weights: bytes, card: ModelCard, signing_key) -> str:
    try:
        card_bytes = (json.dumps(card.to_dict(), sort_keys=True, indent=2, allow_nan=False) + "\n").encode()
    except (TypeError, ValueError) as exc:
        raise ModelPackageError(f"The model card cannot be saved as JSON ({exc}); use plain numbers and text.") from exc
    signature = {
        "algorithm": SIGNATURE_ALGORITHM,
        "public_key": base64.b64encode(public_key_bytes(signing_key)).decode(),
        "signature": base64.b64encode(sign(signing_key, signed_message(weights, card_bytes))).decode(),
        # Not needed for verification; they let a failed check say which member changed.
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "card_sha256": hashlib.sha256(card_bytes).hexdigest(),
    }
    signature_bytes = (json.dumps(signature, indent=2) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data, method in (
            (WEIGHTS, weights, zipfile.ZIP_STORED),
            (CARD, card_bytes, zipfile.ZIP_DEFLATED),
            (SIGNATURE, signature_bytes, zipfile.ZIP_DEFLATED),
        ):
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = method
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    data = buffer.getvalue()
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def read_package(
    path: Path, *, require_signature: bool = True, trusted_keys: Iterable[bytes] | None = None
) -> ModelPackage:
    """Read and verify a .dpm against the key inside it.

    SignatureError (naming the file and, when it can tell, the changed member) if the signature
    does not verify or, with ``trusted_keys``, the signer is not among them -- unless
    ``require_signature`` is False, which reports ``signature_ok=False`` (does not verify) or
    ``signer_trusted=False`` (verifies, unknown signer) instead: two separate facts.
    ModelPackageError for anything malformed.
    """
    path = Path(path)
    name = path.name
    data = _read_file(path)
    members = _read_members(data, name)
    card_bytes, weights = members[CARD], members[WEIGHTS]

    ok, problem, signer = _check_signature(members, name)
    trusted = None if trusted_keys is None else ok and signer in {bytes(k) for k in trusted_keys}
    if require_signature and not ok:
        raise SignatureError(problem)
    if require_signature and trusted is False:
        raise SignatureError(
            f"{name}: signed by an unknown key {fingerprint(signer)}; use it only if its sender "
            "confirms this fingerprint, then add the key to the trusted keys."
        )

    card = ModelCard.from_dict(_parse_json(card_bytes, name, CARD))
    state_dict = _parse_weights(weights, name)
    from core.models.registry import check_weights

    try:
        check_weights(_empty_model(card), state_dict, source=f"{name}: {WEIGHTS}")
    except ModelError as exc:
        raise ModelPackageError(str(exc)) from exc
    return ModelPackage(
        path=path,
        state_dict=state_dict,
        card=card,
        signature_ok=ok,
        signer_fingerprint=fingerprint(signer) if signer else "",
        sha256=hashlib.sha256(data).hexdigest(),
        signer_public_key=signer,
        signer_trusted=trusted,
    )


def load_model(package: ModelPackage) -> nn.Module:
    """The packaged model, weights loaded, in eval mode."""
    from core.models.registry import build_model, load_weights

    card = package.card
    model = build_model(card.architecture, len(card.classes))
    try:
        load_weights(model, package.state_dict, source=f"{Path(package.path).name}: {WEIGHTS}")
    except ModelError as exc:
        raise ModelPackageError(str(exc)) from exc
    return model.eval()


def _empty_model(card: ModelCard) -> nn.Module:
    return _reference_model(card.architecture, len(card.classes))


@functools.lru_cache(maxsize=8)
def _reference_model(architecture: str, num_classes: int) -> nn.Module:
    # Only its tensor names and shapes are read (check_weights), never its values.
    from core.models.registry import build_model

    return build_model(architecture, num_classes)


def _read_file(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_PACKAGE_BYTES:
            raise ModelPackageError(
                f"{path.name} is {size / 2**20:.0f} MiB, larger than any Dopamine model package "
                f"({MAX_PACKAGE_BYTES / 2**20:.0f} MiB); it is not a model package."
            )
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ModelPackageError(f"The model file {path} does not exist.") from exc
    except IsADirectoryError as exc:
        raise ModelPackageError(f"{path} is a folder, not a model file.") from exc
    except OSError as exc:
        raise ModelPackageError(f"Cannot read the model file {path}: {exc.strerror or exc}.") from exc


def _read_members(data: bytes, name: str) -> dict[str, bytes]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise ModelPackageError(f"{name} is not a Dopamine model package (not a valid zip file).") from exc
    with archive:
        infos = archive.infolist()
        found = sorted(info.filename for info in infos)
        if found != sorted(MEMBERS):
            raise ModelPackageError(
                f"{name} is not a Dopamine model package: it must hold exactly {', '.join(MEMBERS)} "
                f"(it holds {', '.join(found[:6]) or 'nothing'}{' ...' if len(found) > 6 else ''})."
            )
        members = {}
        for info in infos:
            limit = MAX_MEMBER_BYTES[info.filename]
            if info.file_size > limit:
                raise ModelPackageError(
                    f"{name}: {info.filename} would unpack to {info.file_size:,} bytes, more than the "
                    f"{limit:,} allowed; the file is not a genuine model package."
                )
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise ModelPackageError(f"{name}: {info.filename} uses an unsupported zip compression.")
            try:
                with archive.open(info) as member:
                    # zipfile stops at the declared size, so ``limit + 1`` bytes can never be exceeded.
                    content = member.read(limit + 1)
            except zipfile.BadZipFile as exc:
                if "CRC" in str(exc):
                    raise SignatureError(
                        f"{name}: {info.filename} was changed or damaged after the package was written "
                        "(checksum mismatch); do not use this model, get a fresh copy from its sender."
                    ) from exc
                raise ModelPackageError(f"{name}: {info.filename} cannot be unpacked ({exc}).") from exc
            except (RuntimeError, NotImplementedError, OSError, EOFError, ValueError, zlib.error) as exc:
                # zlib.error: a damaged deflate stream (it is none of the others)
                raise ModelPackageError(f"{name}: {info.filename} cannot be unpacked ({exc}); get a fresh copy "
                                        "from its sender.") from exc
            if len(content) > limit:
                raise ModelPackageError(f"{name}: {info.filename} is larger than the {limit:,} bytes allowed.")
            members[info.filename] = content
    return members


def _check_signature(members: dict[str, bytes], name: str) -> tuple[bool, str, bytes]:
    """(verifies against the key inside, problem to report, signer's raw public key or b"")."""
    try:
        record = _parse_json(members[SIGNATURE], name, SIGNATURE)
        if not isinstance(record, dict) or record.get("algorithm") != SIGNATURE_ALGORITHM:
            raise ValueError("unknown signature algorithm")
        public_key = base64.b64decode(record["public_key"], validate=True)
        signature = base64.b64decode(record["signature"], validate=True)
        if len(public_key) != 32 or len(signature) != 64:
            raise ValueError("wrong key or signature length")
    except (ModelPackageError, KeyError, TypeError, ValueError, binascii.Error):
        return False, (
            f"{name}: {SIGNATURE} is missing its Ed25519 signature or is damaged; "
            "do not use this model, get a fresh copy from its sender."
        ), b""

    if not verify(public_key, signature, signed_message(members[WEIGHTS], members[CARD])):
        changed = [
            member
            for member, key in ((WEIGHTS, "weights_sha256"), (CARD, "card_sha256"))
            if record.get(key) != hashlib.sha256(members[member]).hexdigest()
        ]
        what = " and ".join(changed) + (" was" if len(changed) == 1 else " were") if changed else "its contents were"
        return False, (
            f"{name}: the signature does not match - {what} changed after the package was signed; "
            "do not use this model, get a fresh copy from its sender."
        ), public_key
    return True, "", public_key


def _parse_json(data: bytes, name: str, member: str) -> Any:
    def no_constants(value: str) -> Any:
        raise ValueError(f"{value} is not allowed")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate keys")
        return dict(pairs)

    try:
        return json.loads(data.decode("utf-8"), parse_constant=no_constants, object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelPackageError(f"{name}: {member} is not valid JSON ({exc}).") from exc


def _parse_weights(data: bytes, name: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError, TypeError) as exc:
        raise ModelPackageError(f"{name}: {WEIGHTS} is not a valid safetensors file ({exc}).") from exc
    return tensors


def _is_number(value: object) -> TypeGuard[float]:  # card values come from JSON: int or float
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _optional_number(value: object, *, minimum: float) -> bool:
    return value is None or (_is_number(value) and math.isfinite(value) and value >= minimum)


def _is_iso_time(value: str) -> bool:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True

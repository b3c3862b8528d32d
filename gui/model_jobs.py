"""Worker-thread jobs about model packages: listing them with their cards and signatures, and the
hospital's trusted signers (core.models.trust) that say whose signature counts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.jobs import NEVER_CANCELLED, CancelToken, ProgressFn, no_progress

if TYPE_CHECKING:  # pragma: no cover
    from core.home import HospitalHome
    from core.models.trust import TrustedSigner, TrustStore

# What the three signature states look like wherever a model is listed.
SIGNATURE_COLORS = {"trusted": "ok", "unknown signer": "warn", "invalid": "bad"}


# core.models.trust.ADDED_BY_USER: the UI thread must not import core.models (it loads torch).
ADDED_BY_USER = "added by user"


def home_of(context: Any) -> HospitalHome:
    """The hospital home the app works in (the Settings' folder); cheap, safe on the UI thread."""
    from core.home import HospitalHome

    home = getattr(context, "home", None)
    return home if isinstance(home, HospitalHome) else HospitalHome.at(context.work_folder)


def trust_store(home: HospitalHome) -> TrustStore:
    from core.models.trust import TrustStore

    return TrustStore(home)


def list_signers(home: HospitalHome) -> list[TrustedSigner]:
    return trust_store(home).list()


def add_signer(home: HospitalHome, public_key: bytes, name: str, source: str) -> TrustedSigner:
    return trust_store(home).add(public_key, name, source)


def remove_signer(home: HospitalHome, fingerprint: str) -> TrustedSigner:
    return trust_store(home).remove(fingerprint)


def open_for_viewer(path: Path, home: HospitalHome, *, allow_unverified: bool = False):
    """core.inference.open_model with the home's trusted signers (a worker job)."""
    from core.inference import open_model

    return open_model(path, allow_unverified=allow_unverified, trust=trust_store(home))


def check_signer(package: Any, home: HospitalHome):
    """What ``package``'s signature is worth now (after the trusted signers changed); a worker job."""
    from core.models.trust import signer_status

    return signer_status(package, trust_store(home))


@dataclass
class ModelEntry:
    path: Path
    source: str  # "trained here" | "from a federation" | "added"
    card: Any = None  # core.models.package.ModelCard, None when unreadable
    signature_ok: bool = False  # the signature verifies against the key inside the file
    signer: str = ""  # who signed it, in words ("signed by an unknown key" when nobody trusted)
    signer_fingerprint: str = ""
    error: str = ""  # why the file could not be read
    signer_trusted: bool = False  # the signer is one this hospital trusts: only then do the card's claims count
    assessment: Any = None  # core.inference.assessment.ModelAssessment: validated, not validated or baseline

    @property
    def level(self) -> str:
        """"trusted", "unknown signer", "invalid" or "unreadable"."""
        if self.error:
            return "unreadable"
        if not self.signature_ok:
            return "invalid"
        return "trusted" if self.signer_trusted else "unknown signer"

    @property
    def signature_text(self) -> str:
        if self.error:
            return "unreadable"
        if not self.signature_ok:
            return "NOT VALID (changed or damaged)"
        if not self.signer_trusted:
            return "valid signature, UNKNOWN SIGNER: claims unverified"
        return f"valid — {self.signer}"


def scan_models(folders: list[tuple[Path, str]], *, trusted: Mapping[bytes, TrustedSigner] | None = None,
                progress: ProgressFn = no_progress, cancel: CancelToken = NEVER_CANCELLED) -> list[ModelEntry]:
    """Every .dpm under each (folder, source); signatures checked against ``trusted`` signers
    (TrustStore.trusted_keys()), unreadable files kept with a reason."""
    from core.errors import DopamineError
    from core.inference.assessment import assess
    from core.models.package import read_package
    from core.models.trust import signer_status

    trusted = trusted or {}
    # Folders may nest (models/imported inside models/): a file is listed once, under the first folder.
    paths: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    for folder, source in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*.dpm")):
            if path.is_file() and path.resolve() not in seen:
                seen.add(path.resolve())
                paths.append((path, source))
    entries = []
    for index, (path, source) in enumerate(paths):
        cancel.check()
        progress(index / max(1, len(paths)), f"Reading {path.name}")
        try:
            package = read_package(path, require_signature=False)
        except DopamineError as exc:
            entries.append(ModelEntry(path, source, error=str(exc)))
            continue
        status = signer_status(package, trusted)
        signer = f"signed by {status.signer_described}" if status.signer_trusted else "signed by an unknown key"
        entries.append(ModelEntry(path, source, package.card, status.signature_valid, signer,
                                  status.signer_fingerprint, signer_trusted=status.signer_trusted,
                                  assessment=assess(package.card)))
    entries.sort(key=lambda e: e.card.created if e.card is not None else "", reverse=True)
    return entries


def scan_with_trust(folders: list[tuple[Path, str]], home: HospitalHome, *, progress: ProgressFn = no_progress,
                    cancel: CancelToken = NEVER_CANCELLED) -> list[ModelEntry]:
    """scan_models with the home's trusted signers, read once, on the worker."""
    return scan_models(folders, trusted=trust_store(home).trusted_keys(), progress=progress, cancel=cancel)


@dataclass(frozen=True)
class SignerToAdd:
    """The key that signed a model file, read and checked on a worker before the user names it."""

    path: Path
    public_key: bytes
    fingerprint: str
    already: TrustedSigner | None  # trusted already, as this


def read_signer(path: Path, home: HospitalHome) -> SignerToAdd:
    """The signer of ``path``; SignatureError when its signature does not verify (then nobody is known)."""
    from core.models.package import read_package

    package = read_package(Path(path), require_signature=True)
    return SignerToAdd(Path(path), package.signer_public_key, package.signer_fingerprint,
                       trust_store(home).trusted_keys().get(package.signer_public_key))

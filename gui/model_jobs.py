"""Worker-thread job listing the model packages on this computer with their cards and signatures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.jobs import NEVER_CANCELLED, CancelToken, ProgressFn, no_progress


@dataclass
class ModelEntry:
    path: Path
    source: str  # "trained here" | "from a federation" | "added"
    card: Any = None  # core.models.package.ModelCard, None when unreadable
    signature_ok: bool = False
    signer: str = ""  # who signed it, in words
    signer_fingerprint: str = ""
    error: str = ""  # why the file could not be read

    @property
    def signature_text(self) -> str:
        if self.error:
            return "unreadable"
        if not self.signature_ok:
            return "NOT VALID (changed or damaged)"
        return f"valid — {self.signer}"


def known_signers(identity_key: Path, coordinator_keys: dict[str, bytes]) -> dict[str, str]:
    """Fingerprint -> who it is, for this hospital's key and each federation coordinator's key."""
    from core.signing import fingerprint, load_private_key, public_key_bytes

    names: dict[str, str] = {}
    if identity_key.exists():
        try:
            names[fingerprint(public_key_bytes(load_private_key(identity_key)))] = "signed by this hospital"
        except Exception:  # noqa: BLE001 -- an unreadable key only means its models show as unknown
            pass
    for federation, key in coordinator_keys.items():
        names[fingerprint(key)] = f"signed by the coordinator of {federation}"
    return names


def scan_models(folders: list[tuple[Path, str]], *, identity_key: Path,
                coordinator_keys: dict[str, bytes] | None = None,
                progress: ProgressFn = no_progress, cancel: CancelToken = NEVER_CANCELLED) -> list[ModelEntry]:
    """Every .dpm under each (folder, source); signatures checked, unreadable files kept with a reason."""
    from core.errors import DopamineError
    from core.models.package import read_package

    signers = known_signers(identity_key, coordinator_keys or {})
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
        fp = package.signer_fingerprint
        entries.append(ModelEntry(path, source, package.card, bool(package.signature_ok),
                                  signers.get(fp, "signed by an unknown key"), fp))
    entries.sort(key=lambda e: e.card.created if e.card is not None else "", reverse=True)
    return entries

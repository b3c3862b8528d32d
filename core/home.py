"""The hospital home: one folder per hospital for everything it keeps about its own privacy.

    HOME/privacy-ledger.sqlite      the one privacy ledger (core.privacy.ledger): every epsilon spent
    HOME/audit.jsonl                the one signed, hash-chained log of everything that left (core.audit)
    HOME/identity/hospital-ed25519.pem   the hospital's long-term Ed25519 key (0600): signs local models,
                                    federation requests, roster confirmations and the audit log
    HOME/trusted-keys.json          model signers the user added by hand (core.models.trust)
    HOME/network.toml               how it reaches coordinators: an explicit HTTPS proxy, the dead-link
                                    timeout (core.federation.network)
    HOME/runs/                      local training runs (logs)
    HOME/models/                    models trained here
    HOME/federations/<name>-<federation id>-<hospital id>/   one folder per federation joined
    HOME/coordinators/<name>-<federation id>/   one folder per federation this site hosts (the lead site's
                                    coordinator: plan, CA, state, models; core.federation.layout)
    HOME/comparisons/<settings hash>/   mode comparisons run from the app (`dopamine compare` output)
    HOME/cache/images/              decoded, resized copies of the hospital's images (safe to delete)

The default is the platform's per-user data folder (``core.paths.data_dir()``, which DOPAMINE_HOME
moves for tests and portable installs); every hospital command takes ``--home DIR`` and the app's
Settings point at the same kind of folder, so the CLI and the app spend one ledger.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


# The image cache's layout (core.data.cache): HOME/cache/images/<2 hex digits>/<sha256>.npy (one decoded
# image each) and HOME/cache/images/stacks/<sha256>.stack (one large collection each), written via hidden
# temp files. Measuring and clearing it lives here, away from torch, so the app can do both without
# importing the training stack.
_CACHE_ENTRY_SUFFIX = ".npy"
_STACKS = "stacks"
_STACK_SUFFIX = ".stack"


def _safe(text: str, limit: int = 40) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:limit]


@dataclass(frozen=True)
class HospitalHome:
    root: Path

    @classmethod
    def at(cls, root: Path | str | None = None) -> HospitalHome:
        """The home at ``root``, or the default one (platformdirs, or DOPAMINE_HOME/data)."""
        from core.paths import data_dir

        return cls(Path(root).expanduser() if root else data_dir())

    @property
    def ledger(self) -> Path:
        return self.root / "privacy-ledger.sqlite"

    @property
    def audit_log(self) -> Path:
        return self.root / "audit.jsonl"

    @property
    def identity_key(self) -> Path:
        return self.root / "identity" / "hospital-ed25519.pem"

    @property
    def trusted_keys(self) -> Path:
        return self.root / "trusted-keys.json"

    @property
    def network_settings(self) -> Path:
        return self.root / "network.toml"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def federations(self) -> Path:
        return self.root / "federations"

    @property
    def coordinators(self) -> Path:
        """The federations this site hosts as their coordinator, one folder each (``coordinator_dir``)."""
        return self.root / "coordinators"

    @property
    def comparisons(self) -> Path:
        """What `dopamine compare` runs from the app keep: one folder per set of settings."""
        return self.root / "comparisons"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def image_cache(self) -> Path:
        return self.cache / "images"

    def federation_dir(self, federation_name: str, federation_id: str, hospital_id: str) -> Path:
        """This hospital's folder for one federation (state, CA, received models, pending uploads)."""
        return self.federations / f"{_safe(federation_name)}-{federation_id}-{hospital_id}"

    def coordinator_dir(self, federation_name: str, federation_id: str) -> Path:
        """The folder of a federation this site hosts: what ``dopamine coordinator init`` writes and ``serve`` reads."""
        return self.coordinators / f"{_safe(federation_name)}-{federation_id}"

    def ensure(self) -> HospitalHome:
        """Create the folder (owner-only: it holds the ledger and the identity key)."""
        existed = self.root.exists()
        self.root.mkdir(parents=True, exist_ok=True)
        if not existed:
            os.chmod(self.root, 0o700)
        return self

    def identity(self) -> Ed25519PrivateKey:
        """The hospital's identity key, created on first use."""
        from core.signing import load_or_create_private_key

        self.ensure()
        return load_or_create_private_key(self.identity_key)

    def image_cache_usage(self) -> tuple[int, int]:
        """(decoded images, bytes) in this home's image cache."""
        return image_cache_usage(self.image_cache)

    def clear_image_cache(self) -> int:
        """Delete this home's cached decoded images; returns the bytes freed."""
        return clear_image_cache(self.image_cache)


def _cache_files(folder: Path) -> list[Path]:
    """The cache's own files (entries and leftover temp files), nothing else that may share the folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found: list[Path] = []
    for sub in folder.iterdir():
        if len(sub.name) == 2 and sub.is_dir() and not sub.is_symlink():
            found += [p for p in sub.iterdir()
                      if p.is_file() and (p.suffix == _CACHE_ENTRY_SUFFIX or p.name.endswith(".tmp"))]
        elif sub.name == _STACKS and sub.is_dir() and not sub.is_symlink():
            found += [p for p in sub.iterdir()
                      if p.is_file() and (p.suffix == _STACK_SUFFIX or p.name.endswith(".tmp"))]
    return found


def image_cache_usage(folder: Path) -> tuple[int, int]:
    """(decoded images, bytes) of the image cache in ``folder``; walks the folder, so call it off the GUI
    thread. The images count the per-image entries; the bytes include the stacks of large collections."""
    entries = size = 0
    for path in _cache_files(folder):
        try:
            size += path.stat().st_size
        except OSError:
            continue  # removed meanwhile
        entries += path.suffix == _CACHE_ENTRY_SUFFIX
    return entries, size


def clear_image_cache(folder: Path) -> int:
    """Delete every cached image in ``folder`` (they are rebuilt from the images when needed); returns how
    many bytes were freed. Only the cache's own files are removed."""
    from core.errors import DataError

    freed = 0
    for path in _cache_files(folder):
        try:
            size = path.stat().st_size
            path.unlink()
            freed += size
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise DataError(f"Could not delete {path} from the image cache ({exc.strerror or exc}); "
                            "close other Dopamine windows and try again.") from exc
    folder = Path(folder)
    for sub in folder.iterdir() if folder.is_dir() else ():
        if (len(sub.name) == 2 or sub.name == _STACKS) and sub.is_dir() and not sub.is_symlink():
            try:
                sub.rmdir()
            except OSError:
                pass  # not empty: a run wrote a new entry meanwhile
    return freed

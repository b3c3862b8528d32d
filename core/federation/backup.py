"""``dopamine coordinator backup`` and ``restore``: a copy of a coordinator's folder that is safe to take
while it serves, and a restore that never reopens a round the federation already went past.

A backup is one .tar.gz (0600: it holds the CA key, the TLS key and the model-signing key) with a
manifest (the federation, where it was, a SHA-256 per file), the plan and settings, the keys, a
consistent snapshot of state.sqlite (SQLite's online backup: the coordinator keeps writing meanwhile)
and the published models up to the snapshot's round. Invitations are not in it: their tokens are
one-time and the state keeps only their hashes.

Restoring over a folder whose state is further on (a later finished round, or a later attempt of the
open one) is refused: the restored coordinator would open rounds hospitals already computed. Hospitals
refuse such rounds too, but a restore that brings them about is a broken federation; restoring where
the folder is lost relies on that second line alone, and says so.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import re
import shutil
import sqlite3
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from core.errors import FederationError
from core.federation.layout import FederationPaths
from core.federation.plan import load_plan

BACKUP_FORMAT = "dopamine-coordinator-backup"
BACKUP_VERSION = 1
MAX_MANIFEST_BYTES = 1024 * 1024
_FIXED = ("plan.toml", "coordinator.toml", "signing.key", "tls/ca.pem", "tls/ca.key", "tls/server.pem",
          "tls/server.key")
_SECRET = {"signing.key", "tls/ca.key", "tls/server.key", "state.sqlite"}
_MODEL = re.compile(r"^models/(global|server)-r(\d{4,})\.(dpm|safetensors)$")


@dataclass(frozen=True)
class BackupInfo:
    path: Path
    federation_id: str
    name: str
    model_round: int  # rounds finished when the snapshot was taken
    round: int  # the round open then (0 before the first)
    attempt: int
    status: str
    created: str
    files: int
    size: int

    def describe(self) -> str:
        where = (f"after round {self.model_round}" if self.status != "running"
                 else f"round {self.round} attempt {self.attempt} open, {self.model_round} finished")
        return f"{self.name} ({self.federation_id}), {self.status}, {where}, taken {self.created}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _meta(database: Path) -> dict:
    db = sqlite3.connect(database)
    try:
        return {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM meta")}
    finally:
        db.close()


def _snapshot(source: Path, target: Path) -> dict:
    """A consistent copy of the live SQLite file (one file, no WAL) and its meta."""
    src = sqlite3.connect(source, timeout=30)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")
        if dst.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
            raise FederationError(f"The coordinator state {source} fails SQLite's integrity check; restore an earlier backup.")
    finally:
        dst.close()
        src.close()
    return _meta(target)


def backup(folder: Path, out: Path | None = None) -> BackupInfo:
    """Write a backup of the coordinator folder ``folder`` (safe while it serves); returns what it holds."""
    paths = FederationPaths(Path(folder))
    if not paths.plan.exists() or not paths.state.exists():
        raise FederationError(f"{folder} is not a federation folder; nothing to back up.")
    plan = load_plan(paths.plan)
    for name in _FIXED:
        if not (paths.root / name).is_file():
            raise FederationError(f"{paths.root / name} is missing; the federation folder is incomplete.")
    staging = Path(tempfile.mkdtemp(prefix=".backup-", dir=paths.root))
    try:
        for _ in range(3):
            meta = _snapshot(paths.state, staging / "state.sqlite")
            model_round = int(meta.get("model_round", 0))
            models = sorted(p for p in paths.models.glob("*-r*.*")
                            if (m := _MODEL.match(f"models/{p.name}")) is not None and int(m.group(2)) <= model_round)
            # The optimizer state of the snapshot's round is what a restored coordinator starts from; a
            # coordinator that raced ahead and pruned it since the snapshot means: take the snapshot again.
            if model_round == 0 or paths.server_state(model_round) in models:
                break
        else:
            raise FederationError("The coordinator moved on faster than the backup could copy; try again.")
        created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        members = {name: paths.root / name for name in _FIXED}
        members["state.sqlite"] = staging / "state.sqlite"
        for path in models:
            members[f"models/{path.name}"] = path
        manifest = {"format": BACKUP_FORMAT, "version": BACKUP_VERSION, "federation_id": plan.federation_id,
                    "name": plan.name, "created": created, "model_round": model_round,
                    "round": int(meta.get("round", 0)), "attempt": int(meta.get("attempt", 0)),
                    "status": str(meta.get("status", "")),
                    "files": {name: _sha256(path) for name, path in members.items()}}
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = Path(out) if out is not None else paths.root.parent / f"{paths.root.name}-r{model_round:04d}-{stamp}.backup.tar.gz"
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(f".{out.name}.partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle, tarfile.open(fileobj=handle, mode="w:gz") as archive:
                data = json.dumps(manifest, indent=1).encode()
                entry = tarfile.TarInfo("manifest.json")
                entry.size, entry.mode, entry.mtime = len(data), 0o600, int(time.time())
                archive.addfile(entry, io.BytesIO(data))
                for name, path in members.items():
                    archive.add(path, arcname=name, recursive=False)
            os.replace(partial, out)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return _info(out, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _info(path: Path, manifest: dict) -> BackupInfo:
    return BackupInfo(path=Path(path), federation_id=str(manifest["federation_id"]), name=str(manifest["name"]),
                      model_round=int(manifest["model_round"]), round=int(manifest["round"]),
                      attempt=int(manifest["attempt"]), status=str(manifest["status"]),
                      created=str(manifest["created"]), files=len(manifest["files"]),
                      size=Path(path).stat().st_size)


def _allowed(name: str) -> bool:
    return name in _FIXED or name == "state.sqlite" or _MODEL.match(name) is not None


def read_backup(path: Path) -> tuple[BackupInfo, dict]:
    """The manifest of a backup file, checked (FederationError when it is not a usable backup)."""
    bad = f"{Path(path).name} is not a usable Dopamine coordinator backup"
    try:
        with tarfile.open(path, mode="r:gz") as archive:
            member = archive.getmember("manifest.json")
            if not member.isfile() or member.size > MAX_MANIFEST_BYTES:
                raise FederationError(f"{bad} (its manifest is damaged).")
            manifest = json.loads(archive.extractfile(member).read())  # type: ignore[union-attr]
    except FileNotFoundError as exc:
        raise FederationError(f"Backup file {path} does not exist.") from exc
    except (OSError, KeyError, tarfile.TarError, ValueError) as exc:
        raise FederationError(f"{bad} ({type(exc).__name__}).") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != BACKUP_FORMAT:
        raise FederationError(f"{bad} (wrong format).")
    if manifest.get("version") != BACKUP_VERSION:
        raise FederationError(f"{bad} (version {manifest.get('version')!r}); update Dopamine.")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(k, str) and _allowed(k) for k in files) \
            or not set(_FIXED) | {"state.sqlite"} <= set(files):
        raise FederationError(f"{bad} (unexpected or missing files).")
    try:
        return _info(Path(path), manifest), manifest
    except (KeyError, TypeError, ValueError) as exc:
        raise FederationError(f"{bad} (missing {exc}).") from exc


def _progress(meta: dict) -> tuple[int, int, int]:
    return int(meta.get("model_round", 0)), int(meta.get("round", 0)), int(meta.get("attempt", 0))


def _refuse_if_ahead(paths: FederationPaths, info: BackupInfo) -> None:
    """Refuse a restore that would take this folder's federation back to a round it already went past."""
    later = [int(m.group(2)) for p in paths.models.glob("global-r*.dpm")
             if (m := _MODEL.match(f"models/{p.name}")) is not None]
    if later and max(later) > info.model_round:
        raise FederationError(
            f"{paths.root} already published the model of round {max(later)}; this backup is from round "
            f"{info.model_round}. Restoring it would reopen finished rounds (hospitals refuse those): not restoring.")
    if not paths.state.exists():
        return
    try:
        meta = _meta(paths.state)
    except sqlite3.DatabaseError:
        return  # a damaged state is what a restore is for; the models above are the evidence left
    if meta.get("federation_id") and meta["federation_id"] != info.federation_id:
        raise FederationError(f"{paths.root} holds another federation ({meta['federation_id']}); restore into "
                              "its own folder or an empty one.")
    if _progress(meta) > (info.model_round, info.round, info.attempt):
        current = _progress(meta)
        raise FederationError(
            f"{paths.root} is further on (round {current[0]} finished, round {current[1]} attempt {current[2]}) "
            f"than this backup (round {info.model_round} finished, round {info.round} attempt {info.attempt}). "
            "Restoring it would reopen rounds hospitals already took part in: not restoring.")


def restore(archive_path: Path, folder: Path) -> tuple[BackupInfo, Path | None]:
    """Restore a backup into ``folder`` (its coordinator must be stopped). Returns the backup's info and
    where the folder's previous content was moved (None when there was none)."""
    from core.federation.service import CoordinatorService

    info, manifest = read_backup(archive_path)
    folder = Path(folder)
    paths = FederationPaths(folder)
    existing = folder.exists() and any(folder.iterdir())
    if existing:
        if paths.plan.exists() and CoordinatorService(folder).state().running:
            raise FederationError(f"The coordinator of {folder} is running; stop it before restoring.")
        _refuse_if_ahead(paths, info)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.restore-", dir=folder.parent))
    try:
        with tarfile.open(archive_path, mode="r:gz") as archive:
            for member in archive.getmembers():
                if member.name == "manifest.json":
                    continue
                if member.name not in manifest["files"] or not member.isfile():
                    raise FederationError(f"{Path(archive_path).name} holds an unexpected entry {member.name!r}; not restoring.")
                target = staging / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                source = archive.extractfile(member)
                assert source is not None
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                             0o600 if member.name in _SECRET else 0o644)
                with os.fdopen(fd, "wb") as handle:
                    shutil.copyfileobj(source, handle)
        for name, digest in manifest["files"].items():
            path = staging / name
            if not path.is_file() or _sha256(path) != digest:
                raise FederationError(f"{name} in {Path(archive_path).name} is missing or damaged; not restoring.")
        if _meta(staging / "state.sqlite").get("federation_id") != info.federation_id:
            raise FederationError(f"The state in {Path(archive_path).name} belongs to another federation; not restoring.")
        moved = None
        if existing:
            moved = folder.with_name(f"{folder.name}.before-restore-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(folder, moved)
        elif folder.exists():
            folder.rmdir()
        os.replace(staging, folder)
        os.chmod(folder, 0o700)
        return info, moved
    finally:
        shutil.rmtree(staging, ignore_errors=True)

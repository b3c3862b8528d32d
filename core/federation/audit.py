"""The hospital's append-only, hash-chained log of everything it sent to the coordinator.

One JSON object per line. Each entry records when, which round and phase, what was sent, how many
bytes and their SHA-256, and is chained to the previous entry by hash, so an edit, a deletion or a
reordering anywhere breaks the chain at that line (``verify_audit_log``). An entry is written and
fsynced *before* its bytes are sent: a crash can leave an entry for a send that never happened,
never a send without an entry. Requests without a body (polls, downloads) carry no hospital data
and are not logged.

The GUI's Activity page reads ``read_audit_log(path)``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from core.errors import FederationError

GENESIS_HASH = "0" * 64
_FIELDS = ("seq", "time", "round", "phase", "what", "bytes", "sha256", "destination", "prev")


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    time: str  # ISO 8601 UTC
    round: int | None
    phase: str
    what: str
    bytes: int
    sha256: str  # of the exact bytes sent
    destination: str  # method and path on the coordinator
    prev: str  # hash of the previous entry (GENESIS_HASH for the first)
    hash: str

    def to_dict(self) -> dict:
        return asdict(self)


def _entry_hash(fields: dict) -> str:
    canonical = json.dumps({k: fields[k] for k in _FIELDS}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class AuditLog:
    """Appends entries to ``path`` (created 0600). Thread-safe; one writer process per file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._drop_torn_tail()
        self._seq, self._last_hash = self._tail()

    def _drop_torn_tail(self) -> None:
        """A crash mid-write leaves a partial last line; its send never happened, so it is cut off."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)
                handle.flush()
                os.fsync(handle.fileno())

    def _tail(self) -> tuple[int, str]:
        if not self.path.exists():
            return 0, GENESIS_HASH
        last = None
        with open(self.path, "rb") as handle:
            for line in handle:
                if line.strip():
                    last = line
        if last is None:
            return 0, GENESIS_HASH
        try:
            entry = json.loads(last)
            return int(entry["seq"]) + 1, str(entry["hash"])
        except (ValueError, KeyError, TypeError) as exc:
            raise FederationError(
                f"The audit log {self.path} is damaged at its last entry; run `dopamine audit verify` on the work folder."
            ) from exc

    def append(self, *, what: str, payload: bytes, round: int | None = None, phase: str = "",
               destination: str = "") -> AuditEntry:
        """Record that ``payload`` is about to be sent; durable (fsync) before this returns."""
        with self._lock:
            fields = {
                "seq": self._seq,
                "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                "round": round,
                "phase": phase,
                "what": what,
                "bytes": len(payload),
                "sha256": hashlib.sha256(payload).hexdigest(),
                "destination": destination,
                "prev": self._last_hash,
            }
            fields["hash"] = _entry_hash(fields)
            line = (json.dumps(fields, sort_keys=True) + "\n").encode()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._seq += 1
            self._last_hash = fields["hash"]
            return AuditEntry(**fields)


def read_audit_log(path: Path) -> list[AuditEntry]:
    """Every well-formed entry, in order (no chain check: see verify_audit_log)."""
    entries = []
    path = Path(path)
    if not path.exists():
        return entries
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                data = json.loads(line)
                entries.append(AuditEntry(**{k: data[k] for k in (*_FIELDS, "hash")}))
            except (ValueError, KeyError, TypeError):
                continue
    return entries


@dataclass(frozen=True)
class AuditVerification:
    ok: bool
    entries: int  # entries checked and valid before the first break
    total_bytes: int  # bytes sent according to the valid entries
    broken_at_line: int | None  # 1-based line number of the first bad entry
    reason: str

    def to_text(self) -> str:
        if self.ok:
            return f"Audit log intact: {self.entries} entries, {self.total_bytes} bytes sent in total."
        return f"Audit log BROKEN at line {self.broken_at_line}: {self.reason} ({self.entries} entries before it are intact)."


def verify_audit_log(path: Path) -> AuditVerification:
    """Check every entry's hash and its link to the previous one; report the first break."""
    path = Path(path)
    if not path.exists():
        raise FederationError(f"No audit log at {path}; pass the work folder used with `dopamine join`.")
    prev = GENESIS_HASH
    count = 0
    total = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            problem = _entry_problem(raw, count, prev)
            if problem:
                return AuditVerification(False, count, total, number, problem)
            data = json.loads(raw)
            prev = data["hash"]
            count += 1
            total += data["bytes"]
    return AuditVerification(True, count, total, None, "")


def _entry_problem(raw: bytes, seq: int, prev: str) -> str:
    """Why this line is not the valid entry number ``seq`` following ``prev`` ("" when it is)."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return "not valid JSON (a partial or edited line)"
    if not isinstance(data, dict) or any(k not in data for k in (*_FIELDS, "hash")):
        return "missing fields"
    if not isinstance(data["bytes"], int) or isinstance(data["bytes"], bool):
        return "byte count is not a whole number"
    if data["seq"] != seq:
        return f"sequence number {data['seq']!r}, expected {seq} (entry removed or reordered)"
    if data["prev"] != prev:
        return "does not link to the previous entry (entry removed, inserted or reordered)"
    if _entry_hash(data) != data["hash"]:
        return "its content does not match its hash (entry edited)"
    return ""

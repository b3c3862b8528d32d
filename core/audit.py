"""The hospital's signed, append-only log of everything that left it and every change to its privacy cap.

One log per hospital home (``HospitalHome.audit_log``), shared by the app, ``dopamine join`` and
``dopamine train``. One JSON object per line. Each entry records when, what kind ("sent": bytes that
left the hospital; "ledger": a change of the privacy cap), which federation, round and phase, the
ledger key of the release it belongs to, how many bytes and their SHA-256; it is chained to the previous
entry by hash, and the hash is signed with the hospital's Ed25519 identity key. So an edit, a deletion
or a reordering anywhere breaks the chain at that line, and whoever can write the file but does not
hold the key cannot rebuild a valid chain after an edit (``verify_audit_log`` with the public key).

An entry is written and fsynced *before* its bytes are sent: a crash can leave an entry for a send that
never happened, never a send without an entry. Several processes may append at once: each append takes
an exclusive ``flock`` on the file and reads the sequence number and previous hash from the file's last
line under that lock, never from memory. Requests without a body (polls, downloads) carry no hospital
data and are not logged.

What the log cannot show: entries cut off its *end* by someone who can write the file (the remaining
chain is still valid). ``check_ledger_not_behind`` covers the reverse case, a privacy ledger restored
from an older backup than the log.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import AuditLogError, LedgerError

if TYPE_CHECKING:  # pragma: no cover
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from core.privacy.ledger import PrivacyLedger

GENESIS_HASH = "0" * 64
KINDS = ("sent", "ledger")
# Everything an entry's hash covers; "hash" and "signature" are derived from these.
_FIELDS = ("seq", "time", "kind", "federation", "round", "phase", "what", "bytes", "sha256", "destination",
           "ledger_key", "prev")
# Domain separation: an identity-key signature over an audit hash can never be mistaken for one over
# anything else the same key signs (models, requests, rosters).
_SIGNATURE_CONTEXT = b"dopamine-audit-entry-v2\x00"


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    time: str  # ISO 8601 UTC
    kind: str  # "sent" | "ledger"
    federation: str
    round: int | None
    phase: str
    what: str
    bytes: int
    sha256: str  # of the exact bytes sent (or of the change, for "ledger")
    destination: str  # method and path on the coordinator
    ledger_key: str  # the ledger charge this release belongs to ("" when none)
    prev: str  # hash of the previous entry (GENESIS_HASH for the first)
    hash: str
    signature: str  # hex Ed25519 signature of the hash by the hospital's identity key

    def to_dict(self) -> dict:
        return asdict(self)


def _entry_hash(fields: dict) -> str:
    canonical = json.dumps({k: fields[k] for k in _FIELDS}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _signed_message(entry_hash: str) -> bytes:
    return _SIGNATURE_CONTEXT + entry_hash.encode("ascii")


class AuditLog:
    """Appends signed entries to ``path`` (created 0600). Safe across threads and processes."""

    def __init__(self, path: Path, *, key: Ed25519PrivateKey) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        if not isinstance(key, Ed25519PrivateKey):
            raise AuditLogError("The audit log is signed with the hospital's Ed25519 identity key; pass that key.")
        self.path = Path(path)
        self._key = key
        self._lock = threading.Lock()

    def append(self, *, what: str, payload: bytes, round: int | None = None, phase: str = "",
               destination: str = "", federation: str = "", ledger_key: str = "",
               kind: str = "sent") -> AuditEntry:
        """Record that ``payload`` is about to leave (or, kind "ledger", that the cap changes); durable
        (fsync) before this returns."""
        if kind not in KINDS:
            raise AuditLogError(f"Audit entries are of kind {' or '.join(KINDS)}, not {kind!r}.")
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            except OSError as exc:
                raise AuditLogError(f"Cannot open the audit log {self.path} ({exc.strerror or exc}); "
                                    "check the hospital home folder's permissions.") from exc
            size = -1
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                _drop_torn_tail(fd)
                size = os.fstat(fd).st_size
                seq, prev = self._tail(fd)
                fields: dict[str, Any] = {
                    "seq": seq,
                    "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                    "kind": kind,
                    "federation": federation,
                    "round": round,
                    "phase": phase,
                    "what": what,
                    "bytes": len(payload),
                    "sha256": hashlib.sha256(payload).hexdigest(),
                    "destination": destination,
                    "ledger_key": ledger_key,
                    "prev": prev,
                }
                fields["hash"] = _entry_hash(fields)
                fields["signature"] = self._key.sign(_signed_message(fields["hash"])).hex()
                line = (json.dumps(fields, sort_keys=True) + "\n").encode()
                if os.write(fd, line) != len(line):  # a short write: the disk filled up in the middle of the line
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                os.fsync(fd)
            except OSError as exc:
                if size >= 0:
                    _cut_back(fd, size)  # no torn entry stays behind: the log ends at its last whole entry
                raise AuditLogError(f"Could not write to the audit log {self.path} ({exc.strerror or exc}); "
                                    "nothing was sent. Free disk space or fix the folder's permissions.") from exc
            finally:
                os.close(fd)  # releases the flock
            return AuditEntry(**fields)

    def released_keys(self) -> set[str]:
        """The ledger key of every entry that names one."""
        return {entry.ledger_key for entry in read_audit_log(self.path) if entry.ledger_key}

    def _tail(self, fd: int) -> tuple[int, str]:
        last = _last_line(fd)
        if last is None:
            return 0, GENESIS_HASH
        try:
            entry = json.loads(last)
            return int(entry["seq"]) + 1, str(entry["hash"])
        except (ValueError, KeyError, TypeError) as exc:
            raise AuditLogError(
                f"The audit log {self.path} is damaged at its last entry; run `dopamine audit verify` and keep "
                "a copy of the file for your IT security team before moving it aside."
            ) from exc


def _cut_back(fd: int, size: int) -> None:
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    except OSError:
        pass  # the next append drops a torn tail (_drop_torn_tail)


def _drop_torn_tail(fd: int) -> None:
    """A crash mid-write leaves a partial last line; its send never happened, so it is cut off.
    Called under the exclusive lock, so no other writer can be mid-line."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    position = size
    while position > 0:
        start = max(0, position - 65536)
        block = os.pread(fd, position - start, start)
        newline = block.rfind(b"\n")
        if newline >= 0:
            os.ftruncate(fd, start + newline + 1)
            os.fsync(fd)
            return
        position = start
    os.ftruncate(fd, 0)
    os.fsync(fd)


def _last_line(fd: int) -> bytes | None:
    """The file's last complete line (it ends with a newline once the torn tail is dropped)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return None
    end = size - 1  # the final newline
    collected = b""
    position = end
    while position > 0:
        start = max(0, position - 65536)
        collected = os.pread(fd, position - start, start) + collected
        newline = collected.rfind(b"\n")
        if newline >= 0:
            return collected[newline + 1:]
        position = start
    return collected


def read_audit_log(path: Path) -> list[AuditEntry]:
    """Every well-formed entry, in order (no chain or signature check: see verify_audit_log)."""
    entries: list[AuditEntry] = []
    path = Path(path)
    if not path.exists():
        return entries
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                data = json.loads(line)
                entries.append(AuditEntry(**{k: data[k] for k in (*_FIELDS, "hash", "signature")}))
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
    signatures_checked: bool  # False: only the hash chain was checked (no public key given)
    signer_fingerprint: str = ""  # of the public key the signatures were checked with

    def to_text(self) -> str:
        if not self.ok:
            return (f"Audit log BROKEN at line {self.broken_at_line}: {self.reason} ({self.entries} entries "
                    "before it are intact).")
        text = f"Audit log intact: {self.entries} entries, {self.total_bytes} bytes sent in total."
        if self.signatures_checked:
            return text + f" Every entry is signed by the hospital key {self.signer_fingerprint}."
        return (text + " Signatures NOT checked (no public key given): whoever can write the file could have "
                "rebuilt this chain.")


def verify_audit_log(path: Path, public_key: bytes | None = None) -> AuditVerification:
    """Check every entry's hash and link to the previous one, and, given the hospital's raw 32-byte
    Ed25519 public key, every entry's signature; report the first break."""
    from core.signing import PUBLIC_KEY_BYTES, fingerprint

    path = Path(path)
    if not path.exists():
        raise AuditLogError(f"No audit log at {path}: nothing has been sent from this hospital home yet, or "
                            "pass the home folder (--home) or log file it was written to.")
    verifier = None
    if public_key is not None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        if not isinstance(public_key, bytes | bytearray) or len(public_key) != PUBLIC_KEY_BYTES:
            raise AuditLogError(f"An audit log is checked with a {PUBLIC_KEY_BYTES}-byte Ed25519 public key.")
        verifier = Ed25519PublicKey.from_public_bytes(bytes(public_key))
    checked = verifier is not None
    signer = fingerprint(bytes(public_key)) if public_key is not None else ""  # i.e. if checked
    prev = GENESIS_HASH
    count = 0
    total = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            problem = _entry_problem(raw, count, prev, verifier)
            if problem:
                return AuditVerification(False, count, total, number, problem, checked, signer)
            data = json.loads(raw)
            prev = data["hash"]
            count += 1
            if data["kind"] == "sent":
                total += data["bytes"]
    return AuditVerification(True, count, total, None, "", checked, signer)


def _entry_problem(raw: bytes, seq: int, prev: str, verifier) -> str:
    """Why this line is not the valid entry number ``seq`` following ``prev`` ("" when it is)."""
    from cryptography.exceptions import InvalidSignature

    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return "not valid JSON (a partial or edited line)"
    if not isinstance(data, dict):
        return "not an audit entry"
    if "signature" not in data and "kind" not in data and "hash" in data:
        return "an unsigned entry from an older Dopamine (keep that log as it is; new entries go to the home's log)"
    if any(k not in data for k in (*_FIELDS, "hash", "signature")):
        return "missing fields"
    if not isinstance(data["bytes"], int) or isinstance(data["bytes"], bool):
        return "byte count is not a whole number"
    if data["kind"] not in KINDS:
        return f"unknown kind {data['kind']!r}"
    if data["seq"] != seq:
        return f"sequence number {data['seq']!r}, expected {seq} (entry removed or reordered)"
    if data["prev"] != prev:
        return "does not link to the previous entry (entry removed, inserted or reordered)"
    if _entry_hash(data) != data["hash"]:
        return "its content does not match its hash (entry edited)"
    if verifier is not None:
        try:
            signature = bytes.fromhex(data["signature"])
            verifier.verify(signature, _signed_message(str(data["hash"])))
        except (InvalidSignature, ValueError, TypeError):
            return ("its signature is not the hospital's (the entry was edited and the chain rebuilt without "
                    "the hospital's key, or the log belongs to another hospital)")
    return ""


def check_ledger_not_behind(ledger: PrivacyLedger, log_path: Path) -> None:
    """Refuse (LedgerError) a ledger that lacks a release the audit log records.

    Every release is charged before its audit entry is written, so a ledger_key in the log that the
    ledger does not know means the ledger is older than the log: restored from a backup, or copied
    from elsewhere. Running on it would forget spent epsilon and let those releases be computed again.
    """
    log_path = Path(log_path)
    if not log_path.exists():
        return
    released = {entry.ledger_key for entry in read_audit_log(log_path) if entry.ledger_key}
    missing = released - ledger.keys()
    if missing:
        example = sorted(missing)[0]
        raise LedgerError(
            f"The privacy ledger {ledger.path} is behind the audit log {log_path}: {len(missing)} release(s) the "
            f"log records are not in it (for example {example}); was the ledger restored from an older backup? "
            "Nothing was run. Put back the newest copy of the ledger; if none exists, ask your privacy officer, "
            "since that spent epsilon is no longer counted."
        )

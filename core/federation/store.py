"""The coordinator's durable state: one SQLite file (WAL, synchronous=FULL).

Every message a hospital sends is committed before it is acknowledged, and every phase change is
committed before it is announced, so a coordinator killed at any moment resumes where it was
(core.federation.coordinator replays the open round's messages into a fresh state machine).
Messages of a finished round are deleted with the commit that finishes it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from core.errors import FederationError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS invitations (
    hospital_id TEXT PRIMARY KEY, name TEXT NOT NULL, token_sha256 TEXT NOT NULL UNIQUE, used_at REAL);
CREATE TABLE IF NOT EXISTS hospitals (
    hospital_id TEXT PRIMARY KEY, name TEXT NOT NULL, public_key BLOB NOT NULL, fingerprint TEXT NOT NULL,
    num_images INTEGER NOT NULL, enrolled_at REAL NOT NULL, status TEXT NOT NULL DEFAULT 'active',
    status_reason TEXT NOT NULL DEFAULT '', rounds_included INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS nonces (
    hospital_id TEXT NOT NULL, nonce TEXT NOT NULL, ts REAL NOT NULL, PRIMARY KEY (hospital_id, nonce)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    round INTEGER NOT NULL, attempt INTEGER NOT NULL, step TEXT NOT NULL, hospital_id TEXT NOT NULL,
    body BLOB NOT NULL, received_at REAL NOT NULL, PRIMARY KEY (round, attempt, step, hospital_id));
CREATE TABLE IF NOT EXISTS broadcasts (
    round INTEGER NOT NULL, attempt INTEGER NOT NULL, step TEXT NOT NULL, hospital_id TEXT NOT NULL,
    body BLOB NOT NULL, PRIMARY KEY (round, attempt, step, hospital_id));
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY, attempts INTEGER NOT NULL, started_at REAL NOT NULL, finished_at REAL NOT NULL,
    included TEXT NOT NULL, images INTEGER NOT NULL, metrics TEXT NOT NULL, model_file TEXT NOT NULL,
    model_sha256 TEXT NOT NULL);
"""


@dataclass(frozen=True)
class HospitalRecord:
    hospital_id: str
    name: str
    public_key: bytes
    fingerprint: str
    num_images: int
    enrolled_at: float
    status: str  # "active" | "declined"
    status_reason: str
    rounds_included: int


@dataclass(frozen=True)
class RoundRecord:
    round: int
    attempts: int
    started_at: float
    finished_at: float
    included: list[str]
    images: int
    metrics: dict
    model_file: str
    model_sha256: str

    def to_dict(self) -> dict:
        return {
            "round": self.round, "attempts": self.attempts, "seconds": round(self.finished_at - self.started_at, 4),
            "included": self.included, "images": self.images, "metrics": self.metrics,
            "model_file": self.model_file, "model_sha256": self.model_sha256,
        }


class CoordinatorStore:
    """Thread-safe wrapper around the coordinator's SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            # Request nonces are written on every request: without an fsync each (synchronous=NORMAL
            # is still crash-safe in WAL mode; only a power cut can lose the last ones, and those
            # requests are inside TLS, which an attacker would have to break to replay them).
            self._nonce_db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            self._nonce_db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.DatabaseError as exc:
            raise FederationError(f"The coordinator state {self.path} cannot be opened ({exc}).") from exc

    def close(self) -> None:
        with self._lock:
            self._nonce_db.close()
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back already (a full disk: SQLITE_FULL); never leave one open, or every
                # later BEGIN fails
                if self._db.in_transaction:
                    try:
                        self._db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise

    # -- meta ---------------------------------------------------------------------------------

    def get_meta(self, key: str, default=None):
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def all_meta(self) -> dict:
        with self._lock:
            return {k: json.loads(v) for k, v in self._db.execute("SELECT key, value FROM meta")}

    @staticmethod
    def set_meta(db: sqlite3.Connection, values: dict) -> None:
        db.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [(k, json.dumps(v)) for k, v in values.items()],
        )

    def update_meta(self, values: dict) -> None:
        with self.transaction() as db:
            self.set_meta(db, values)

    # -- invitations and hospitals ------------------------------------------------------------

    def add_invitation(self, hospital_id: str, name: str, token_sha256: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO invitations (hospital_id, name, token_sha256) VALUES (?, ?, ?)",
                       (hospital_id, name, token_sha256))

    def invitation_for_token(self, token_sha256: str) -> tuple[str, str, float | None] | None:
        with self._lock:
            return self._db.execute(
                "SELECT hospital_id, name, used_at FROM invitations WHERE token_sha256 = ?", (token_sha256,)
            ).fetchone()

    def enroll(self, *, hospital_id: str, name: str, public_key: bytes, fingerprint: str, num_images: int,
               token_sha256: str) -> None:
        with self.transaction() as db:
            now = time.time()
            db.execute("UPDATE invitations SET used_at = ? WHERE token_sha256 = ? AND used_at IS NULL",
                       (now, token_sha256))
            db.execute(
                "INSERT INTO hospitals (hospital_id, name, public_key, fingerprint, num_images, enrolled_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (hospital_id, name, public_key, fingerprint, num_images, now),
            )

    def hospitals(self) -> list[HospitalRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT hospital_id, name, public_key, fingerprint, num_images, enrolled_at, status, "
                "status_reason, rounds_included FROM hospitals ORDER BY hospital_id"
            ).fetchall()
        return [HospitalRecord(*row) for row in rows]

    def invitation_count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM invitations").fetchone()[0]

    @staticmethod
    def set_hospital_status(db: sqlite3.Connection, hospital_id: str, status: str, reason: str) -> None:
        db.execute("UPDATE hospitals SET status = ?, status_reason = ? WHERE hospital_id = ?",
                   (status, reason, hospital_id))

    # -- replay protection ----------------------------------------------------------------------

    def remember_nonce(self, hospital_id: str, nonce: str, ts: float) -> bool:
        """Record a request nonce; False when it was seen before (a replay)."""
        with self._lock:
            try:
                self._nonce_db.execute("INSERT INTO nonces (hospital_id, nonce, ts) VALUES (?, ?, ?)",
                                       (hospital_id, nonce, ts))
            except sqlite3.IntegrityError:
                return False
        return True

    def forget_nonces(self, before: float) -> None:
        """Drop nonces whose timestamps are outside the window: those requests are refused anyway."""
        with self._lock:
            self._nonce_db.execute("DELETE FROM nonces WHERE ts < ?", (before,))

    # -- round messages -------------------------------------------------------------------------

    @staticmethod
    def add_message(db: sqlite3.Connection, round: int, attempt: int, step: str, hospital_id: str, body: bytes) -> None:
        db.execute(
            "INSERT INTO messages (round, attempt, step, hospital_id, body, received_at) VALUES (?, ?, ?, ?, ?, ?)",
            (round, attempt, step, hospital_id, body, time.time()),
        )

    def message_senders(self, round: int, attempt: int, step: str) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute(
                "SELECT hospital_id FROM messages WHERE round = ? AND attempt = ? AND step = ? ORDER BY received_at",
                (round, attempt, step))]

    def iter_messages(self, round: int, attempt: int, step: str) -> Iterator[tuple[str, bytes]]:
        """(sender, body) one at a time, in arrival order, so memory stays flat in the number of hospitals."""
        for sender in self.message_senders(round, attempt, step):
            with self._lock:
                row = self._db.execute(
                    "SELECT body FROM messages WHERE round = ? AND attempt = ? AND step = ? AND hospital_id = ?",
                    (round, attempt, step, sender)).fetchone()
            if row is not None:
                yield sender, bytes(row[0])

    @staticmethod
    def add_broadcast(db: sqlite3.Connection, round: int, attempt: int, step: str, hospital_id: str, body: bytes) -> None:
        db.execute("INSERT OR REPLACE INTO broadcasts (round, attempt, step, hospital_id, body) VALUES (?, ?, ?, ?, ?)",
                   (round, attempt, step, hospital_id, body))

    def broadcast(self, round: int, attempt: int, step: str, hospital_id: str) -> bytes | None:
        with self._lock:
            row = self._db.execute(
                "SELECT body FROM broadcasts WHERE round = ? AND attempt = ? AND step = ? AND hospital_id IN (?, '*') "
                "ORDER BY hospital_id = '*'", (round, attempt, step, hospital_id)).fetchone()
        return bytes(row[0]) if row else None

    def has_broadcast(self, round: int, attempt: int, step: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM broadcasts WHERE round = ? AND attempt = ? AND step = ? LIMIT 1",
                                    (round, attempt, step)).fetchone() is not None

    @staticmethod
    def delete_round_data(db: sqlite3.Connection, round: int) -> None:
        db.execute("DELETE FROM messages WHERE round <= ?", (round,))
        db.execute("DELETE FROM broadcasts WHERE round <= ?", (round,))

    @staticmethod
    def delete_attempt_data(db: sqlite3.Connection, round: int, attempt: int) -> None:
        db.execute("DELETE FROM messages WHERE round = ? AND attempt = ?", (round, attempt))
        db.execute("DELETE FROM broadcasts WHERE round = ? AND attempt = ?", (round, attempt))

    # -- finished rounds ------------------------------------------------------------------------

    @staticmethod
    def add_round(db: sqlite3.Connection, record: RoundRecord) -> None:
        db.execute(
            "INSERT INTO rounds (round, attempts, started_at, finished_at, included, images, metrics, model_file, "
            "model_sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (record.round, record.attempts, record.started_at, record.finished_at, json.dumps(record.included),
             record.images, json.dumps(record.metrics), record.model_file, record.model_sha256),
        )
        db.executemany("UPDATE hospitals SET rounds_included = rounds_included + 1 WHERE hospital_id = ?",
                       [(h,) for h in record.included])

    def rounds(self) -> list[RoundRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT round, attempts, started_at, finished_at, included, images, metrics, model_file, model_sha256 "
                "FROM rounds ORDER BY round").fetchall()
        return [RoundRecord(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], json.loads(r[6]), r[7], r[8]) for r in rows]

    def round_record(self, round: int) -> RoundRecord | None:
        with self._lock:
            r = self._db.execute(
                "SELECT round, attempts, started_at, finished_at, included, images, metrics, model_file, model_sha256 "
                "FROM rounds WHERE round = ?", (round,)).fetchone()
        return RoundRecord(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], json.loads(r[6]), r[7], r[8]) if r else None

    def last_round(self) -> RoundRecord | None:
        rounds = self.rounds_tail(1)
        return rounds[0] if rounds else None

    def rounds_tail(self, n: int) -> list[RoundRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT round, attempts, started_at, finished_at, included, images, metrics, model_file, model_sha256 "
                "FROM rounds ORDER BY round DESC LIMIT ?", (n,)).fetchall()
        return [RoundRecord(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], json.loads(r[6]), r[7], r[8])
                for r in reversed(rows)]

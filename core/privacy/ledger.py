"""The hospital's privacy ledger: every DP computation on its data, durably recorded before it runs.

One SQLite file (WAL journal, ``synchronous=FULL``) holds the settings -- the epsilon cap, the
delta every epsilon is stated at, the accountant -- and one row per charge
``(noise_multiplier, sample_rate, steps)``. ``charge()`` checks the cap and inserts the row in one
``BEGIN IMMEDIATE`` transaction, so two processes charging the same ledger are serialised and
cannot both slip under the cap, and the row is fsynced before ``charge()`` returns. Callers
charge *before* the noised result leaves the process: a crash afterwards over-counts, never
under-counts. A charge key names one computation (a federated round's attempt): it is charged and
run at most once, and asking again is refused (ReleaseRefused).

Cap changes made on purpose go through ``change_cap(home, ...)``, which writes a "ledger" entry to the
home's signed audit log before it changes the ledger; the CLI (`dopamine ledger set-cap`), the app's
Privacy page and a first ``dopamine train --max-epsilon`` all use it.

Why one module (about 480 lines): the ledger's promise (check the cap and record the charge in one
serialised, fsynced transaction) lives in one class with its SQLite schema and its previews.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sqlite3
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from core.config import atomic_write_bytes
from core.errors import LedgerError, PrivacyBudgetExceeded, PrivacyError, ReleaseRefused
from core.privacy.accountant import (
    check_accountant_name,
    check_delta_value,
    compute_epsilon_history,
    validate_history_entry,
)

# "DPL1": lets us tell our ledger from any other SQLite file.
APPLICATION_ID = 0x44504C31
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (
    name TEXT PRIMARY KEY,
    value TEXT
);
CREATE TABLE IF NOT EXISTS charges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    description TEXT NOT NULL,
    noise_multiplier REAL NOT NULL CHECK (noise_multiplier >= 0),
    sample_rate REAL NOT NULL CHECK (sample_rate >= 0 AND sample_rate <= 1),
    steps INTEGER NOT NULL CHECK (steps >= 0),
    key TEXT UNIQUE,
    epsilon_after REAL NOT NULL
);
"""


@dataclass(frozen=True)
class LedgerEntry:
    id: int
    time: str
    description: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    key: str | None
    epsilon_after: float


class PrivacyLedger:
    """A hospital's record of privacy spent, with an optional cap.

    ``max_epsilon``, ``delta`` and ``accountant`` are stored in the file the first time they are
    given. Opening an existing ledger with a *different* value raises LedgerError: changing the
    cap or the delta is a deliberate act, done with ``set_cap``.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_epsilon: float | None = None,
        delta: float | None = None,
        accountant: str | None = None,
    ) -> None:
        self.path = Path(path)
        # Re-entrant: settings are read while a charge transaction holds the lock.
        self._lock = threading.RLock()
        self._connection = self._open()
        try:
            self._adopt_settings(max_epsilon, delta, accountant)
        except BaseException:
            self._connection.close()
            raise

    # -- settings -------------------------------------------------------------------------------

    @property
    def max_epsilon(self) -> float | None:
        value = self._setting("max_epsilon")
        return None if value is None else float(value)

    @property
    def delta(self) -> float | None:
        value = self._setting("delta")
        return None if value is None else float(value)

    @property
    def accountant(self) -> str:
        return self._setting("accountant") or "rdp"

    def set_cap(self, max_epsilon: float | None, delta: float | None = None, *, accountant: str | None = None) -> None:
        """Set (or with None, remove) the epsilon cap; optionally change delta and the accountant."""
        _check_cap(max_epsilon)
        if delta is not None:
            check_delta_value(delta)
        if accountant is not None:
            check_accountant_name(accountant)
        with self._transaction() as cursor:
            self._write_setting(cursor, "max_epsilon", None if max_epsilon is None else repr(float(max_epsilon)))
            if delta is not None:
                self._write_setting(cursor, "delta", repr(float(delta)))
            if accountant is not None:
                self._write_setting(cursor, "accountant", accountant)

    # -- spending -------------------------------------------------------------------------------

    def spent(self) -> float:
        """Epsilon of everything charged so far, composed, at the ledger's delta."""
        with self._lock:
            history = self._history(self._connection.cursor())
        return self._epsilon(history)

    def _spent_at(self, delta: float, accountant: str) -> float:
        with self._lock:
            history = self._history(self._connection.cursor())
        return compute_epsilon_history(_merged(history), delta=delta, accountant=accountant)

    def epsilon_if(self, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """What ``spent()`` would be after charging this work."""
        entry = _checked_work(noise_multiplier, sample_rate, steps)
        with self._lock:
            history = self._history(self._connection.cursor())
        return self._epsilon(history + [entry])

    def preview(self, noise_multiplier: float, sample_rate: float, steps: int) -> ChargePreview:
        """The ledger before and after this work, against its cap. Writes nothing."""
        return ChargePreview(self.spent(), self.epsilon_if(noise_multiplier, sample_rate, steps), self.max_epsilon,
                             self.delta, self.accountant)

    def charge(
        self,
        *,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        description: str,
        key: str | None = None,
        limit: float | None = None,
    ) -> LedgerEntry:
        """Record this work, durably, or raise and record nothing.

        PrivacyBudgetExceeded when epsilon after this work would pass ``min(cap, limit)``: ``limit``
        is a caller's own bound (a run's ``--max-epsilon``), which can only tighten the cap.
        ReleaseRefused when ``key`` is already in the ledger: a keyed computation (a federated
        round's attempt) runs at most once, so whoever asks for it again -- a coordinator restored
        from a backup, a retry after a crash -- gets a refusal, never a second noised release on one
        charge. A crash between charging and sending therefore over-counts; it never repeats.
        """
        entry = _checked_work(noise_multiplier, sample_rate, steps)
        if not isinstance(description, str):
            raise PrivacyError("A ledger charge needs a text description.")
        if key is not None and not isinstance(key, str):
            raise PrivacyError("A ledger charge key must be text.")
        _check_cap(limit, what="run's epsilon limit")
        with self._transaction() as cursor:
            if key is not None:
                existing = cursor.execute("SELECT * FROM charges WHERE key = ?", (key,)).fetchone()
                if existing is not None:
                    raise ReleaseRefused(
                        f"This computation ({key}) was already charged and run once, on "
                        f"{existing['time']}; a coordinator that reopens it is refused, since running it again "
                        "would release fresh noise on one charge. Nothing was computed or sent; ask the "
                        "coordinator to open a new round instead."
                    )
            history = self._history(cursor)
            before = self._epsilon(history)
            after = self._epsilon(history + [entry])
            stored_cap = self._read_setting(cursor, "max_epsilon")
            cap = None if stored_cap is None else float(stored_cap)
            bound, named = cap, "the cap"
            if limit is not None and (cap is None or float(limit) < cap):
                bound, named = float(limit), "this run's limit"
            if bound is not None and after > bound:
                raise PrivacyBudgetExceeded(
                    f"This work would raise the privacy spent on this data from epsilon={before:.3g} to "
                    f"{_fmt(after)} (it costs {_fmt(after - before)} more), past {named} of {bound:.3g} "
                    f"at delta={self._require_delta(cursor):g}; nothing was run. Use more noise, fewer "
                    "steps or a smaller sample rate, or raise the cap if your privacy officer agrees."
                )
            now = datetime.now(UTC).isoformat(timespec="seconds")
            cursor.execute(
                "INSERT INTO charges (time, description, noise_multiplier, sample_rate, steps, key, epsilon_after) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (now, description, entry[0], entry[1], entry[2], key, after),
            )
            row = cursor.execute("SELECT * FROM charges WHERE id = ?", (cursor.lastrowid,)).fetchone()
            self._before_commit()
        return _entry(row)

    def has_charge(self, key: str) -> bool:
        """Whether a charge with this key was recorded (its computation may have run)."""
        with self._lock:
            row = self._connection.execute("SELECT 1 FROM charges WHERE key = ?", (key,)).fetchone()
        return row is not None

    def keys(self) -> set[str]:
        """Every charge key in the ledger."""
        with self._lock:
            rows = self._connection.execute("SELECT key FROM charges WHERE key IS NOT NULL").fetchall()
        return {row[0] for row in rows}

    def entries(self) -> list[LedgerEntry]:
        with self._lock:
            rows = self._connection.execute("SELECT * FROM charges ORDER BY id").fetchall()
        return [_entry(row) for row in rows]

    # -- export ---------------------------------------------------------------------------------

    def export_json(self, path: Path) -> None:
        document = {
            "ledger": str(self.path),
            "exported": datetime.now(UTC).isoformat(timespec="seconds"),
            "accountant": self.accountant,
            "delta": self.delta,
            "max_epsilon": self.max_epsilon,
            "epsilon_spent": self.spent() if self.delta is not None else None,
            "charges": [asdict(entry) for entry in self.entries()],
        }
        atomic_write_bytes(Path(path), (json.dumps(document, indent=2) + "\n").encode())

    def export_csv(self, path: Path) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        fields = list(LedgerEntry.__dataclass_fields__)
        writer.writerow(fields)
        for entry in self.entries():
            writer.writerow(["" if value is None else value for value in (getattr(entry, f) for f in fields)])
        atomic_write_bytes(Path(path), buffer.getvalue().encode())

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    def __enter__(self) -> PrivacyLedger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------

    def _before_commit(self) -> None:
        """Runs inside the charge transaction, just before COMMIT (tests simulate crashes here)."""

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions are opened explicitly (BEGIN IMMEDIATE).
            connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(f"Cannot open the privacy ledger {self.path}: {exc}.") from exc
        connection.row_factory = sqlite3.Row
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            app_id = connection.execute("PRAGMA application_id").fetchone()[0]
            tables = {r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if app_id != APPLICATION_ID and tables:
                raise LedgerError(
                    f"{self.path} is an SQLite file but not a Dopamine privacy ledger; "
                    "choose another ledger file."
                )
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise LedgerError(
                    f"The privacy ledger {self.path} was written by a newer Dopamine (schema {version}); update the app."
                )
            if not tables:
                connection.executescript(
                    f"BEGIN IMMEDIATE; PRAGMA application_id={APPLICATION_ID}; PRAGMA user_version={SCHEMA_VERSION};"
                    + _SCHEMA
                    + "COMMIT;"
                )
            elif {"settings", "charges"} - tables:
                raise LedgerError(f"The privacy ledger {self.path} is missing tables; restore it from a backup.")
        except sqlite3.OperationalError as exc:
            # Not a damaged file: a full disk, a read-only folder (WAL needs to write beside the ledger), a lock.
            connection.close()
            raise LedgerError(
                f"Cannot open the privacy ledger {self.path} for writing ({exc}): free disk space or make the "
                "hospital folder writable, then try again."
            ) from exc
        except sqlite3.DatabaseError as exc:
            connection.close()
            raise LedgerError(
                f"{self.path} is not a readable privacy ledger ({exc}); restore it from a backup or "
                "choose another file (never delete a ledger: it is the record of privacy spent)."
            ) from exc
        except BaseException:
            connection.close()
            raise
        return connection

    def _transaction(self) -> _Transaction:
        return _Transaction(self)

    def _adopt_settings(self, max_epsilon: float | None, delta: float | None, accountant: str | None) -> None:
        _check_cap(max_epsilon)
        if delta is not None:
            check_delta_value(delta)
        if accountant is not None:
            check_accountant_name(accountant)
        wanted = {
            "max_epsilon": None if max_epsilon is None else float(max_epsilon),
            "delta": None if delta is None else float(delta),
            "accountant": accountant,
        }
        with self._transaction() as cursor:
            if accountant is None and self._read_setting(cursor, "accountant") is None:
                self._write_setting(cursor, "accountant", "rdp")
            for name, value in wanted.items():
                if value is None:
                    continue
                stored = self._read_setting(cursor, name)
                if stored is None:
                    self._write_setting(cursor, name, value if isinstance(value, str) else repr(value))
                elif (stored if isinstance(value, str) else float(stored)) != value:
                    raise LedgerError(
                        f"The privacy ledger {self.path} has {name}={stored}, not {value}; use its setting, "
                        "or change it deliberately with `dopamine ledger set-cap` (or the app's Privacy page)."
                    )

    def _setting(self, name: str) -> str | None:
        with self._lock:
            return self._read_setting(self._connection.cursor(), name)

    @staticmethod
    def _read_setting(cursor: sqlite3.Cursor, name: str) -> str | None:
        row = cursor.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()
        return None if row is None else row[0]

    @staticmethod
    def _write_setting(cursor: sqlite3.Cursor, name: str, value: str | None) -> None:
        cursor.execute(
            "INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    @staticmethod
    def _history(cursor: sqlite3.Cursor) -> list[tuple[float, float, int]]:
        rows = cursor.execute("SELECT noise_multiplier, sample_rate, steps FROM charges ORDER BY id").fetchall()
        return [(float(r[0]), float(r[1]), int(r[2])) for r in rows]

    def _epsilon(self, history: list[tuple[float, float, int]]) -> float:
        delta = self._require_delta(self._connection.cursor())
        return compute_epsilon_history(_merged(history), delta=delta, accountant=self.accountant)

    def _require_delta(self, cursor: sqlite3.Cursor) -> float:
        value = self._read_setting(cursor, "delta")
        if value is None:
            raise LedgerError(f"The privacy ledger {self.path} has no delta yet; set one (below 1/N) first.")
        return float(value)


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` under the ledger's lock; ROLLBACK on any error."""

    def __init__(self, ledger: PrivacyLedger) -> None:
        self.ledger = ledger

    def __enter__(self) -> sqlite3.Cursor:
        self.ledger._lock.acquire()
        try:
            cursor = self.ledger._connection.cursor()
            cursor.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self.ledger._lock.release()
            raise LedgerError(f"The privacy ledger {self.ledger.path} is locked or unwritable ({exc}); try again.") from exc
        except BaseException:
            self.ledger._lock.release()
            raise
        self.cursor = cursor
        return cursor

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc_type is None:
                try:
                    self.cursor.execute("COMMIT")
                except sqlite3.Error as error:
                    self._rollback()
                    raise LedgerError(
                        f"Could not save to the privacy ledger {self.ledger.path} ({error}); nothing was charged."
                    ) from error
            else:
                self._rollback()
                if isinstance(exc, sqlite3.Error):
                    # e.g. "database or disk is full", "attempt to write a readonly database" in the middle of
                    # a charge: SQLite rolled it back, so nothing was recorded, and nothing may be computed.
                    raise LedgerError(
                        f"Could not write to the privacy ledger {self.ledger.path} ({exc}): free disk space or make "
                        "the hospital folder writable, then try again; nothing was charged or run."
                    ) from exc
        finally:
            self.ledger._lock.release()

    def _rollback(self) -> None:
        """ROLLBACK, unless SQLite already rolled the transaction back itself (it does on SQLITE_FULL)."""
        if self.ledger._connection.in_transaction:
            try:
                self.cursor.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the transaction is gone either way: nothing of it was committed


@dataclass(frozen=True)
class ChargePreview:
    """What a hospital's ledger would show after some work, and whether its cap allows it."""

    epsilon_before: float
    epsilon_after: float
    max_epsilon: float | None
    delta: float | None
    accountant: str

    @property
    def allowed(self) -> bool:
        return self.max_epsilon is None or self.epsilon_after <= self.max_epsilon

    def text(self) -> str:
        cap = "no cap is set" if self.max_epsilon is None else f"the cap is {self.max_epsilon:g}"
        change = f"ε would go from {self.epsilon_before:.3g} to {self.epsilon_after:.3g}; {cap}."
        if self.allowed:
            return f"Allowed: {change}"
        return f"Refused: {change} Add noise, take fewer steps or raise the cap."


def preview_charge(path: Path, *, noise_multiplier: float, sample_rate: float, steps: int,
                   delta: float | None = None, accountant: str | None = None) -> ChargePreview:
    """``PrivacyLedger.preview`` of the ledger at ``path``; without a ledger yet, from nothing at ``delta``
    (PrivacyError when there is no ledger and no delta). Creates no file."""
    path = Path(path)
    if path.exists():
        with PrivacyLedger(path) as ledger:
            if ledger.delta is not None:
                return ledger.preview(noise_multiplier, sample_rate, steps)
    if delta is None:
        raise PrivacyError("Set delta (on the Privacy page, or `dopamine ledger set-cap`) before checking a plan.")
    from core.privacy.accountant import compute_epsilon

    accountant = accountant or "rdp"
    after = compute_epsilon(sample_rate=sample_rate, noise_multiplier=noise_multiplier, steps=steps, delta=delta,
                            accountant=accountant)
    return ChargePreview(0.0, after, None, delta, accountant)


def _merged(history: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """Equal (noise, rate) entries as one, steps added: composition does not depend on order, and a
    federation of a thousand one-step rounds then costs one accountant term, not a thousand."""
    steps: dict[tuple[float, float], int] = {}
    for sigma, q, count in history:
        steps[(sigma, q)] = steps.get((sigma, q), 0) + count
    return [(sigma, q, count) for (sigma, q), count in steps.items()]


def _entry(row: sqlite3.Row) -> LedgerEntry:
    return LedgerEntry(
        id=int(row["id"]),
        time=row["time"],
        description=row["description"],
        noise_multiplier=float(row["noise_multiplier"]),
        sample_rate=float(row["sample_rate"]),
        steps=int(row["steps"]),
        key=row["key"],
        epsilon_after=float(row["epsilon_after"]),
    )


def _checked_work(noise_multiplier: float, sample_rate: float, steps: int) -> tuple[float, float, int]:
    return validate_history_entry((noise_multiplier, sample_rate, steps))


def _check_cap(max_epsilon: float | None, *, what: str = "privacy cap") -> None:
    if max_epsilon is not None and (
        isinstance(max_epsilon, bool) or not isinstance(max_epsilon, int | float) or not max_epsilon > 0
        or math.isnan(max_epsilon)
    ):
        raise PrivacyError(f"The {what} must be a positive epsilon (got {max_epsilon!r}).")


def _fmt(epsilon: float) -> str:
    return "infinity" if math.isinf(epsilon) else f"{epsilon:.3g}"

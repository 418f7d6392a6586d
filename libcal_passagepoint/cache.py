"""The SQLite cache: what was registered, what failed and when to retry, known patrons, past passes.

A versioned schema (``PRAGMA user_version``), WAL mode, and one transaction per booking. A
booking's row moves through these states::

    intent      the pre-registration is about to be created (written and committed BEFORE createPreReg)
    registered  createPreReg answered with an id
    failed      it could not be done; ``reason``, ``attempts``, ``next_retry_at`` say why and when again
    uncertain   createPreReg may or may not have happened (crash after the intent, or a lost answer);
                not re-created automatically unless the configuration says ``reconcile: recreate``
    cancelled   cancelled in LibCal before it was registered: nothing to do

A registered (or uncertain) booking later cancelled in LibCal keeps its state and gets ``cancelled_at`` set.
The cache records the configuration file it belongs to (:attr:`Cache.configuration`).
Exceptions: :class:`CacheError` (the file cannot be used, or is not a cache of this tool; the message
says why), and its subclass :class:`CacheMissing` (the file does not exist and was not to be created).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .decisions import must_report, retry_delay

__all__ = ["SCHEMA_VERSION", "Cache", "CacheError", "CacheMissing", "restrict_to_owner"]

log = logging.getLogger("libcal_passagepoint")

SCHEMA_VERSION = 3

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE bookings (
        book_id TEXT PRIMARY KEY,
        lid INTEGER NOT NULL,
        primary_id TEXT,
        patron TEXT NOT NULL DEFAULT '',
        start_time INTEGER NOT NULL,
        end_time INTEGER NOT NULL,
        destination TEXT,
        state TEXT NOT NULL CHECK (state IN ('intent', 'registered', 'failed', 'uncertain', 'cancelled')),
        visitor_id INTEGER,
        prereg_id INTEGER,
        reason TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_retry_at REAL,
        reported INTEGER NOT NULL DEFAULT 0,
        cancelled_at TEXT,
        cancel_reported INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX bookings_state ON bookings (state);
    CREATE INDEX bookings_end_time ON bookings (end_time);
    CREATE TABLE users (
        primary_id TEXT PRIMARY KEY,
        barcode TEXT NOT NULL,
        user_group TEXT NOT NULL DEFAULT '',
        visitor_id INTEGER,
        updated_at REAL NOT NULL
    );
    CREATE TABLE passes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        started_at REAL NOT NULL,
        finished_at REAL,
        exit_status INTEGER,
        summary TEXT
    );
    CREATE TABLE alerts (
        kind TEXT PRIMARY KEY,
        sent_at REAL NOT NULL
    );
    """,
    # Alert lines held back by the one-message-per-kind-per-interval limit, sent with the next message.
    2: """
    CREATE TABLE alerts_held (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        line TEXT NOT NULL,
        held_at REAL NOT NULL
    );
    CREATE INDEX alerts_held_kind ON alerts_held (kind);
    """,
    # Facts about the cache itself. 'configuration': the real path of the configuration file the
    # cache belongs to, so that no other configuration's run takes it for its own.
    3: """
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
}


class CacheError(Exception):
    """The cache file cannot be opened or has an unknown schema."""


class CacheMissing(CacheError):
    """The cache file does not exist, and the caller did not ask to create it."""

    def __init__(self, path: str) -> None:
        super().__init__(f"cache file {path} does not exist")
        self.path = path


class Cache:
    """A SQLite file holding the sync's state; ``clock`` gives epoch seconds.

    ``path`` is kept absolute. ``create`` says what an absent or empty file (0 bytes, or SQLite
    with no table) is: a new cache (created, or with ``read_only`` an empty one in memory), or an
    error (:class:`CacheMissing` if absent). ``read_only`` opens an existing file without writing
    to it, and reads an older schema as it is. Any other file that is not a cache of this tool
    (another program's database) is refused with :class:`CacheError` before anything is written.
    ``new`` tells whether the file held no cache before it was opened.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, clock: Any = time.time, read_only: bool = False, create: bool = True
    ) -> None:
        self.path = os.path.abspath(path)
        self.read_only = read_only
        self._clock = clock
        self.new = False
        try:
            if read_only:
                self._db = self._connect_read_only(create)
            else:
                if create:
                    _create_private(self.path)
                    self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
                else:  # mode=rw: SQLite itself refuses to create the file, with no window between check and open
                    if not os.path.exists(self.path):
                        raise CacheMissing(self.path)
                    self._db = sqlite3.connect(f"{Path(self.path).as_uri()}?mode=rw", uri=True, isolation_level=None, timeout=30)
                self._db.row_factory = sqlite3.Row
                self._identify(self._db, empty_is_new=create)  # before anything is written
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute("PRAGMA foreign_keys=ON")
                self._migrate()
                restrict_to_owner(self.path)  # SQLite gives -wal and -shm the main file's mode
        except sqlite3.DatabaseError as exc:
            raise CacheError(f"cannot use cache file {self.path}: {exc}") from exc

    def _identify(self, db: sqlite3.Connection, *, empty_is_new: bool) -> int:
        """The file's schema version (0: empty); CacheError if it is not a cache of this tool.

        Only reads: a file refused here is left exactly as it was.
        """
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        tables = sorted(row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
        if version > SCHEMA_VERSION:
            raise CacheError(
                f"cache file {self.path} has schema version {version}, newer than this tool's "
                f"{SCHEMA_VERSION}: upgrade the tool or point --cache at another file"
            )
        if version == 0 and not tables:
            if empty_is_new:
                return 0
            raise CacheError(
                f"cache file {self.path} is empty, not a libcal_passagepoint cache: check the path (a run creates the cache)"
            )
        if version == 0 or not {"bookings", "users", "passes"} <= set(tables):
            listed = ", ".join(name for name in tables if not name.startswith("sqlite_")) or "none"
            raise CacheError(
                f"{self.path} is not a libcal_passagepoint cache (an SQLite database with the tables {listed}): "
                "check the path"
            )
        return version

    def _connect_read_only(self, create: bool) -> sqlite3.Connection:
        """For --dry-run and status: read an existing file without writing to it.

        An older schema is read as it is (its bookings, users and passes are all that is read).
        With *create*, an absent or empty file reads as a new, empty cache held in memory.
        """
        if os.path.exists(self.path):
            db = sqlite3.connect(f"{Path(self.path).resolve().as_uri()}?mode=ro", uri=True, isolation_level=None, timeout=30)
            db.row_factory = sqlite3.Row
            try:
                version = self._identify(db, empty_is_new=create)
            except BaseException:
                db.close()
                raise
            if version:
                return db
            db.close()
        elif not create:
            raise CacheMissing(self.path)
        db = sqlite3.connect(":memory:", isolation_level=None)
        db.row_factory = sqlite3.Row
        self._db = db
        self._migrate()
        return db

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]  # _identify refused a newer one
        self.new = version == 0
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self.transaction():
                for statement in _MIGRATIONS[target].split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {target}")

    @property
    def schema_version(self) -> int:
        """The schema version of the open file."""
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    @property
    def configuration(self) -> str | None:
        """The configuration file this cache belongs to (its real path); None if none is recorded."""
        try:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'configuration'").fetchone()
        except sqlite3.OperationalError:  # an older schema, read as it is: it records none
            return None
        return None if row is None else str(row[0])

    def flags(self, name: str) -> set[str]:
        """A set of strings kept under *name* (e.g. the locations already alerted about)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (f"flags:{name}",)).fetchone()
        return set(json.loads(row[0])) if row else set()

    def set_flags(self, name: str, values: set[str]) -> None:
        with self.transaction() as conn:
            conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                         (f"flags:{name}", json.dumps(sorted(values))))

    def record_configuration(self, config_file: str) -> None:
        """Record that this cache belongs to *config_file* (give its real, absolute path)."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('configuration', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (config_file,),
            )

    @property
    def journal_mode(self) -> str:
        """SQLite's journal mode for the file (``wal``)."""
        return str(self._db.execute("PRAGMA journal_mode").fetchone()[0])

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- bookings ------------------------------------------------------------------------------

    def bookings(self, book_ids: Iterable[str]) -> dict[str, sqlite3.Row]:
        """Cached rows of these bookings, by book id."""
        ids = list(book_ids)
        found: dict[str, sqlite3.Row] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self._db.execute(f"SELECT * FROM bookings WHERE book_id IN ({marks})", chunk):
                found[row["book_id"]] = row
        return found

    def booking(self, book_id: str) -> sqlite3.Row | None:
        """One cached booking row, or None."""
        return self._db.execute("SELECT * FROM bookings WHERE book_id = ?", (book_id,)).fetchone()

    def in_state(self, state: str) -> list[sqlite3.Row]:
        """All bookings in *state*, oldest first."""
        return list(self._db.execute("SELECT * FROM bookings WHERE state = ? ORDER BY start_time", (state,)))

    def _upsert(self, conn: sqlite3.Connection, book: dict[str, Any], **fields: Any) -> None:
        now = self._clock()
        values = {**book, **fields, "updated_at": now}
        columns = list(values)
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c != "book_id")
        conn.execute(
            f"INSERT INTO bookings ({', '.join(columns)}, created_at) VALUES ({', '.join('?' * len(columns))}, ?) "
            f"ON CONFLICT (book_id) DO UPDATE SET {updates}",
            [*values.values(), now],
        )

    def record_intent(
        self, book: dict[str, Any], *, visitor_id: int, user: tuple[str, str, str] | None = None
    ) -> None:
        """Commit the intent to create this booking's pre-registration (before calling createPreReg).

        *user* (primary id, barcode, user group) is saved with the visitor id in the same transaction.
        """
        with self.transaction() as conn:
            if user is not None:
                self._save_user(conn, *user, visitor_id=visitor_id)
            self._upsert(conn, book, state="intent", visitor_id=visitor_id, reason=None)

    def withdraw_intent(self, book_id: str, previous: sqlite3.Row | None) -> None:
        """createPreReg was refused before anything was applied (the credentials): put the booking
        back as it was before :meth:`record_intent` (*previous*, its row then, or None: no row).

        The patron's visitor id saved with the intent stays: that visitor exists in PassagePoint.
        """
        with self.transaction() as conn:
            if previous is None:
                conn.execute("DELETE FROM bookings WHERE book_id = ? AND state = 'intent'", (book_id,))
                return
            columns = previous.keys()
            conn.execute(
                f"UPDATE bookings SET {', '.join(f'{c} = ?' for c in columns if c != 'book_id')} "
                "WHERE book_id = ? AND state = 'intent'",
                [previous[c] for c in columns if c != "book_id"] + [book_id],
            )

    def record_registered(self, book: dict[str, Any], *, visitor_id: int, prereg_id: int) -> None:
        """The pre-registration exists: store its id, clearing any earlier failure."""
        with self.transaction() as conn:
            self._upsert(
                conn, book, state="registered", visitor_id=visitor_id, prereg_id=prereg_id,
                reason=None, next_retry_at=None, reported=0,
            )

    def record_failure(
        self, book: dict[str, Any], *, reason: str, retry_base: int, retry_max: int, now: float | None = None
    ) -> bool:
        """Store a failure and its next retry time (doubling backoff from *now*); True if it must be reported."""
        with self.transaction() as conn:
            previous = conn.execute(
                "SELECT attempts, reason, reported FROM bookings WHERE book_id = ?", (book["book_id"],)
            ).fetchone()
            attempts = (previous["attempts"] if previous else 0) + 1
            delay = retry_delay(attempts, base=retry_base, maximum=retry_max)
            report = must_report(previous, reason)
            self._upsert(
                conn, book, state="failed", reason=reason, attempts=attempts,
                next_retry_at=(self._clock() if now is None else now) + delay, reported=0 if report else 1,
            )
        return report

    def record_uncertain(self, book_id: str, reason: str) -> None:
        """createPreReg may have happened: keep the booking out of automatic retries."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE bookings SET state = 'uncertain', reason = ?, reported = 0, updated_at = ? WHERE book_id = ?",
                (reason, self._clock(), book_id),
            )

    def record_cancelled(self, book: dict[str, Any], *, cancelled_at: str) -> None:
        """Cancelled in LibCal before it was registered: never try it again."""
        with self.transaction() as conn:
            self._upsert(conn, book, state="cancelled", cancelled_at=cancelled_at, next_retry_at=None)

    def mark_cancelled_after_registration(self, book_id: str, cancelled_at: str) -> None:
        """A registered booking was cancelled in LibCal (its pre-registration stays in PassagePoint)."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE bookings SET cancelled_at = ?, updated_at = ? WHERE book_id = ?",
                (cancelled_at, self._clock(), book_id),
            )

    def mark_reported(self, book_ids: Iterable[str], *, cancellation: bool = False) -> None:
        """Remember that these failures (or cancellations) have been reported."""
        column = "cancel_reported" if cancellation else "reported"
        with self.transaction() as conn:
            conn.executemany(f"UPDATE bookings SET {column} = 1 WHERE book_id = ?", [(b,) for b in book_ids])

    def unreported_cancellations(self) -> list[sqlite3.Row]:
        """Registered (or maybe registered: uncertain) bookings cancelled in LibCal, not reported yet."""
        return list(self._db.execute(
            "SELECT * FROM bookings WHERE state IN ('registered', 'uncertain') AND cancelled_at IS NOT NULL "
            "AND cancel_reported = 0"
        ))

    # -- users ---------------------------------------------------------------------------------

    def user(self, primary_id: str) -> sqlite3.Row | None:
        """The cached Alma/PassagePoint identity of a patron, or None."""
        return self._db.execute("SELECT * FROM users WHERE primary_id = ?", (primary_id,)).fetchone()

    def save_user(self, primary_id: str, *, barcode: str, user_group: str, visitor_id: int) -> None:
        """Remember a patron's barcode, group and PassagePoint visitor id."""
        with self.transaction() as conn:
            self._save_user(conn, primary_id, barcode, user_group, visitor_id=visitor_id)

    def forget_visitor(self, primary_id: str) -> None:
        """Drop a patron's cached visitor id, so the next try finds (or creates) the visitor again."""
        with self.transaction() as conn:
            conn.execute("UPDATE users SET visitor_id = NULL, updated_at = ? WHERE primary_id = ?",
                         (self._clock(), primary_id))

    def _save_user(self, conn: sqlite3.Connection, primary_id: str, barcode: str, user_group: str, *, visitor_id: int) -> None:
        conn.execute(
            "INSERT INTO users (primary_id, barcode, user_group, visitor_id, updated_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (primary_id) DO UPDATE SET barcode = excluded.barcode, user_group = excluded.user_group, "
            "visitor_id = excluded.visitor_id, updated_at = excluded.updated_at",
            (primary_id, barcode, user_group, visitor_id, self._clock()),
        )

    # -- passes, alerts, status, purge ---------------------------------------------------------

    def start_pass(self) -> int:
        """Record the start of a pass and return its id."""
        with self.transaction() as conn:
            cursor = conn.execute("INSERT INTO passes (started_at) VALUES (?)", (self._clock(),))
        if cursor.lastrowid is None:  # never after an INSERT; the check tells mypy so
            raise CacheError(f"cache file {self.path}: the pass record was not written")
        return cursor.lastrowid

    def finish_pass(self, pass_id: int, *, exit_status: int, summary: dict[str, Any]) -> None:
        """Record a pass's result."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE passes SET finished_at = ?, exit_status = ?, summary = ? WHERE id = ?",
                (self._clock(), exit_status, json.dumps(summary, sort_keys=True), pass_id),
            )

    def last_pass(self) -> dict[str, Any] | None:
        """The most recent finished pass: started_at, finished_at, exit_status, summary."""
        row = self._db.execute(
            "SELECT * FROM passes WHERE finished_at IS NOT NULL ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        return {
            "started_at": row["started_at"],
            "finished_at": row["finished_at"],
            "exit_status": row["exit_status"],
            "summary": json.loads(row["summary"] or "{}"),
        }

    def counts(self) -> dict[str, int]:
        """Number of bookings per state, plus patrons and registered-then-cancelled bookings."""
        counts = {state: 0 for state in ("registered", "failed", "uncertain", "intent", "cancelled")}
        for row in self._db.execute("SELECT state, COUNT(*) AS n FROM bookings GROUP BY state"):
            counts[row["state"]] = row["n"]
        counts["cancelled_after_registration"] = self._db.execute(
            "SELECT COUNT(*) FROM bookings WHERE state IN ('registered', 'uncertain') AND cancelled_at IS NOT NULL"
        ).fetchone()[0]
        counts["patrons"] = self._db.execute("SELECT COUNT(*) FROM users").fetchone()[0]
        return counts

    def alert_due(self, kind: str, *, interval: float) -> bool:
        """True if no alert of this kind went out in the last *interval* seconds."""
        row = self._db.execute("SELECT sent_at FROM alerts WHERE kind = ?", (kind,)).fetchone()
        return row is None or self._clock() - row["sent_at"] >= interval

    def alert_sent(self, kind: str) -> None:
        """Remember when an alert of this kind was sent; the lines held for it went with it."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO alerts (kind, sent_at) VALUES (?, ?) ON CONFLICT (kind) DO UPDATE SET sent_at = excluded.sent_at",
                (kind, self._clock()),
            )
            conn.execute("DELETE FROM alerts_held WHERE kind = ?", (kind,))

    def hold_alert(self, kind: str, subject: str, lines: Iterable[str]) -> None:
        """Keep alert lines that could not be sent yet (limit reached, or the mail server failed)."""
        now = self._clock()
        with self.transaction() as conn:
            conn.executemany(
                "INSERT INTO alerts_held (kind, subject, line, held_at) VALUES (?, ?, ?, ?)",
                [(kind, subject, line, now) for line in lines],
            )

    def held_alerts(self) -> dict[str, tuple[list[str], list[str]]]:
        """Held alert lines by kind: (subjects in order, without repeats; lines in order)."""
        held: dict[str, tuple[list[str], list[str]]] = {}
        for row in self._db.execute("SELECT kind, subject, line FROM alerts_held ORDER BY id"):
            subjects, lines = held.setdefault(row["kind"], ([], []))
            if row["subject"] not in subjects:
                subjects.append(row["subject"])
            lines.append(row["line"])
        return held

    def purge(self, *, older_than: float) -> tuple[int, int, int]:
        """Drop bookings that ended, and passes that started, more than *older_than* seconds ago, and
        the patrons (university id, barcode) with no booking left; returns the three counts."""
        cutoff = self._clock() - older_than
        with self.transaction() as conn:
            bookings = conn.execute("DELETE FROM bookings WHERE end_time < ?", (cutoff,)).rowcount
            passes = conn.execute("DELETE FROM passes WHERE started_at < ?", (cutoff,)).rowcount
            patrons = conn.execute(
                "DELETE FROM users WHERE primary_id NOT IN "
                "(SELECT primary_id FROM bookings WHERE primary_id IS NOT NULL)"
            ).rowcount
            conn.execute("INSERT INTO meta (key, value) VALUES ('purged_at', ?) "
                         "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(self._clock()),))
        return bookings, passes, patrons

    def purge_due(self, *, every: float = 86400) -> bool:
        """True when the last purge (by any command) is more than *every* seconds ago, or never was."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'purged_at'").fetchone()
        return row is None or self._clock() - float(row[0]) >= every

def _create_private(path: str) -> None:
    """Create *path* empty, readable and writable by its owner only (whatever the umask), unless it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError:
        return  # SQLite's own open reports a directory that is missing or not writable
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def restrict_to_owner(path: str) -> None:
    """Make the cache and its -wal/-shm files owner-only: they hold patrons' ids, barcodes and names.

    A cache created by an earlier version (0644 under the usual umask) is tightened on first use.
    """
    for name in (path, f"{path}-wal", f"{path}-shm"):
        try:
            if os.stat(name).st_mode & 0o077:
                os.chmod(name, 0o600)
        except FileNotFoundError:
            continue
        except PermissionError:
            log.warning("cannot make %s readable by its owner only: it holds patron data; fix its permissions", name)

"""The embedded engine: one SQLite file in the data directory (ADR-0008).

The file's schema version is SQLite's ``user_version``: migration *n* brings
a file from version *n - 1* to *n*, in one transaction. A file from a newer
foreman is refused before anything in it changes.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from twisted.logger import Logger

from foreman.queue import schema
from foreman.queue.engines.base import Connection, Cursor, Parameters, newer_schema_message

log = Logger()

#: SQLite's words for a store that cannot be written now, whatever was asked.
_UNAVAILABLE = (
    "locked",
    "busy",
    "disk",
    "full",
    "readonly",
    "read-only",
    "unable to open",
    "i/o",
)


class SQLiteConnection:
    """A :class:`~foreman.queue.engines.base.Connection` on a ``sqlite3`` one.

    ``raw`` is the ``sqlite3.Connection`` itself (autocommit: its
    ``isolation_level`` is ``None``), for tests that look at what SQLite saw.
    """

    def __init__(self, raw: sqlite3.Connection) -> None:
        self.raw = raw

    def execute(self, sql: str, parameters: Parameters = (), /) -> Cursor:
        return self.raw.execute(sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Parameters], /) -> None:
        self.raw.executemany(sql, parameters)

    def insert_returning_id(self, sql: str, parameters: Parameters = (), /) -> int:
        row_id = self.raw.execute(sql, parameters).lastrowid
        assert row_id is not None
        return row_id

    @property
    def in_transaction(self) -> bool:
        return self.raw.in_transaction

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        self.raw.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self._rollback()
            raise
        try:
            self.raw.execute("COMMIT")
        except BaseException:
            # A COMMIT refused (a full disk, a lock held elsewhere) may leave
            # the transaction open; the next BEGIN would then fail for ever.
            self._rollback()
            raise

    def _rollback(self) -> None:
        if self.raw.in_transaction:
            try:
                self.raw.execute("ROLLBACK")
            except sqlite3.Error:
                log.failure("Could not roll back a transaction of the store")

    def close(self) -> None:
        self.raw.close()


class SQLiteEngine:
    """The store in the SQLite file at ``path``."""

    name = "sqlite"
    Error: type[Exception] = sqlite3.Error
    IntegrityError: type[Exception] = sqlite3.IntegrityError
    #: Julian days to the epoch, in seconds (``unixepoch('subsec')`` needs 3.42).
    now_sql = "((julianday('now') - 2440587.5) * 86400.0)"
    # A write transaction (BEGIN IMMEDIATE) holds the whole file: nothing to lock.
    for_update = ""
    skip_locked = ""
    notifies = False
    shared = False

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def description(self) -> str:
        return str(self.path)

    def connect(self) -> SQLiteConnection:
        if self.path.is_file() and self.path.stat().st_size == 0:
            # What a disk that filled up as the file was made leaves behind,
            # or a `touch`: SQLite reads it as an empty database.
            log.info("The store {path} is an empty file: starting a fresh store", path=self.path)
        raw = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            raw.row_factory = sqlite3.Row
            raw.execute("PRAGMA busy_timeout=5000")
            # Artifacts are deleted with their job (ON DELETE CASCADE).
            raw.execute("PRAGMA foreign_keys=ON")
        except BaseException:
            raw.close()
            raise
        return SQLiteConnection(raw)

    def migrate(self, connection: Connection) -> None:
        raw = _raw(connection)
        # Refuse a newer schema before changing anything in the file.
        check_version(raw)
        # WAL lets readers (a backup, sqlite3 on the command line) look
        # while foreman writes; NORMAL sync is durable across a crash of
        # foreman, which is what the queue promises.
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute("PRAGMA synchronous=NORMAL")
        found: int = raw.execute("PRAGMA user_version").fetchone()[0]
        migrations = schema.MIGRATIONS
        for number, script in enumerate(migrations[found:], start=found + 1):
            # Each in its own transaction.
            raw.executescript(f"BEGIN; {script}; PRAGMA user_version={number}; COMMIT;")

    def probe_write(self, connection: Connection) -> None:
        (version,) = connection.execute("PRAGMA user_version").fetchone()
        connection.execute(f"PRAGMA user_version = {int(version)}")

    def notify(self, connection: Connection, channel: str, payload: str) -> None:
        """Nothing: one file has one foreman, which knows what it wrote."""

    def listen(self, channel: str, on_notify: Callable[[str], None], stop: threading.Event) -> None:
        """Nothing to hear: returns at once."""

    def is_unavailable(self, error: BaseException) -> bool:
        if not isinstance(error, sqlite3.OperationalError):
            return False
        text = str(error).lower()
        return any(word in text for word in _UNAVAILABLE)


def check_version(raw: sqlite3.Connection) -> None:
    """Refuse a file written by a newer foreman."""
    found: int = raw.execute("PRAGMA user_version").fetchone()[0]
    if found > len(schema.MIGRATIONS):
        raise RuntimeError(newer_schema_message(found, "move the file aside"))


def _raw(connection: Connection) -> sqlite3.Connection:
    if not isinstance(connection, SQLiteConnection):
        raise TypeError(f"not a SQLite connection: {connection!r}")
    return connection.raw

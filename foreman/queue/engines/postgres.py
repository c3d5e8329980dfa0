"""The job store on PostgreSQL, through psycopg 3's blocking API on the store's thread.

foreman's SQL is written for SQLite's ``?`` and ``:name`` parameters; this
engine turns them into psycopg's ``%s`` and ``%(name)s`` once per statement
(:func:`convert_param_style`). The schema's version is the one row of the
``foreman_schema`` table. Migrations run in one transaction that holds an
advisory lock, so several foremans starting on one database at once migrate
it once; a database of a newer schema is refused before anything changes.

A connection the server dropped (a restart, a network cut) fails the call
that met it; the next call, outside a transaction, connects again.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import pq, sql
from twisted.logger import Logger

from foreman.queue import schema
from foreman.queue.engines.base import (
    Connection,
    Cursor,
    Parameters,
    mask_password,
    newer_schema_message,
)

log = Logger()

#: ``pg_advisory_xact_lock``'s key for migrations: "foreman" in ASCII.
MIGRATION_LOCK = 0x666F72656D616E

#: How long connecting may take, in seconds.
CONNECT_TIMEOUT = 10

#: How often a listener looks at its ``stop``, and waits before connecting
#: again after losing its connection, in seconds.
LISTEN_POLL = 0.5
LISTEN_RECONNECT = 1.0

_TOKENS = re.compile(r"""'(?:[^']|'')*'|"[^"]*"|::|:([A-Za-z_]\w*)|\?|%""")


@functools.lru_cache(maxsize=512)
def convert_param_style(sql: str) -> str:
    """``sql`` with ``?`` as ``%s``, ``:name`` as ``%(name)s`` and ``%`` as ``%%``;
    quoted strings, quoted names and ``::`` casts are left as they are."""

    def convert(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "?":
            return "%s"
        if token == "%":
            return "%%"
        if match.group(1) is not None:
            return f"%({match.group(1)})s"
        return token

    return _TOKENS.sub(convert, sql)


class PostgresRow(tuple[Any, ...]):
    """A row by position, by column name, or unpacked, as ``sqlite3.Row``."""

    _names: dict[str, int]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


def _row_factory(cursor: Any) -> Any:
    description = cursor.description or ()
    names = {column.name: index for index, column in enumerate(description)}

    def make(values: Sequence[Any]) -> PostgresRow:
        row = PostgresRow(values)
        row._names = names
        return row

    return make


class PostgresConnection:
    """A :class:`~foreman.queue.engines.base.Connection` on a psycopg one, in autocommit
    (so a statement outside :meth:`transaction` commits on its own)."""

    def __init__(self, connect: Any) -> None:
        self._connect = connect
        self.raw: psycopg.Connection[Any] = connect()
        self._explicit = False

    def _ready(self) -> psycopg.Connection[Any]:
        if self.raw.closed or self.raw.broken:
            if self._explicit:
                raise psycopg.OperationalError("the connection was lost in a transaction")
            log.info("Connecting to the store's database again")
            self.raw = self._connect()
        return self.raw

    def execute(self, sql: str, parameters: Parameters = (), /) -> Cursor:
        try:
            return self._execute(sql, parameters)
        except psycopg.OperationalError:
            # A read on its own, on a connection the server dropped (it
            # restarted): asked again on a new connection, once. Anything
            # else may have been done already, and fails.
            if self._explicit or not sql.lstrip()[:6].upper() == "SELECT" or not self.raw.broken:
                raise
            return self._execute(sql, parameters)

    def _execute(self, sql: str, parameters: Parameters) -> Cursor:
        cursor = self._ready().cursor(row_factory=_row_factory)
        if parameters:
            cursor.execute(convert_param_style(sql).encode(), parameters)
        else:
            # No parameters: a ``%`` is only a ``%``, and several statements may go at once.
            cursor.execute(sql.encode())
        return _Cursor(cursor)

    def executemany(self, sql: str, parameters: Iterable[Parameters], /) -> None:
        with self._ready().cursor() as cursor:
            cursor.executemany(convert_param_style(sql).encode(), list(parameters))

    def insert_returning_id(self, sql: str, parameters: Parameters = (), /) -> int:
        row = self.execute(f"{sql} RETURNING id", parameters).fetchone()
        assert row is not None
        return int(row[0])

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != pq.TransactionStatus.IDLE

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        self.execute("BEGIN")
        self._explicit = True
        try:
            yield self
        except BaseException:
            self._rollback()
            raise
        try:
            self.raw.execute(b"COMMIT")
        except BaseException:
            self._rollback()
            raise
        finally:
            self._explicit = False

    def _rollback(self) -> None:
        self._explicit = False
        if self.raw.closed or self.raw.broken or not self.in_transaction:
            return
        try:
            self.raw.execute(b"ROLLBACK")
        except psycopg.Error:
            log.failure("Could not roll back a transaction of the store")

    def close(self) -> None:
        self.raw.close()


class _Cursor:
    """psycopg's cursor, whose ``rowcount`` and rows are what the store reads;
    a statement that returns no rows fetches none (as in SQLite)."""

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    def fetchone(self) -> Any:
        return self._cursor.fetchone() if self._cursor.description else None

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall() if self._cursor.description else []

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())


class PostgresEngine:
    """The store in the PostgreSQL database at ``url`` (``postgresql://...``)."""

    name = "postgresql"
    Error: type[Exception] = psycopg.Error
    IntegrityError: type[Exception] = psycopg.IntegrityError
    # clock_timestamp(), not now(): the time the statement runs, not the
    # time its transaction began.
    now_sql = "extract(epoch from clock_timestamp())::double precision"
    for_update = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    notifies = True
    shared = True

    def __init__(self, url: str) -> None:
        self._url = url

    @property
    def description(self) -> str:
        return mask_password(self._url)

    def _raw_connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            self._url,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT,
            application_name="foreman",
        )

    def connect(self) -> PostgresConnection:
        return PostgresConnection(self._raw_connect)

    def migrate(self, connection: Connection) -> None:
        migrations = schema.POSTGRES_MIGRATIONS
        with connection.transaction() as db:
            # One foreman at a time: the others wait here, then find nothing to do.
            db.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
            found = _schema_version(db)
            if found > len(migrations):
                raise RuntimeError(newer_schema_message(found, "use another database"))
            if found == len(migrations):
                return
            if found == 0:
                db.execute("CREATE TABLE foreman_schema (version INTEGER NOT NULL)")
                db.execute("INSERT INTO foreman_schema (version) VALUES (0)")
            for number, script in enumerate(migrations[found:], start=found + 1):
                db.execute(script)
                db.execute("UPDATE foreman_schema SET version = ?", (number,))
            log.info(
                "Brought the store's database from schema {found} to {version}",
                found=found,
                version=len(migrations),
            )

    def probe_write(self, connection: Connection) -> None:
        connection.execute("UPDATE foreman_schema SET version = version")

    def notify(self, connection: Connection, channel: str, payload: str) -> None:
        connection.execute("SELECT pg_notify(?, ?)", (channel, payload))

    def listen(self, channel: str, on_notify: Callable[[str], None], stop: threading.Event) -> None:
        missed = False
        while not stop.is_set():
            try:
                with self._raw_connect() as raw:
                    raw.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    if missed:
                        log.info("Listening on {channel} again", channel=channel)
                        on_notify("")
                        missed = False
                    while not stop.is_set():
                        for notification in raw.notifies(timeout=LISTEN_POLL):
                            on_notify(notification.payload)
            except psycopg.OperationalError as e:
                if not missed:
                    log.info(
                        "Lost the connection listening on {channel} ({error}); connecting again",
                        channel=channel,
                        error=str(e).strip(),
                    )
                missed = True
                stop.wait(LISTEN_RECONNECT)

    def is_unavailable(self, error: BaseException) -> bool:
        # OperationalError: the server is gone, refuses, is shutting down, or
        # its disk is full (DiskFull is one); a lost connection is too.
        return isinstance(error, psycopg.OperationalError | psycopg.errors.DiskFull)


def _schema_version(db: Connection) -> int:
    (table,) = db.execute("SELECT to_regclass('foreman_schema') IS NOT NULL").fetchone()
    if not table:
        return 0
    row = db.execute("SELECT version FROM foreman_schema").fetchone()
    return 0 if row is None else int(row[0])

"""What the job store asks of a database: the seam between foreman's SQL and an engine.

foreman's SQL is written once, with ``?`` and ``:name`` parameters and the
subset of SQL both engines speak. An :class:`Engine` opens a
:class:`Connection` to its database, brings the schema up to date (or refuses
a newer one), and says which of its errors mean "the store cannot be used
now". The engines are :mod:`foreman.queue.engines.sqlite` (the embedded
default) and :mod:`foreman.queue.engines.postgres`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

#: A statement's parameters: positional for ``?``, by name for ``:name``.
Parameters = Sequence[Any] | Mapping[str, Any]


class Row(Protocol):
    """One row: by position (``row[0]``), by column name (``row["id"]``), unpacked."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...

    def __len__(self) -> int: ...

    def keys(self) -> list[str]: ...


class Cursor(Protocol):
    """What a statement leaves: its rows, or how many rows it changed."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """One connection to the store's database, used on the store's thread only.

    Outside :meth:`transaction` every statement commits on its own.
    """

    def execute(self, sql: str, parameters: Parameters = (), /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Parameters], /) -> None: ...

    def insert_returning_id(self, sql: str, parameters: Parameters = (), /) -> int:
        """Run an ``INSERT`` into a table whose key ``id`` the database numbers;
        the number it gave the row."""
        ...

    @property
    def in_transaction(self) -> bool: ...

    def transaction(self) -> AbstractContextManager[Connection]:
        """One transaction, taking the write lock at once (SQLite's ``BEGIN
        IMMEDIATE``): committed when the block ends, rolled back if it raises."""
        ...

    def close(self) -> None: ...


class Engine(Protocol):
    """A kind of database the job store can live in."""

    #: ``sqlite`` or ``postgresql``: for logs and tests.
    name: str

    @property
    def description(self) -> str:
        """Where the store is, for messages: never a password."""
        ...

    #: The engine's errors: the base class, and a broken constraint.
    Error: type[Exception]
    IntegrityError: type[Exception]

    def connect(self) -> Connection:
        """A new connection, set up as the store needs it (nothing migrated)."""
        ...

    def migrate(self, connection: Connection) -> None:
        """Refuse a database written by a newer foreman (changing nothing), else
        apply the migrations it lacks."""
        ...

    def probe_write(self, connection: Connection) -> None:
        """One small write that changes nothing, inside a transaction: does the
        store take writes?"""
        ...

    def is_unavailable(self, error: BaseException) -> bool:
        """Whether ``error`` means the database cannot be used now (locked, full,
        gone) rather than a mistake in what was asked of it."""
        ...

    # -- several foremans on one database (issue 18) ---------------------------

    #: SQL for the database's clock now, in seconds since the epoch (a
    #: ``DOUBLE PRECISION``/``REAL``): leases and heartbeats are timed on it,
    #: so the boxes' own clocks may differ.
    now_sql: str
    #: Appended to a ``SELECT`` that locks the rows it reads until the
    #: transaction ends (empty where a transaction locks the whole database).
    for_update: str
    #: The same, skipping rows another transaction holds: how several boxes
    #: claim from one queue without waiting on each other.
    skip_locked: str
    #: Whether :meth:`listen` hears anything (PostgreSQL's ``LISTEN/NOTIFY``).
    notifies: bool
    #: Whether several foremans may share the database (then each is a box of
    #: a fleet, ADR-0026); a SQLite file is one foreman's.
    shared: bool

    def notify(self, connection: Connection, channel: str, payload: str) -> None:
        """Tell the listeners on ``channel`` (once the transaction, if any,
        commits); nothing where the engine has no notifications."""
        ...

    def listen(self, channel: str, on_notify: Callable[[str], None], stop: threading.Event) -> None:
        """Call ``on_notify(payload)`` for each notification on ``channel``
        until ``stop`` is set: blocking, on a connection of its own, connecting
        again when it is lost (then ``on_notify("")``: some may have been
        missed). Returns at once where the engine has no notifications."""
        ...


def newer_schema_message(found: int, remedy: str) -> str:
    """Why a database of a newer schema is refused, and what to do (``remedy``)."""
    return (
        f"the job store was written by a newer foreman (schema {found}); "
        f"upgrade foreman or {remedy}"
    )


def mask_password(url: str) -> str:
    """``url`` with any password replaced by ``***``, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        masked = url
    else:
        user = parts.username or ""
        host = parts.netloc.rpartition("@")[2]
        masked = urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    # A password may also come as a query parameter (?password=...).
    if "password=" in masked.lower():
        query = "&".join(
            f"{key}=***" if key.lower() == "password" else f"{key}={value}" if sep else key
            for key, sep, value in (
                item.partition("=") for item in urlsplit(masked).query.split("&")
            )
        )
        masked = urlunsplit(urlsplit(masked)._replace(query=query))
    return masked

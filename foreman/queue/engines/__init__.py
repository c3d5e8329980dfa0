"""The databases the job store can live in: SQLite (the default) and PostgreSQL.

:func:`engine_for` picks one from ``--database``: nothing, or a path, is a
SQLite file; a ``postgresql://`` URL is a PostgreSQL database.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from foreman.queue.engines.base import (
    Connection,
    Cursor,
    Engine,
    Parameters,
    Row,
    mask_password,
)
from foreman.queue.engines.sqlite import SQLiteEngine

POSTGRES_SCHEMES = ("postgresql", "postgres")


def is_postgres_url(database: str) -> bool:
    return urlsplit(database).scheme.lower() in POSTGRES_SCHEMES


def engine_for(database: str | None, default_file: Path) -> Engine:
    """The engine for ``database``: a ``postgresql://`` URL, or a SQLite file
    (``default_file`` when ``database`` is empty)."""
    if not database:
        return SQLiteEngine(default_file)
    if is_postgres_url(database):
        # Imported here: a SQLite store never loads psycopg.
        from foreman.queue.engines.postgres import PostgresEngine

        return PostgresEngine(database)
    if "://" in database:
        raise ValueError(
            f"unknown database {mask_password(database)!r}: a postgresql:// URL or a file path"
        )
    return SQLiteEngine(Path(database).expanduser())


__all__ = [
    "Connection",
    "Cursor",
    "Engine",
    "Parameters",
    "Row",
    "SQLiteEngine",
    "engine_for",
    "is_postgres_url",
    "mask_password",
]

"""The job store's tests, on each engine: SQLite (a file in ``tmp_path``) and PostgreSQL
(a new database on the session's server, ``postgres_url``).

A test that takes the ``store_engine`` fixture (tests/conftest.py) runs once
per engine; the helpers here look at a database from the side, as a second
connection, whichever engine holds it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from foreman.queue import schema
from foreman.queue.engines import Connection, Engine, SQLiteEngine
from foreman.queue.engines.sqlite import SQLiteConnection
from foreman.queue.schema import DATABASE_NAME
from foreman.queue.store import JobStore

#: ``store_engine``'s parameters: every test that takes it runs on both.
ENGINES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def make_engine(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> Engine:
    if kind == "sqlite":
        return SQLiteEngine(tmp_path / DATABASE_NAME)
    from foreman.queue.engines.postgres import PostgresEngine

    url: str = request.getfixturevalue("postgres_url")
    return PostgresEngine(url)


def is_postgres(engine: Engine) -> bool:
    return engine.name == "postgresql"


@contextlib.contextmanager
def side(engine: Engine) -> Iterator[Connection]:
    """A second, independent connection (nothing migrated; closed afterwards)."""
    connection = engine.connect()
    try:
        yield connection
    finally:
        connection.close()


def migrations_name(engine: Engine) -> str:
    """The attribute of :mod:`foreman.queue.schema` with ``engine``'s migrations."""
    return "POSTGRES_MIGRATIONS" if is_postgres(engine) else "MIGRATIONS"


def migrations(engine: Engine) -> Sequence[str]:
    found: Sequence[str] = getattr(schema, migrations_name(engine))
    return found


def schema_version(engine: Engine) -> int:
    with side(engine) as db:
        if not is_postgres(engine):
            return int(db.execute("PRAGMA user_version").fetchone()[0])
        if not db.execute("SELECT to_regclass('foreman_schema') IS NOT NULL").fetchone()[0]:
            return 0
        return int(db.execute("SELECT version FROM foreman_schema").fetchone()[0])


def set_schema_version(engine: Engine, version: int) -> None:
    """Mark the database as of schema ``version`` (and nothing else)."""
    with side(engine) as db:
        if not is_postgres(engine):
            db.execute(f"PRAGMA user_version = {int(version)}")
            return
        db.execute("CREATE TABLE IF NOT EXISTS foreman_schema (version INTEGER NOT NULL)")
        db.execute("DELETE FROM foreman_schema")
        db.execute("INSERT INTO foreman_schema (version) VALUES (?)", (version,))


def table_names(engine: Engine) -> set[str]:
    with side(engine) as db:
        if is_postgres(engine):
            rows = db.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        else:
            rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {row[0] for row in rows}


def migrate_to(engine: Engine, version: int) -> None:
    """Bring a new database to schema ``version`` as that foreman would have."""
    with side(engine) as db:
        for number, script in enumerate(migrations(engine)[:version], start=1):
            if isinstance(db, SQLiteConnection):
                db.raw.executescript(f"BEGIN; {script}; PRAGMA user_version={number}; COMMIT;")
            else:
                with db.transaction():
                    db.execute(script)
    if is_postgres(engine):
        set_schema_version(engine, version)


@pytest.fixture
def rigs_on_each_engine(store_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """Worker rigs (tests/worker_rig.py) keep their store on ``store_engine`` unless
    told otherwise: a test that uses this runs once per engine. On SQLite each rig
    keeps its own file, as it would without this. Their connections are closed
    at the end (a rig's ``stop`` leaves the store open)."""
    from tests import worker_rig

    made: list[JobStore] = []
    monkeypatch.setattr(worker_rig, "made_stores", made)
    if is_postgres(store_engine):
        monkeypatch.setattr(worker_rig, "default_database", store_engine)
    yield store_engine
    for store in made:
        connection, store._connection = store._connection, None
        if connection is not None:
            connection.close()


#: Marks a test whose worker rigs run on each engine.
on_each_engine = pytest.mark.usefixtures("rigs_on_each_engine")

"""The real PostgreSQL the tests use (tests/postgres_server.py, tests/conftest.py)."""

from __future__ import annotations

import threading

import psycopg
import pytest

from tests.conftest import NewPostgresDatabase
from tests.postgres_server import HOST, ROLE, PostgresServer, required

#: The databases the parametrized test below was given, to see each is new.
_SEEN: set[str] = set()


def _rows(url: str) -> list[tuple[int, str]]:
    with psycopg.connect(url) as connection:
        cursor = connection.execute("SELECT id, note FROM notes ORDER BY id")
        return [(row[0], row[1]) for row in cursor.fetchall()]


def _create_notes(url: str, *notes: str) -> None:
    with psycopg.connect(url) as connection:
        connection.execute("CREATE TABLE notes (id serial PRIMARY KEY, note text NOT NULL)")
        for note in notes:
            connection.execute("INSERT INTO notes (note) VALUES (%s)", (note,))


def test_url_names_the_role_the_address_and_the_port(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    assert postgres_url.startswith(f"postgresql://{ROLE}@{HOST}:{postgres_server.port}/test_")
    with psycopg.connect(postgres_url) as connection:
        row = connection.execute(
            "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert row == (ROLE, True)
        (fsync,) = connection.execute("SHOW fsync").fetchone() or ("?",)
        assert fsync == "off"


@pytest.mark.parametrize("run", [1, 2])
def test_each_test_gets_a_new_empty_database(postgres_url: str, run: int) -> None:
    assert postgres_url not in _SEEN
    _SEEN.add(postgres_url)
    with psycopg.connect(postgres_url) as connection:
        tables = connection.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone()
    assert tables == (0,)
    _create_notes(postgres_url, f"run {run}")


def test_databases_are_distinct(new_postgres_database: NewPostgresDatabase) -> None:
    first, second = new_postgres_database(), new_postgres_database()
    assert first != second
    _create_notes(first, "only in the first")
    with psycopg.connect(second) as connection, pytest.raises(psycopg.errors.UndefinedTable):
        connection.execute("SELECT * FROM notes")


def test_data_survives_a_restart(postgres_server: PostgresServer, postgres_url: str) -> None:
    _create_notes(postgres_url, "kept")
    port = postgres_server.port
    postgres_server.restart()
    assert postgres_server.port == port
    assert _rows(postgres_url) == [(1, "kept")]


def test_a_committed_row_survives_a_kill(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    _create_notes(postgres_url)
    with psycopg.connect(postgres_url) as connection:
        connection.execute("INSERT INTO notes (note) VALUES ('committed')")
        connection.commit()
        postgres_server.kill()  # Straight after the commit: nothing had time to flush.
        assert not postgres_server.running
        with pytest.raises(psycopg.OperationalError):
            connection.execute("SELECT 1")
    postgres_server.start()
    assert _rows(postgres_url) == [(1, "committed")]


def test_a_kill_ends_busy_sessions_too(postgres_server: PostgresServer, postgres_url: str) -> None:
    """A backend in the middle of a query goes down with the server, so that the
    server can start again at once."""
    errors: list[BaseException] = []
    started = threading.Event()

    def sleep_in_a_query() -> None:
        try:
            with psycopg.connect(postgres_url) as connection:
                started.set()
                connection.execute("SELECT pg_sleep(60)")
        except psycopg.OperationalError as error:
            errors.append(error)

    sleeper = threading.Thread(target=sleep_in_a_query)
    sleeper.start()
    assert started.wait(10)
    postgres_server.kill()
    sleeper.join(10)
    assert not sleeper.is_alive()
    assert len(errors) == 1
    postgres_server.start()
    with psycopg.connect(postgres_url) as connection:
        assert connection.execute("SELECT 1").fetchone() == (1,)


def test_a_stopped_server_refuses_connections(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    postgres_server.stop()
    try:
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(postgres_url, connect_timeout=5).close()
    finally:
        postgres_server.start()
    with psycopg.connect(postgres_url) as connection:
        assert connection.execute("SELECT 1").fetchone() == (1,)


def test_require_postgres_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FOREMAN_REQUIRE_POSTGRES", raising=False)
    assert not required()
    monkeypatch.setenv("FOREMAN_REQUIRE_POSTGRES", "0")
    assert not required()
    monkeypatch.setenv("FOREMAN_REQUIRE_POSTGRES", "1")
    assert required()

"""The store's engines: choosing one, what each makes of foreman's SQL, and what only
PostgreSQL has to face (several foremans migrating at once, a server that restarts).
The store's behaviour on both is tests/test_store.py's and tests/test_job_store.py's."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_twisted
from treq.client import HTTPClient

from foreman.config import Config
from foreman.queue import schema
from foreman.queue import store as store_module
from foreman.queue.engines import Connection, SQLiteEngine, engine_for, mask_password
from foreman.queue.engines.postgres import PostgresEngine, convert_param_style
from foreman.queue.job import Job, JobState
from foreman.queue.store import JobStore
from tests.conftest import RunningSimulator, StartForeman
from tests.http_helpers import eventually
from tests.jobs_http import JobsClient, chat
from tests.postgres_server import PostgresServer
from tests.store_engines import schema_version, set_schema_version
from tests.test_options import parse
from tests.test_store import failure_of, job, result_of
from tests.webhook_receiver import WebhookReceiver

NOW = 1_800_000_000.0

# -- choosing -------------------------------------------------------------------------------


def test_no_database_is_the_file_in_the_data_directory(tmp_path: Path) -> None:
    engine = engine_for(None, tmp_path / "foreman.sqlite3")
    assert isinstance(engine, SQLiteEngine) and engine.path == tmp_path / "foreman.sqlite3"
    assert isinstance(engine_for("", tmp_path / "x"), SQLiteEngine)
    elsewhere = engine_for(str(tmp_path / "other.db"), tmp_path / "x")
    assert isinstance(elsewhere, SQLiteEngine) and elsewhere.path == tmp_path / "other.db"


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "POSTGRESQL"])
def test_a_postgresql_url_is_postgresql(scheme: str, tmp_path: Path) -> None:
    engine = engine_for(f"{scheme}://u:pw@db.example/foreman", tmp_path / "x")
    assert isinstance(engine, PostgresEngine)
    assert "pw" not in engine.description and "***" in engine.description


def test_another_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"mysql://u:\*\*\*@h/d"):
        engine_for("mysql://u:secret@h/d", tmp_path / "x")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:s3cret@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://:s3cret@h/db", "postgresql://:***@h/db"),
        ("postgresql://h/db?user=u&password=s3cret&sslmode=require", None),
        ("postgresql://u:p%40ss@h/db", "postgresql://u:***@h/db"),
    ],
)
def test_a_password_is_never_shown(url: str, shown: str | None) -> None:
    masked = mask_password(url)
    assert "s3cret" not in masked and "p%40ss" not in masked
    if shown is not None:
        assert masked == shown
    else:
        assert "password=***" in masked and "sslmode=require" in masked


def test_database_option_and_environment() -> None:
    assert parse([]).database is None
    url = "postgresql://foreman:s3cret@db/foreman"
    assert parse(["--database", url]).database == url
    config = parse([], {"FOREMAN_DATABASE_URL": url})
    assert config.database == url
    assert "s3cret" not in repr(config) and "foreman:***@db" in repr(config)
    assert parse(["--database", "/tmp/q.sqlite3"]).database == "/tmp/q.sqlite3"
    from twisted.python.usage import UsageError

    with pytest.raises(UsageError, match=r"mysql://u:\*\*\*@h/d"):
        parse(["--database", "mysql://u:s3cret@h/d"])


def test_config_repr_without_a_database() -> None:
    assert "database=None" in repr(Config())


# -- the SQL, converted ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "converted"),
    [
        ("SELECT * FROM jobs WHERE id = ?", "SELECT * FROM jobs WHERE id = %s"),
        ("UPDATE jobs SET a = :a, b_2 = :b_2 WHERE id = :id", None),
        ("SELECT '?', ':x', 'it''s ?' FROM t WHERE y = ?", None),
        ("SELECT x::text, 5 % 2 FROM t WHERE y = ?", "SELECT x::text, 5 %% 2 FROM t WHERE y = %s"),
        ('SELECT "odd?name" FROM t', 'SELECT "odd?name" FROM t'),
    ],
)
def test_parameters_in_psycopg_s_style(sql: str, converted: str | None) -> None:
    expected = {
        "UPDATE jobs SET a = :a, b_2 = :b_2 WHERE id = :id": (
            "UPDATE jobs SET a = %(a)s, b_2 = %(b_2)s WHERE id = %(id)s"
        ),
        "SELECT '?', ':x', 'it''s ?' FROM t WHERE y = ?": (
            "SELECT '?', ':x', 'it''s ?' FROM t WHERE y = %s"
        ),
    }
    assert convert_param_style(sql) == (converted or expected[sql])


# -- errors -----------------------------------------------------------------------------------


def test_what_makes_the_store_unavailable(tmp_path: Path) -> None:
    lite = SQLiteEngine(tmp_path / "x")
    assert lite.is_unavailable(sqlite3.OperationalError("database is locked"))
    assert lite.is_unavailable(sqlite3.OperationalError("database or disk is full"))
    assert lite.is_unavailable(sqlite3.OperationalError("disk I/O error"))
    assert not lite.is_unavailable(sqlite3.OperationalError("no such table: jobs"))
    assert not lite.is_unavailable(sqlite3.IntegrityError("UNIQUE constraint failed"))
    pg = PostgresEngine("postgresql://h/d")
    assert pg.is_unavailable(psycopg.OperationalError("server closed the connection"))
    assert pg.is_unavailable(psycopg.errors.DiskFull())
    assert not pg.is_unavailable(psycopg.errors.UniqueViolation())
    assert not pg.is_unavailable(psycopg.errors.UndefinedTable())


# -- PostgreSQL only --------------------------------------------------------------------------


@pytest.mark.postgres
def test_a_newer_postgresql_schema_is_refused_with_the_way_out(postgres_url: str) -> None:
    engine = PostgresEngine(postgres_url)
    set_schema_version(engine, len(schema.POSTGRES_MIGRATIONS) + 3)
    failure = failure_of(JobStore(engine).open())
    assert failure.check(RuntimeError)
    message = failure.getErrorMessage()
    assert f"newer foreman (schema {len(schema.POSTGRES_MIGRATIONS) + 3})" in message
    assert "upgrade foreman" in message


@pytest.mark.postgres
def test_foremans_starting_at_once_migrate_once(postgres_url: str) -> None:
    engine = PostgresEngine(postgres_url)
    stores = [JobStore(engine) for _ in range(6)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(stores))

    def start(store: JobStore) -> None:
        barrier.wait()
        try:
            store.startup(NOW)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=start, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    try:
        assert errors == []
        assert schema_version(engine) == len(schema.POSTGRES_MIGRATIONS)
        result_of(stores[0].insert(job("a")))
        assert result_of(stores[-1].get("a")) == job("a")
    finally:
        for store in stores:
            result_of(store.close())


@pytest.mark.postgres
def test_after_the_server_restarts_the_store_connects_again(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    store = JobStore(PostgresEngine(postgres_url))
    result_of(store.open())
    try:
        result_of(store.insert(job("a")))
        postgres_server.kill()  # a crash: every connection gone at once
        postgres_server.start()
        # A read alone that meets the dead connection is asked again, once,
        # on a new connection; the committed row survived.
        assert result_of(store.get("a")) == job("a")
        postgres_server.kill()
        postgres_server.start()
        # A write that meets it fails (it may have been done): the store is
        # unavailable, and the next call connects again.
        lost = failure_of(store.update(job("a", state=JobState.WORKING)))
        assert lost.value is not None and store.engine.is_unavailable(lost.value)
        result_of(store.update(job("a", state=JobState.WORKING)))
        result_of(store.check_writable())
        assert result_of(store.count_by_state())[JobState.WORKING] == 1
    finally:
        result_of(store.close())


@pytest.mark.postgres
def test_a_transaction_cut_by_a_lost_connection_stores_nothing(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    store = JobStore(PostgresEngine(postgres_url))
    result_of(store.open())
    try:

        def die_midway(db: Any) -> None:
            db.execute(
                "INSERT INTO jobs (id, model, endpoint, body, sync, state, created_at,"
                " updated_at) VALUES ('x', 'm', 'chat', ?, 0, 'queued', 0, 0)",
                (b"",),
            )
            postgres_server.kill()
            db.execute("SELECT 1")

        cut = failure_of(store.transact(die_midway)).value
        assert cut is not None and store.engine.is_unavailable(cut)
        postgres_server.start()
        assert result_of(store.get("x")) is None
        assert result_of(store.count_by_state())[JobState.QUEUED] == 0
    finally:
        result_of(store.close())


@pytest.mark.postgres
def test_an_idempotency_key_raced_by_another_foreman_finds_its_job(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = PostgresEngine(postgres_url)
    ours, theirs = JobStore(engine), JobStore(engine)
    result_of(ours.open())
    result_of(theirs.open())
    winner = job("B", idempotency_key="k")
    look = store_module._by_idempotency_key
    raced: list[bool] = []

    def look_then_lose_the_race(db: Connection, key: str) -> Job | None:
        found = look(db, key)
        if not raced:
            # Between our look and our insert, another foreman inserts the key.
            raced.append(True)
            result_of(theirs.insert(winner))
        return found

    monkeypatch.setattr(store_module, "_by_idempotency_key", look_then_lose_the_race)
    try:
        assert result_of(ours.insert_unless_known(job("A", idempotency_key="k"))) == winner
        assert raced and result_of(ours.get("A")) is None
    finally:
        result_of(ours.close())
        result_of(theirs.close())


# -- foreman on PostgreSQL ----------------------------------------------------------------------


@pytest.mark.postgres
@pytest_twisted.ensureDeferred
async def test_foreman_runs_its_queue_on_postgresql(
    reactor: Any,
    http: HTTPClient,
    simulator: RunningSimulator,
    start_foreman: StartForeman,
    receiver: WebhookReceiver,
    postgres_url: str,
    tmp_path: Path,
) -> None:
    running = await start_foreman(simulator.url, database=postgres_url)
    jobs = JobsClient(http, running.url)
    hooked = chat("llama3.2", "on postgres", state_webhook_url=receiver.url("/hook"))
    job_id = await jobs.submitted(hooked)
    view = await jobs.until(job_id, "done", reactor=reactor)
    assert view["state"] == "done"
    listing = await jobs.call("GET", "/jobs?model=LLAMA3.2:latest")
    assert [each["job_id"] for each in listing.json()["jobs"]] == [job_id]
    status = await jobs.call("GET", "/ui/status.json")
    assert status.code == 200 and job_id in status.body.decode()

    def states() -> set[str]:
        return {json.loads(each.body)["state"] for each in receiver.received}

    await eventually(lambda: {"queued", "done"} <= states(), reactor)
    assert states() == {"queued", "loading", "working", "done"}
    # Nothing went to a SQLite file: the store is the database.
    assert not (tmp_path / "data" / "foreman.sqlite3").exists()
    assert schema_version(PostgresEngine(postgres_url)) == len(schema.POSTGRES_MIGRATIONS)


def test_an_unreachable_postgresql_stops_the_start_with_a_masked_url(
    reactor: Any, tmp_path: Path
) -> None:
    from foreman.service import QueueUnavailable, build_foreman
    from tests.postgres_server import free_port

    url = f"postgresql://foreman:s3cret@127.0.0.1:{free_port()}/foreman"
    config = Config(data_dir=tmp_path / "data", database=url, ollama_url="http://127.0.0.1:9")
    with pytest.raises(QueueUnavailable) as refused:
        build_foreman(config, reactor)
    message = str(refused.value)
    assert "cannot open the job store postgresql://foreman:***@127.0.0.1" in message
    assert "s3cret" not in message

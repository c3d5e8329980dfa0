"""The job store on a real database: schema, round trips, recovery, sweeping.

Tests that take ``store`` or ``store_engine`` run on each engine, SQLite and
PostgreSQL (tests/store_engines.py); those about SQLite's file take ``path``.
Most tests use the inline runner, so every call has finished when it returns
and its Deferred has already fired; one test runs the store the way the
daemon does, on a single-thread pool off the reactor thread.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.python import threadable
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from foreman.queue import schema as store_module
from foreman.queue.engines import Engine
from foreman.queue.job import Job, JobState
from foreman.queue.runners import thread_runner
from foreman.queue.schema import DATABASE_NAME, MIGRATIONS
from foreman.queue.store import JobStore, Recovery
from foreman.wire.priority import Priority
from tests.store_engines import (
    migrate_to,
    migrations,
    migrations_name,
    schema_version,
    set_schema_version,
    side,
)
from tests.store_engines import table_names as tables_in

T = TypeVar("T")

NOW = 1_800_000_000.0

BODY = b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}'


# -- helpers --------------------------------------------------------------------------


def result_of(deferred: Deferred[T]) -> T:
    """The result of a Deferred that has already fired (inline runner)."""
    results: list[T] = []
    failures: list[Failure] = []
    deferred.addCallbacks(results.append, failures.append)
    if failures:
        failures[0].raiseException()
    assert results, "the Deferred has not fired: the inline runner should be synchronous"
    return results[0]


def failure_of(deferred: Deferred[Any]) -> Failure:
    failures: list[Failure] = []
    deferred.addErrback(failures.append)
    assert failures, "the Deferred did not fail"
    return failures[0]


def job(job_id: str, **changes: Any) -> Job:
    values: dict[str, Any] = {
        "id": job_id,
        "model": "llama3.2",
        "endpoint": "chat",
        "body": BODY,
        "sync": False,
        "created_at": NOW,
        "updated_at": NOW,
    }
    values.update(changes)
    return Job(**values)


@contextlib.contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A second, independent connection to the file (closed afterwards)."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as connection:
        yield connection


def pragma(path: Path, name: str) -> Any:
    with raw(path) as connection:
        return connection.execute(f"PRAGMA {name}").fetchone()[0]


def table_names(path: Path) -> set[str]:
    with raw(path) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {name for (name,) in rows}


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / DATABASE_NAME


@pytest.fixture
def store(store_engine: Engine) -> Iterator[JobStore]:
    opened = JobStore(store_engine)
    result_of(opened.open())
    yield opened
    result_of(opened.close())


def insert_all(store: JobStore, jobs: list[Job]) -> None:
    for each in jobs:
        result_of(store.insert(each))


def everything(store: JobStore, ids: list[str]) -> dict[str, Job | None]:
    return {job_id: result_of(store.get(job_id)) for job_id in ids}


# -- schema -----------------------------------------------------------------------------


def test_a_new_database_gets_the_schema(store: JobStore, store_engine: Engine) -> None:
    assert schema_version(store_engine) == len(MIGRATIONS) == store.schema_version
    assert {"jobs", "artifacts", "deliveries", "model_costs"} <= tables_in(store_engine)


def test_both_engines_have_the_same_schema_versions() -> None:
    assert len(store_module.POSTGRES_MIGRATIONS) == len(MIGRATIONS) == store_module.version()


def test_a_new_file_is_in_wal_mode(path: Path) -> None:
    store = JobStore(path)
    result_of(store.open())
    result_of(store.close())
    assert path.exists()
    assert pragma(path, "journal_mode") == "wal"
    assert pragma(path, "user_version") == len(MIGRATIONS)


def test_reopening_keeps_the_jobs_and_does_not_migrate_again(store_engine: Engine) -> None:
    first = JobStore(store_engine)
    result_of(first.open())
    result_of(first.insert(job("a")))
    result_of(first.close())

    # Running the first migration twice would fail: "table jobs already exists".
    again = JobStore(store_engine)
    result_of(again.open())
    assert result_of(again.get("a")) == job("a")
    result_of(again.close())
    assert schema_version(store_engine) == len(MIGRATIONS)


def test_an_older_database_runs_only_the_migrations_it_lacks(
    store_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = JobStore(store_engine)
    result_of(old.open())
    result_of(old.insert(job("a")))
    result_of(old.close())

    upgraded = (*migrations(store_engine), "CREATE TABLE upgrade_marker (x INTEGER);")
    monkeypatch.setattr(store_module, migrations_name(store_engine), upgraded)
    monkeypatch.setattr(store_module, "MIGRATIONS", upgraded)
    for _ in range(2):  # the second open finds nothing to do
        newer = JobStore(store_engine)
        result_of(newer.open())
        assert result_of(newer.get("a")) == job("a")
        result_of(newer.close())
        assert schema_version(store_engine) == len(upgraded)
        assert {"jobs", "upgrade_marker"} <= tables_in(store_engine)


def test_jobs_written_before_classes_get_the_class_they_would_have_had(
    store_engine: Engine,
) -> None:
    # A database as foreman wrote it before classes (schema 2): a sync call
    # and a /jobs job, both still queued.
    migrate_to(store_engine, 2)
    with side(store_engine) as connection:
        for job_id, sync in (("01SYNC", 1), ("02ASYNC", 0)):
            connection.execute(
                "INSERT INTO jobs (id, model, endpoint, body, sync, state, created_at, updated_at)"
                " VALUES (?, 'llama3.2', 'chat', ?, ?, 'queued', ?, ?)",
                (job_id, b"", sync, NOW, NOW),
            )
    store = JobStore(store_engine)
    result_of(store.open())
    try:
        assert schema_version(store_engine) == len(MIGRATIONS)
        sync_job, async_job = (result_of(store.get(i)) for i in ("01SYNC", "02ASYNC"))
        assert sync_job is not None and sync_job.priority is Priority.INTERACTIVE
        assert async_job is not None and async_job.priority is Priority.BATCH
        assert async_job.created_at == NOW  # its wait still counts from its creation
    finally:
        result_of(store.close())


def test_a_database_from_a_newer_foreman_is_refused(store_engine: Engine) -> None:
    newer = len(MIGRATIONS) + 1
    set_schema_version(store_engine, newer)

    refused = JobStore(store_engine)
    failure = failure_of(refused.open())
    assert failure.check(RuntimeError)
    message = failure.getErrorMessage()
    assert "newer foreman" in message
    assert f"schema {newer}" in message
    with pytest.raises(RuntimeError, match="newer foreman"):
        refused.startup(NOW)
    # Nothing was migrated, and the store is not usable half-open.
    assert schema_version(store_engine) == newer
    assert "jobs" not in tables_in(store_engine)
    with pytest.raises(RuntimeError, match="not open"):
        result_of(refused.get("a"))


def test_refusing_a_newer_file_closes_its_connection(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with raw(path) as connection:
        connection.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    opened: list[sqlite3.Connection] = []
    connect = sqlite3.connect

    def recording_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        connection: sqlite3.Connection = connect(*args, **kwargs)
        opened.append(connection)
        return connection

    monkeypatch.setattr(sqlite3, "connect", recording_connect)
    try:
        assert failure_of(JobStore(path).open()).check(RuntimeError)
        assert len(opened) == 1
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            opened[0].execute("SELECT 1")
    finally:
        for each in opened:
            each.close()


def test_calls_before_open_fail_clearly(store_engine: Engine) -> None:
    closed = JobStore(store_engine)
    assert failure_of(closed.insert(job("a"))).check(RuntimeError)
    assert "not open" in failure_of(closed.count_by_state()).getErrorMessage()


# -- round trips ------------------------------------------------------------------------


def test_every_field_round_trips(store: JobStore) -> None:
    full = Job(
        id="01JFULL",
        model="gemma3:12b",
        endpoint="generate",
        # Not UTF-8, a NUL, and JSON: the body is kept byte for byte.
        body=b'{"model":"gemma3:12b","prompt":"\xff\x00\xfe"}',
        sync=True,
        state=JobState.WORKING,
        attempt=2,
        last_error="connection refused",
        error_status=502,
        created_at=NOW + 0.125,
        updated_at=NOW + 1.5,
        started_at=NOW + 1.25,
        finished_at=NOW + 2.75,
        not_before=NOW + 60.0,
        webhook_url="http://127.0.0.1:9/hook",
        metadata=b'{"caller":"me","bytes":"\xc3\xa9"}',
        result=b'{"done":true}\x00',
        priority=Priority.BATCH,
    )
    result_of(store.insert(full))
    got = result_of(store.get(full.id))
    assert got == full
    assert got is not None
    assert type(got.sync) is bool
    assert got.state is JobState.WORKING
    assert got.priority is Priority.BATCH
    assert isinstance(got.body, bytes) and isinstance(got.metadata, bytes)


def test_none_fields_and_defaults_round_trip(store: JobStore) -> None:
    bare = Job(id="01JBARE", model="llama3.2", endpoint="chat", body=b"", sync=False)
    result_of(store.insert(bare))
    got = result_of(store.get(bare.id))
    assert got == bare
    assert got is not None
    for name in ["last_error", "error_status", "started_at", "finished_at"]:
        assert getattr(got, name) is None
    for name in ["webhook_url", "metadata", "result"]:
        assert getattr(got, name) is None
    assert got.body == b""
    assert type(got.sync) is bool and got.sync is False


@pytest.mark.parametrize("state", list(JobState))
def test_every_state_round_trips_as_the_enum(store: JobStore, state: JobState) -> None:
    result_of(store.insert(job("s", state=state)))
    got = result_of(store.get("s"))
    assert got is not None and got.state is state


def test_update_writes_every_field(store: JobStore) -> None:
    queued = job("a", metadata=b'{"n":1}', webhook_url="http://127.0.0.1:9/a")
    result_of(store.insert(queued))
    loading = queued.moved(JobState.LOADING, NOW + 1, attempt=1)
    result_of(store.update(loading))
    assert result_of(store.get("a")) == loading

    done = loading.moved(JobState.DONE, NOW + 3, result=b'{"done":true}', last_error=None)
    assert result_of(store.update(done)) == done
    got = result_of(store.get("a"))
    assert got == done
    assert got is not None
    assert got.started_at == NOW + 1 and got.finished_at == NOW + 3

    # Fields can be cleared again, and other rows are left alone.
    result_of(store.insert(job("b")))
    cleared = attrs.evolve(done, metadata=None, webhook_url=None, result=None)
    result_of(store.update(cleared))
    assert result_of(store.get("a")) == cleared
    assert result_of(store.get("b")) == job("b")


def test_an_unknown_id_is_none(store: JobStore) -> None:
    assert result_of(store.get("nope")) is None


def test_inserting_an_id_twice_fails(store: JobStore) -> None:
    result_of(store.insert(job("a")))
    assert failure_of(store.insert(job("a", model="other"))).check(store.engine.IntegrityError)
    assert result_of(store.get("a")) == job("a")


# -- listing and counting -------------------------------------------------------------


def test_unfinished_lists_queued_and_running_oldest_first_ties_by_id(store: JobStore) -> None:
    insert_all(
        store,
        [
            job("m", created_at=NOW + 2),
            job("z", created_at=NOW + 1, state=JobState.WORKING),
            job("b", created_at=NOW + 1),
            job("done", created_at=NOW, state=JobState.DONE),
            job("c", created_at=NOW + 1, state=JobState.LOADING, sync=True),
            job("failed", created_at=NOW, state=JobState.FAILED),
            job("cancelled", created_at=NOW, state=JobState.CANCELLED),
            job("a", created_at=NOW + 3),
            job("y", created_at=NOW + 0.5),
        ],
    )
    unfinished = result_of(store.unfinished())
    assert [each.id for each in unfinished] == ["y", "b", "c", "z", "m", "a"]
    assert unfinished[2] == job("c", created_at=NOW + 1, state=JobState.LOADING, sync=True)


def test_unfinished_on_an_empty_store(store: JobStore) -> None:
    assert result_of(store.unfinished()) == []


def test_count_by_state_names_every_state(store: JobStore) -> None:
    assert result_of(store.count_by_state()) == dict.fromkeys(JobState, 0)
    states = [JobState.QUEUED] * 3 + [JobState.WORKING, JobState.DONE, JobState.DONE]
    insert_all(store, [job(f"j{index}", state=state) for index, state in enumerate(states)])
    assert result_of(store.count_by_state()) == {
        JobState.QUEUED: 3,
        JobState.LOADING: 0,
        JobState.WORKING: 1,
        JobState.DONE: 2,
        JobState.FAILED: 0,
        JobState.CANCELLED: 0,
    }


# -- recovery ---------------------------------------------------------------------------

BEFORE = NOW - 100.0
LATER = NOW + 500.0


def left_behind() -> list[Job]:
    """What a process that died could leave, every kind of job once."""
    started = {"attempt": 1, "started_at": BEFORE + 1}
    return [
        job("async-queued", created_at=BEFORE),
        job(
            "async-backing-off",
            created_at=BEFORE + 0.1,
            attempt=1,
            not_before=LATER,
            last_error="unreachable",
        ),
        job("async-loading", created_at=BEFORE + 0.2, state=JobState.LOADING, **started),
        job(
            "async-working",
            created_at=BEFORE + 0.3,
            state=JobState.WORKING,
            attempt=2,
            started_at=BEFORE + 2,
        ),
        job("sync-queued", created_at=BEFORE + 0.4, sync=True),
        job("sync-loading", created_at=BEFORE + 0.5, sync=True, state=JobState.LOADING, **started),
        job("sync-working", created_at=BEFORE + 0.6, sync=True, state=JobState.WORKING, **started),
        job(
            "async-done",
            created_at=BEFORE + 0.7,
            state=JobState.DONE,
            result=b'{"done":true}',
            finished_at=BEFORE + 5,
            **started,
        ),
        job(
            "async-failed",
            created_at=BEFORE + 0.8,
            state=JobState.FAILED,
            error_status=404,
            last_error="model 'x' not found",
            finished_at=BEFORE + 5,
            **started,
        ),
        job(
            "sync-cancelled",
            created_at=BEFORE + 0.9,
            sync=True,
            state=JobState.CANCELLED,
            finished_at=BEFORE + 5,
        ),
        job(
            "sync-done",
            created_at=BEFORE + 1.0,
            sync=True,
            state=JobState.DONE,
            finished_at=BEFORE + 5,
            **started,
        ),
    ]


def expected_after_recovery(now: float) -> dict[str, Job]:
    before = {each.id: each for each in left_behind()}
    expected = dict(before)
    for job_id in ["async-loading", "async-working"]:
        # Back in the queue; the interrupted attempt stays counted.
        expected[job_id] = attrs.evolve(
            before[job_id], state=JobState.QUEUED, updated_at=now, not_before=0.0
        )
    for job_id in ["sync-queued", "sync-loading", "sync-working"]:
        expected[job_id] = attrs.evolve(
            before[job_id],
            state=JobState.FAILED,
            updated_at=now,
            finished_at=now,
            error_status=499,
            last_error="the caller was gone after foreman restarted",
        )
    return expected


def test_recover_requeues_async_work_and_fails_sync_jobs(store: JobStore) -> None:
    jobs = left_behind()
    insert_all(store, jobs)
    assert result_of(store.recover(NOW)) == Recovery(requeued=2, abandoned=3)

    after = everything(store, [each.id for each in jobs])
    expected = expected_after_recovery(NOW)
    assert after == expected
    # Spelled out, the properties the queue relies on:
    assert after["async-loading"] == attrs.evolve(
        jobs[2], state=JobState.QUEUED, updated_at=NOW, not_before=0.0
    )
    working = after["async-working"]
    assert working is not None and working.attempt == 2 and working.state is JobState.QUEUED
    assert after["async-queued"] == jobs[0]
    assert after["async-backing-off"] == jobs[1]  # its backoff still holds
    for job_id in ["sync-queued", "sync-loading", "sync-working"]:
        failed = after[job_id]
        assert failed is not None
        assert failed.state is JobState.FAILED and failed.error_status == 499
        assert failed.finished_at == NOW
    for terminal in jobs[7:]:
        assert after[terminal.id] == terminal


def test_recovering_twice_changes_nothing_more(store: JobStore) -> None:
    insert_all(store, left_behind())
    result_of(store.recover(NOW))
    assert result_of(store.recover(NOW + 10)) == Recovery(requeued=0, abandoned=0)
    assert everything(store, [each.id for each in left_behind()]) == expected_after_recovery(NOW)


def test_startup_recovers_and_lists_the_queue(store_engine: Engine) -> None:
    writer = JobStore(store_engine)
    result_of(writer.open())
    insert_all(writer, left_behind())
    result_of(writer.close())

    # As the daemon does, before the reactor runs: blocking, no Deferreds.
    restarted = JobStore(store_engine)
    recovery, unfinished = restarted.startup(NOW)
    try:
        assert recovery == Recovery(requeued=2, abandoned=3)
        expected = expected_after_recovery(NOW)
        assert unfinished == [
            expected[job_id]
            for job_id in ["async-queued", "async-backing-off", "async-loading", "async-working"]
        ]
        assert all(each.state is JobState.QUEUED and not each.sync for each in unfinished)
        assert result_of(restarted.get("sync-working")) == expected["sync-working"]
    finally:
        result_of(restarted.close())


def test_startup_on_a_new_database(store_engine: Engine) -> None:
    fresh = JobStore(store_engine)
    try:
        assert fresh.startup(NOW) == (Recovery(requeued=0, abandoned=0), [])
        assert schema_version(store_engine) == len(MIGRATIONS)
    finally:
        result_of(fresh.close())


# -- sweeping -----------------------------------------------------------------------------


def test_sweep_deletes_only_terminal_jobs_finished_before_the_cut_off(store: JobStore) -> None:
    old = {"created_at": NOW - 1000, "started_at": NOW - 999}
    jobs = [
        job("done-old", state=JobState.DONE, finished_at=NOW - 900, result=b"{}", **old),
        job("failed-old", state=JobState.FAILED, finished_at=NOW - 800, **old),
        job("cancelled-old", state=JobState.CANCELLED, finished_at=NOW - 700, **old),
        job("done-at-cut-off", state=JobState.DONE, finished_at=NOW - 600, **old),
        job("done-recent", state=JobState.DONE, finished_at=NOW - 10, **old),
        # Old, but unfinished: never swept, however long they wait.
        job("queued-old", **old),
        job("working-old", state=JobState.WORKING, **old),
        job("loading-old", state=JobState.LOADING, sync=True, **old),
    ]
    insert_all(store, jobs)

    assert result_of(store.sweep(NOW - 600)) == 3
    left = everything(store, [each.id for each in jobs])
    assert sorted(job_id for job_id, each in left.items() if each is None) == [
        "cancelled-old",
        "done-old",
        "failed-old",
    ]
    for kept in jobs[3:]:
        assert left[kept.id] == kept

    assert result_of(store.sweep(NOW - 600)) == 0
    assert result_of(store.sweep(NOW)) == 2
    assert [each.id for each in result_of(store.unfinished())] == [
        "loading-old",
        "queued-old",
        "working-old",
    ]


def test_sweep_on_an_empty_store(store: JobStore) -> None:
    assert result_of(store.sweep(NOW)) == 0


# -- the daemon's runner ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_thread_runner_runs_calls_off_the_reactor_thread(
    reactor: Any, store_engine: Engine
) -> None:
    pool = ThreadPool(minthreads=1, maxthreads=1, name="test-store")
    pool.start()
    try:
        seen: list[tuple[threading.Thread, bool]] = []
        pooled = thread_runner(reactor, pool)

        def observed(work: Callable[[], T]) -> Deferred[T]:
            def run() -> T:
                seen.append((threading.current_thread(), threadable.isInIOThread()))
                return work()

            return pooled(run)

        reactor_thread = threading.current_thread()
        store = JobStore(store_engine, observed)
        await store.open()
        first = job("a", created_at=NOW)
        assert await store.insert(first) == first
        await store.insert(job("b", created_at=NOW + 1, state=JobState.WORKING))
        assert await store.get("a") == first
        assert await store.get("missing") is None
        assert [each.id for each in await store.unfinished()] == ["a", "b"]
        assert (await store.count_by_state())[JobState.QUEUED] == 1
        done = first.moved(JobState.DONE, NOW + 2, result=b"{}")
        await store.update(done)
        assert await store.get("a") == done
        assert await store.recover(NOW + 3) == Recovery(requeued=1, abandoned=0)
        assert await store.sweep(NOW + 3) == 1
        with pytest.raises(store_engine.IntegrityError):  # failures come back too
            await store.insert(job("b"))
        await store.close()

        # Results come back on the reactor thread...
        assert threading.current_thread() is reactor_thread
        assert threadable.isInIOThread()
        # ...and every call ran on the pool's one thread, never on the reactor's.
        assert len(seen) == 13
        threads = {thread for thread, _ in seen}
        assert len(threads) == 1
        (worker,) = threads
        assert worker is not reactor_thread
        assert "test-store" in worker.name
        assert not any(in_io_thread for _, in_io_thread in seen)

        # As the daemon does: start-up on the reactor thread before the
        # reactor runs, every later call on the pool's thread.
        restarted = JobStore(store_engine, observed)
        recovery, unfinished = restarted.startup(NOW + 4)
        assert recovery == Recovery(requeued=0, abandoned=0)
        assert [each.id for each in unfinished] == ["b"]
        assert len(seen) == 13
        got = await restarted.get("b")
        assert got is not None and got.state is JobState.QUEUED and got.updated_at == NOW + 3
        await restarted.close()
        assert len(seen) == 15 and {thread for thread, _ in seen[13:]} == {worker}
    finally:
        pool.stop()


def test_a_refused_newer_file_is_left_as_it_was(path: Path) -> None:
    with raw(path) as connection:
        connection.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
        mode_before = connection.execute("PRAGMA journal_mode").fetchone()[0]
    assert failure_of(JobStore(path).open()).check(RuntimeError)
    with raw(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == mode_before

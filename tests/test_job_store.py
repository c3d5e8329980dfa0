"""The store's queries for ``/jobs`` on a real database (each engine): idempotent
inserts, the listing, and artifacts swept with their job."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from foreman.queue.engines import Connection, Engine
from foreman.queue.job import Job, JobState
from foreman.queue.store import JobStore
from tests.store_engines import side
from tests.test_store import failure_of, job, result_of

NOW = 1_800_000_000.0


@pytest.fixture
def store(store_engine: Engine) -> Iterator[JobStore]:
    opened = JobStore(store_engine)
    result_of(opened.open())
    yield opened
    result_of(opened.close())


def test_an_idempotency_key_makes_one_job(store: JobStore) -> None:
    first = job("A", idempotency_key="k")
    assert result_of(store.insert_unless_known(first)) == first
    assert result_of(store.insert_unless_known(job("B", idempotency_key="k"))) == first
    assert result_of(store.get("B")) is None
    assert result_of(store.find_by_idempotency_key("k")) == first
    assert result_of(store.find_by_idempotency_key("other")) is None
    # Jobs without a key never collide.
    for job_id in ("C", "D"):
        result_of(store.insert_unless_known(job(job_id)))
    assert result_of(store.count_by_state())[JobState.QUEUED] == 3
    # The unique index stands behind it, whoever inserts.
    with pytest.raises(store.engine.IntegrityError):
        result_of(store.insert(job("E", idempotency_key="k")))


def ids(jobs: list[Job]) -> list[str]:
    return [each.id for each in jobs]


def test_the_listing_is_async_jobs_newest_first(store: JobStore) -> None:
    rows = [
        job("01A", model="llama3.2", result=b"{}", state=JobState.DONE),
        job("01B", model="qwen3:8b"),
        job("01C", model="library/Llama3.2:latest", state=JobState.FAILED),
        job("01D", model="llama3.2", sync=True),
        job("01E", model="llama3.2:latest"),
    ]
    for each in rows:
        result_of(store.insert(each))

    def listing(**query: Any) -> list[str]:
        return ids(result_of(store.listing(**{"limit": 50, **query})))

    assert listing() == ["01E", "01C", "01B", "01A"]
    assert listing(limit=2) == ["01E", "01C"]
    assert listing(before="01C") == ["01B", "01A"]
    assert listing(model="llama3.2") == ["01E", "01C", "01A"]
    assert listing(model="registry.ollama.ai/library/llama3.2") == ["01E", "01C", "01A"]
    assert listing(model="qwen3:8b", state=JobState.QUEUED) == ["01B"]
    assert listing(state=JobState.WORKING) == []
    # A page is a summary: no body and no result, however large.
    (done,) = result_of(store.listing(limit=1, before="01B"))
    assert (done.body, done.result, done.state) == (b"", None, JobState.DONE)


def test_artifacts_are_swept_with_their_job(store: JobStore) -> None:
    old = job("old", state=JobState.DONE, finished_at=NOW - 100, result=b"{}")
    young = job("young", state=JobState.DONE, finished_at=NOW, result=b"{}")
    for each in (old, young):
        result_of(store.insert(each))

    def add_artifacts(db: Connection) -> None:
        for job_id in ("old", "young"):
            db.execute(
                "INSERT INTO artifacts (job_id, name, content_type, body, created_at)"
                " VALUES (?, 'extra', 'text/plain', ?, ?)",
                (job_id, b"\x00", NOW),
            )

    def artifact_owners(db: Connection) -> list[str]:
        return [row[0] for row in db.execute("SELECT job_id FROM artifacts ORDER BY job_id")]

    result_of(store.transact(add_artifacts))
    assert result_of(store.sweep(NOW - 50)) == 1
    assert result_of(store.get("old")) is None
    assert result_of(store.get("young")) == young
    assert result_of(store.transact(artifact_owners)) == ["young"]


def test_startup_writes_with_each_job_it_puts_back_in_the_queue(store_engine: Engine) -> None:
    first = JobStore(store_engine)
    first.startup(NOW)
    for each in (
        job("loading", state=JobState.LOADING, attempt=1, started_at=NOW),
        job("working", state=JobState.WORKING, attempt=2, started_at=NOW),
        job("queued"),
        job("sync", state=JobState.WORKING, sync=True),
    ):
        result_of(first.insert(each))
    result_of(first.close())

    told: list[tuple[Job, JobState]] = []

    def requeued(db: Connection, moved: Job, previous: JobState) -> None:
        # Inside recovery's transaction: the job is stored as told already.
        assert db.in_transaction
        row = db.execute("SELECT state, updated_at FROM jobs WHERE id = ?", (moved.id,))
        assert tuple(row.fetchone()) == ("queued", NOW + 5)
        db.execute("INSERT INTO marks VALUES (?)", (moved.id,))
        told.append((moved, previous))

    with side(store_engine) as connection:
        connection.execute("CREATE TABLE marks (job_id TEXT)")
    again = JobStore(store_engine)
    recovery, unfinished = again.startup(NOW + 5, requeued)
    try:
        assert (recovery.requeued, recovery.abandoned) == (2, 1)
        assert [(each.id, previous) for each, previous in told] == [
            ("loading", JobState.LOADING),
            ("working", JobState.WORKING),
        ]
        # What it was told is the job exactly as stored.
        for each, _ in told:
            assert result_of(again.get(each.id)) == each
        assert told[1][0].attempt == 2 and told[1][0].started_at == NOW
        assert {each.id: each.state for each in unfinished} == dict.fromkeys(
            ("loading", "working", "queued"), JobState.QUEUED
        )
        assert {each.id: each.updated_at for each in unfinished}["working"] == NOW + 5
        with side(store_engine) as connection:
            marks = connection.execute("SELECT job_id FROM marks ORDER BY job_id")
            assert [row[0] for row in marks] == [
                "loading",
                "working",
            ]
    finally:
        result_of(again.close())


def test_recovery_and_what_it_writes_commit_together_or_not_at_all(
    store_engine: Engine,
) -> None:
    first = JobStore(store_engine)
    first.startup(NOW)
    result_of(first.insert(job("working", state=JobState.WORKING, attempt=1)))
    result_of(first.close())

    def broken(db: Connection, moved: Job, previous: JobState) -> None:
        db.execute(
            "INSERT INTO deliveries (job_id, url, body, next_at, created_at)"
            " VALUES (?, 'http://r.test/', ?, 0, 0)",
            (moved.id, b"{}"),
        )
        raise sqlite3.OperationalError("disk I/O error")

    refused = JobStore(store_engine)
    with pytest.raises(sqlite3.OperationalError):
        refused.startup(NOW + 5, broken)
    result_of(refused.close())
    with side(store_engine) as connection:
        assert [tuple(row) for row in connection.execute("SELECT state FROM jobs")] == [
            ("working",)
        ]
        assert connection.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0] == 0


# -- writes that carry other work in their transaction ---------------------------------------


def mark(db: Connection) -> None:
    db.execute("INSERT INTO artifacts VALUES ('a', 'x', 'text/plain', ?, 0)", (b"\x00",))


def fail_after(work: Callable[[Connection], None]) -> Callable[[Connection], None]:
    def failing(db: Connection) -> None:
        work(db)
        raise sqlite3.OperationalError("database or disk is full")

    return failing


def artifact_count(store: JobStore) -> int:
    count: int = result_of(
        store.transact(lambda db: db.execute("SELECT COUNT(*) FROM artifacts").fetchone()[0])
    )
    return count


def test_an_insert_and_its_extra_work_commit_together_or_not_at_all(store: JobStore) -> None:
    assert failure_of(store.insert(job("a"), fail_after(mark))).check(sqlite3.OperationalError)
    assert result_of(store.get("a")) is None and artifact_count(store) == 0
    assert result_of(store.insert(job("a"), mark)) == job("a")
    assert artifact_count(store) == 1


def test_an_update_and_its_extra_work_commit_together_or_not_at_all(store: JobStore) -> None:
    result_of(store.insert(job("a")))
    working = job("a", state=JobState.WORKING, attempt=1, updated_at=NOW + 1)
    assert failure_of(store.update(working, fail_after(mark))).check(sqlite3.OperationalError)
    assert result_of(store.get("a")) == job("a") and artifact_count(store) == 0
    assert result_of(store.update(working, mark)) == working
    assert result_of(store.get("a")) == working and artifact_count(store) == 1


def test_an_idempotent_insert_runs_its_extra_work_only_when_it_inserts(store: JobStore) -> None:
    first = job("a", idempotency_key="k")
    failed = store.insert_unless_known(first, fail_after(mark))
    assert failure_of(failed).check(sqlite3.OperationalError)
    assert result_of(store.get("a")) is None and artifact_count(store) == 0
    assert result_of(store.insert_unless_known(first, mark)) == first
    assert result_of(store.insert_unless_known(job("b", idempotency_key="k"), mark)) == first
    assert artifact_count(store) == 1

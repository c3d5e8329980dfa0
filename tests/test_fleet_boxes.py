"""The boxes of a fleet in the store, and the wake-ups a box hears (issue 18).

Boxes' heartbeats run on each engine; ``LISTEN/NOTIFY`` is PostgreSQL's (on
SQLite a listener returns at once: one box has nobody to hear from).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from foreman.queue.boxes import BoxRecord
from foreman.queue.engines import Engine, SQLiteEngine
from foreman.queue.engines import postgres as postgres_engine
from foreman.queue.engines.postgres import PostgresEngine
from foreman.queue.job import JobState
from foreman.queue.leases import JOBS_CHANNEL
from foreman.queue.schema import DATABASE_NAME
from foreman.queue.store import JobStore
from tests.store_engines import side
from tests.test_store import job, result_of

NOW = 1_800_000_000.0


@pytest.fixture
def store(store_engine: Engine) -> Iterator[JobStore]:
    opened = JobStore(store_engine, box="A")
    result_of(opened.open())
    yield opened
    result_of(opened.close())


def record(box_id: str, **changes: object) -> BoxRecord:
    values: dict[str, object] = {
        "id": box_id,
        "name": f"mac-{box_id}",
        "url": f"http://{box_id}.local:11435",
        "models": ("llama3.2:latest", "qwen3:8b"),
        "resident": "llama3.2:latest",
        "answering": True,
        "report": {"queued": 2, "running": "01JOB"},
        "started_at": NOW,
    }
    values.update(changes)
    return BoxRecord(**values)  # type: ignore[arg-type]


def test_boxes_publish_and_are_alive_while_their_heartbeat_is_fresh(store: JobStore) -> None:
    assert result_of(store.boxes(lease=30)) == []
    before = result_of(store.db_now())
    result_of(store.publish_box(record("b")))
    result_of(store.publish_box(record("a", url=None, resident=None, report=None)))
    (a, b) = result_of(store.boxes(lease=30))
    after = result_of(store.db_now())
    assert a == attrs.evolve(
        record("a", url=None, resident=None, report=None),
        heartbeat_at=a.heartbeat_at,
        seen_seconds_ago=a.seen_seconds_ago,
    )
    assert b.models == ("llama3.2:latest", "qwen3:8b") and b.report == record("b").report
    for each in (a, b):
        assert each.alive and before <= each.heartbeat_at <= after
        assert 0 <= each.seen_seconds_ago < 5
    # A heartbeat older than the lease: dead (a negative lease is already over).
    assert [each.alive for each in result_of(store.boxes(lease=-1))] == [False, False]

    # Publishing again replaces what was there and stamps a new heartbeat, on
    # the database's clock (read until it has moved on, rather than slept).
    while result_of(store.db_now()) <= b.heartbeat_at:
        pass
    result_of(store.publish_box(record("b", models=(), resident=None, answering=False)))
    (_, again) = result_of(store.boxes(lease=30))
    assert (again.models, again.resident, again.answering) == ((), None, False)
    assert again.heartbeat_at > b.heartbeat_at and again.started_at == NOW


# -- wake-ups ----------------------------------------------------------------------------


def test_a_sqlite_listener_returns_at_once(tmp_path: Path) -> None:
    engine = SQLiteEngine(tmp_path / DATABASE_NAME)
    assert not engine.notifies
    engine.listen(JOBS_CHANNEL, lambda payload: pytest.fail("nothing to hear"), threading.Event())


class Listener:
    """``engine.listen`` on a thread of its own, its payloads in a queue."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.heard: queue.Queue[str] = queue.Queue()
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=engine.listen, args=(JOBS_CHANNEL, self.heard.put, self.stop), daemon=True
        )

    def start(self) -> None:
        self.thread.start()
        # Notifications sent before LISTEN are lost: wait until one is heard.
        with side(self.engine) as db:
            for _ in range(100):
                self.engine.notify(db, JOBS_CHANNEL, "probe")
                try:
                    if self.heard.get(timeout=0.1) == "probe":
                        break
                except queue.Empty:
                    continue
            else:
                pytest.fail("the listener never heard its probe")
        self.drain()

    def drain(self) -> list[str]:
        payloads: list[str] = []
        while True:
            try:
                payloads.append(self.heard.get(timeout=0.3))
            except queue.Empty:
                return [each for each in payloads if each != "probe"]

    def next(self) -> str:
        return self.heard.get(timeout=10)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()


@pytest.fixture
def listener(postgres_url: str) -> Iterator[Listener]:
    listening = Listener(PostgresEngine(postgres_url))
    listening.start()
    yield listening
    listening.close()


@pytest.mark.postgres
def test_a_box_hears_of_jobs_waiting_and_cancelled(postgres_url: str, listener: Listener) -> None:
    a = JobStore(PostgresEngine(postgres_url), box="A")
    result_of(a.open())
    try:
        result_of(a.insert(job("1")))
        assert listener.next() == "queued 1"
        result_of(a.insert_unless_known(job("2", idempotency_key="k")))
        assert listener.next() == "queued 2"
        result_of(a.insert_unless_known(job("3", idempotency_key="k")))  # known: not inserted
        result_of(a.insert(job("sync", sync=True)))  # its box's alone
        assert listener.drain() == []
        result_of(a.cancel("2", now=NOW))
        assert listener.next() == "cancelled 2"
        claimed = result_of(a.claim(["1"], lease=-1, now=NOW))
        assert claimed is not None and listener.drain() == []
        assert [each.state for each, _ in result_of(a.reap_expired(now=NOW))] == [JobState.QUEUED]
        assert listener.next() == "queued 1"
        # A box that puts a job back in the queue itself (a retry, its stop).
        claimed = result_of(a.claim(["1"], lease=60, now=NOW))
        assert claimed is not None
        result_of(a.update(claimed.moved(JobState.WORKING, NOW)))
        assert listener.drain() == []
        result_of(a.update(claimed.moved(JobState.QUEUED, NOW, not_before=NOW + 1)))
        assert listener.next() == "queued 1"
    finally:
        result_of(a.close())


@pytest.mark.postgres
def test_a_listener_that_lost_its_connection_listens_again(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_engine, "LISTEN_RECONNECT", 0.05)
    listening = Listener(PostgresEngine(postgres_url))
    listening.start()
    try:
        with side(listening.engine) as db:
            db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
            )
        # Told that something may have been missed, then hearing again.
        assert listening.next() == ""
        with side(listening.engine) as db:
            listening.engine.notify(db, JOBS_CHANNEL, "queued 9")
        assert listening.next() == "queued 9"
    finally:
        listening.close()

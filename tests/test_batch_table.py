"""The batch tables' SQL on each engine (ADR-0029): a batch made whole, its counts, its
cancel, its end (once), and its pruning."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import TypeVar

import attrs
import pytest

from foreman.jobs.batches import table
from foreman.jobs.batches.objects import answer_files
from foreman.jobs.batches.progress import BatchProgress
from foreman.jobs.outbox import StoredEvent
from foreman.queue.engines import Connection, Engine
from foreman.queue.job import Job, JobState
from foreman.queue.store import JobStore
from foreman.wire.priority import Priority
from tests.test_store import result_of

NOW = 1_700_000_000.0
T = TypeVar("T")


@pytest.fixture
def store(store_engine: Engine) -> Iterator[JobStore]:
    opened = JobStore(store_engine)
    result_of(opened.open())
    yield opened
    result_of(opened.close())


def line(number: int, batch_id: str = "batch_A") -> Job:
    return Job(
        id=f"01J{number:023d}",
        model="llama3.2",
        endpoint="/v1/chat/completions",
        body=b"{}",
        sync=False,
        created_at=NOW,
        updated_at=NOW,
        priority=Priority.BATCH,
        batch_id=batch_id,
        custom_id=f"c{number}",
    )


def batch(total: int, batch_id: str = "batch_A") -> table.BatchRow:
    return table.BatchRow(
        id=batch_id, kind="openai", state="in_progress", total=total, created_at=NOW
    )


def run(store: JobStore, work: Callable[[Connection], T]) -> T:
    return result_of(store.transact(work))


def test_a_batch_is_stored_whole_counted_cancelled_and_ended_once(store: JobStore) -> None:
    jobs = [line(n) for n in range(4)]
    result_of(store.insert_many(jobs, lambda db: table.insert_batch(db, batch(4))))
    assert run(store, lambda db: table.batch_job_ids(db, "batch_A")) == [j.id for j in jobs]
    # Two lines end: one done, one failed.
    done = jobs[0].moved(JobState.DONE, NOW + 1, result=b'{"ok": true}')
    result_of(store.update(done))
    failed = jobs[1].moved(JobState.FAILED, NOW + 1, last_error="boom", error_status=500)
    result_of(store.update(failed))

    def count(db: Connection) -> bool:
        return table.count_ended(db, "batch_A", completed=1, failed=1, cancelled=0, now=NOW + 1)

    assert run(store, count) is False
    # Cancel: the two queued lines go in one statement, and the batch is finalizing.
    assert run(store, lambda db: table.start_cancel(db, "batch_A", NOW + 2)) is True
    cancelled = run(store, lambda db: table.cancel_queued_lines(db, "batch_A", NOW + 2, "x"))
    assert sorted(cancelled) == [jobs[2].id, jobs[3].id]

    def count_cancelled(db: Connection) -> bool:
        return table.count_ended(db, "batch_A", completed=0, failed=0, cancelled=2, now=NOW + 2)

    assert run(store, count_cancelled) is True
    row = run(store, lambda db: table.get_batch(db, "batch_A"))
    assert isinstance(row, table.BatchRow)
    assert (row.state, row.completed, row.failed, row.cancelled) == ("finalizing", 1, 1, 2)
    output, errors = answer_files(run(store, lambda db: table.lines(db, "batch_A")))
    assert output.count(b"\n") == 1 and errors.count(b"\n") == 3

    def end(db: Connection) -> bool:
        return table.end_batch(
            db, "batch_A", state="cancelled", now=NOW + 3, output_file_id=None, error_file_id=None
        )

    assert run(store, end) is True
    assert run(store, end) is False  # ended once: a second finisher writes nothing


def test_idempotency_keys_pages_and_pruning(store: JobStore) -> None:
    for number, key in enumerate(("k1", None, None)):
        row = table.BatchRow(
            id=f"batch_{number}",
            kind="openai",
            state="completed" if number == 0 else "in_progress",
            total=1,
            created_at=NOW,
            idempotency_key=key,
            input_file_id=f"file-{number}",
            finished_at=NOW if number == 0 else None,
        )
        run(store, lambda db, row=row: table.insert_batch(db, row))  # type: ignore[misc]
        upload = table.FileRow(f"file-{number}", "batch", "in.jsonl", 2, NOW)
        run(store, lambda db, upload=upload: table.insert_file(db, upload, b"{}"))  # type: ignore[misc]
    made = table.FileRow("file-out", "batch_output", "out.jsonl", 2, NOW, "batch_0")
    run(store, lambda db: table.insert_file(db, made, b"{}"))
    known = run(store, lambda db: table.batch_by_idempotency_key(db, "k1"))
    assert isinstance(known, table.BatchRow) and known.id == "batch_0"
    newest = run(store, lambda db: table.list_batches(db, kind="openai", after=None, limit=2))
    assert [b.id for b in newest] == ["batch_2", "batch_1"]
    after = run(store, lambda db: table.list_batches(db, kind="openai", after="batch_1", limit=2))
    assert [b.id for b in after] == ["batch_0"]
    assert run(store, lambda db: table.file_content(db, "file-1")) == b"{}"
    # A day on: the ended batch goes with its file; uploads that running batches read stay.
    assert run(store, lambda db: table.prune(db, NOW + 1)) == 1
    left = run(
        store,
        lambda db: table.list_files(db, purpose=None, after=None, limit=10, newest_first=False),
    )
    assert [f.id for f in left] == ["file-1", "file-2"]


class _Outbox:
    def __init__(self) -> None:
        self.scheduled: list[StoredEvent] = []

    def schedule(self, event: StoredEvent) -> None:
        self.scheduled.append(event)


def test_a_batch_left_finalizing_by_a_stop_is_finished_at_the_next_start(
    store: JobStore,
) -> None:
    # The stop came between the last line's end (finalizing, committed) and the
    # gathering of its answers.
    jobs = [line(n) for n in range(3)]
    row = attrs.evolve(batch(3), webhook_url="http://127.0.0.1:9/hook")
    result_of(store.insert_many(jobs, lambda db: table.insert_batch(db, row)))
    for each in jobs:
        result_of(store.update(each.moved(JobState.DONE, NOW + 1, result=b'{"n": 1}')))

    def count(db: Connection) -> bool:
        return table.count_ended(db, "batch_A", completed=3, failed=0, cancelled=0, now=NOW + 1)

    assert run(store, count) is True
    outbox = _Outbox()
    progress = BatchProgress(store, outbox, lambda: NOW + 2)
    assert result_of(progress.resume()) == ["batch_A"]
    ended = run(store, lambda db: table.get_batch(db, "batch_A"))
    assert ended is not None and ended.state == "completed" and ended.completed_at == NOW + 2
    assert ended.output_file_id is not None and ended.error_file_id is None
    output = run(store, lambda db: table.file_content(db, str(ended.output_file_id)))
    assert output is not None and output.count(b"\n") == 3
    (event,) = outbox.scheduled
    assert json.loads(event.body)["state"] == "completed"
    # A second start finds nothing left to finish, and writes nothing.
    assert result_of(progress.resume()) == []
    assert len(outbox.scheduled) == 1

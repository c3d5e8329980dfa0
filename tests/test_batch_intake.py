"""A batch's jobs enter the queue together or not at all, and drain by model (issue 20),
on the real worker and store in simulated time."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest

from foreman.queue.engines import Connection
from foreman.queue.job import Job, JobState
from foreman.queue.scheduler import QueueFull
from foreman.queue.ulid import new_ulid
from foreman.wire.priority import Priority
from tests.worker_rig import WorkerRig, fired, make_worker_rig

MODELS = ("llama3.2", "qwen3:8b", "gemma3:12b")


def lines(rig: WorkerRig, count: int, batch_id: str = "batch_1") -> list[Job]:
    now = rig.worker.clocks.wall()
    made = []
    for number in range(count):
        model = MODELS[number % len(MODELS)]
        body = {"model": model, "messages": [{"role": "user", "content": f"line-{number}"}]}
        made.append(
            Job(
                id=new_ulid(now),
                model=model,
                endpoint="chat",
                body=json.dumps(body).encode(),
                sync=False,
                created_at=now,
                updated_at=now,
                priority=Priority.BATCH,
                batch_id=batch_id,
                custom_id=f"c{number}",
            )
        )
    return made


def test_a_batchs_lines_drain_by_model_in_their_order(tmp_path: Path) -> None:
    rig = make_worker_rig(tmp_path)
    stored = fired(rig.worker.submit_many(lines(rig, 9)))
    assert [job.custom_id for job in stored] == [f"c{n}" for n in range(9)]
    rig.worker.startService()
    rig.run_until(rig.all_finished, limit=120)
    ran = rig.generation_markers()
    # Three loads: each model's lines together, each model's in line order.
    assert ran == [f"line-{n}" for first in range(3) for n in range(first, 9, 3)]
    assert all(job.state is JobState.DONE for job in rig.jobs())
    rig.stop()


def test_a_batch_whose_transaction_fails_leaves_nothing_queued_or_stored(tmp_path: Path) -> None:
    rig = make_worker_rig(tmp_path, max_queue=5)

    def broken(db: Connection) -> None:
        raise RuntimeError("the batch row could not be written")

    failure = rig.worker.submit_many(lines(rig, 6), broken)
    failed: list[object] = []
    failure.addErrback(failed.append)
    assert failed and rig.jobs() == []
    assert rig.worker.scheduler.depth == 0
    # Every place reserved for it was given back: a batch as big fits.
    stored = fired(rig.worker.submit_many(lines(rig, 6, "batch_2")))
    assert len(stored) == 6 and rig.worker.scheduler.depth == 6
    rig.stop()


def test_a_batch_too_big_for_its_class_is_refused_whole(tmp_path: Path) -> None:
    rig = make_worker_rig(tmp_path)
    rig.worker.scheduler.max_batch_queue = 4
    refused = rig.worker.submit_many(lines(rig, 5))
    failures: list[object] = []
    refused.addErrback(failures.append)
    assert failures and failures[0].check(QueueFull)  # type: ignore[attr-defined]
    assert rig.jobs() == [] and rig.worker.scheduler.depth == 0
    # People's calls are bounded apart: a person's job still gets in.
    person = attrs.evolve(lines(rig, 1, "solo")[0], priority=Priority.INTERACTIVE, batch_id=None)
    assert fired(rig.worker.submit(person)).id == person.id
    rig.stop()


@pytest.mark.parametrize("count", [1, 50])
def test_withdrawn_lines_leave_the_queue_and_can_come_back(tmp_path: Path, count: int) -> None:
    rig = make_worker_rig(tmp_path)
    fired(rig.worker.submit_many(lines(rig, count)))
    other = fired(rig.worker.submit_many(lines(rig, 2, "batch_other")))
    taken = rig.worker.withdraw("batch_1")
    assert len(taken) == count
    assert rig.worker.scheduler.waiting_by_batch() == {"batch_other": 2}
    assert rig.worker.adopt(taken) == count  # the cancel could not be stored: back again
    assert rig.worker.scheduler.depth == count + len(other)
    rig.stop()

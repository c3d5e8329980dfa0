"""The scheduler as pure logic: which job runs next, admission, backoff."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from foreman.queue.job import Job
from foreman.queue.order import Policy
from foreman.queue.scheduler import QueueFull, Scheduler
from foreman.wire.model_names import canonical_model_name
from foreman.wire.priority import Priority

T0 = 1_000.0
LLAMA = "llama3.2:latest"  # residency reports canonical names
GEMMA = "gemma3:12b"


def job(job_id: str, model: str = "llama3.2", created_at: float = T0, **changes: Any) -> Job:
    return Job(
        id=job_id,
        model=model,
        endpoint="chat",
        body=b"{}",
        sync=False,
        created_at=created_at,
        updated_at=created_at,
        **changes,
    )


def queued(*jobs: Job, max_queue: int = 100) -> Scheduler:
    # Drain by model alone: the quantum has tests of its own (test_swap_rule.py).
    scheduler = Scheduler(max_queue, Policy(swap_quantum=0))
    for each in jobs:
        scheduler.add(each, reserved=False)
    return scheduler


def drain(scheduler: Scheduler, resident: str | None, now: float = T0) -> list[str]:
    """Run the queue dry as the worker does: pick, remove, the model becomes resident."""
    order: list[str] = []
    while (picked := scheduler.pick(resident, now)) is not None:
        assert scheduler.remove(picked.id) == picked
        order.append(picked.id)
        resident = canonical_model_name(picked.model)
    return order


# -- choosing -----------------------------------------------------------------------------


def test_an_empty_queue_offers_nothing() -> None:
    scheduler = Scheduler(10)
    assert scheduler.pick(None, T0) is None
    assert scheduler.pick(LLAMA, T0) is None
    assert scheduler.next_ready_at(T0) is None
    assert scheduler.ordered(None, T0) == []
    assert scheduler.depth == 0


def test_without_a_resident_model_the_oldest_job_runs_first() -> None:
    scheduler = queued(
        job("b1", GEMMA, T0 + 1),
        job("a1", "llama3.2", T0 + 2),
        job("c1", "qwen3:8b", T0 + 0.5),
    )
    picked = scheduler.pick(None, T0 + 10)
    assert picked is not None and picked.id == "c1"
    assert "c1" in scheduler  # pick() does not take the job out
    assert scheduler.depth == 3


def test_the_oldest_job_for_the_resident_model_goes_before_older_ones() -> None:
    scheduler = queued(
        job("b-old", GEMMA, T0),
        job("a-new", "llama3.2", T0 + 5),
        job("a-newer", "llama3.2", T0 + 6),
    )
    picked = scheduler.pick(LLAMA, T0 + 10)
    assert picked is not None and picked.id == "a-new"
    picked = scheduler.pick(canonical_model_name(GEMMA), T0 + 10)
    assert picked is not None and picked.id == "b-old"
    # No job for the resident model: the oldest overall.
    picked = scheduler.pick("qwen3:8b", T0 + 10)
    assert picked is not None and picked.id == "b-old"


def test_every_spelling_of_the_resident_model_counts_as_resident() -> None:
    scheduler = queued(
        job("b", GEMMA, T0),
        job("a1", "registry.ollama.ai/library/Llama3.2:latest", T0 + 3),
        job("a2", "library/llama3.2", T0 + 2),
        job("a3", "LLAMA3.2", T0 + 1),
    )
    assert [each.id for each in scheduler.ordered(LLAMA, T0)] == ["a3", "a2", "a1", "b"]


def test_ties_in_creation_time_go_by_id() -> None:
    scheduler = queued(
        job("02", "llama3.2", T0),
        job("03", GEMMA, T0),
        job("01", GEMMA, T0),
        job("04", "llama3.2", T0),
    )
    # The first job's model is resident once it has run: its other job follows.
    assert [each.id for each in scheduler.ordered(None, T0)] == ["01", "03", "02", "04"]
    assert [each.id for each in scheduler.ordered(LLAMA, T0)] == ["02", "04", "01", "03"]
    picked = scheduler.pick(LLAMA, T0)
    assert picked is not None and picked.id == "02"


def test_drains_the_resident_model_then_swaps_once_per_model() -> None:
    scheduler = queued(
        job("a1", "llama3.2", T0 + 1),
        job("b1", GEMMA, T0 + 2),
        job("a2", "llama3.2", T0 + 3),
        job("c1", "qwen3:8b", T0 + 4),
        job("b2", GEMMA, T0 + 5),
        job("a3", "llama3.2", T0 + 6),
    )
    # gemma resident already: its jobs first, then the oldest left (llama), then qwen.
    assert drain(scheduler, canonical_model_name(GEMMA)) == ["b1", "b2", "a1", "a2", "a3", "c1"]
    assert scheduler.depth == 0


def test_an_interleaved_burst_runs_as_two_blocks() -> None:
    models = ["llama3.2", GEMMA]
    scheduler = queued(*(job(f"{index:02d}", models[index % 2], T0 + index) for index in range(20)))
    order = drain(scheduler, None)
    assert order == [f"{index:02d}" for index in range(0, 20, 2)] + [
        f"{index:02d}" for index in range(1, 20, 2)
    ]
    swaps = sum(
        1 for before, after in itertools.pairwise(order) if int(before) % 2 != int(after) % 2
    )
    assert swaps == 1


def test_jobs_added_while_draining_join_the_resident_block() -> None:
    scheduler = queued(job("a1", "llama3.2", T0 + 1), job("b1", GEMMA, T0 + 2))
    picked = scheduler.pick(None, T0 + 10)
    assert picked is not None and picked.id == "a1"
    scheduler.remove("a1")
    # A llama job arriving later still goes before the older gemma job.
    scheduler.add(job("a2", "llama3.2", T0 + 20), reserved=False)
    assert drain(scheduler, LLAMA, T0 + 30) == ["a2", "b1"]


def test_position_counts_from_one_in_run_order() -> None:
    scheduler = queued(
        job("b1", GEMMA, T0),
        job("a1", "llama3.2", T0 + 1),
        job("a2", "llama3.2", T0 + 2),
    )
    assert [scheduler.position(i, None, T0) for i in ["b1", "a1", "a2"]] == [1, 2, 3]
    assert [scheduler.position(i, LLAMA, T0) for i in ["a1", "a2", "b1"]] == [1, 2, 3]
    with pytest.raises(KeyError):
        scheduler.position("missing", None, T0)


def test_a_job_backing_off_takes_its_place_when_it_is_ready() -> None:
    scheduler = queued(job("a1", created_at=T0, not_before=T0 + 60), job("a2", created_at=T0 + 1))
    assert scheduler.position("a1", LLAMA, T0) == 2
    # Ready by the time the next choice is made: the older job goes first.
    assert scheduler.position("a1", LLAMA, T0 + 60) == 1
    picked = scheduler.pick(LLAMA, T0 + 5)
    assert picked is not None and picked.id == "a2"


def test_pick_agrees_with_the_rule_on_random_queues() -> None:
    generator = random.Random(20261117)
    models = ["llama3.2", "llama3.2:latest", GEMMA, "qwen3:8b"]
    residents = [None, LLAMA, canonical_model_name(GEMMA), "qwen3:8b", "absent:latest"]
    for _ in range(300):
        jobs = [
            job(
                f"{generator.randrange(10**6):06d}-{index}",
                generator.choice(models),
                T0 + generator.randrange(5),
                not_before=generator.choice([0.0, 0.0, T0 + 2, T0 + 9]),
            )
            for index in range(generator.randrange(1, 9))
        ]
        scheduler = queued(*jobs)
        resident = generator.choice(residents)
        now = T0 + generator.randrange(12)
        ready = [each for each in jobs if each.not_before <= now]
        mine = [each for each in ready if canonical_model_name(each.model) == resident]
        candidates = mine or ready
        expected = min(candidates, key=lambda each: (each.created_at, each.id), default=None)
        assert scheduler.pick(resident, now) == expected


# -- backoff ----------------------------------------------------------------------------------


def test_jobs_backing_off_are_skipped_until_their_time() -> None:
    scheduler = queued(
        job("a1", "llama3.2", T0, not_before=T0 + 30),
        job("a2", "llama3.2", T0 + 1, not_before=T0 + 10),
        job("b1", GEMMA, T0 + 2),
    )
    # The resident model's jobs are waiting: the other model's ready job runs.
    picked = scheduler.pick(LLAMA, T0 + 5)
    assert picked is not None and picked.id == "b1"
    scheduler.remove("b1")
    assert scheduler.pick(LLAMA, T0 + 5) is None
    assert scheduler.next_ready_at(T0 + 5) == T0 + 10
    # Ready exactly at not_before, and no longer reported as waiting.
    picked = scheduler.pick(LLAMA, T0 + 10)
    assert picked is not None and picked.id == "a2"
    assert scheduler.next_ready_at(T0 + 10) == T0 + 30
    picked = scheduler.pick(LLAMA, T0 + 30)
    assert picked is not None and picked.id == "a1"  # older, both ready now
    assert scheduler.next_ready_at(T0 + 30) is None


def test_next_ready_at_ignores_ready_jobs() -> None:
    # The scheduler's times are the reactor's, which never go back.
    scheduler = queued(job("a", not_before=0.0), job("b", not_before=T0))
    assert scheduler.next_ready_at(T0 - 1) == T0
    assert scheduler.next_ready_at(T0) is None


# -- admission and bookkeeping ---------------------------------------------------------------


def test_reservations_count_against_the_bound() -> None:
    scheduler = Scheduler(max_queue=3)
    scheduler.reserve()
    scheduler.reserve()
    scheduler.reserve()
    with pytest.raises(QueueFull):
        scheduler.reserve()
    assert scheduler.depth == 0  # places are claimed, nothing queued yet

    scheduler.release()  # a store write failed: the place is free again
    scheduler.reserve()
    with pytest.raises(QueueFull):
        scheduler.reserve()


def test_add_takes_the_reserved_place() -> None:
    scheduler = Scheduler(max_queue=2)
    scheduler.reserve()
    scheduler.add(job("a"))
    assert scheduler.depth == 1 and "a" in scheduler
    scheduler.reserve()
    scheduler.add(job("b"))
    assert scheduler.depth == 2
    with pytest.raises(QueueFull):
        scheduler.reserve()
    # Taking a job out (to run it, or because its caller left) frees its place.
    assert scheduler.remove("a") == job("a")
    assert "a" not in scheduler
    scheduler.reserve()
    with pytest.raises(QueueFull):
        scheduler.reserve()


def test_a_full_queue_refuses_at_once_at_max_queue() -> None:
    scheduler = Scheduler(max_queue=5)
    for index in range(5):
        scheduler.reserve()
        scheduler.add(job(f"j{index}"))
    with pytest.raises(QueueFull):
        scheduler.reserve()
    assert scheduler.depth == 5


def test_a_queue_of_zero_admits_nothing() -> None:
    with pytest.raises(QueueFull):
        Scheduler(max_queue=0).reserve()


def test_unreserved_adds_may_exceed_the_bound() -> None:
    # Recovered jobs and retries are already the queue's: they are never refused.
    scheduler = Scheduler(max_queue=2)
    for index in range(4):
        scheduler.add(job(f"j{index}"), reserved=False)
    assert scheduler.depth == 4
    with pytest.raises(QueueFull):
        scheduler.reserve()
    for index in range(3):
        scheduler.remove(f"j{index}")
    scheduler.reserve()
    with pytest.raises(QueueFull):
        scheduler.reserve()


def test_adding_a_queued_id_again_replaces_it() -> None:
    scheduler = queued(job("a", attempt=0))
    retried = job("a", attempt=1, not_before=T0 + 4)
    scheduler.add(retried, reserved=False)
    assert scheduler.depth == 1
    assert list(scheduler.jobs()) == [retried]
    assert scheduler.pick(None, T0) is None
    assert scheduler.next_ready_at(T0) == T0 + 4


def test_remove() -> None:
    scheduler = queued(job("a", created_at=T0), job("b", GEMMA, T0 + 1))
    assert scheduler.remove("missing") is None
    assert scheduler.remove("a") == job("a", created_at=T0)
    assert scheduler.remove("a") is None
    assert scheduler.depth == 1
    assert "a" not in scheduler and "b" in scheduler
    picked = scheduler.pick(LLAMA, T0)
    assert picked is not None and picked.id == "b"
    with pytest.raises(KeyError):
        scheduler.position("a", None, T0)
    assert [each.id for each in scheduler.jobs()] == ["b"]


# -- classes and bounds (ADR-0021) --------------------------------------------------------

POLICY = Policy(max_wait=10.0, batch_max_wait=30.0)


def test_people_go_before_batch_work_even_for_another_model() -> None:
    scheduler = queued(
        job("batch-llama", "llama3.2", T0, priority=Priority.BATCH),
        job("person-gemma", GEMMA, T0 + 1),
        max_queue=10,
    )
    scheduler.policy = POLICY
    picked = scheduler.pick(LLAMA, T0 + 2)
    assert picked is not None and picked.id == "person-gemma"


def test_an_overdue_job_is_overtaken_no_more_and_skips_the_drain() -> None:
    scheduler = queued(job("old-gemma", GEMMA, T0), job("new-llama", "llama3.2", T0 + 5))
    scheduler.policy = POLICY
    # Before its bound the resident model's later job goes first ...
    picked = scheduler.pick(LLAMA, T0 + 9.9)
    assert picked is not None and picked.id == "new-llama"
    # ... from the bound on, arrival order.
    picked = scheduler.pick(LLAMA, T0 + 10)
    assert picked is not None and picked.id == "old-gemma"
    assert scheduler.overdue(picked, T0 + 10) and not scheduler.overdue(picked, T0 + 9.9)


def test_a_batch_turn_comes_once_per_max_wait_while_people_keep_coming() -> None:
    scheduler = queued(
        job("b1", "llama3.2", T0, priority=Priority.BATCH),
        job("b2", "llama3.2", T0 + 0.5, priority=Priority.BATCH),
        *(job(f"p{n}", "llama3.2", T0 + 1 + n) for n in range(20)),
    )
    scheduler.policy = POLICY
    started = []
    now = T0 + 2
    while (picked := scheduler.pick(LLAMA, now)) is not None:
        scheduler.take(picked, now)
        started.append((picked.id, now))
        now += 2
    batch = [(name, at) for name, at in started if name.startswith("b")]
    # The first turn once b1 has waited 10 s; the next 10 s after that one began.
    assert batch == [("b1", T0 + 10), ("b2", T0 + 20)]


def test_positions_follow_the_plan_through_a_batch_turn() -> None:
    # A batch job has waited 5 s; five people for the resident model queue
    # behind the running job. Each job takes about 2 s: the batch job's turn
    # falls due at T0 + 10, so it is shown fourth, not last.
    scheduler = queued(
        job("batch", GEMMA, T0, priority=Priority.BATCH),
        *(job(f"p{n}", "llama3.2", T0 + 1 + n * 0.1) for n in range(5)),
    )
    scheduler.policy = POLICY
    order = [each.id for each in scheduler.ordered(LLAMA, T0 + 5, job_seconds=2.0)]
    assert order == ["p0", "p1", "p2", "batch", "p3", "p4"]
    assert scheduler.position("batch", LLAMA, T0 + 5, job_seconds=2.0) == 4
    # Without the time moving on, the batch job would look last.
    assert [each.id for each in scheduler.ordered(LLAMA, T0 + 5)][-1] == "batch"


def test_the_counts_by_model_and_class_follow_every_way_in_and_out() -> None:
    people = job("p1", priority=Priority.INTERACTIVE)
    batch = [job(f"b{n}", GEMMA, priority=Priority.BATCH) for n in range(3)]
    scheduler = queued(people, *batch)
    assert scheduler.interactive_depth == 1
    assert scheduler.waiting_by_model() == {GEMMA: 3, LLAMA: 1}
    scheduler.add(people, reserved=False)  # seen again: not counted twice
    assert scheduler.interactive_depth == 1
    scheduler.take(people, T0)
    scheduler.remove("b0")
    assert scheduler.remove("b0") is None  # gone already: nothing changes
    assert scheduler.interactive_depth == 0
    assert scheduler.waiting_by_model() == {GEMMA: 2}

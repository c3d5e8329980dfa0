"""The scheduler's kept lanes choose exactly as the order does from scratch (ADR-0028).

The scheduler keeps its ready jobs in heaps between choices, so that a deep
queue costs no more per choice than a shallow one; :func:`foreman.queue.order.choose`
and :func:`~foreman.queue.order.plan` decide from a list of jobs. Whatever
comes and goes, both must give the same next job and the same plan.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from foreman.queue.job import Job
from foreman.queue.order import Policy, choose, plan
from foreman.queue.scheduler import QueueFull, Scheduler
from foreman.wire.model_names import canonical_model_name
from foreman.wire.priority import Priority

MODELS = ("llama3.2", "gemma3:12b", "qwen3:8b")
POLICY = Policy(max_wait=20.0, batch_max_wait=60.0, swap_quantum=2.0)


def job(number: int, model: str, priority: Priority, created_at: float, **more: Any) -> Job:
    return Job(
        id=f"job-{number:05d}",
        model=model,
        endpoint="chat",
        body=b"{}",
        sync=False,
        created_at=created_at,
        updated_at=created_at,
        priority=priority,
        **more,
    )


step = st.one_of(
    st.tuples(
        st.just("add"),
        st.sampled_from(MODELS),
        st.sampled_from(list(Priority)),
        st.sampled_from([None, 0.5, 3.0, 30.0]),  # backing off for so long, or ready
        st.sampled_from([None, "alice", "bob"]),  # its key (ADR-0030)
    ),
    st.tuples(st.just("remove"), st.integers(0, 50)),
    st.tuples(st.just("again"), st.integers(0, 50), st.sampled_from([None, 2.0])),
    st.tuples(st.just("run"), st.sampled_from([0.0, 1.0, 7.0])),
    st.tuples(st.just("wait"), st.sampled_from([0.1, 5.0, 25.0])),
)


def reference_ready(scheduler: Scheduler, now: float) -> list[Job]:
    return [seen for job in scheduler.jobs() if (seen := scheduler.seen(job)).not_before <= now]


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(step, max_size=60))
def test_the_kept_lanes_choose_and_plan_as_the_order_does(steps: list[tuple[Any, ...]]) -> None:
    scheduler = Scheduler(1000, POLICY)
    now, resident, number = 100.0, None, 0
    for action, *arguments in steps:
        if action == "add":
            model, priority, backoff, caller = arguments
            number += 1
            ready_at = None if backoff is None else now + backoff
            # As the worker adds: with the reactor's time, so a ready job joins its lane.
            scheduler.add(
                job(number, model, priority, now, caller=caller),
                reserved=False,
                arrived=now,
                ready_at=ready_at,
                now=now,
            )
        elif action == "remove":
            queued = sorted(scheduler.jobs(), key=lambda j: j.id)
            if queued:
                scheduler.remove(queued[arguments[0] % len(queued)].id)
        elif action == "again":  # back in the queue after an attempt: same id, same arrival
            queued = sorted(scheduler.jobs(), key=lambda j: j.id)
            if queued:
                chosen = queued[arguments[0] % len(queued)]
                backoff = arguments[1]
                scheduler.add(
                    chosen, reserved=False, ready_at=None if backoff is None else now + backoff
                )
        elif action == "run":
            expected = choose(
                reference_ready(scheduler, now), POLICY, resident, now, scheduler.turns
            )
            picked = scheduler.pick(resident, now)
            assert (picked and picked.id) == (expected and expected.id)
            if picked is not None:
                scheduler.take(picked, now)
                resident = canonical_model_name(picked.model)
                now += arguments[0]
        else:
            now += arguments[0]
        start = now + 0.5
        seen = [scheduler.seen(job) for job in scheduler.jobs()]
        reference = plan(seen, POLICY, resident, start, scheduler.turns, 1.0)
        ordered = scheduler.ordered(resident, start, 1.0)
        assert [job.id for job in ordered] == [job.id for job in reference]
        for position, queued_job in enumerate(ordered, start=1):
            assert scheduler.position(queued_job.id, resident, start, 1.0) == position
        expected_next = min((job.not_before for job in seen if job.not_before > now), default=None)
        assert scheduler.next_ready_at(now) == expected_next


def test_batch_work_and_peoples_calls_are_bounded_apart() -> None:
    scheduler = Scheduler(2, max_batch_queue=3)
    scheduler.reserve(Priority.BATCH, 3)
    try:
        scheduler.reserve(Priority.BATCH)
    except QueueFull:
        pass
    else:
        raise AssertionError("a fourth batch job was let in")
    scheduler.reserve()
    scheduler.reserve()  # people's calls are not held back by the batch
    try:
        scheduler.reserve()
    except QueueFull:
        pass
    else:
        raise AssertionError("a third person's call was let in")
    scheduler.release(Priority.BATCH, 3)
    scheduler.reserve(Priority.BATCH, 3)


def test_a_deep_queue_drains_by_model_in_arrival_order() -> None:
    # What each choice costs at depth is measured by bench/batches.py.
    scheduler = Scheduler(10, max_batch_queue=100_000)
    for number in range(20_000):
        scheduler.add(
            job(number, MODELS[number % 3], Priority.BATCH, 29_000 + number / 100), reserved=False
        )
    resident = canonical_model_name(MODELS[1])
    taken = []
    for step_number in range(200):
        picked = scheduler.pick(resident, 30_000.0 + step_number)
        assert picked is not None
        scheduler.take(picked, 30_000.0 + step_number)
        taken.append(int(picked.id.removeprefix("job-")))
    assert taken == list(range(1, 600, 3))  # the resident model's, oldest first
    assert scheduler.depth == 19_800
    assert scheduler.position(f"job-{598 + 3:05d}", resident, 30_200.0) == 1

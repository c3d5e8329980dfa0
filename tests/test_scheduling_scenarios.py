"""The two workloads that made classes necessary, in simulated time (ADR-0021).

Each is played against the real worker twice: under the policy as shipped
(default bounds) and under the rule before it (one class, no bound), so
the test shows both what was broken and that it is fixed, with the
issue's targets as the assertions.
"""

from __future__ import annotations

import itertools
import random
import statistics
from pathlib import Path

import attrs
import pytest

from foreman.queue.job import JobState
from foreman.queue.order import Policy
from foreman.wire.priority import Priority
from tests.scheduling_sim import (
    LOAD_SECONDS,
    MODELS,
    SWAP_GRACE,
    TOKENS_PER_SECOND,
    Arrival,
    Played,
    Run,
    job_for,
    play,
)
from tests.worker_rig import make_worker_rig

SHIPPED = Policy()
#: The rule before classes: drain by model, nothing ever overdue, no quantum.
BEFORE = Policy(max_wait=10**9, batch_max_wait=10**9, swap_quantum=0)
#: The classes, without the quantum (ADR-0021 as it was first shipped).
CLASSES_ONLY = Policy(swap_quantum=0)

LOOP_TOKENS = 10  # one second per call


def _loops(tmp_path: Path, policy: Policy, priority: Priority) -> Played:
    """Three callers loop on one model; at 5 s a fourth asks for another."""
    loopers = [Arrival(0.001 * n, MODELS[0], priority, LOOP_TOKENS) for n in (1, 2, 3)]
    other = Arrival(5.0003, MODELS[1], priority, LOOP_TOKENS)

    def call_again(played: Played, run: Run) -> list[Arrival]:
        if run.model != MODELS[1] and run.finished_at is not None:
            return [Arrival(run.finished_at, MODELS[0], priority, LOOP_TOKENS)]
        return []

    def served(played: Played) -> bool:
        return any(run.model == MODELS[1] and run.finished_at for run in played.runs.values())

    return play(
        tmp_path, [*loopers, other], policy, until=served, on_done=call_again, horizon=600.0
    )


def _other_caller(played: Played) -> Run:
    return next(run for run in played.runs.values() if run.model == MODELS[1])


def test_callers_looping_on_one_model_no_longer_starve_a_caller_of_another(
    tmp_path: Path,
) -> None:
    one_job = LOOP_TOKENS / TOKENS_PER_SECOND
    # With the classes alone: served within max-wait + the job running then
    # + one load (and the grace); the loops keep their model until then.
    classes = _other_caller(_loops(tmp_path / "classes", CLASSES_ONLY, Priority.INTERACTIVE))
    assert CLASSES_ONLY.max_wait <= classes.waited
    assert classes.waited <= CLASSES_ONLY.max_wait + one_job + LOAD_SECONDS + SWAP_GRACE
    # With the quantum (ADR-0024): within four of its model's loads (measured
    # here, a load and an unload), the job running then, and its own load.
    other = _other_caller(_loops(tmp_path / "shipped", SHIPPED, Priority.INTERACTIVE))
    quantum = SHIPPED.swap_quantum * (LOAD_SECONDS + 0.1)
    assert other.waited <= quantum + one_job + LOAD_SECONDS + SWAP_GRACE


def test_before_classes_the_loops_starved_the_other_caller(tmp_path: Path) -> None:
    try:
        _loops(tmp_path, BEFORE, Priority.INTERACTIVE)
    except AssertionError as e:
        assert "600" in str(e)  # still waiting after ten simulated minutes
    else:
        raise AssertionError("the other caller was served under the old rule")


def _batch_and_people(tmp_path: Path, policy: Policy, people: Priority) -> Played:
    generator = random.Random(20261130)
    batch = [
        Arrival(0.0003 * n, MODELS[n % 3], Priority.BATCH, generator.randint(5, 20))
        for n in range(60)
    ]
    arrivals: list[Arrival] = []
    at = 0.0
    while len(arrivals) < 12:
        at += generator.expovariate(1 / 8)  # one person every 8 s on average
        model = generator.choice(MODELS)
        arrivals.append(Arrival(round(at, 3) + 0.0007, model, people, generator.randint(5, 20)))
    return play(tmp_path, batch + arrivals, policy)


def _people_waits(played: Played, batch_ids: set[str]) -> list[float]:
    return [run.waited for run in played.started() if run.id not in batch_ids]


def _batch_makespan(played: Played, people: set[str]) -> float:
    return max(run.finished_at or 0.0 for run in played.runs.values() if run.id not in people)


def test_people_arriving_during_a_big_batch_wait_for_one_job_and_a_load(
    tmp_path: Path,
) -> None:
    shipped = _batch_and_people(tmp_path / "shipped", SHIPPED, Priority.INTERACTIVE)
    # Before classes, the same people were just more jobs in the one class.
    before = _batch_and_people(tmp_path / "before", BEFORE, Priority.BATCH)

    def people(played: Played) -> set[str]:
        ordered = sorted(played.runs.values(), key=lambda run: (run.created_at, run.id))
        return {run.id for run in ordered if run.created_at > 0.1}

    waits = sorted(_people_waits(shipped, set(shipped.runs) - people(shipped)))
    waits_before = sorted(_people_waits(before, set(before.runs) - people(before)))
    longest_job = LOAD_SECONDS + 20 / TOKENS_PER_SECOND
    p95 = statistics.quantiles(waits, n=20, method="inclusive")[-1]
    assert p95 <= longest_job + LOAD_SECONDS + SWAP_GRACE, waits
    assert statistics.median(waits) < statistics.median(waits_before)
    # What it costs the batch. Serving a person within one job and a load
    # means loading their model when it is not the one being drained: one
    # load each, and no more (the batch then drains that model's jobs
    # before swapping again). That is the whole price in loads ...
    started = shipped.started()
    swapped_for = [
        run
        for before_run, run in itertools.pairwise(started)
        if run.id in people(shipped) and run.model != before_run.model
    ]
    assert before.loads < shipped.loads <= before.loads + len(swapped_for)
    # ... and in time, the batch is late by the people's own work and
    # those loads, nothing more: no thrashing.
    their_work = sum(
        run.tokens / TOKENS_PER_SECOND for run in shipped.runs.values() if run.id in people(shipped)
    )
    makespan = _batch_makespan(shipped, people(shipped))
    makespan_before = _batch_makespan(before, people(before))
    extra_loads = LOAD_SECONDS * (
        _loads_before(shipped, makespan) - _loads_before(before, makespan_before)
    )
    assert makespan <= makespan_before + their_work + extra_loads + len(waits) * SWAP_GRACE


def _loads_before(played: Played, end: float) -> int:
    return sum(1 for run in played.started() if run.loaded and (run.started_at or 0.0) < end)


def test_a_batch_job_is_never_overtaken_past_its_bound(tmp_path: Path) -> None:
    # A batch job for a rare model behind a steady stream of batch work for
    # the resident one: it runs once it has waited batch_max_wait.
    policy = attrs.evolve(CLASSES_ONLY, batch_max_wait=120.0)
    stream = [Arrival(0.0003 + 0.9 * n, MODELS[0], Priority.BATCH, 10) for n in range(300)]
    rare = Arrival(2.0007, MODELS[2], Priority.BATCH, 10)
    played = play(tmp_path, [*stream, rare], policy)
    run = next(run for run in played.runs.values() if run.model == MODELS[2])
    one_job = LOAD_SECONDS + 10 / TOKENS_PER_SECOND
    assert policy.batch_max_wait <= run.waited <= policy.batch_max_wait + one_job + SWAP_GRACE


@pytest.mark.parametrize(
    ("restart_at", "expected"),
    [
        # 30 s later: people first, the batch job after them.
        (30.0, ["person-1", "person-2", "batch"]),
        # 100 s later the batch job has waited past max_wait since it was
        # created (not since the restart): its turn comes first.
        (100.0, ["batch", "person-1", "person-2"]),
    ],
)
def test_class_and_wait_survive_a_restart(
    tmp_path: Path, restart_at: float, expected: list[str]
) -> None:
    database = tmp_path / "jobs.sqlite3"
    before = make_worker_rig(tmp_path, database=database, policy=SHIPPED)
    names: dict[str, str] = {}
    for at, model, priority, name in (
        (0.0, MODELS[1], Priority.BATCH, "batch"),
        (0.5, MODELS[0], Priority.INTERACTIVE, "person-1"),
    ):
        before.clock.advance(at - before.clock.seconds())
        job = job_for(Arrival(at, model, priority, 2), at)
        names[job.id] = name
        before.worker.submit(job)
    before.flush()
    before.stop()  # never started: both still queued in the file

    after = make_worker_rig(tmp_path, database=database, policy=SHIPPED, start_at=restart_at)
    late = job_for(Arrival(restart_at, MODELS[0], Priority.INTERACTIVE, 2), restart_at)
    names[late.id] = "person-2"
    after.worker.submit(late)
    order: list[str] = []
    after.worker.on_transition(
        lambda job, previous: order.append(names[job.id]) if job.state is JobState.LOADING else None
    )
    after.worker.startService()
    after.run_until(lambda: len(order) == 3)
    after.stop()
    assert order == expected

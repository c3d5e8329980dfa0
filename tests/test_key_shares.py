"""The fair share between keys (ADR-0030), proved in simulated time.

Two kinds of proof. At the level of the order, with one key the plan is
exactly the order foreman had before keys, written out here from its
ADRs (ADR-0009, ADR-0021, ADR-0024) as a plain scan of a list. Against
the real worker, store and residency on a ``Clock`` (:mod:`tests.scheduling_sim`),
random workloads of several keys: each key's jobs wait behind at most one
job of each other key per round.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foreman.queue.job import Job
from foreman.queue.lanes import arrival
from foreman.queue.order import Policy, Turns, plan
from foreman.queue.scheduler import CallerQueueFull, QueueFull, Scheduler
from foreman.queue.shares import EqualShares, Rounds
from foreman.wire.model_names import canonical_model_name
from foreman.wire.priority import Priority
from tests.scheduling_sim import MODELS, Arrival, Played, Run, play

POLICY = Policy(max_wait=20.0, batch_max_wait=60.0, swap_quantum=2.0)
#: Bounds so long that nothing is ever overdue: the rounds alone decide.
UNBOUNDED = Policy(max_wait=1e9, batch_max_wait=1e9)
KEYS = ("ann", "bob", "cy")

EXAMPLES = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def job(number: int, model: str, priority: Priority, at: float, caller: str | None) -> Job:
    return Job(
        id=f"job-{number:05d}",
        model=model,
        endpoint="chat",
        body=b"{}",
        sync=False,
        created_at=at,
        updated_at=at,
        not_before=at,
        priority=priority,
        caller=caller,
    )


# -- one key: the order as it was -------------------------------------------


def _today_within(
    jobs: list[Job], policy: Policy, resident: str | None, now: float, turns: Turns, quantum: bool
) -> Job | None:
    oldest = min(jobs, key=arrival, default=None)
    if oldest is None or policy.overdue(oldest, now):
        return oldest
    same = (j for j in jobs if canonical_model_name(j.model) == resident)
    mine = min(same, key=arrival, default=None)
    if mine is None:
        return oldest
    if quantum:
        others = (j for j in jobs if canonical_model_name(j.model) != resident)
        other = min(others, key=arrival, default=None)
        if (
            other is not None
            and arrival(mine) > arrival(other)
            and policy.quantum_left(turns, other, now) <= 0
        ):
            return other
    return mine


def today_plan(
    jobs: list[Job], policy: Policy, resident: str | None, start: float, job_seconds: float
) -> Iterator[Job]:
    """The order before keys, as a scan of a list at each step."""
    turns, now, left = Turns(), start, list(jobs)
    while left:
        ready = [j for j in left if j.not_before <= now]
        if not ready:
            now = min(j.not_before for j in left)
            continue
        people = [j for j in ready if not j.batch]
        batch = [j for j in ready if j.batch]
        oldest_batch = min(batch, key=arrival, default=None)
        if oldest_batch is not None and (
            not people
            or now - max(turns.last_batch_start, oldest_batch.created_at) >= policy.max_wait
        ):
            chosen = _today_within(batch, policy, resident, now, turns, quantum=False)
        else:
            chosen = _today_within(people, policy, resident, now, turns, quantum=True)
        assert chosen is not None
        yield chosen
        left.remove(chosen)
        turns.started(chosen, now)
        resident = canonical_model_name(chosen.model)
        now += job_seconds


workloads = st.lists(
    st.tuples(
        st.sampled_from(MODELS),
        st.sampled_from(list(Priority)),
        st.integers(0, 120),  # arrival, in tenths of a second
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(
    workload=workloads,
    caller=st.sampled_from([None, "ann"]),
    resident=st.sampled_from([None, *MODELS]),
    job_seconds=st.sampled_from([0.5, 3.0]),
)
def test_with_one_key_the_order_is_exactly_the_order_before_keys(
    workload: list[tuple[str, Priority, int]],
    caller: str | None,
    resident: str | None,
    job_seconds: float,
) -> None:
    jobs = [
        job(number, model, priority, tenths / 10, caller)
        for number, (model, priority, tenths) in enumerate(workload)
    ]
    ours = plan(jobs, POLICY, resident, 0.0, Turns(), job_seconds)
    theirs = today_plan(jobs, POLICY, resident, 0.0, job_seconds)
    assert [j.id for j in ours] == [j.id for j in theirs]


# -- several keys: rounds, with the real worker -------------------------------


def keyed_arrivals(priority: Priority) -> st.SearchStrategy[list[Arrival]]:
    """Bursts of one key's jobs, as work comes (a script, a batch): a key
    whose burst comes late must not take the turns it was not there for."""
    burst = st.tuples(
        st.integers(0, 4).map(lambda n: n * 6.0),  # when
        st.integers(0, 800).map(lambda ms: ms / 1000),  # a little later
        st.sampled_from(KEYS),
        st.integers(1, 8),  # how many jobs
        st.sampled_from(MODELS),
        st.integers(1, 30),  # tokens each
    )

    def expand(bursts: list[tuple[float, float, str, int, str, int]]) -> list[Arrival]:
        workload = [
            Arrival(at + late + n * 1e-3, model, priority, tokens, caller=key)
            for at, late, key, count, model, tokens in bursts
            for n in range(count)
        ]
        return [attrs.evolve(a, at=a.at + (i + 1) * 1e-6) for i, a in enumerate(workload)]

    return st.lists(burst, min_size=1, max_size=8).map(expand)


def play_in_tmp(workload: list[Arrival], policy: Policy = UNBOUNDED, **more: Any) -> Played:
    with tempfile.TemporaryDirectory() as directory:
        return play(Path(directory), workload, policy, **more)


def _queued_at(runs: list[Run], moment: float) -> bool:
    """Whether one of ``runs`` waited at ``moment`` (arrived, not started)."""
    return any(run.created_at <= moment < (run.started_at or float("inf")) for run in runs)


def others_started_while_waiting(played: Played) -> list[tuple[Run, Counter[str | None], bool]]:
    """For each job started: how many jobs each other key started while the
    job's key had work waiting, since the key's previous start (or since its
    work arrived, if it had none waiting then); and whether it was the key's
    first job of all."""
    started = played.started()
    found = []
    for index, run in enumerate(started):
        mine = [r for r in played.runs.values() if r.caller == run.caller]
        before = [r for r in started[:index] if r.caller == run.caller]
        previous = before[-1].started_at if before else None
        if previous is not None and _queued_at(mine, previous + 1e-9):
            since = previous
        else:
            arrived = [r.created_at for r in mine if previous is None or r.created_at > previous]
            since = min(arrived)
        assert run.started_at is not None
        between = Counter(
            other.caller
            for other in started[:index]
            if other.caller != run.caller and since < (other.started_at or 0.0) < run.started_at
        )
        found.append((run, between, not before))
    return found


@EXAMPLES
@given(data=st.data(), priority=st.sampled_from(list(Priority)))
def test_a_key_waits_behind_at_most_one_job_of_each_other_key_per_round(
    data: st.DataObject, priority: Priority
) -> None:
    workload = data.draw(keyed_arrivals(priority))
    played = play_in_tmp(workload)
    assert all(run.finished_at is not None for run in played.runs.values())
    for run, between, first in others_started_while_waiting(played):
        # A key's first job: one of each other key at most, whatever was queued.
        # Later: its key may have had its turn early in one round and the
        # others theirs early in the next: two at most.
        most = 1 if first else 2
        assert all(count <= most for count in between.values()), (run, between)


@EXAMPLES
@given(workload=keyed_arrivals(Priority.BATCH))
def test_with_one_key_the_worker_runs_as_it_did_before_keys(workload: list[Arrival]) -> None:
    alone = [attrs.evolve(a, caller=None) for a in workload]
    one_key = [attrs.evolve(a, caller="ann") for a in workload]
    order = [(r.model, r.created_at) for r in play_in_tmp(alone, POLICY).started()]
    keyed = [(r.model, r.created_at) for r in play_in_tmp(one_key, POLICY).started()]
    assert keyed == order


def test_ten_jobs_of_one_key_sent_after_two_thousand_of_another_finish_before_its_twentieth() -> (
    None
):
    # The scenario, with the real worker and store: A's 2,000 batch
    # jobs are queued first, all for one model; B's ten, for another model,
    # come a second later.
    workload = [
        Arrival(at=0.001 + n * 1e-6, model=MODELS[0], priority=Priority.BATCH, tokens=5, caller="a")
        for n in range(2000)
    ] + [
        Arrival(at=1.0 + n * 1e-6, model=MODELS[1], priority=Priority.BATCH, tokens=5, caller="b")
        for n in range(10)
    ]

    def b_done(played: Played) -> bool:
        runs = [r for r in played.runs.values() if r.caller == "b"]
        return bool(runs) and all(r.finished_at is not None for r in runs)

    played = play_in_tmp(workload, POLICY, until=b_done)
    a_started = [r for r in played.started() if r.caller == "a"]
    assert len(a_started) < 20, len(a_started)
    b_runs = [r for r in played.started() if r.caller == "b"]
    assert len(b_runs) == 10


# -- the rounds and the key's own limit ---------------------------------------


def test_a_key_that_stayed_away_saves_no_turns() -> None:
    rounds = Rounds()
    for _ in range(5):
        rounds.started("ann")
    # Bob arrives now: he takes his turn in the current round, no more.
    assert rounds.turn(["ann", "bob"]) == ["bob"]
    rounds.started("bob")
    assert rounds.turn(["ann", "bob"]) == ["ann", "bob"]


def test_a_weighted_key_starts_that_many_jobs_a_round() -> None:
    rounds = Rounds()
    started = []
    for _ in range(9):
        turn = rounds.turn(["ann", "bob"])
        chosen = turn[0]
        started.append(chosen)
        rounds.started(chosen, weight=2.0 if chosen == "ann" else 1.0)
    assert Counter(started) == {"ann": 6, "bob": 3}


class _Limits(EqualShares):
    def max_waiting(self, caller: str | None) -> int | None:
        return 2 if caller == "ann" else None


def test_a_key_beyond_its_limit_is_refused_and_others_are_not() -> None:
    scheduler = Scheduler(100, Policy(shares=_Limits()))
    scheduler.reserve(caller="ann")
    scheduler.add(job(1, MODELS[0], Priority.INTERACTIVE, 0.0, "ann"))
    scheduler.reserve(caller="ann")
    try:
        scheduler.reserve(caller="ann")
    except CallerQueueFull as e:
        assert e.limit == 2
    else:
        raise AssertionError("a third job of ann was let in")
    scheduler.reserve(caller="bob")  # bob has no limit of his own
    scheduler.release(caller="ann")
    scheduler.reserve(caller="ann")  # a place given back is free again
    scheduler.remove("job-00001")
    scheduler.reserve(caller="ann")  # and so is a job gone
    assert scheduler.waiting_for("ann") == 2
    assert issubclass(CallerQueueFull, QueueFull)

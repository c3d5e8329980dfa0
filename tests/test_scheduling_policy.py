"""The scheduling policy's promises, proved over random workloads in simulated time.

Each example plays random arrivals (times, models, classes, lengths)
against the real worker, store and residency in front of the simulated
Ollama (:mod:`tests.scheduling_sim`), then checks what the worker did
against ADR-0021's four promises.
"""

from __future__ import annotations

import itertools
import math
import tempfile
from pathlib import Path

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foreman.queue.order import Policy
from foreman.wire.model_names import canonical_model_name
from foreman.wire.priority import Priority
from tests.scheduling_sim import (
    LOAD_SECONDS,
    MODELS,
    SWAP_GRACE,
    TOKENS_PER_SECOND,
    Arrival,
    Played,
    Run,
    play,
)

#: Bounds scaled to the simulated jobs (0.1-4 s each, 2 s loads).
POLICY = Policy(max_wait=8.0, batch_max_wait=20.0)
MOST_TOKENS = 40
#: The longest a job can hold the worker: a load, then its whole reply.
LONGEST_JOB = LOAD_SECONDS + MOST_TOKENS / TOKENS_PER_SECOND

EXAMPLES = settings(
    max_examples=40,
    deadline=None,
    # The same examples on every machine, whatever a past run saved.
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def arrivals(priorities: st.SearchStrategy[Priority]) -> st.SearchStrategy[list[Arrival]]:
    """Up to 40 jobs arriving within 30 s: more work than the worker can
    do meanwhile, so queues build up and waits pass their bounds."""
    # Job lengths and loads are multiples of 0.05 s, so a job ends a
    # multiple of 0.05 s after some arrival; a distinct microsecond for each
    # arrival keeps arrivals from coinciding with an end or with each other,
    # where "which came first" would be a matter of event order.
    one = st.builds(
        Arrival,
        at=st.integers(0, 30_000).map(lambda ms: ms / 1000),
        # Mostly one model: its queue keeps refilling while the others wait,
        # which is when draining overtakes and the bounds matter.
        model=st.sampled_from((MODELS[0],) * 4 + MODELS[1:]),
        priority=priorities,
        tokens=st.integers(1, MOST_TOKENS),
    )
    return st.lists(one, min_size=1, max_size=40).map(
        lambda workload: [
            attrs.evolve(arrival, at=arrival.at + (index + 1) * 1e-6)
            for index, arrival in enumerate(workload)
        ]
    )


both_classes = st.sampled_from(list(Priority))


def play_in_tmp(workload: list[Arrival], policy: Policy = POLICY) -> Played:
    with tempfile.TemporaryDirectory() as directory:
        return play(Path(directory), workload, policy)


@EXAMPLES
@given(arrivals(both_classes))
def test_once_its_bound_has_passed_no_later_job_of_its_class_overtakes_a_job(
    workload: list[Arrival],
) -> None:
    played = play_in_tmp(workload)
    for early in played.runs.values():
        for late in played.runs.values():
            if late.priority is not early.priority or (late.created_at, late.id) <= (
                early.created_at,
                early.id,
            ):
                continue
            assert early.started_at is not None and late.started_at is not None
            if late.started_at < early.started_at:
                # Overtaken: only while ``early`` had not yet waited its bound.
                assert late.started_at - early.created_at < POLICY.bound(early.priority), (
                    early,
                    late,
                )


@EXAMPLES
@given(
    st.lists(st.integers(1, MOST_TOKENS), min_size=1, max_size=6),
    st.lists(st.sampled_from(MODELS), min_size=1, max_size=6),
)
def test_under_endless_interactive_load_batch_jobs_still_run(
    batch_tokens: list[int], models: list[str]
) -> None:
    batch = [
        Arrival(0.5, models[index % len(models)], Priority.BATCH, tokens)
        for index, tokens in enumerate(batch_tokens)
    ]
    # Three people in loops on one model: the moment one call ends, the
    # caller sends the next; the interactive queue is never empty.
    people = [Arrival(0.000_3 * n, MODELS[0], Priority.INTERACTIVE, 10) for n in (1, 2, 3)]

    def call_again(played: Played, run: Run) -> list[Arrival]:
        if run.priority is Priority.INTERACTIVE:
            assert run.finished_at is not None
            return [Arrival(run.finished_at, MODELS[0], Priority.INTERACTIVE, 10)]
        return []

    with tempfile.TemporaryDirectory() as directory:
        played = play(
            Path(directory),
            batch + people,
            POLICY,
            until=lambda played: _batches_finished(played, len(batch)),
            on_done=call_again,
            horizon=len(batch) * 100.0,
        )
    starts = [0.5] + [run.started_at for run in played.of(Priority.BATCH)]
    assert len(starts) == len(batch) + 1
    # One batch job at least every max_wait: the turn falls due, the job
    # running then finishes, and the swap grace passes.
    for before, after in itertools.pairwise(starts):
        assert after is not None and before is not None
        assert after - before <= POLICY.max_wait + LONGEST_JOB + SWAP_GRACE


def _batches_finished(played: Played, count: int) -> bool:
    finished = [r for r in played.runs.values() if r.priority is Priority.BATCH and r.finished_at]
    return len(finished) == count


@EXAMPLES
@given(arrivals(both_classes))
def test_a_person_waits_behind_at_most_one_batch_job_per_max_wait(
    workload: list[Arrival],
) -> None:
    played = play_in_tmp(workload)
    batch_starts = [run.started_at for run in played.of(Priority.BATCH)]
    for person in played.of(Priority.INTERACTIVE):
        assert person.started_at is not None
        overtaking = [
            start
            for start in batch_starts
            if start is not None and person.created_at < start < person.started_at
        ]
        # A person who waits less than max_wait sees at most one batch job
        # start ahead of them (beyond the one running when they came).
        allowed = 1 + math.floor(person.waited / POLICY.max_wait)
        assert len(overtaking) <= allowed, (person, overtaking)


@EXAMPLES
@given(arrivals(st.sampled_from(list(Priority))))
def test_with_nothing_overdue_the_order_is_drain_by_model(workload: list[Arrival]) -> None:
    # One class, bounds out of reach, no quantum: every start must be what the rule
    # before classes chose, given what was queued then and what was resident.
    one_class = [
        Arrival(each.at, each.model, workload[0].priority, each.tokens) for each in workload
    ]
    played = play_in_tmp(one_class, Policy(max_wait=10**6, batch_max_wait=10**6, swap_quantum=0))
    resident: str | None = None
    started = played.started()
    for index, run in enumerate(started):
        assert run.started_at is not None
        queued = [other for other in started[index:] if other.created_at <= run.started_at]
        expected = min(
            queued,
            key=lambda other: (
                canonical_model_name(other.model) != resident,
                other.created_at,
                other.id,
            ),
        )
        assert run.id == expected.id, (run, expected, resident)
        resident = canonical_model_name(run.model)

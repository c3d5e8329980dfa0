"""The order queued jobs run in: classes, drain by model, and a bound on overtaking (ADR-0021).

Pure functions of the queue, the resident model and the time, so the worker,
the queue's positions and the property tests all follow one rule:

1. **Classes.** ``interactive`` work (people's calls) goes before ``batch``
   work, except that while batch jobs wait, one of them runs at least every
   ``max_wait`` seconds: a *batch turn* is due once no batch job has started
   for ``max_wait`` and the oldest ready batch job has waited that long.
2. **Within a class, keys in turn** (ADR-0030, :mod:`foreman.queue.shares`):
   the class's keys with jobs ready are served in rounds, one job of each
   key per round; the choice below is made among the keys whose turn it is.
   With one key (or none) it is made among all the class's jobs.
3. **Drain by model** (ADR-0009): the oldest job for the resident model,
   else the oldest job.
4. **The bound.** Once a class's oldest job has waited its class's bound
   (``max_wait``, ``batch_max_wait``), the class runs in arrival order:
   nothing that came after it starts before it.
5. **The quantum** (ADR-0024). While a person's call for another model
   waits, the resident model's interactive calls that came after it overtake
   it for at most ``swap_quantum`` times the waiting model's load time,
   counted from when the resident model's run began (its load done) or the
   other call arrived, whichever is later; then the oldest call of another model goes
   next. Calls that were queued before it still drain. A swap then takes at
   most about a fifth of the worker's time (with the default of 4), and
   nobody waits long behind callers looping on one model. Batch work, queued
   in bulk, drains by model up to its own bound: rotating it would only add
   loads.

With nothing overdue, no quantum spent, one class and one key, the order is
exactly drain by model.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import Protocol

import attrs

from foreman.queue.job import Job
from foreman.queue.lanes import KeyedLane, Ready, arrival
from foreman.queue.shares import EqualShares, Rounds, Shares
from foreman.wire.model_names import canonical_model_name
from foreman.wire.priority import Priority

DEFAULT_MAX_WAIT = 60.0
DEFAULT_BATCH_MAX_WAIT = 30 * 60.0
#: The quantum, in loads of the waiting model: swaps take at most about 1/5 of the time.
DEFAULT_SWAP_QUANTUM = 4.0
#: A model's load time, when nothing is known of it (the order's tests).
UNKNOWN_LOAD_SECONDS = 5.0


class LoadCosts(Protocol):
    """What loading a model costs (:class:`foreman.queue.costs.ModelCosts`)."""

    def load_seconds(self, model: str) -> float: ...


class _Unknown:
    def load_seconds(self, model: str) -> float:
        return UNKNOWN_LOAD_SECONDS


@attrs.frozen
class Policy:
    #: An interactive job waiting this long is overtaken no more; also how
    #: often a batch job gets a turn while interactive work keeps coming.
    max_wait: float = DEFAULT_MAX_WAIT
    #: The batch class's own bound, long so that big batches still drain by model.
    batch_max_wait: float = DEFAULT_BATCH_MAX_WAIT
    #: The resident model's quantum while other work waits, in loads of the
    #: waiting model; 0: no quantum.
    swap_quantum: float = DEFAULT_SWAP_QUANTUM
    costs: LoadCosts = attrs.field(factory=_Unknown, eq=False)
    #: How many jobs each key starts per round, and may have waiting (ADR-0030).
    shares: Shares = attrs.field(factory=EqualShares, eq=False)

    def bound(self, priority: Priority) -> float:
        return self.batch_max_wait if priority is Priority.BATCH else self.max_wait

    def overdue(self, job: Job, now: float) -> bool:
        """Whether ``job`` has waited its class's bound: nothing later overtakes it."""
        return now - job.created_at >= self.bound(job.priority)

    def quantum(self, waiting: Job) -> float:
        """How long the resident model may keep the worker while ``waiting`` waits."""
        if self.swap_quantum <= 0:
            return float("inf")
        return self.swap_quantum * self.costs.load_seconds(waiting.model)

    def quantum_left(self, turns: Turns, waiting: Job, now: float) -> float:
        """What is left of the resident model's quantum, with ``waiting`` waiting."""
        return self.quantum(waiting) - (now - max(turns.since, waiting.created_at))


@attrs.define
class Turns:
    """What the order remembers between choices: when a batch job last
    started, and which model's run is going on since when."""

    last_batch_start: float = float("-inf")
    #: The model of the last job started (canonical), and when its run began.
    model: str | None = None
    since: float = float("-inf")
    #: Each class's rounds between keys (ADR-0030).
    rounds: dict[Priority, Rounds] = attrs.field(
        factory=lambda: {priority: Rounds() for priority in Priority}
    )

    def copy(self) -> Turns:
        """These turns, to be changed without changing them (a plan)."""
        rounds = {priority: kept.copy() for priority, kept in self.rounds.items()}
        return attrs.evolve(self, rounds=rounds)

    def started(self, job: Job, now: float, weight: float = 1.0) -> None:
        if job.batch:
            self.last_batch_start = now
        self.rounds[job.priority].started(job.caller, weight)
        model = canonical_model_name(job.model)
        if model != self.model:
            self.model = model
            self.since = now

    def loaded(self, model: str, now: float) -> None:
        """``model``'s load for its run ended at ``now``: the quantum counts
        from here, so that a swap costs at most a load per quantum of work."""
        if canonical_model_name(model) == self.model:
            self.since = now


class ReadyJobs:
    """The ready jobs of both classes, as one choice sees them: the
    scheduler's lanes (kept between choices), a plan's view of them, or
    lanes made for a list of jobs."""

    def __init__(self, lanes: Mapping[Priority, KeyedLane] | None = None) -> None:
        self.lanes: Mapping[Priority, KeyedLane] = lanes or {
            Priority.INTERACTIVE: KeyedLane(),
            Priority.BATCH: KeyedLane(),
        }

    def add(self, job: Job) -> None:
        self.lanes[job.priority].add(job)

    def take(self, job: Job) -> None:
        self.lanes[job.priority].take(job)

    def __len__(self) -> int:
        return sum(lane.size for lane in self.lanes.values())

    def choose(self, policy: Policy, resident: str | None, now: float, turns: Turns) -> Job | None:
        interactive = self.lanes[Priority.INTERACTIVE]
        batch = self.lanes[Priority.BATCH]
        oldest_batch = batch.oldest()
        if oldest_batch is not None and (
            interactive.size == 0 or _batch_turn_due(oldest_batch, policy, now, turns)
        ):
            return _within(batch, policy, resident, now, turns.rounds[Priority.BATCH])
        rounds = turns.rounds[Priority.INTERACTIVE]
        return _within(interactive, policy, resident, now, rounds, quantum=turns)


def _batch_turn_due(oldest: Job, policy: Policy, now: float, turns: Turns) -> bool:
    return now - max(turns.last_batch_start, oldest.created_at) >= policy.max_wait


def _within(
    lane: KeyedLane,
    policy: Policy,
    resident: str | None,
    now: float,
    rounds: Rounds,
    *,
    quantum: Turns | None = None,
) -> Job | None:
    oldest = lane.oldest()
    if oldest is None or policy.overdue(oldest, now):
        return oldest  # the bound: whoever's it is
    callers = lane.callers()
    if len(callers) > 1:
        # Keys in turn: the choice is among the keys whose turn it is.
        lane = lane.among(rounds.turn(callers))
        oldest = lane.oldest()
    return _drain(lane, oldest, policy, resident, now, quantum)


def _drain(
    lane: Ready,
    oldest: Job | None,
    policy: Policy,
    resident: str | None,
    now: float,
    quantum: Turns | None,
) -> Job | None:
    mine = lane.oldest_for(resident)
    if mine is None:
        return oldest
    if quantum is not None:
        other = lane.oldest_other(resident)
        if (
            other is not None
            and arrival(mine) > arrival(other)
            and policy.quantum_left(quantum, other, now) <= 0
        ):
            return other  # the resident model's quantum is spent
    return mine


def choose(
    jobs: Iterable[Job], policy: Policy, resident: str | None, now: float, turns: Turns
) -> Job | None:
    """The job to start at ``now`` among ``jobs`` (all ready), or ``None``."""
    ready = ReadyJobs()
    for job in jobs:
        ready.add(job)
    return ready.choose(policy, resident, now, turns)


def plan(
    jobs: Collection[Job],
    policy: Policy,
    resident: str | None,
    start: float,
    turns: Turns,
    job_seconds: float,
) -> Iterator[Job]:
    """Every job in the order the worker will start them if nothing else
    arrives and each takes ``job_seconds``; the first choice is made at
    ``start``. A job backing off joins when its ``not_before`` comes.
    """
    ready = ReadyJobs()
    later = []
    for job in jobs:
        if job.not_before <= start:
            ready.add(job)
        else:
            later.append(job)
    return planned(ready, later, policy, resident, start, turns, job_seconds)


def planned(
    ready: ReadyJobs,
    later: Iterable[Job],
    policy: Policy,
    resident: str | None,
    start: float,
    turns: Turns,
    job_seconds: float,
) -> Iterator[Job]:
    """:func:`plan` from ``ready`` (the jobs ready at ``start``, changed as
    the plan goes) and ``later`` (those that are not yet)."""
    turns = turns.copy()
    now = start
    waiting = iter(sorted(later, key=lambda job: (job.not_before, job.id)))
    upcoming = next(waiting, None)
    while True:
        while upcoming is not None and upcoming.not_before <= now:
            ready.add(upcoming)
            upcoming = next(waiting, None)
        if not len(ready):
            if upcoming is None:
                return
            now = upcoming.not_before
            continue
        job = ready.choose(policy, resident, now, turns)
        assert job is not None
        yield job
        ready.take(job)
        turns.started(job, now, policy.shares.weight(job.caller))
        resident = canonical_model_name(job.model)
        now += job_seconds


def planned_lanes(lanes: Mapping[Priority, KeyedLane]) -> ReadyJobs:
    """The scheduler's lanes as a plan reads them, leaving them as they are."""
    return ReadyJobs({priority: lane.planned() for priority, lane in lanes.items()})

"""The order queued jobs run in: classes, drain by model, and a bound on overtaking (ADR-0021).

Pure functions of the queue, the resident model and the time, so the worker,
the queue's positions and the property tests all follow one rule:

1. **Classes.** ``interactive`` work (people's calls) goes before ``batch``
   work, except that while batch jobs wait, one of them runs at least every
   ``max_wait`` seconds: a *batch turn* is due once no batch job has started
   for ``max_wait`` and the oldest ready batch job has waited that long.
2. **Within a class, drain by model** (ADR-0009): the oldest job for the
   resident model, else the class's oldest job.
3. **The bound.** Once a class's oldest job has waited its class's bound
   (``max_wait``, ``batch_max_wait``), the class runs in arrival order:
   nothing that came after it starts before it.

With nothing overdue and one class the order is exactly the old one.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable, Iterator

import attrs

from foreman.queue.job import Job
from foreman.wire.model_names import canonical_model_name
from foreman.wire.priority import Priority

DEFAULT_MAX_WAIT = 60.0
DEFAULT_BATCH_MAX_WAIT = 30 * 60.0


@attrs.frozen
class Policy:
    #: An interactive job waiting this long is overtaken no more; also how
    #: often a batch job gets a turn while interactive work keeps coming.
    max_wait: float = DEFAULT_MAX_WAIT
    #: The batch class's own bound, long so that big batches still drain by model.
    batch_max_wait: float = DEFAULT_BATCH_MAX_WAIT

    def bound(self, priority: Priority) -> float:
        return self.batch_max_wait if priority is Priority.BATCH else self.max_wait

    def overdue(self, job: Job, now: float) -> bool:
        """Whether ``job`` has waited its class's bound: nothing later overtakes it."""
        return now - job.created_at >= self.bound(job.priority)


def arrival(job: Job) -> tuple[float, str]:
    """Arrival order: creation time, ties by id (ids are ULIDs)."""
    return (job.created_at, job.id)


class _Lane:
    """One class's ready jobs: the oldest overall and the oldest per model.

    Heaps with lazy removal, so that a whole plan costs O(n log n).
    """

    def __init__(self) -> None:
        self._all: list[tuple[float, str, Job]] = []
        self._by_model: dict[str, list[tuple[float, str, Job]]] = {}
        self._taken: set[str] = set()
        self.size = 0

    def add(self, job: Job) -> None:
        entry = (job.created_at, job.id, job)
        heapq.heappush(self._all, entry)
        heapq.heappush(self._by_model.setdefault(canonical_model_name(job.model), []), entry)
        self.size += 1

    def take(self, job: Job) -> None:
        self._taken.add(job.id)
        self.size -= 1

    def oldest(self) -> Job | None:
        return self._head(self._all)

    def oldest_for(self, model: str | None) -> Job | None:
        if model is None:
            return None
        return self._head(self._by_model.get(model, []))

    def _head(self, heap: list[tuple[float, str, Job]]) -> Job | None:
        while heap and heap[0][1] in self._taken:
            heapq.heappop(heap)
        return heap[0][2] if heap else None


@attrs.define
class Turns:
    """What the order remembers between choices: when a batch job last started."""

    last_batch_start: float = float("-inf")

    def started(self, job: Job, now: float) -> None:
        if job.batch:
            self.last_batch_start = now


class _Ready:
    """The ready jobs of both classes, as one choice sees them."""

    def __init__(self, jobs: Iterable[Job] = ()) -> None:
        self.lanes = {Priority.INTERACTIVE: _Lane(), Priority.BATCH: _Lane()}
        for job in jobs:
            self.add(job)

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
            return _within(batch, policy, resident, now)
        return _within(interactive, policy, resident, now)


def _batch_turn_due(oldest: Job, policy: Policy, now: float, turns: Turns) -> bool:
    return now - max(turns.last_batch_start, oldest.created_at) >= policy.max_wait


def _within(lane: _Lane, policy: Policy, resident: str | None, now: float) -> Job | None:
    oldest = lane.oldest()
    if oldest is None or policy.overdue(oldest, now):
        return oldest
    return lane.oldest_for(resident) or oldest


def choose(
    jobs: Iterable[Job], policy: Policy, resident: str | None, now: float, turns: Turns
) -> Job | None:
    """The job to start at ``now`` among ``jobs`` (all ready), or ``None``."""
    return _Ready(jobs).choose(policy, resident, now, turns)


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
    turns = attrs.evolve(turns)
    now = start
    later = sorted(
        (job for job in jobs if job.not_before > now), key=lambda job: (job.not_before, job.id)
    )
    ready = _Ready(job for job in jobs if job.not_before <= now)
    waiting = iter(later)
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
        turns.started(job, now)
        resident = canonical_model_name(job.model)
        now += job_seconds

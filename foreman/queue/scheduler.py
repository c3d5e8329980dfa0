"""The queue in memory: which jobs wait, admission, and which runs next.

The order itself (classes, drain by model, the bound on overtaking) is
:mod:`foreman.queue.order`'s; this module keeps the queued jobs, the one
piece of history the order needs (when a batch job last started), and the
bound on the queue's length: admission beyond ``max_queue`` (people's calls)
or ``max_batch_queue`` (batch work) is refused so callers hear "busy" at once
instead of waiting without end. Jobs backing off after a failed attempt wait
until they are ready.

**Kept, not recomputed** (ADR-0028). The ready jobs live in heaps by class and
model (:mod:`foreman.queue.lanes`) from one choice to the next, and the counts
the views need (by model, by batch, people's calls, sync calls) follow each
arrival and departure, so that a choice, a submit or a near position costs
the same with 100,000 jobs queued as with 1,000.

**Two times per job.** A job's stored fields (``created_at``, ``not_before``)
are wall-clock stamps; the order runs on the reactor's clock, which is
monotonic in the daemon (:mod:`foreman.wire.clocks`). So each job is kept
with its *arrival* and the moment it is *ready*, on the reactor's clock,
given by the worker when it adds the job; the order sees the job through
them. A job's arrival is remembered from its first addition until it ends
(:meth:`Scheduler.forget`): a job going back to the queue after an attempt
keeps its place in arrival order whatever the wall clock did meanwhile.
Without an arrival given, the stored fields stand in (the tests of the order).
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Iterator

import attrs

from foreman.queue.job import Job
from foreman.queue.lanes import KeyedLane, arrival
from foreman.queue.order import Policy, ReadyJobs, Turns, planned, planned_lanes
from foreman.wire.model_names import canonical_model_name
from foreman.wire.priority import Priority


class QueueFull(Exception):
    """The queue holds as many jobs of the class as it takes already."""


class CallerQueueFull(QueueFull):
    """The caller's key has as many jobs waiting as its limit allows (ADR-0030)."""

    def __init__(self, caller: str | None, limit: int) -> None:
        super().__init__(f"too many jobs waiting for this key: its limit is {limit}")
        self.caller = caller
        self.limit = limit


#: Batch work waits in bulk: its own bound, far above people's (ADR-0028).
DEFAULT_MAX_BATCH_QUEUE = 100_000


class Scheduler:
    def __init__(
        self,
        max_queue: int,
        policy: Policy | None = None,
        max_batch_queue: int = DEFAULT_MAX_BATCH_QUEUE,
    ) -> None:
        self.max_queue = max_queue
        self.max_batch_queue = max_batch_queue
        self.policy = policy or Policy()
        self.turns = Turns()
        #: The jobs as stored, by id.
        self._queued: dict[str, Job] = {}
        #: The same jobs as the order sees them: arrival and readiness on
        #: the reactor's clock in ``created_at`` and ``not_before``.
        self._seen: dict[str, Job] = {}
        #: When each job of this process first arrived, on the reactor's clock.
        self._arrived: dict[str, float] = {}
        #: The ready jobs by class (as seen), kept between choices.
        self._lanes = {priority: KeyedLane() for priority in Priority}
        #: Jobs not ready yet (backing off): (ready at, id, entry token, job as
        #: seen); an entry counts while its token is the job's.
        self._later: list[tuple[float, str, int, Job]] = []
        self._tokens: dict[str, int] = {}
        self._entered = 0
        #: The latest time the queue was looked at: a job ready by then is ready.
        self._now = float("-inf")
        #: Queued jobs per model (canonical name), and people's jobs of them.
        self._per_model: Counter[str] = Counter()
        self._per_batch: Counter[str] = Counter()
        self._interactive = 0
        #: The sync calls waiting (their callers wait with them).
        self._sync: dict[str, Job] = {}
        self._reserved = dict.fromkeys(Priority, 0)
        #: Jobs waiting (and places claimed) per key, for the keys' limits.
        self._per_caller: Counter[str | None] = Counter()

    # -- admission -----------------------------------------------------------

    def reserve(
        self, priority: Priority = Priority.INTERACTIVE, count: int = 1, caller: str | None = None
    ) -> None:
        """Claim places for ``count`` jobs of a class about to be stored, or
        raise :class:`QueueFull`: people's calls are bounded by ``max_queue``,
        batch work by ``max_batch_queue``, and a key's jobs of either class
        by its own limit, if it has one (:class:`CallerQueueFull`)."""
        batch = priority is Priority.BATCH
        queued = self.depth - self._interactive if batch else self._interactive
        limit = self.max_batch_queue if batch else self.max_queue
        if queued + self._reserved[priority] + count > limit:
            raise QueueFull()
        own = self.policy.shares.max_waiting(caller)
        if own is not None and self._per_caller[caller] + count > own:
            raise CallerQueueFull(caller, own)
        self._reserved[priority] += count
        self._per_caller[caller] += count

    def release(
        self, priority: Priority = Priority.INTERACTIVE, count: int = 1, caller: str | None = None
    ) -> None:
        """Give back places claimed by :meth:`reserve` that were not used."""
        self._reserved[priority] -= count
        self._uncount(caller, count)

    def waiting_for(self, caller: str | None) -> int:
        """How many jobs of ``caller``'s key wait (places claimed included)."""
        return self._per_caller.get(caller, 0)

    def _uncount(self, caller: str | None, count: int = 1) -> None:
        self._per_caller[caller] -= count
        if self._per_caller[caller] <= 0:
            del self._per_caller[caller]

    def add(
        self,
        job: Job,
        *,
        reserved: bool = True,
        arrived: float | None = None,
        ready_at: float | None = None,
        now: float | None = None,
    ) -> None:
        """Queue ``job``; with ``reserved`` it takes the place claimed for it.

        ``arrived``: when it arrived, on the reactor's clock (ignored when
        the job arrived before, in this process); ``ready_at``: when it may
        start. Each defaults to the job's stored field. ``now``: the reactor's
        time, when known: a job ready by then joins its lane at once (else it
        waits apart until the next choice looks).
        """
        if now is not None:
            self._now = max(self._now, now)
        if reserved:
            self._reserved[job.priority] -= 1
        else:
            self._per_caller[job.caller] += 1  # a place a reserve() did not claim
        arrival = self._arrived.setdefault(job.id, job.created_at if arrived is None else arrived)
        ready = job.not_before if ready_at is None else ready_at
        if job.id in self._queued:
            self._out(self._queued[job.id])
        self._per_model[canonical_model_name(job.model)] += 1
        if job.batch_id is not None:
            self._per_batch[job.batch_id] += 1
        self._interactive += not job.batch
        if job.sync:
            self._sync[job.id] = job
        self._queued[job.id] = job
        seen = job
        if arrival != job.created_at or ready != job.not_before:
            seen = attrs.evolve(job, created_at=arrival, not_before=ready)
        self._seen[job.id] = seen
        if ready <= self._now:
            self._lanes[job.priority].add(seen)
        else:
            self._entered += 1
            self._tokens[job.id] = self._entered
            heapq.heappush(self._later, (ready, job.id, self._entered, seen))

    def remove(self, job_id: str) -> Job | None:
        """Take a job out for good (cancelled, its caller gone)."""
        self._arrived.pop(job_id, None)
        job = self._queued.get(job_id)
        if job is not None:
            self._out(job)
        return job

    def take(self, job: Job, now: float) -> None:
        """Take ``job`` out of the queue to start it at ``now``."""
        seen = self._seen[job.id]
        self._out(self._queued[job.id])
        self.turns.started(seen, now, self.policy.shares.weight(job.caller))

    def _out(self, job: Job) -> None:
        """``job`` leaves the queue (its arrival is kept: see :meth:`forget`)."""
        del self._queued[job.id]
        seen = self._seen.pop(job.id)
        self._lanes[job.priority].take(seen)
        self._tokens.pop(job.id, None)  # its entry in the later heap, if any, is dead
        self._sync.pop(job.id, None)
        self._interactive -= not job.batch
        self._uncount(job.caller)
        model = canonical_model_name(job.model)
        self._per_model[model] -= 1
        if self._per_model[model] <= 0:
            del self._per_model[model]
        if job.batch_id is not None:
            self._per_batch[job.batch_id] -= 1
            if self._per_batch[job.batch_id] <= 0:
                del self._per_batch[job.batch_id]

    def forget(self, job_id: str) -> None:
        """``job_id`` has ended: its arrival is no longer needed."""
        if job_id not in self._queued:
            self._arrived.pop(job_id, None)

    # -- choosing ------------------------------------------------------------

    @property
    def depth(self) -> int:
        return len(self._queued)

    def get(self, job_id: str) -> Job | None:
        """The queued job ``job_id``, if queued."""
        return self._queued.get(job_id)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._queued

    @property
    def interactive_depth(self) -> int:
        """How many of the queued jobs are people's (not batch work)."""
        return self._interactive

    def waiting_by_model(self) -> dict[str, int]:
        """How many jobs wait for each model (canonical names), in name order."""
        return dict(sorted(self._per_model.items()))

    def waiting_by_batch(self) -> dict[str, int]:
        """How many lines of each batch wait, by batch id."""
        return dict(sorted(self._per_batch.items()))

    def sync_jobs(self) -> list[Job]:
        """The sync calls waiting, whose callers wait with them."""
        return list(self._sync.values())

    def queued_for(self, model: str) -> int:
        """How many jobs wait for ``model``."""
        return self._per_model.get(canonical_model_name(model), 0)

    def oldest_other(self, resident: str | None) -> Job | None:
        """The person's call for another model than ``resident`` that the
        quantum would give a turn (the oldest), as the order sees it."""
        ready = self._lanes[Priority.INTERACTIVE].oldest_other(resident)
        backing_off = (
            seen
            for *_, seen in self._pending()
            if not seen.batch and canonical_model_name(seen.model) != resident
        )
        return min([*backing_off, *([ready] if ready else [])], key=arrival, default=None)

    def pick(self, resident: str | None, now: float) -> Job | None:
        """The job to run now, without removing it; ``None`` if none is ready."""
        self._promote(now)
        chosen = ReadyJobs(self._lanes).choose(self.policy, resident, now, self.turns)
        return None if chosen is None else self._queued[chosen.id]

    def overdue(self, job: Job, now: float) -> bool:
        """Whether ``job`` has waited its class's bound at ``now``."""
        return self.policy.overdue(self._seen.get(job.id, job), now)

    def seen(self, job: Job) -> Job:
        """``job`` as the order sees it: arrival and readiness on the reactor's clock."""
        return self._seen.get(job.id, job)

    def arrival(self, job: Job) -> float:
        """When ``job`` arrived, on the reactor's clock."""
        return self._arrived.get(job.id, job.created_at)

    def ready_at(self, job: Job) -> float:
        """When ``job`` may start, on the reactor's clock."""
        return self._seen.get(job.id, job).not_before

    def planned(
        self, resident: str | None, start: float, job_seconds: float = 0.0
    ) -> Iterator[Job]:
        """The queued jobs in the order they will run if no more arrive (the
        next choice made at ``start``, each job taking ``job_seconds``), as
        far as they are read: the first k cost about k log k, whatever the
        depth. Read it at once: it reads the queue as it is."""
        later = [seen for *_, seen in self._pending()]
        ready = planned_lanes(self._lanes)
        for job in planned(ready, later, self.policy, resident, start, self.turns, job_seconds):
            yield self._queued[job.id]

    def ordered(self, resident: str | None, start: float, job_seconds: float = 0.0) -> list[Job]:
        """Every queued job in the order it will run if no more arrive."""
        return list(self.planned(resident, start, job_seconds))

    def position(
        self, job_id: str, resident: str | None, start: float, job_seconds: float = 0.0
    ) -> int:
        """1 for the job that runs next, 2 for the one after, and so on."""
        if job_id not in self._queued:
            raise KeyError(job_id)
        for index, job in enumerate(self.planned(resident, start, job_seconds), start=1):
            if job.id == job_id:
                return index
        raise KeyError(job_id)

    def next_ready_at(self, now: float) -> float | None:
        """When the earliest job still backing off becomes ready."""
        self._promote(now)
        return self._later[0][0] if self._later else None

    def jobs(self) -> Iterable[Job]:
        return self._queued.values()

    def _pending(self) -> Iterator[tuple[float, str, int, Job]]:
        """The live entries of jobs not yet ready."""
        return (entry for entry in self._later if self._tokens.get(entry[1]) == entry[2])

    def _promote(self, now: float) -> None:
        """Jobs ready by ``now`` join their lanes."""
        self._now = max(self._now, now)
        later, tokens = self._later, self._tokens
        while later and (later[0][0] <= self._now or tokens.get(later[0][1]) != later[0][2]):
            _, job_id, token, seen = heapq.heappop(later)
            if tokens.get(job_id) == token:
                del tokens[job_id]
                self._lanes[seen.priority].add(seen)

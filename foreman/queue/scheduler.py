"""The queue in memory: which jobs wait, admission, and which runs next.

The order itself (classes, drain by model, the bound on overtaking) is
:mod:`foreman.queue.order`'s; this module keeps the queued jobs, the one
piece of history the order needs (when a batch job last started), and the
bound on the queue's length: admission beyond ``max_queue`` is refused so
callers hear "busy" at once instead of waiting without end. Jobs backing off
after a failed attempt wait until they are ready.

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

from collections import Counter
from collections.abc import Iterable

import attrs

from foreman.queue.job import Job
from foreman.queue.order import Policy, Turns, arrival, choose, plan
from foreman.wire.model_names import canonical_model_name


class QueueFull(Exception):
    """The queue holds ``max_queue`` jobs already."""


class Scheduler:
    def __init__(self, max_queue: int, policy: Policy | None = None) -> None:
        self.max_queue = max_queue
        self.policy = policy or Policy()
        self.turns = Turns()
        #: The jobs as stored, by id.
        self._queued: dict[str, Job] = {}
        #: The same jobs as the order sees them: arrival and readiness on
        #: the reactor's clock in ``created_at`` and ``not_before``.
        self._seen: dict[str, Job] = {}
        #: When each job of this process first arrived, on the reactor's clock.
        self._arrived: dict[str, float] = {}
        #: Queued jobs per model (canonical name), and people's jobs of them.
        self._per_model: Counter[str] = Counter()
        self._interactive = 0
        self._reserved = 0

    # -- admission -----------------------------------------------------------

    def reserve(self) -> None:
        """Claim a place for a job about to be stored, or raise :class:`QueueFull`."""
        if len(self._queued) + self._reserved >= self.max_queue:
            raise QueueFull()
        self._reserved += 1

    def release(self) -> None:
        """Give back a place claimed by :meth:`reserve` that was not used."""
        self._reserved -= 1

    def add(
        self,
        job: Job,
        *,
        reserved: bool = True,
        arrived: float | None = None,
        ready_at: float | None = None,
    ) -> None:
        """Queue ``job``; with ``reserved`` it takes the place claimed for it.

        ``arrived``: when it arrived, on the reactor's clock (ignored when
        the job arrived before, in this process); ``ready_at``: when it may
        start. Each defaults to the job's stored field.
        """
        if reserved:
            self._reserved -= 1
        arrival = self._arrived.setdefault(job.id, job.created_at if arrived is None else arrived)
        ready = job.not_before if ready_at is None else ready_at
        if job.id not in self._queued:
            self._per_model[canonical_model_name(job.model)] += 1
            self._interactive += not job.batch
        self._queued[job.id] = job
        if arrival == job.created_at and ready == job.not_before:
            self._seen[job.id] = job
        else:
            self._seen[job.id] = attrs.evolve(job, created_at=arrival, not_before=ready)

    def remove(self, job_id: str) -> Job | None:
        """Take a job out for good (cancelled, its caller gone)."""
        self._seen.pop(job_id, None)
        self._arrived.pop(job_id, None)
        job = self._queued.pop(job_id, None)
        if job is not None:
            self._count_out(job)
        return job

    def take(self, job: Job, now: float) -> None:
        """Take ``job`` out of the queue to start it at ``now``."""
        seen = self._seen.pop(job.id)
        del self._queued[job.id]
        self._count_out(job)
        self.turns.started(seen, now)

    def _count_out(self, job: Job) -> None:
        self._interactive -= not job.batch
        model = canonical_model_name(job.model)
        self._per_model[model] -= 1
        if self._per_model[model] <= 0:
            del self._per_model[model]

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

    def queued_for(self, model: str) -> int:
        """How many jobs wait for ``model``."""
        return self._per_model.get(canonical_model_name(model), 0)

    def oldest_other(self, resident: str | None) -> Job | None:
        """The person's call for another model than ``resident`` that the
        quantum would give a turn (the oldest), as the order sees it."""
        others = [
            job
            for job in self._seen.values()
            if not job.batch and canonical_model_name(job.model) != resident
        ]
        return min(others, key=arrival, default=None)

    def pick(self, resident: str | None, now: float) -> Job | None:
        """The job to run now, without removing it; ``None`` if none is ready."""
        ready = [job for job in self._seen.values() if job.not_before <= now]
        chosen = choose(ready, self.policy, resident, now, self.turns)
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

    def ordered(self, resident: str | None, start: float, job_seconds: float = 0.0) -> list[Job]:
        """Every queued job in the order it will run if no more arrive: the
        next choice is made at ``start`` and each job takes ``job_seconds``."""
        jobs = list(self._seen.values())
        planned = plan(jobs, self.policy, resident, start, self.turns, job_seconds)
        return [self._queued[job.id] for job in planned]

    def position(
        self, job_id: str, resident: str | None, start: float, job_seconds: float = 0.0
    ) -> int:
        """1 for the job that runs next, 2 for the one after, and so on."""
        for index, job in enumerate(self.ordered(resident, start, job_seconds), start=1):
            if job.id == job_id:
                return index
        raise KeyError(job_id)

    def next_ready_at(self, now: float) -> float | None:
        """When the earliest job still backing off becomes ready."""
        waiting = [job.not_before for job in self._seen.values() if job.not_before > now]
        return min(waiting, default=None)

    def jobs(self) -> Iterable[Job]:
        return self._queued.values()

"""The queue in memory: which jobs wait, admission, and which runs next.

The order itself (classes, drain by model, the bound on overtaking) is
:mod:`foreman.queue.order`'s; this module keeps the queued jobs, the one
piece of history the order needs (when a batch job last started), and the
bound on the queue's length: admission beyond ``max_queue`` is refused so
callers hear "busy" at once instead of waiting without end. Jobs backing off
after a failed attempt wait until their ``not_before``.
"""

from __future__ import annotations

from collections.abc import Iterable

from foreman.queue.job import Job
from foreman.queue.order import Policy, Turns, choose, plan


class QueueFull(Exception):
    """The queue holds ``max_queue`` jobs already."""


class Scheduler:
    def __init__(self, max_queue: int, policy: Policy | None = None) -> None:
        self.max_queue = max_queue
        self.policy = policy or Policy()
        self.turns = Turns()
        self._queued: dict[str, Job] = {}
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

    def add(self, job: Job, *, reserved: bool = True) -> None:
        """Queue ``job``; with ``reserved`` it takes the place claimed for it."""
        if reserved:
            self._reserved -= 1
        self._queued[job.id] = job

    def remove(self, job_id: str) -> Job | None:
        return self._queued.pop(job_id, None)

    def take(self, job: Job, now: float) -> None:
        """Take ``job`` out of the queue to start it at ``now``."""
        del self._queued[job.id]
        self.turns.started(job, now)

    # -- choosing ------------------------------------------------------------

    @property
    def depth(self) -> int:
        return len(self._queued)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._queued

    def pick(self, resident: str | None, now: float) -> Job | None:
        """The job to run now, without removing it; ``None`` if none is ready."""
        ready = [job for job in self._queued.values() if job.not_before <= now]
        return choose(ready, self.policy, resident, now, self.turns)

    def overdue(self, job: Job, now: float) -> bool:
        return self.policy.overdue(job, now)

    def ordered(self, resident: str | None, start: float, job_seconds: float = 0.0) -> list[Job]:
        """Every queued job in the order it will run if no more arrive: the
        next choice is made at ``start`` and each job takes ``job_seconds``."""
        jobs = list(self._queued.values())
        return list(plan(jobs, self.policy, resident, start, self.turns, job_seconds))

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
        waiting = [job.not_before for job in self._queued.values() if job.not_before > now]
        return min(waiting, default=None)

    def jobs(self) -> Iterable[Job]:
        return self._queued.values()

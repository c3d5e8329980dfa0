"""Which queued job runs next: drain by model (ADR-0009).

The next job is the oldest queued job for the resident worker model, else
the oldest queued job: every job for the model already in memory runs
before a swap (5-10 s on a laptop) is paid for. Jobs backing off after a
failed attempt wait until their ``not_before``. The queue is bounded:
admission beyond ``max_queue`` is refused so callers hear "busy" at once
instead of waiting without end.
"""

from __future__ import annotations

from collections.abc import Iterable

from foreman.queue.job import Job
from foreman.wire.model_names import canonical_model_name


class QueueFull(Exception):
    """The queue holds ``max_queue`` jobs already."""


class Scheduler:
    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
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

    # -- choosing ------------------------------------------------------------

    @property
    def depth(self) -> int:
        return len(self._queued)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._queued

    def pick(self, resident: str | None, now: float) -> Job | None:
        """The job to run now, without removing it; ``None`` if none is ready."""
        ready = [job for job in self._queued.values() if job.not_before <= now]
        if not ready:
            return None
        return min(ready, key=lambda job: _run_order(job, resident))

    def ordered(self, resident: str | None) -> list[Job]:
        """Every queued job in the order it would run (backoff aside)."""
        return sorted(self._queued.values(), key=lambda job: _run_order(job, resident))

    def position(self, job_id: str, resident: str | None) -> int:
        """1 for the job that runs next, 2 for the one after, and so on."""
        for index, job in enumerate(self.ordered(resident), start=1):
            if job.id == job_id:
                return index
        raise KeyError(job_id)

    def next_ready_at(self, now: float) -> float | None:
        """When the earliest job still backing off becomes ready."""
        waiting = [job.not_before for job in self._queued.values() if job.not_before > now]
        return min(waiting, default=None)

    def jobs(self) -> Iterable[Job]:
        return self._queued.values()


def _run_order(job: Job, resident: str | None) -> tuple[bool, float, str]:
    return (canonical_model_name(job.model) != resident, job.created_at, job.id)

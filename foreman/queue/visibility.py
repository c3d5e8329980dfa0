"""What the worker shows: positions, waits, what it does now, its quantum (ADR-0021, ADR-0024).

A part of :class:`~foreman.queue.worker.Worker`, which holds what it reads.
"""

from __future__ import annotations

import itertools

from twisted.internet.interfaces import IReactorTime

from foreman.queue.activity import Activity
from foreman.queue.execution import Execution
from foreman.queue.hold import SwapHold
from foreman.queue.job import Job
from foreman.queue.pauses import Pauses
from foreman.queue.residency import Residency
from foreman.queue.scheduler import Scheduler
from foreman.wire.model_names import canonical_model_name


class Visibility:
    _clock: IReactorTime
    _run: Execution | None
    _current_since: float
    _pauses: Pauses
    scheduler: Scheduler
    residency: Residency
    activity: Activity
    hold: SwapHold
    draining: bool
    average_job_seconds: float

    @property
    def current(self) -> Job | None:
        """The running job, as last moved."""
        return None if self._run is None else self._run.job

    def position(self, job_id: str) -> int:
        """1 when the job runs next (counting a job in progress as ahead of it)."""
        ahead = 1 if self.current is not None else 0
        return ahead + self.scheduler.position(
            job_id, self.residency.worker_model, self._next_choice_at(), self.average_job_seconds
        )

    def _next_choice_at(self) -> float:
        """When the worker will next choose a job, by the smoothed job time."""
        now = self._clock.seconds()
        if self.current is None:
            return now
        return max(now, self._current_since + self.average_job_seconds)

    def waited(self, job: Job) -> float:
        """How long ``job`` has waited (queued), or waited before it started (running)."""
        arrived = self.scheduler.arrival(job)
        if self.current is not None and self.current.id == job.id:
            return max(0.0, self._current_since - arrived)
        return max(0.0, self._clock.seconds() - arrived)

    def overdue(self, job: Job) -> bool:
        """Whether queued ``job`` has waited its class's bound."""
        return self.scheduler.overdue(job, self._clock.seconds())

    def quantum_report(self) -> dict[str, object] | None:
        """The resident model's quantum while a person's call for another model
        waits (ADR-0024); ``None`` when no such call waits or there is no quantum."""
        resident = self.residency.worker_model
        if resident is None:
            return None
        waiting = self.scheduler.oldest_other(resident)
        policy = self.scheduler.policy
        if waiting is None or policy.swap_quantum <= 0:
            return None
        now = self._clock.seconds()
        seen = self.scheduler.seen(waiting)
        limit = policy.quantum(seen)
        used = min(limit, max(0.0, now - max(self.scheduler.turns.since, seen.created_at)))
        return {
            "model": resident,
            "used_seconds": round(used, 3),
            "limit_seconds": round(limit, 3),
            "waiting_model": canonical_model_name(waiting.model),
        }

    def doing(self) -> str:
        """What the worker does now, in a few words for a person."""
        now = self._clock.seconds()
        kind = self.activity.now
        current = self.current
        if kind == "paused":
            return f"paused: {self.paused or 'a fault'}"
        if kind == "holding" and self.hold.holding is not None:
            text = self.hold.holding.describe(now)
        elif kind in ("loading", "generating") and current is not None:
            verb = "loading" if kind == "loading" else "generating with"
            text = f"{verb} {canonical_model_name(current.model)} for job {current.id}"
        elif self.scheduler.depth:
            text = "waiting for the next job to be ready"
        else:
            text = "idle"
        quantum = self.quantum_report()
        if quantum is not None:
            text += (
                f"; quantum {quantum['used_seconds']:.1f} s of {quantum['limit_seconds']:.1f} s "
                f"used, {quantum['waiting_model']} waiting"
            )
        return text

    @property
    def paused(self) -> str | None:
        """Why the worker takes no jobs now, in a sentence; ``None`` if it does."""
        if self.draining:
            return "foreman is stopping"
        return self._pauses.reason

    def snapshot(self, limit: int | None = None, offset: int = 0) -> list[tuple[Job, int]]:
        """The running job (position 0) and the queued ones with their
        positions: ``limit`` of them from ``offset`` (all, by default). Only
        what is shown is planned, not the whole queue (ADR-0028)."""
        running = [] if self.current is None else [(self.current, 0)]
        ahead = len(running)
        planned = self.scheduler.planned(
            self.residency.worker_model, self._next_choice_at(), self.average_job_seconds
        )
        rows = itertools.chain(
            running, ((job, ahead + index) for index, job in enumerate(planned, start=1))
        )
        end = None if limit is None else offset + limit
        return list(itertools.islice(rows, offset, end))

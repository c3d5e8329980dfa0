"""The worker's recent history, for the status page's timeline (docs/status-page.md).

A :class:`Timeline` listens to the worker's transitions and keeps its last
*runs*: one per attempt, from the moment the worker saved the job
``loading`` to the moment it left the worker (done, failed, cancelled, or
back in the queue to be tried again). Each run says whether foreman loaded a
model for it, and whether that load was a swap (another model unloaded
first), so the page can draw the draining by model and the price of each
swap. What waits is read from the worker when asked, in the order it will run,
with each job's wait against its class's bound.

Every time shown is a wall-clock stamp: the job's (set by the worker with its
wall clock) and the clock given here for *now*; waits come from the worker,
measured on its reactor's clock (:mod:`foreman.wire.clocks`).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import attrs

from foreman.ops.fleet_lanes import lanes, published
from foreman.queue.fleet.member import FleetMember
from foreman.queue.job import Job, JobState
from foreman.queue.worker import Worker
from foreman.wire.clocks import ReactorTime
from foreman.wire.model_names import canonical_model_name
from foreman.wire.timestamps import timestamp

#: Runs kept at most. About what the page's width can draw as distinct bars
#: (ten pixels or more each); a busy worker reaches it in minutes.
MAX_RUNS = 100
#: Seconds of history kept at most: long enough to show a drain, the swaps
#: around it and several interactive bounds (60 s by default) with the batch
#: turns between them; a quiet worker's old runs leave rather than squeeze
#: today's into a sliver. The recent-jobs table and the store keep the rest.
WINDOW_SECONDS = 10 * 60.0
#: Waiting jobs listed at most (the queue can hold hundreds); the count of
#: the rest is given.
MAX_WAITING = 25

#: How a run ended when the worker moved on without a word about it (a
#: state it could not store): the next run's start is its end.
UNKNOWN = "unknown"
#: A run whose job went back to the queue (the target was unreachable).
REQUEUED = "requeued"


@attrs.define
class Run:
    """One attempt of one job, as the worker ran it."""

    job_id: str
    #: The canonical name (``llama3.2:latest``): one colour per model.
    model: str
    priority: str
    endpoint: str
    sync: bool
    attempt: int
    queued_at: float
    #: Saved ``loading``: the worker took it and began making its model resident.
    started_at: float
    #: Whether it had waited its class's bound when it started.
    overdue: bool
    #: Saved ``working``: the model was resident, generation began.
    working_at: float | None = None
    ended_at: float | None = None
    #: ``done``, ``failed``, ``cancelled``, ``requeued``, ``unknown``; ``None`` while running.
    outcome: str | None = None
    error: str | None = None
    #: ``load`` when foreman loaded the model for this run, ``swap`` when it
    #: also unloaded another first, ``None`` when the model was resident.
    load: str | None = None
    #: The residency's counters when the run started (see :meth:`Timeline._measure`).
    loads_before: int = 0
    unloads_before: int = 0
    #: The load is measured once, when the loading phase is over.
    measured: bool = False

    def view(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "model": self.model,
            "priority": self.priority,
            "endpoint": self.endpoint,
            "sync": self.sync,
            "attempt": self.attempt,
            "queued_at": timestamp(self.queued_at),
            "started_at": timestamp(self.started_at),
            "working_at": timestamp(self.working_at),
            "ended_at": timestamp(self.ended_at),
            "waited_seconds": round(self.started_at - self.queued_at, 3),
            "overdue": self.overdue,
            "outcome": self.outcome,
            "error": self.error,
            "load": self.load,
        }


class Timeline:
    """The worker's recent runs, and what waits now.

    Made with the worker it watches, it listens from then on: runs that
    started earlier are not known (nor are runs of a previous process).
    """

    def __init__(
        self,
        worker: Worker,
        clock: ReactorTime,
        *,
        max_runs: int = MAX_RUNS,
        window: float = WINDOW_SECONDS,
        fleet: FleetMember | None = None,
    ) -> None:
        self._worker = worker
        self._clock = clock
        self.window = window
        self._fleet = fleet
        self._runs: deque[Run] = deque(maxlen=max_runs)
        self._running: dict[str, Run] = {}
        worker.on_transition(self.transition)
        if fleet is not None:
            # This box's runs go out with its heartbeat, for the other boxes' timelines.
            fleet.history = self.published

    # -- listening ---------------------------------------------------------------

    def transition(self, job: Job, previous: JobState | None) -> None:
        """The worker stored ``job`` in its state, having left ``previous``."""
        if job.state is JobState.LOADING:
            self._started(job)
            return
        run = self._running.get(job.id)
        if run is None:
            # Queued, cancelled or failed before it ran, or recovered at
            # start-up from an earlier process: not a run of this timeline.
            return
        if job.state is JobState.WORKING:
            run.working_at = job.updated_at
            self._measure(run)
        elif job.state.terminal or job.state is JobState.QUEUED:
            self._end(run, job.updated_at, job.state.value if job.state.terminal else REQUEUED)
            run.error = job.last_error

    def _started(self, job: Job) -> None:
        # One generation at a time: a run still open here was never closed
        # (its last state could not be stored). Its end is this start.
        for earlier in list(self._running.values()):
            self._end(earlier, job.updated_at, UNKNOWN)
        residency = self._worker.residency
        run = Run(
            job_id=job.id,
            model=canonical_model_name(job.model),
            priority=job.priority.value,
            endpoint=job.endpoint,
            sync=job.sync,
            attempt=job.attempt,
            queued_at=job.created_at,
            started_at=job.updated_at,
            overdue=self._worker.current_overdue,
            # Listeners hear of ``loading`` before the worker asks the
            # residency to prepare the model: these are the counts before.
            loads_before=residency.loads,
            unloads_before=residency.unloads,
        )
        self._runs.append(run)
        self._running[job.id] = run
        self._prune()

    def _measure(self, run: Run) -> None:
        """Did making the model resident load it? The residency's own counters say.

        The worker prepares one job at a time, between the ``loading`` and
        ``working`` saves (or the run's end, when preparing failed), so the
        loads and unloads counted in between are this run's: the same
        counters that ``/metrics`` reports as ``foreman_model_loads``.
        Comparing with the previous run's model would miss a model someone
        else unloaded (foreman loads it again) and the first run's load.
        A load Ollama refused, or one left to a target that cannot list its
        models, is not counted: foreman did not see it happen.
        """
        if run.measured:
            return
        run.measured = True
        residency = self._worker.residency
        if residency.loads > run.loads_before:
            run.load = "swap" if residency.unloads > run.unloads_before else "load"

    def _end(self, run: Run, at: float, outcome: str) -> None:
        self._measure(run)
        run.ended_at = at
        run.outcome = outcome
        self._running.pop(run.job_id, None)

    def _prune(self) -> None:
        """Drop runs that ended before the window; running ones always stay."""
        since = self._clock.seconds() - self.window
        while self._runs and self._runs[0].ended_at is not None and self._runs[0].ended_at < since:
            self._runs.popleft()

    # -- reading -----------------------------------------------------------------

    def runs(self) -> list[Run]:
        """The runs kept, oldest first."""
        self._prune()
        return list(self._runs)

    def published(self) -> list[dict[str, Any]]:
        """The recent runs as this box publishes them to the fleet."""
        return published(self.runs(), self._clock.seconds())

    def report(self) -> dict[str, Any]:
        """The ``timeline`` of ``/ui/status.json``; in a fleet, with each box's
        lane (``boxes``)."""
        report = self._report()
        if self._fleet is not None:
            report["boxes"] = lanes(self._fleet, self._worker, self._clock.seconds(), self.window)
        return report

    def _report(self) -> dict[str, Any]:
        now = self._clock.seconds()
        worker = self._worker
        policy = worker.scheduler.policy
        # Only the head is planned (the queue may hold a batch's thousands).
        head = worker.snapshot(MAX_WAITING + 1)
        waiting = [(job, position) for job, position in head if position > 0]
        return {
            "now": timestamp(now),
            "window_seconds": self.window,
            "max_wait_seconds": policy.max_wait,
            "batch_max_wait_seconds": policy.batch_max_wait,
            "runs": [run.view() for run in self.runs()],
            # What the worker does between jobs too: holding, a quantum (ADR-0024).
            "doing": worker.doing(),
            "waiting": [
                {
                    "job_id": job.id,
                    "model": canonical_model_name(job.model),
                    "priority": job.priority.value,
                    "endpoint": job.endpoint,
                    "sync": job.sync,
                    "position": position,
                    "waited_seconds": round(worker.waited(job), 3),
                    "bound_seconds": policy.bound(job.priority),
                    "overdue": worker.overdue(job),
                    # Backing off after a failed attempt.
                    "ready": worker.scheduler.ready_at(job) <= worker.clocks.now(),
                }
                for job, position in waiting[:MAX_WAITING]
            ],
            "more_waiting": max(0, worker.scheduler.depth - MAX_WAITING),
        }

"""Listeners to a job's state transitions, called after each one is stored.

The worker announces every state it records here, with the state the job
left (``None`` for a job just created). What listens decides what a
transition means: the webhook events for ``/jobs`` jobs (ADR-0005) are one
listener. A listener runs on the reactor thread and must return quickly; it
cannot change the job, and its failure is logged, never passed on: the job
goes on as if nobody had been listening. A listener may return a Deferred
for work it started (storing a webhook event): only a job's creation waits
for it, so that a ``202`` means the job and its first event are stored;
later transitions never wait for listeners.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure

from foreman.jobs import Job, JobState

log = Logger()

TransitionListener = Callable[[Job, JobState | None], object]


class Transitions:
    def __init__(self) -> None:
        self._listeners: list[TransitionListener] = []

    def add(self, listener: TransitionListener) -> None:
        self._listeners.append(listener)

    def announce(self, job: Job, previous: JobState | None) -> Deferred[None]:
        """Tell every listener; fires when the work they returned is done. Never fails."""
        started: list[Deferred[object]] = []
        for listener in self._listeners:
            try:
                outcome = listener(job, previous)
            except Exception:
                _log_failure(Failure(), job)
                continue
            if isinstance(outcome, Deferred):
                started.append(outcome.addErrback(_log_failure, job))
        return gatherResults(started).addCallback(lambda _: None)


def _log_failure(failure: Failure, job: Job) -> None:
    log.failure(
        "A listener failed on job {job_id} becoming {state}",
        failure,
        job_id=job.id,
        state=job.state.value,
    )

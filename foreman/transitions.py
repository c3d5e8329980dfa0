"""Listeners to a job's state transitions, called after each one is stored.

The worker announces every state it records here, with the state the job
left (``None`` for a job just created). What listens decides what a
transition means: the webhook events for ``/jobs`` jobs (ADR-0005) are one
listener. A listener runs on the reactor thread and must return quickly; it
cannot change the job, and its failure is logged, never passed on: the job
goes on as if nobody had been listening.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

from foreman.jobs import Job, JobState

log = Logger()

TransitionListener = Callable[[Job, JobState | None], object]


class Transitions:
    def __init__(self) -> None:
        self._listeners: list[TransitionListener] = []

    def add(self, listener: TransitionListener) -> None:
        self._listeners.append(listener)

    def announce(self, job: Job, previous: JobState | None) -> None:
        for listener in self._listeners:
            try:
                listener(job, previous)
            except Exception:
                log.failure(
                    "A listener failed on job {job_id} becoming {state}",
                    job_id=job.id,
                    state=job.state.value,
                )

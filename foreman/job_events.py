"""State webhooks for ``/jobs`` jobs: one event per transition (ADR-0005).

:class:`JobEvents` listens to the worker's transitions. For an asynchronous
job with a ``state_webhook_url`` it builds the event's JSON and hands the
bytes to the webhook outbox, which stores them and delivers at least once.
Sync calls never send events (ADR-0014). Nothing here waits for a delivery
or lets one fail back into the worker: the job goes on whatever happens to
its events, and ``GET /jobs/{id}`` remains the truth.

An event is stored by the outbox in a transaction of its own, just after the
transition it reports: a crash in between (a store round trip) loses that
one event, never the job's state. Writing both in one transaction would
close the gap; the outbox would need a way to take a row stored by others.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from foreman.artifacts import outputs_of
from foreman.job_views import metadata_value, timestamp
from foreman.jobs import Job, JobState

log = Logger()

#: States whose event carries the job's error.
_WITH_ERROR = frozenset({JobState.FAILED, JobState.CANCELLED})


class Outbox(Protocol):
    def deliver(self, job_id: str, url: str, body: bytes) -> Deferred[None]:
        """Store the event, then send it in the background."""


def event(job: Job, previous: JobState | None, inline_limit: int) -> dict[str, Any]:
    """The event for ``job`` having just entered its state from ``previous``."""
    outputs = outputs_of(job, inline_limit)
    return {
        "job_id": job.id,
        "state": job.state.value,
        "previous_state": None if previous is None else previous.value,
        # When the job entered the state: the update that recorded it.
        "timestamp": timestamp(job.updated_at),
        "model": job.model,
        "attempt": job.attempt,
        "error": job.last_error if job.state in _WITH_ERROR else None,
        "result": outputs.result,
        "artifacts": [artifact.reference(job.id) for artifact in outputs.artifacts],
        "metadata": metadata_value(job),
    }


def event_body(job: Job, previous: JobState | None, inline_limit: int) -> bytes:
    value = event(job, previous, inline_limit)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class JobEvents:
    """The worker's transition listener that feeds the webhook outbox."""

    def __init__(self, outbox: Outbox, *, inline_limit: int) -> None:
        self._outbox = outbox
        self._inline_limit = inline_limit

    def __call__(self, job: Job, previous: JobState | None) -> Deferred[None] | None:
        """Hand the event over; the Deferred fires once the outbox has stored it."""
        if job.sync or job.webhook_url is None:
            return None
        body = event_body(job, previous, self._inline_limit)
        handed = self._outbox.deliver(job.id, job.webhook_url, body)
        return handed.addErrback(self._not_handed, job)

    @staticmethod
    def _not_handed(failure: Failure, job: Job) -> None:
        # The outbox promises never to fail; should it, the job must not care.
        log.failure(
            "Could not hand the {state} event of job {job_id} to the webhook outbox",
            failure,
            state=job.state.value,
            job_id=job.id,
        )

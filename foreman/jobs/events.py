"""State webhooks for ``/jobs`` jobs: one event per transition (ADR-0005).

:class:`JobEvents` is the worker's transition recorder
(:mod:`foreman.queue.transitions`). For an asynchronous job with a
``state_webhook_url`` it renders the event's JSON, writes it into the webhook
outbox's table *in the transaction that stores the job's state*, and once
that has committed hands the row to the outbox, which delivers it at least
once. Sync calls never send events (ADR-0014), and jobs without a URL write
nothing: their saves stay single statements.

Why one transaction: the state and its event used to be two writes, and a
process killed between them (kill -9, power loss) had stored, say, ``done``
but never its event, which no restart could bring back. Now the event row
exists exactly when the state does, and a process that dies after the commit
but before the hand-over leaves the row for the outbox's next start. Start-up
recovery, which puts running jobs back in the queue, writes their ``queued``
events in its own transaction the same way.

Nothing here waits for a delivery or lets one fail back into the worker:
``GET /jobs/{id}`` remains the truth.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import attrs

from foreman.jobs.artifacts import outputs_of
from foreman.jobs.outbox import StoredEvent, store_event
from foreman.jobs.views import metadata_value
from foreman.queue.engines import Connection
from foreman.queue.job import Job, JobState
from foreman.wire.timestamps import timestamp

#: States whose event carries the job's error.
_WITH_ERROR = frozenset({JobState.FAILED, JobState.CANCELLED})


class Outbox(Protocol):
    def schedule(self, event: StoredEvent) -> None:
        """Send an event whose row is committed, in the background."""


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


@attrs.define
class JobEvent:
    """One rendered event: written with its transition, then scheduled."""

    outbox: Outbox
    job_id: str
    url: str
    body: bytes
    #: Due from the moment of the transition it reports.
    at: float
    stored: StoredEvent | None = None

    def write(self, db: Connection) -> None:
        self.stored = store_event(db, self.job_id, self.url, self.body, self.at)

    def committed(self) -> None:
        if self.stored is not None:
            self.outbox.schedule(self.stored)


class JobEvents:
    """The worker's transition recorder that feeds the webhook outbox."""

    def __init__(self, outbox: Outbox, *, inline_limit: int) -> None:
        self._outbox = outbox
        self._inline_limit = inline_limit

    def __call__(self, job: Job, previous: JobState | None) -> JobEvent | None:
        if job.sync or job.webhook_url is None:
            return None
        body = event_body(job, previous, self._inline_limit)
        return JobEvent(self._outbox, job.id, job.webhook_url, body, job.updated_at)

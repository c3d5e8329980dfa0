"""How ``/jobs`` shows a job: the JSON of ``GET /jobs/{id}`` and of a listing."""

from __future__ import annotations

import json
from typing import Any

from foreman.jobs.artifacts import outputs_of
from foreman.queue.job import Job
from foreman.wire.timestamps import timestamp


def metadata_value(job: Job) -> Any:
    """The caller's ``metadata`` as the JSON value it sent (``None`` if none)."""
    return None if job.metadata is None else json.loads(job.metadata)


def summary(job: Job) -> dict[str, Any]:
    """A job in a listing: everything but its output."""
    return {
        "job_id": job.id,
        "state": job.state.value,
        "model": job.model,
        "endpoint": job.endpoint,
        "priority": job.priority.value,
        "attempt": job.attempt,
        "created_at": timestamp(job.created_at),
        "updated_at": timestamp(job.updated_at),
        "started_at": timestamp(job.started_at),
        "finished_at": timestamp(job.finished_at),
        "error": job.last_error,
        "error_status": job.error_status,
        "state_webhook_url": job.webhook_url,
        "metadata": metadata_value(job),
        # The batch the job is a line of (a list sent to POST /jobs, or
        # /v1/batches), and the line's custom_id: null for a job alone.
        "batch_id": job.batch_id,
        "custom_id": job.custom_id,
        # The name of the key it was sent with (docs/keys.md); null for the
        # token, or with no keys.
        "key": job.caller,
    }


def job_view(job: Job, inline_limit: int, position: int | None = None) -> dict[str, Any]:
    """``GET /jobs/{id}``: the summary, the queue position of a queued job (else
    ``None``), the completion inline if small, artifacts."""
    outputs = outputs_of(job, inline_limit)
    view = summary(job)
    view["position"] = position
    view["result"] = outputs.result
    view["artifacts"] = [artifact.reference(job.id) for artifact in outputs.artifacts]
    return view

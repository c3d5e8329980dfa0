"""A finished job's outputs as named, typed blobs (ADR-0006).

The one artifact so far is ``completion``: the whole reply Ollama gave the
job's non-streamed call, in Ollama's own response shape. Its bytes are the
job row's ``result`` (foreman/queue/job.py says why). Small ones travel inline, as
JSON, in ``GET /jobs/{id}`` and the ``done`` webhook; every one is served
raw at its URL, relative to foreman's base URL (foreman cannot know the
address a caller reached it by).
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from foreman.queue.job import Job, JobState

COMPLETION = "completion"
JSON_CONTENT_TYPE = "application/json"


@attrs.frozen
class Artifact:
    name: str
    content_type: str
    size: int
    #: True when the content travels inline (as the job's ``result``).
    inline: bool

    def reference(self, job_id: str) -> dict[str, Any]:
        return {
            "name": self.name,
            "content_type": self.content_type,
            "size": self.size,
            "url": artifact_url(job_id, self.name),
            "inline": self.inline,
        }


@attrs.frozen
class Outputs:
    """What a job view or an event says about a job's output."""

    artifacts: tuple[Artifact, ...] = ()
    #: The completion, decoded, when it is inline; else ``None``.
    result: Any = None


def artifact_url(job_id: str, name: str) -> str:
    return f"/jobs/{job_id}/artifacts/{name}"


def outputs_of(job: Job, inline_limit: int) -> Outputs:
    if job.state is not JobState.DONE or job.result is None:
        return Outputs()
    size = len(job.result)
    result: Any = None
    inline = size <= inline_limit
    if inline:
        try:
            result = json.loads(job.result)
        except ValueError:
            # An Ollama-alike's odd reply: still served raw at its URL.
            inline = False
    return Outputs((Artifact(COMPLETION, JSON_CONTENT_TYPE, size, inline),), result)


def artifact_content(job: Job, name: str) -> tuple[str, bytes] | None:
    """Content type and bytes of ``job``'s artifact ``name``, if it has one."""
    if name == COMPLETION and job.state is JobState.DONE and job.result is not None:
        return JSON_CONTENT_TYPE, job.result
    return None

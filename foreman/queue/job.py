"""A unit of queued work: one generation call, sync or asynchronous (ADR-0004).

Every generation call, in any dialect (``/api/chat``, ``/api/generate``,
``/v1/chat/completions``, ``/v1/messages`` ...), becomes a :class:`Job`. A
*sync* job has an HTTP caller waiting on it; an asynchronous one (``/jobs``)
has only its row in the store, and its result is kept there.
"""

from __future__ import annotations

import enum

import attrs

from foreman.wire.endpoints import Endpoint, endpoint_named
from foreman.wire.priority import Priority


class JobState(enum.Enum):
    QUEUED = "queued"
    LOADING = "loading"
    WORKING = "working"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def running(self) -> bool:
        return self in (JobState.LOADING, JobState.WORKING)


_TERMINAL = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})


@attrs.frozen
class Job:
    id: str
    model: str
    #: The endpoint's name (:mod:`foreman.wire.endpoints`): ``chat``,
    #: ``generate``, or a dialect's path such as ``/v1/messages``.
    endpoint: str
    #: The caller's body, byte for byte.
    body: bytes
    #: True when an HTTP caller is blocked on the job (the native API).
    sync: bool
    state: JobState = JobState.QUEUED
    #: Attempts started so far; a recovered or retried job counts again.
    attempt: int = 0
    last_error: str | None = None
    #: The HTTP status a failure is reported with (Ollama's own, or 502).
    error_status: int | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    #: Backoff: the job is not started before this time.
    not_before: float = 0.0
    webhook_url: str | None = None
    #: Caller JSON echoed back by ``/jobs`` (raw bytes).
    metadata: bytes | None = None
    #: The completion in Ollama's ``stream: false`` shape, once an
    #: asynchronous job is done: the bytes of its ``completion`` artifact
    #: (ADR-0006). They live in the job's row rather than in the ``artifacts``
    #: table because the one UPDATE that records ``done`` then stores them
    #: too: nothing can see a done job whose completion is missing (the done
    #: webhook's URL serves at once), and the TTL sweep deletes them with the
    #: row. The ``artifacts`` table is kept for outputs beyond the completion.
    result: bytes | None = None
    #: ``Idempotency-Key`` of the ``POST /jobs`` that created the job.
    idempotency_key: str | None = None
    #: Its class: people's calls before batch work (ADR-0021).
    priority: Priority = Priority.INTERACTIVE
    #: The box (of a fleet sharing the store, issue 18) that owns the job: the
    #: one running it, or, for a sync job, the one its caller waits on. ``None``
    #: while an asynchronous job waits for any box to claim it, and on a store
    #: without a box id (one foreman alone).
    box: str | None = None
    #: The batch the job is a line of (``/v1/batches``, or a list sent to
    #: ``POST /jobs``), and the line's ``custom_id`` (ADR-0029).
    batch_id: str | None = None
    custom_id: str | None = None
    #: The name of the key the job was sent with (ADR-0030); ``None`` for the
    #: admin token, or with no keys at all. The fair share serves keys in turn.
    caller: str | None = None

    @property
    def batch(self) -> bool:
        return self.priority is Priority.BATCH

    @property
    def route(self) -> Endpoint:
        return endpoint_named(self.endpoint)

    @property
    def path(self) -> bytes:
        return self.route.path

    def moved(self, state: JobState, now: float, **changes: object) -> Job:
        """This job in ``state`` as of ``now``, with other fields changed too."""
        started_at = self.started_at
        if state.running and started_at is None:
            started_at = now
        finished_at = now if state.terminal else None
        return attrs.evolve(
            self,
            state=state,
            updated_at=now,
            started_at=started_at,
            finished_at=finished_at,
            **changes,  # type: ignore[arg-type]
        )

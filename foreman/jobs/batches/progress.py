"""A batch's lines counted as they end, and the batch finished when the last one has (ADR-0029).

:class:`BatchProgress` is a transition recorder (:mod:`foreman.queue.transitions`):
when a line's job enters its last state, the batch's counts move in the very
transaction that stores that state, so the batch row never disagrees with its
jobs, whatever dies when. The write that ends the last line also moves the
batch to ``finalizing``; once that has committed, the batch's answers are
gathered into its output and error files and it becomes ``completed`` (or
``cancelled``), again in one transaction. A foreman that dies in between
finds the batch ``finalizing`` at its next start and finishes it then; two
boxes finishing the same batch cannot both: the second finds it finished and
writes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

from foreman.jobs.batches import table
from foreman.jobs.batches.objects import answer_files, new_file_id
from foreman.jobs.events import Outbox
from foreman.jobs.outbox import StoredEvent, store_event
from foreman.queue.engines import Connection
from foreman.queue.job import Job, JobState
from foreman.queue.store import JobStore
from foreman.queue.ulid import new_ulid
from foreman.wire.timestamps import timestamp

log = Logger()


class _Lost(Exception):
    """Another box finished the batch first: this transaction writes nothing."""


def batch_event(batch: table.BatchRow, state: str, previous: str | None, now: float) -> bytes:
    """The webhook event for ``batch`` having entered ``state``."""
    value: dict[str, Any] = {
        "batch_id": batch.id,
        "state": state,
        "previous_state": previous,
        "timestamp": timestamp(now),
        "request_counts": {
            "total": batch.total,
            "completed": batch.completed,
            "failed": batch.failed,
        },
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "metadata": None if batch.metadata is None else json.loads(batch.metadata),
    }
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


#: The states OpenAI sends an event for (``batch.completed`` …), in its form.
OPENAI_EVENTS = frozenset({"completed", "cancelled", "failed", "expired"})


def openai_event(batch: table.BatchRow, state: str, now: float) -> tuple[str, bytes]:
    """The id and body of OpenAI's event for ``batch`` having ended in ``state``."""
    event_id = "evt_" + new_ulid(now)
    value = {
        "id": event_id,
        "object": "event",
        "created_at": int(now),
        "type": f"batch.{state}",
        "data": {"id": batch.id},
    }
    return event_id, json.dumps(value, separators=(",", ":")).encode("utf-8")


def record_event(
    db: Connection,
    batch: table.BatchRow,
    state: str,
    previous: str | None,
    now: float,
    *,
    openai_form: bool = False,
) -> StoredEvent | None:
    """Write ``batch``'s event for entering ``state`` into the outbox, if it has
    a webhook: foreman's ``batch.state`` event, or, with ``openai_form``, OpenAI's
    event in the Standard Webhooks form, for the states OpenAI reports."""
    if batch.webhook_url is None:
        return None
    if openai_form:
        if state not in OPENAI_EVENTS:
            return None
        event_id, body = openai_event(batch, state, now)
        return store_event(db, event_id, batch.webhook_url, body, now)
    body = batch_event(batch, state, previous, now)
    return store_event(db, batch.id, batch.webhook_url, body, now)


@attrs.define
class _Counted:
    progress: BatchProgress
    job: Job
    finalizing: bool = False

    def write(self, db: Connection) -> None:
        state = self.job.state
        assert self.job.batch_id is not None
        self.finalizing = table.count_ended(
            db,
            self.job.batch_id,
            completed=int(state is JobState.DONE),
            failed=int(state is JobState.FAILED),
            cancelled=int(state is JobState.CANCELLED),
            now=self.job.updated_at,
        )

    def committed(self) -> None:
        if self.finalizing and self.job.batch_id is not None:
            self.progress.finish_soon(self.job.batch_id)


class BatchProgress:
    """Counts each batch's lines as they end, and finishes the batch."""

    def __init__(
        self,
        store: JobStore,
        outbox: Outbox,
        wall: Callable[[], float],
        *,
        openai_form: bool = False,
    ) -> None:
        self._store = store
        self._outbox = outbox
        self._wall = wall
        #: Whether batch events go out in OpenAI's form (a Standard Webhooks
        #: secret is configured) instead of foreman's.
        self.openai_form = openai_form
        #: Finishing now (a batch is finished once at a time here).
        self._finishing: dict[str, Deferred[None]] = {}

    def __call__(self, job: Job, previous: JobState | None) -> _Counted | None:
        if job.batch_id is None or not job.state.terminal:
            return None
        if previous is not None and previous.terminal:
            return None
        return _Counted(self, job)

    def finish_soon(self, batch_id: str) -> Deferred[None]:
        """Gather ``batch_id``'s answers and end it, in the background."""
        running = self._finishing.get(batch_id)
        if running is not None:
            return running
        finishing = ensureDeferred(self._finish(batch_id))
        finishing.addErrback(
            lambda failure: log.failure(
                "Could not finish batch {batch_id}", failure, batch_id=batch_id
            )
        )
        if not finishing.called:
            self._finishing[batch_id] = finishing

            def over(result: object) -> object:
                del self._finishing[batch_id]
                return result

            finishing.addBoth(over)
        return finishing

    def resume(self) -> Deferred[list[str]]:
        """Finish the batches a stopped foreman left ``finalizing`` (at start)."""

        async def resume() -> list[str]:
            waiting = await self._store.transact(lambda db: table.batches_in(db, "finalizing"))
            for batch_id in waiting:
                self.finish_soon(batch_id)
            return waiting

        return ensureDeferred(resume())

    async def _finish(self, batch_id: str) -> None:
        now = self._wall()

        def finish(db: Connection) -> StoredEvent | None:
            batch = table.get_batch(db, batch_id)
            if batch is None or batch.state != "finalizing":
                return None
            files: dict[str, str | None] = {"output": None, "error": None}
            # A list of /jobs keeps its answers in its jobs; an OpenAI batch's
            # are gathered into files, which outlive the jobs' TTL.
            made = answer_files(table.lines(db, batch_id)) if batch.kind == "openai" else (b"", b"")
            for kind, content in zip(("output", "error"), made, strict=True):
                if content:
                    file_id = files[kind] = new_file_id(now)
                    name = f"{batch_id}_{kind}.jsonl"
                    row = table.FileRow(
                        file_id, "batch_output", name, len(content), now, batch_id, batch.caller
                    )
                    table.insert_file(db, row, content)
            state = "completed" if batch.cancelling_at is None else "cancelled"
            if not table.end_batch(
                db,
                batch_id,
                state=state,
                now=now,
                output_file_id=files["output"],
                error_file_id=files["error"],
            ):
                raise _Lost()
            ended = table.get_batch(db, batch_id)
            assert ended is not None
            return record_event(db, ended, state, "finalizing", now, openai_form=self.openai_form)

        try:
            stored = await self._store.transact(finish)
        except _Lost:
            return
        if stored is not None:
            self._outbox.schedule(stored)

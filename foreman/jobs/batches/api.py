"""OpenAI's Batch API on ``/v1/batches`` (ADR-0029).

A Klein app mounted by :class:`foreman.front.api.ForemanAPI` ahead of the
relay's ``/v1`` catch-all, beside the Files API
(:mod:`foreman.jobs.batches.files_api`), so that the ``openai`` SDK's
``files`` and ``batches`` resources work against foreman unchanged. A batch is made whole
or not at all: its input is read and checked line by line first
(:mod:`foreman.jobs.batches.lines`), then the batch row and one job per line
(the batch class) are stored in one transaction, and the worker drains them
by model with everything else. Errors are OpenAI's error objects. A key
with the ``jobs`` scope sees only its own batches, made from its own files;
their lines are its jobs (:mod:`foreman.jobs.owners`).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import attrs
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from foreman.http import routing
from foreman.http.errors import SERVER_BUSY
from foreman.http.routing import json_answer
from foreman.jobs.api import uncancellable
from foreman.jobs.batches import table
from foreman.jobs.batches.files_api import FilesAPI
from foreman.jobs.batches.lines import BATCH_ENDPOINTS, LineError, read_lines
from foreman.jobs.batches.objects import batch_object, new_batch_id
from foreman.jobs.batches.openai_http import (
    ApiError,
    Surface,
    answer_errors,
    argument,
    no_file,
    page,
    page_limit,
)
from foreman.jobs.batches.progress import BatchProgress, record_event
from foreman.jobs.events import Outbox
from foreman.jobs.outbox import StoredEvent
from foreman.jobs.owners import only, owner_of, sees
from foreman.jobs.requests import idempotency_key, is_http_url
from foreman.queue.engines import Connection
from foreman.queue.job import Job
from foreman.queue.scheduler import CallerQueueFull, QueueFull
from foreman.queue.settlement import CANCELLED_QUEUED
from foreman.queue.store import JobStore
from foreman.queue.ulid import new_ulid
from foreman.queue.worker import Worker

#: OpenAI's only completion window; foreman runs a batch until it is done.
COMPLETION_WINDOW = "24h"
WINDOW_SECONDS = 24 * 3600.0
MAX_METADATA_KEYS = 16


class BatchesAPI:
    """``/v1/batches``: OpenAI's Batch API on the durable queue."""

    app = Klein()

    def __init__(self, surface: Surface) -> None:
        self._s = surface

    @app.route("/", methods=["POST"])
    async def create(self, request: IRequest) -> bytes:
        _, document = routing.read_json(request)
        if not isinstance(document, dict):
            raise ApiError(400, "The body must be a JSON object.")
        key = idempotency_key(request.getHeader(b"idempotency-key"))
        store = self._s.store
        if key is not None:
            known = await store.transact(lambda db: table.batch_by_idempotency_key(db, key))
            if known is not None and not sees(request, known.caller):
                raise ApiError(
                    422, f"Idempotency-Key {key!r} was already used for a different request"
                )
            if known is not None:
                return json_answer(request, batch_object(known))
        endpoint = document.get("endpoint")
        if endpoint not in BATCH_ENDPOINTS:
            allowed = ", ".join(BATCH_ENDPOINTS)
            raise ApiError(400, f"endpoint must be one of {allowed}.", param="endpoint")
        window = document.get("completion_window", COMPLETION_WINDOW)
        if window != COMPLETION_WINDOW:
            raise ApiError(400, "completion_window must be '24h'.", param="completion_window")
        metadata = _metadata(document.get("metadata"))
        webhook_url = _webhook_url(document.get("state_webhook_url"))
        file_id = document.get("input_file_id")
        if not isinstance(file_id, str):
            raise ApiError(
                400, "Missing required parameter: 'input_file_id'.", param="input_file_id"
            )
        owner = owner_of(request)

        def readable(db: Connection) -> bytes | None:
            row = table.get_file(db, file_id)
            if row is None or not sees(request, row.caller):
                return None  # another key's file is none of this one's
            return table.file_content(db, file_id)

        content = await store.transact(readable)
        if content is None:
            raise no_file(file_id)
        try:
            # Tens of thousands of lines are read beside the reactor, not on it:
            # the calls it relays meanwhile keep streaming.
            lines = await deferToThread(read_lines, content, endpoint)
        except LineError as e:
            raise ApiError(400, str(e), code=e.code, param=e.param, line=e.line) from None
        for model in sorted({line.submission.model for line in lines}):
            if await self._s.knows_model(model) is False:
                first = next(line for line in lines if line.submission.model == model)
                raise ApiError(
                    400,
                    f"model '{model}' not found (line {first.number}): pull it into Ollama first.",
                    code="model_not_found",
                    param="body.model",
                    line=first.number,
                )
        now = self._s.wall()
        batch = table.BatchRow(
            id=new_batch_id(now),
            kind="openai",
            state="in_progress",
            total=len(lines),
            created_at=now,
            endpoint=endpoint,
            input_file_id=file_id,
            completion_window=window,
            metadata=metadata,
            in_progress_at=now,
            expires_at=now + WINDOW_SECONDS,
            webhook_url=webhook_url,
            idempotency_key=key,
            caller=owner,
        )
        jobs = [
            _line_job(line.submission.job(new_ulid(now), now, None), batch, line.custom_id)
            for line in lines
        ]
        event: list[StoredEvent | None] = []

        def also(db: Connection) -> None:
            table.insert_batch(db, batch)
            event.append(
                record_event(
                    db, batch, "in_progress", None, now, openai_form=self._s.progress.openai_form
                )
            )

        try:
            # A caller hanging up now must not cut the create in half (stored
            # lines the worker never heard of): it finishes regardless.
            await uncancellable(self._s.worker.submit_many(jobs, also))
        except QueueFull as e:
            retry = b"%d" % self._s.worker.retry_after()
            if isinstance(e, CallerQueueFull):
                raise ApiError(429, str(e), headers={b"Retry-After": retry}) from None
            raise ApiError(
                503,
                f"{SERVER_BUSY} (the batch's {len(jobs)} requests are more than"
                " --max-batch-queue leaves room for)",
                headers={b"Retry-After": retry},
            ) from None
        if event and event[0] is not None:
            self._s.outbox.schedule(event[0])
        return json_answer(request, batch_object(batch))

    @app.route("/", methods=["GET"])
    async def listing(self, request: IRequest) -> bytes:
        limit = page_limit(request, 20, 100)
        after, owner = argument(request, "after"), only(request)
        rows = await self._s.store.transact(
            lambda db: table.list_batches(
                db, kind="openai", after=after, limit=limit + 1, owner=owner
            )
        )
        return page(request, [batch_object(row) for row in rows[:limit]], len(rows) > limit)

    @app.route("/<batch_id>", methods=["GET"])
    async def show(self, request: IRequest, batch_id: str) -> bytes:
        return json_answer(request, batch_object(await self._batch(batch_id, request)))

    @app.route("/<batch_id>/cancel", methods=["POST"])
    async def cancel(self, request: IRequest, batch_id: str) -> bytes:
        batch = await self._batch(batch_id, request)
        if batch.state != "in_progress":
            if batch.state in ("cancelling", "cancelled"):
                return json_answer(request, batch_object(batch))
            raise ApiError(409, f"Cannot cancel a batch with status '{batch.state}'.")
        worker = self._s.worker
        withdrawn = worker.withdraw(batch_id)
        now = self._s.wall()

        def cancel(db: Connection) -> tuple[bool, StoredEvent | None]:
            if not table.start_cancel(db, batch_id, now):
                return False, None
            cancelled = table.cancel_queued_lines(db, batch_id, now, CANCELLED_QUEUED)
            finalizing = table.count_ended(
                db, batch_id, completed=0, failed=0, cancelled=len(cancelled), now=now
            )
            moved = table.get_batch(db, batch_id)
            assert moved is not None
            form = self._s.progress.openai_form
            return finalizing, record_event(
                db, moved, "cancelling", "in_progress", now, openai_form=form
            )

        # What the store answers is acted on whether or not the caller stays:
        # refused, the lines go back to the queue; stored, the event leaves
        # and a batch with nothing left running is finished.
        surface = self._s

        def stored(result: tuple[bool, StoredEvent | None]) -> tuple[bool, StoredEvent | None]:
            finalizing, event = result
            if event is not None:
                surface.outbox.schedule(event)
            if finalizing:
                surface.progress.finish_soon(batch_id)
            return result

        def refused(failure: Failure) -> Failure:
            worker.adopt(withdrawn)
            return failure

        cancelling = surface.store.transact(cancel)
        cancelling.addCallbacks(stored, refused)
        finalizing, _ = await uncancellable(cancelling)
        if finalizing:
            await surface.progress.finish_soon(batch_id)
        return json_answer(request, batch_object(await self._batch(batch_id, request)))

    async def _batch(self, batch_id: str, request: IRequest) -> table.BatchRow:
        """The batch ``batch_id``, if the caller may see it; else OpenAI's 404."""
        row = await self._s.store.transact(lambda db: table.get_batch(db, batch_id))
        if row is None or row.kind != "openai" or not sees(request, row.caller):
            raise _no_batch(batch_id)
        return row

    answer_errors(app)


def _no_batch(batch_id: str) -> ApiError:
    return ApiError(404, f"No batch found with id '{batch_id}'.", param="batch_id")


def _line_job(job: Job, batch: table.BatchRow, custom_id: str) -> Job:
    """A line's job: the batch's, in the name of its key."""
    return attrs.evolve(job, batch_id=batch.id, custom_id=custom_id, caller=batch.caller)


def _metadata(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > MAX_METADATA_KEYS:
        raise ApiError(
            400,
            f"metadata must be an object of at most {MAX_METADATA_KEYS} string values.",
            param="metadata",
        )
    for key, item in value.items():
        if not isinstance(item, str) or len(key) > 64 or len(item) > 512:
            raise ApiError(
                400,
                "metadata keys are at most 64 characters and values strings of at most 512.",
                param="metadata",
            )
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _webhook_url(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and is_http_url(value):
        return value
    raise ApiError(
        400,
        "state_webhook_url must be an absolute http:// or https:// URL",
        param="state_webhook_url",
    )


def build(
    store: JobStore,
    worker: Worker,
    wall: Callable[[], float],
    *,
    knows_model: Callable[[str], Deferred[bool | None]],
    outbox: Outbox,
    progress: BatchProgress,
) -> tuple[FilesAPI, BatchesAPI]:
    surface = Surface(
        store, worker, wall, knows_model=knows_model, outbox=outbox, progress=progress
    )
    return FilesAPI(surface), BatchesAPI(surface)

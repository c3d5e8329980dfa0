"""The asynchronous ``/jobs`` surface (ADR-0004, docs/jobs.md).

A Klein app of its own, mounted under ``/jobs`` by :class:`foreman.front.api.ForemanAPI`
(so the token guard and gin's 404/405 apply as everywhere). Routes here are
relative to ``/jobs``. Only asynchronous jobs are visible: a sync call's job
has an id its caller never sees, and is cancelled by hanging up. A key with
the ``jobs`` scope sees and touches only its own jobs (``Job.caller``, the
key's name): anyone else's answer 404, as if they did not exist; the token
and admin keys see all (docs/keys.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import attrs
from klein import Klein
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from foreman.http import routing
from foreman.http.errors import SERVER_BUSY, model_not_found, write_json_error
from foreman.http.routing import BadRequest, json_answer
from foreman.jobs.artifacts import artifact_content
from foreman.jobs.batches.objects import new_batch_id
from foreman.jobs.batches.table import (
    BatchRow,
    batch_by_idempotency_key,
    batch_job_ids,
    insert_batch,
)
from foreman.jobs.owners import only, owner_of, sees
from foreman.jobs.requests import idempotency_key, parse_submission
from foreman.jobs.views import job_view, summary
from foreman.queue.engines import Connection
from foreman.queue.fleet.member import FleetMember
from foreman.queue.job import Job, JobState
from foreman.queue.journal import StoreUnavailable
from foreman.queue.scheduler import CallerQueueFull, QueueFull
from foreman.queue.store import JobStore
from foreman.queue.ulid import is_ulid, new_ulid
from foreman.queue.worker import Worker
from foreman.relay.inventory import Inventory

log = Logger()
T = TypeVar("T")

DEFAULT_PAGE = 50
MAX_PAGE = 500
#: The query parameters ``GET /jobs`` takes; any other is refused.
LISTING_ARGUMENTS = ("state", "model", "limit", "before")

NO_QUEUE = "foreman: /jobs needs the job queue, and this foreman runs with --no-queue"


class _StoreDown(Exception):
    """The store could not answer now (it is restarting, locked, full)."""


class _Unavailable(Exception):
    """``/jobs`` is switched off (``--no-queue``)."""


class _KeyTaken(Exception):
    """An ``Idempotency-Key`` another API key's work was sent with."""


class JobsAPI:
    app = Klein()

    def __init__(
        self,
        inventory: Inventory,
        clock: IReactorTime,
        *,
        worker: Worker | None,
        store: JobStore | None,
        inline_limit: int,
        fleet: FleetMember | None = None,
    ) -> None:
        self._fleet = fleet
        self._inventory = inventory
        self._clock = clock
        self._worker = worker
        self._store = store
        self._inline_limit = inline_limit

    def knows_model(self, model: str) -> Deferred[bool | None]:
        """Does this box's Ollama have ``model``, or, in a fleet, a live box's?"""
        return ensureDeferred(self._knows_model(model))

    async def _knows_model(self, model: str) -> bool | None:
        if self._fleet is not None and self._fleet.has_model(model):
            return True
        return await self._inventory.knows_model(model)

    async def _stored(self, store: JobStore, asked: Deferred[T]) -> T:
        """What the store answered; a store that cannot be reached now (a
        PostgreSQL restarting, a locked file) is :class:`_StoreDown`."""
        try:
            return await asked
        except Exception as e:
            if store.engine.is_unavailable(e):
                raise _StoreDown(str(e).strip() or type(e).__name__) from e
            raise

    def _queue(self) -> tuple[Worker, JobStore]:
        if self._worker is None or self._store is None:
            raise _Unavailable()
        return self._worker, self._store

    async def _job(self, job_id: str, request: IRequest) -> Job | None:
        """The asynchronous job ``job_id``, if there is one the caller may see."""
        _, store = self._queue()
        job = await self._stored(store, store.get(job_id))
        return None if job is None or job.sync or not sees(request, job.caller) else job

    # -- submit --------------------------------------------------------------------

    @app.route("/", methods=["POST"])
    async def submit(self, request: IRequest) -> bytes:
        worker, store = self._queue()
        _, document = routing.read_json(request)
        key = idempotency_key(request.getHeader(b"idempotency-key"))
        if isinstance(document, list):
            return await self._submit_list(request, document, key)
        submission = parse_submission(document)
        request.model = submission.model  # type: ignore[attr-defined]
        if key is not None:
            # A retry usually finds its job here, even when the queue is full.
            known = await self._stored(store, store.find_by_idempotency_key(key))
            if known is not None:
                return self._accepted(request, submission.same_request, known, key)
        if await self._knows_model(submission.model) is False:
            return write_json_error(request, 404, model_not_found(submission.model))
        now = worker.clocks.wall()
        job = attrs.evolve(submission.job(new_ulid(now), now, key), caller=owner_of(request))
        try:
            # A caller hanging up now must not cut the submit in half (a
            # stored job the worker never heard of): it finishes regardless.
            stored = await uncancellable(worker.submit(job))
        except QueueFull as e:
            return _busy(request, worker, e)
        except Exception:
            log.failure("Could not record a new job")
            message = "foreman: could not record the job; see its log"
            retry = b"%d" % worker.retry_after()
            return write_json_error(request, 503, message, {b"Retry-After": retry})
        return self._accepted(request, submission.same_request, stored, key)

    async def _submit_list(self, request: IRequest, documents: list[Any], key: str | None) -> bytes:
        """Many jobs in one request (ADR-0029): all stored in one transaction,
        or none; one id each, in the list's order; a retry with the same
        ``Idempotency-Key`` finds the same ids."""
        worker, store = self._queue()
        if not documents:
            raise BadRequest("a list of jobs must hold at least one job")
        submissions = []
        for index, document in enumerate(documents):
            try:
                submissions.append(parse_submission(document))
            except BadRequest as e:
                raise BadRequest(f"job {index}: {e}") from None
        if key is not None:
            known = await self._known_list(store, key, request)
            if known is not None:
                return _accepted_list(request, *known)
        for model in sorted({submission.model for submission in submissions}):
            if await self._knows_model(model) is False:
                return write_json_error(request, 404, model_not_found(model))
        now = worker.clocks.wall()
        batch = BatchRow(
            id=new_batch_id(now),
            kind="jobs",
            state="in_progress",
            total=len(submissions),
            created_at=now,
            in_progress_at=now,
            idempotency_key=key,
            caller=owner_of(request),
        )
        jobs = [
            attrs.evolve(
                submission.job(new_ulid(now), now, None), batch_id=batch.id, caller=batch.caller
            )
            for submission in submissions
        ]
        try:
            await uncancellable(worker.submit_many(jobs, lambda db: insert_batch(db, batch)))
        except QueueFull as e:
            return _busy(request, worker, e)
        except Exception:
            known = None if key is None else await self._known_list(store, key, request)
            if known is not None:  # the same list, sent twice at once: the first one's
                return _accepted_list(request, *known)
            log.failure("Could not record a list of jobs")
            retry = b"%d" % worker.retry_after()
            message = "foreman: could not record the jobs; see its log"
            return write_json_error(request, 503, message, {b"Retry-After": retry})
        return _accepted_list(request, batch.id, [job.id for job in jobs])

    async def _known_list(
        self, store: JobStore, key: str, request: IRequest
    ) -> tuple[str, list[str]] | None:
        def known(db: Connection) -> tuple[str, list[str]] | str | None:
            batch = batch_by_idempotency_key(db, key)
            if batch is not None and not sees(request, batch.caller):
                return batch.id  # another key's: its ids are not shown
            return None if batch is None else (batch.id, batch_job_ids(db, batch.id))

        found = await self._stored(store, store.transact(known))
        if isinstance(found, str):
            raise _KeyTaken(key)
        return found

    @staticmethod
    def _accepted(
        request: IRequest, same: Callable[[Job], bool], job: Job, key: str | None
    ) -> bytes:
        # Another key's job says no more than that the key is taken.
        if key is not None and not (sees(request, job.caller) and same(job)):
            return write_json_error(request, 422, _key_in_use(key))
        request.setHeader(b"Location", f"/jobs/{job.id}".encode())
        return json_answer(request, {"job_id": job.id}, 202)

    # -- look ----------------------------------------------------------------------

    @app.route("/", methods=["GET", "HEAD"])
    async def listing(self, request: IRequest) -> bytes:
        _, store = self._queue()
        _only_known_arguments(request)
        state = _argument(request, "state")
        model = _argument(request, "model")
        before = _cursor(_argument(request, "before"))
        limit = _limit(_argument(request, "limit"))
        try:
            wanted = None if state is None else JobState(state)
        except ValueError:
            names = ", ".join(each.value for each in JobState)
            raise BadRequest(f"state must be one of {names}") from None
        listed = store.listing(
            limit=limit + 1, state=wanted, model=model, before=before, owner=only(request)
        )
        page = await self._stored(store, listed)
        jobs = page[:limit]
        following = jobs[-1].id if len(page) > limit else None
        return json_answer(request, {"jobs": [summary(job) for job in jobs], "next": following})

    @app.route("/<job_id>", methods=["GET", "HEAD"])
    async def show(self, request: IRequest, job_id: str) -> bytes:
        job = await self._job(job_id, request)
        if job is None:
            return _no_such_job(request, job_id)
        request.setHeader(b"Cache-Control", b"no-store")
        return json_answer(request, job_view(job, self._inline_limit, self._position(job)))

    def _position(self, job: Job) -> int | None:
        """Where a queued job stands in the worker's plan (1: it runs next); else ``None``."""
        if job.state is not JobState.QUEUED or self._worker is None:
            return None
        try:
            return self._worker.position(job.id)
        except KeyError:
            # Stored as queued but not in the worker's queue: picked a moment
            # ago (its ``loading`` not yet stored), or not yet recovered.
            return None

    @app.route("/<job_id>/artifacts/<name>", methods=["GET", "HEAD"])
    async def artifact(self, request: IRequest, job_id: str, name: str) -> bytes:
        job = await self._job(job_id, request)
        if job is None:
            return _no_such_job(request, job_id)
        found = artifact_content(job, name)
        if found is None:
            return write_json_error(request, 404, f"job {job_id} has no artifact {name!r}")
        content_type, content = found
        request.setHeader(b"Content-Type", content_type.encode())
        request.setHeader(b"Content-Length", b"%d" % len(content))
        return content

    # -- cancel --------------------------------------------------------------------

    @app.route("/<job_id>/cancel", methods=["POST"])
    async def cancel(self, request: IRequest, job_id: str) -> bytes:
        worker, store = self._queue()
        job = await self._job(job_id, request)
        if job is None:
            return _no_such_job(request, job_id)
        if job.state.terminal:
            return _already(request, job)
        try:
            ended = await worker.cancel(job_id)
        except StoreUnavailable as e:
            message = f"could not record the cancel ({e}); job {job_id} is still queued"
            return write_json_error(request, 503, message, {b"Retry-After": b"5"})
        # ``None``: the worker let go of it meanwhile; the store knows how it ended.
        job = ended if ended is not None else await self._stored(store, store.get(job_id)) or job
        if job.state is JobState.CANCELLED:
            return json_answer(request, job_view(job, self._inline_limit))
        if job.state.terminal:
            return _already(request, job)  # it ended before the cancel could land
        # Stored as queued or running, yet not the worker's: between two
        # states (a start-up still recovering it), or foreman is stopping.
        message = (
            "foreman is stopping; try again shortly"
            if worker.draining
            else f"job {job_id} is changing state; try again shortly"
        )
        return write_json_error(request, 503, message, {b"Retry-After": b"5"})

    # -- errors ----------------------------------------------------------------------

    @app.handle_errors(_Unavailable)
    def unavailable(self, request: IRequest, failure: Failure) -> bytes:
        return write_json_error(request, 501, NO_QUEUE)

    @app.handle_errors(_KeyTaken)
    def key_taken(self, request: IRequest, failure: Failure) -> bytes:
        return write_json_error(request, 422, _key_in_use(str(failure.value)))

    @app.handle_errors(_StoreDown)
    def store_down(self, request: IRequest, failure: Failure) -> bytes:
        message = f"foreman: the job store cannot be reached now ({failure.value}); try again"
        return write_json_error(request, 503, message, {b"Retry-After": b"5"})

    routing.answer_routing_errors(app)


def _key_in_use(key: str) -> str:
    return f"Idempotency-Key {key!r} was already used for a different request"


def _accepted_list(request: IRequest, batch_id: str, job_ids: list[str]) -> bytes:
    jobs = [{"job_id": job_id} for job_id in job_ids]
    return json_answer(request, {"batch_id": batch_id, "jobs": jobs}, 202)


def uncancellable(work: Deferred[T]) -> Deferred[T]:
    """``work``'s result, in a Deferred whose cancellation leaves ``work`` alone."""
    shield: Deferred[T] = Deferred(lambda _: None)  # cancelled: fails at once
    work.addBoth(lambda result: None if shield.called else shield.callback(result))
    return shield


def _already(request: IRequest, job: Job) -> bytes:
    return write_json_error(request, 409, f"job {job.id} is already {job.state.value}")


def _no_such_job(request: IRequest, job_id: str) -> bytes:
    return write_json_error(request, 404, f"job {job_id} not found")


def _argument(request: IRequest, name: str) -> str | None:
    values = request.args.get(name.encode())
    if not values:
        return None
    return bytes(values[-1]).decode("utf-8", "replace") or None


def _only_known_arguments(request: IRequest) -> None:
    """Refuse a query parameter the listing does not take (a typo would filter nothing)."""
    for raw in request.args:
        name = bytes(raw).decode("utf-8", "replace")
        if name not in LISTING_ARGUMENTS:
            known = ", ".join(LISTING_ARGUMENTS)
            raise BadRequest(f"unknown query parameter {name!r}; GET /jobs takes {known}")


def _cursor(text: str | None) -> str | None:
    """``before``: a job id (as ``next`` gave it), else :class:`BadRequest`."""
    if text is None:
        return None
    cursor = text.upper()
    if not (text.isascii() and is_ulid(cursor)):
        raise BadRequest("before must be a job id (26 characters, as next gives it)")
    return cursor


def _limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_PAGE
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_PAGE:
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_PAGE}")
    return limit


def _busy(request: IRequest, worker: Worker, refused: QueueFull) -> bytes:
    """The queue's refusal: 503 when the queue is full, 429 when the
    caller's key has as many jobs waiting as its limit (ADR-0030)."""
    retry = {b"Retry-After": b"%d" % worker.retry_after()}
    if isinstance(refused, CallerQueueFull):
        return write_json_error(request, 429, str(refused), retry)
    return write_json_error(request, 503, SERVER_BUSY, retry)

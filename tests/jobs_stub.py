"""A stand-in for foreman's ``/jobs`` surface that the test drives by hand.

It speaks the HTTP contract the jobs client codes against (status codes,
``{"error"}`` bodies, job views, listing, cancel, artifacts, ``/api/ps`` and
``/api/foreman/queue``), keeps jobs in memory, and moves a job only when the
test says so with :meth:`JobsStub.move`, which then sends a real signed
webhook to the job's ``state_webhook_url`` and reports the receiver's status.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import attrs
import treq
from klein import Klein
from treq.client import HTTPClient
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.task import Clock
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Site

from foreman.client.receiver import TERMINAL_STATES, ConnectionTracker
from foreman.http.auth import BearerTokenGuard
from foreman.http.errors import SERVER_BUSY, model_not_found, write_json_error
from foreman.queue.ulid import new_ulid
from foreman.testing import DEFAULT_MODELS, SimulatedOllama
from foreman.wire.signature import sign

#: How long a model load takes in the simulated Ollama of :class:`ForemanRig`.
LOAD_SECONDS = 5.0


@attrs.define
class StubJob:
    id: str
    model: str
    endpoint: str
    body: dict[str, Any]
    webhook_url: str | None
    metadata: Any
    created_at: float
    state: str = "queued"
    attempt: int = 0
    updated_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    priority: str = "batch"
    #: Shown while queued; the test sets it.
    position: int | None = None
    #: The completion (Ollama's non-streamed answer) once done.
    completion: bytes | None = None


@attrs.frozen
class Submission:
    body: dict[str, Any]
    headers: dict[str, str]
    job_id: str | None


class WatchedClock(Clock):
    """A :class:`Clock` that tells the test each delay it is asked to wait.

    The test hears of it on the reactor's next turn, not inside ``callLater``:
    a test that advanced the clock from there would run timers under the feet
    of the code still scheduling them.
    """

    def __init__(self, reactor: Any) -> None:
        super().__init__()
        self._reactor = reactor
        self.scheduled: DeferredQueue[float] = DeferredQueue()

    def callLater(self, delay: float, callable: Any, *args: Any, **kw: Any) -> Any:
        call = super().callLater(delay, callable, *args, **kw)
        self._reactor.callLater(0, self.scheduled.put, delay)
        return call


def rfc3339(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def chat_completion(content: str, model: str = "llama3.2") -> dict[str, Any]:
    return {
        "model": model,
        "created_at": "2026-11-22T03:00:00Z",
        "message": {"role": "assistant", "content": content},
        "done": True,
        "done_reason": "stop",
    }


class JobsStub:
    app = Klein()

    def __init__(
        self,
        reactor: Any,
        *,
        token: str | None = None,
        webhook_secret: str | None = None,
        models: tuple[str, ...] = ("llama3.2",),
        inline_limit: int = 256 * 1024,
    ) -> None:
        self._reactor = reactor
        self._guard = BearerTokenGuard(token)
        #: Signs outgoing webhooks; a test may change it to play a wrong secret.
        self.webhook_secret = webhook_secret
        self.models = set(models)
        self.inline_limit = inline_limit
        self.queue_full = False
        #: The time jobs are stamped with (a test may hand in its Clock's).
        self.now = time.time
        #: Cut every connection before answering, as a foreman going away does.
        self.hanging_up = False
        self.jobs: dict[str, StubJob] = {}
        self.by_key: dict[str, str] = {}
        self.submissions: DeferredQueue[Submission] = DeferredQueue()
        #: The id of every ``GET /jobs/{id}``, in order: tests pace polls by it.
        self.polls: DeferredQueue[str] = DeferredQueue()
        self.ps_body: dict[str, Any] = {"models": []}
        self.queue_body: dict[str, Any] = {"jobs": [], "depth": 0, "max_queue": 256}
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._http = HTTPClient(Agent(reactor, pool=self._pool))
        self._deliveries: set[Deferred[None]] = set()
        self._port: Any = None
        self._tracker: ConnectionTracker | None = None
        self.url = ""

    # -- life ------------------------------------------------------------------

    def listen(self) -> str:
        self._tracker = ConnectionTracker(Site(_Guarded(self, self.app.resource(), self._guard)))
        self._port = self._reactor.listenTCP(0, self._tracker, interface="127.0.0.1")
        self.url = f"http://127.0.0.1:{self._port.getHost().port}"
        return self.url

    async def disconnect(self) -> None:
        """Stop answering: close the port and every open connection."""
        port, self._port = self._port, None
        if port is not None:
            await port.stopListening()
        if self._tracker is not None:
            await self._tracker.close_all()

    async def stop(self) -> None:
        for delivery in list(self._deliveries):
            await delivery
        await self.disconnect()
        await self._pool.closeCachedConnections()

    # -- what the test does ----------------------------------------------------

    async def move(
        self,
        job_id: str,
        state: str,
        *,
        completion: dict[str, Any] | bytes | None = None,
        error: str | None = None,
    ) -> int | None:
        """Put a job in ``state`` and send its webhook; the receiver's status.

        ``None`` when the job has no webhook URL.
        """
        job = self.jobs[job_id]
        previous = job.state
        now = self.now()
        job.state = state
        job.updated_at = now
        if state in ("loading", "working") and job.started_at is None:
            job.started_at = now
        if state == "loading":
            job.attempt += 1
        if state in TERMINAL_STATES:
            job.finished_at = now
        if completion is not None:
            job.completion = (
                completion if isinstance(completion, bytes) else json.dumps(completion).encode()
            )
        job.error = error
        return await self._deliver(job, previous)

    async def _deliver(self, job: StubJob, previous: str) -> int | None:
        if job.webhook_url is None:
            return None
        view = self.view(job)
        event = {
            key: view[key]
            for key in ("job_id", "state", "model", "attempt", "error", "result", "artifacts")
        }
        event.update(previous_state=previous, timestamp=view["updated_at"])
        event["metadata"] = job.metadata
        body = json.dumps(event).encode()
        headers = Headers(
            {
                b"Content-Type": [b"application/json"],
                b"X-Foreman-Timestamp": [str(view["updated_at"]).encode()],
                b"X-Foreman-Delivery": [uuid.uuid4().hex.encode()],
            }
        )
        if self.webhook_secret is not None:
            signature = sign(self.webhook_secret, body)
            headers.setRawHeaders(b"X-Foreman-Signature", [signature.encode()])
        # stop() waits for deliveries still on their way, through this signal.
        finished: Deferred[None] = Deferred()
        self._deliveries.add(finished)
        try:
            response = await self._http.post(job.webhook_url, data=body, headers=headers)
            await treq.content(response)
            return int(response.code)
        finally:
            self._deliveries.discard(finished)
            finished.callback(None)

    def view(self, job: StubJob) -> dict[str, Any]:
        artifacts: list[dict[str, Any]] = []
        result = None
        if job.completion is not None and job.state == "done":
            inline = len(job.completion) <= self.inline_limit
            artifacts.append(
                {
                    "name": "completion",
                    "content_type": "application/json",
                    "size": len(job.completion),
                    "url": f"/jobs/{job.id}/artifacts/completion",
                    "inline": inline,
                }
            )
            if inline:
                result = json.loads(job.completion)
        return {
            "job_id": job.id,
            "state": job.state,
            "model": job.model,
            "endpoint": job.endpoint,
            "priority": job.priority,
            "position": job.position if job.state == "queued" else None,
            "attempt": job.attempt,
            "created_at": rfc3339(job.created_at),
            "updated_at": rfc3339(job.updated_at),
            "started_at": rfc3339(job.started_at),
            "finished_at": rfc3339(job.finished_at),
            "error": job.error,
            "result": result,
            "artifacts": artifacts,
            "metadata": job.metadata,
        }

    # -- the HTTP surface ------------------------------------------------------

    @app.route("/jobs", methods=["POST"])
    def submit(self, request: IRequest) -> bytes:
        request.content.seek(0)
        headers = {
            name.decode().lower(): values[0].decode()
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        try:
            body = json.loads(request.content.read())
        except ValueError:
            return write_json_error(request, 400, "invalid JSON body")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            self._after(request, self.submissions.put, Submission(body, headers, None))
            return write_json_error(request, 400, "model is required")
        endpoint = body.pop("endpoint", "chat")
        key = headers.get("idempotency-key")
        if key in self.by_key:
            return _json(request, 202, {"job_id": self.by_key[key]})
        if body["model"] not in self.models:
            return write_json_error(request, 404, model_not_found(body["model"]))
        if self.queue_full:
            return write_json_error(request, 503, SERVER_BUSY, {b"Retry-After": b"5"})
        now = self.now()
        job = StubJob(
            id=new_ulid(now),
            model=body["model"],
            endpoint=endpoint,
            body=body,
            webhook_url=body.pop("state_webhook_url", None),
            metadata=body.pop("metadata", None),
            priority=body.pop("priority", "batch"),
            created_at=now,
            updated_at=now,
        )
        self.jobs[job.id] = job
        if key is not None:
            self.by_key[key] = job.id
        self._after(request, self.submissions.put, Submission(body, headers, job.id))
        request.setHeader(b"Location", f"/jobs/{job.id}".encode())
        return _json(request, 202, {"job_id": job.id})

    @staticmethod
    def _after(request: Any, tell: Any, what: Any) -> None:
        """Tell the test once the answer is sent: telling it sooner would let
        it act (move a job) in the middle of the request it is told about."""
        request.notifyFinish().addBoth(lambda _: tell(what))

    @app.route("/jobs", methods=["GET"])
    def listing(self, request: IRequest) -> bytes:
        def arg(name: bytes) -> str | None:
            values = request.args.get(name)
            return values[0].decode() if values else None

        limit = int(arg(b"limit") or 50)
        before = arg(b"before")
        chosen = [
            job
            for job in sorted(self.jobs.values(), key=lambda job: job.id, reverse=True)
            if (arg(b"state") in (None, job.state))
            and (arg(b"model") in (None, job.model))
            and (before is None or job.id < before)
        ]
        page = chosen[:limit]
        more = len(chosen) > limit
        return _json(
            request,
            200,
            {"jobs": [self.view(job) for job in page], "next": page[-1].id if more else None},
        )

    @app.route("/jobs/<string:job_id>", methods=["GET"])
    def get(self, request: IRequest, job_id: str) -> bytes:
        self._after(request, self.polls.put, job_id)
        job = self.jobs.get(job_id)
        if job is None:
            return write_json_error(request, 404, f"job {job_id} not found")
        return _json(request, 200, self.view(job))

    @app.route("/jobs/<string:job_id>/cancel", methods=["POST"])
    def cancel(self, request: IRequest, job_id: str) -> bytes:
        job = self.jobs.get(job_id)
        if job is None:
            return write_json_error(request, 404, f"job {job_id} not found")
        if job.state in TERMINAL_STATES:
            return write_json_error(request, 409, f"job {job_id} is already {job.state}")
        # Nobody awaits this webhook but stop(); a receiver that is gone is fine.
        Deferred.fromCoroutine(self.move(job_id, "cancelled")).addErrback(lambda _: None)
        return _json(request, 200, self.view(job))

    @app.route("/jobs/<string:job_id>/artifacts/<string:name>", methods=["GET"])
    def artifact(self, request: IRequest, job_id: str, name: str) -> bytes:
        job = self.jobs.get(job_id)
        if job is None or job.completion is None or name != "completion":
            return write_json_error(request, 404, f"no artifact {name!r} for job {job_id}")
        request.setHeader(b"Content-Type", b"application/json")
        return job.completion

    @app.route("/api/ps", methods=["GET"])
    def ps(self, request: IRequest) -> bytes:
        return _json(request, 200, self.ps_body)

    @app.route("/api/foreman/queue", methods=["GET"])
    def queue(self, request: IRequest) -> bytes:
        return _json(request, 200, self.queue_body)


def _json(request: IRequest, status: int, value: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    return json.dumps(value).encode()


class _Guarded(Resource):
    """The Bearer check in front of every route, as foreman's own."""

    isLeaf = True

    def __init__(self, stub: JobsStub, inner: IResource, guard: BearerTokenGuard) -> None:
        super().__init__()
        self._stub = stub
        self._inner = inner
        self._guard = guard

    def render(self, request: IRequest) -> bytes | int:
        if self._stub.hanging_up:
            request.channel.transport.abortConnection()  # type: ignore[attr-defined]
            return NOT_DONE_YET
        if not self._guard.allows(request):
            return self._guard.refuse(request)
        result: bytes | int = self._inner.render(request)
        return result if result is not None else NOT_DONE_YET


@attrs.define
class ForemanRig:
    """The real thing: foreman in front of a simulated Ollama whose model
    loads take 5 s of a clock the test advances, so a job cannot finish
    before the test says so (generation itself takes no time)."""

    url: str
    sim_clock: WatchedClock
    _port: Any

    @classmethod
    async def start(cls, reactor: Any, start_foreman: Any, **config: Any) -> ForemanRig:
        sim_clock = WatchedClock(reactor)
        slow = [attrs.evolve(model, load_seconds=LOAD_SECONDS) for model in DEFAULT_MODELS]
        sim = SimulatedOllama(sim_clock, models=slow)
        port = reactor.listenTCP(0, sim.site(reactor), interface="127.0.0.1")
        # No swap grace: nothing else is coming, and it would be real time.
        running = await start_foreman(
            f"http://127.0.0.1:{port.getHost().port}", swap_grace=0.0, **config
        )
        return cls(running.url, sim_clock, port)

    async def finish_the_load(self) -> None:
        """End the model load a submitted job is waiting for."""
        assert await self.sim_clock.scheduled.get() == LOAD_SECONDS
        self.sim_clock.advance(LOAD_SECONDS)

    async def stop(self) -> None:
        await self._port.stopListening()

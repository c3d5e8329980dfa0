"""foreman's HTTP surface: every dialect Ollama speaks, plus ``/healthz`` and ``/jobs``.

The native API, the OpenAI-compatible ``/v1`` and the Anthropic ``/v1/messages``
(docs/api.md has the table). Generation calls, in any dialect, go through
the :class:`~foreman.relay.generation.GenerationRunner` seam (the queue);
embedding calls and ``:cloud`` models are relayed directly and concurrently
(ADR-0013); metadata calls are relayed or served from the inventory; any
other path under ``/api/`` or ``/v1/`` is relayed as it is, so a newer
Ollama's endpoints work the day it ships. ``/jobs`` is an app of its own
(:mod:`foreman.jobs.api`), mounted here.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from foreman.front.fleet_face import (
    merged,
    openai_model_body,
    openai_models_body,
    ps_body,
    tags_body,
)
from foreman.front.forwarding import FleetGeneration
from foreman.front.keys_api import KeysAPI
from foreman.front.own import OwnAnswers
from foreman.front.own import whole as _whole
from foreman.http import routing
from foreman.http.auth import BearerTokenGuard, caller_of
from foreman.http.errors import (
    JSON_CONTENT_TYPE,
    embedding_model_not_found,
    model_not_found,
    write_json_error,
)
from foreman.http.forms import form_field
from foreman.http.routing import read_body, read_json
from foreman.jobs.api import JobsAPI
from foreman.jobs.batches.api import BatchesAPI
from foreman.jobs.batches.files_api import FilesAPI
from foreman.ops.metrics import ForemanMetrics
from foreman.ops.status_page import StatusPage, serves
from foreman.ops.timeline import Timeline
from foreman.queue.boxes import BoxRecord
from foreman.queue.fleet.member import FleetMember
from foreman.queue.store import JobStore
from foreman.queue.usage import reply_tokens
from foreman.queue.worker import Worker
from foreman.relay.forward import Attempt, Outcome, Relay, answer_unreachable
from foreman.relay.generation import GenerationCall, GenerationRunner
from foreman.relay.inventory import Inventory
from foreman.relay.upstream import BytesBodyProducer
from foreman.relay.upstream_body import request_body_producer
from foreman.wire.endpoints import Endpoint, endpoint_named, is_cloud_model
from foreman.wire.model_names import canonical_model_name
from foreman.wire.priority import PRIORITY_HEADER, Priority, UnknownPriority, parse_priority


def _model_of(parsed: Any) -> str | None:
    """The model a body names, or ``None`` when Ollama should judge the body."""
    if isinstance(parsed, dict):
        model = parsed.get("model")
        if isinstance(model, str) and model:
            return model
    return None


class ForemanAPI(OwnAnswers):
    app = OwnAnswers.app

    def __init__(
        self,
        relay: Relay,
        inventory: Inventory,
        generation: GenerationRunner,
        *,
        worker: Worker | None = None,
        store: JobStore | None = None,
        jobs: JobsAPI | None = None,
        simulated: bool = False,
        metrics: ForemanMetrics | None = None,
        timeline: Timeline | None = None,
        fleet: FleetMember | None = None,
        fleet_calls: FleetGeneration | None = None,
        batches: tuple[FilesAPI, BatchesAPI] | None = None,
        keys: KeysAPI | None = None,
    ) -> None:
        self._relay = relay
        self._fleet = fleet
        self._fleet_calls = fleet_calls
        self._inventory = inventory
        self._generation = generation
        self._worker = worker
        self._store = store
        self._jobs = None if jobs is None else jobs.app.resource()
        self._files: IResource | None = None
        self._batches: IResource | None = None
        if batches is not None:
            self._files, self._batches = (api.app.resource() for api in batches)
        self._keys = None if keys is None else keys.app.resource()
        self._key_book = None if keys is None else keys.book
        self._simulated = simulated
        self._ui: IResource | None = None
        self._metrics = metrics
        self._timeline = timeline

    def resource(self, guard: BearerTokenGuard) -> IResource:
        # The status page checks access itself (the Bearer header or its own
        # session cookie), so it is made here, with the guard.
        self._ui = StatusPage(
            self._inventory,
            self._relay,
            guard,
            worker=self._worker,
            store=self._store,
            simulated=self._simulated,
            timeline=self._timeline,
            fleet=self._fleet,
        ).app.resource()
        return _Guarded(self.app.resource(), guard)

    # -- answered by foreman itself ----------------------------------------

    @app.route("/api/tags", methods=["GET", "HEAD"])
    async def tags(self, request: IRequest) -> bytes | None:
        if self._inventory.tags_body is None or self._inventory.degraded:
            await self._inventory.refresh()
        if self._inventory.tags_body is None:
            # Never reached the target yet: let the relay say why, in its words.
            await self._relay.forward(request, b"GET", b"/api/tags", None)
            return None
        request.setHeader(b"Content-Type", JSON_CONTENT_TYPE)
        others = self._other_boxes()
        if others:
            entries = merged(self._inventory.tags_entries, others, "tags")
            return _whole(request, tags_body(entries))
        return _whole(request, self._inventory.tags_body)

    @app.route("/jobs", branch=True)
    def jobs(self, request: IRequest) -> IResource | bytes:
        if self._jobs is None:
            return routing.page_not_found(request)
        # Klein renders the returned app with ``/jobs`` moved into the
        # request's prepath: its routes are relative to ``/jobs``. ``/jobs``
        # itself would reach it as an empty path, which werkzeug matches to
        # no rule (a 404 for a wrong method); it is its ``/``.
        if not request.postpath:
            request.postpath = [b""]
        return self._jobs

    @app.route("/v1/files", branch=True)
    def files(self, request: IRequest) -> IResource | Deferred[None]:
        return self._mounted(request, self._files)

    @app.route("/v1/batches", branch=True)
    def batches(self, request: IRequest) -> IResource | Deferred[None]:
        return self._mounted(request, self._batches)

    def _mounted(self, request: IRequest, app: IResource | None) -> IResource | Deferred[None]:
        """An app of foreman's own under a ``/v1`` path (ADR-0029); without
        the queue, Ollama answers the path, as for any other."""
        if app is None:
            return self._relay_as_is(request)
        if not request.postpath:
            request.postpath = [b""]
        return app

    @app.route("/api/foreman/keys", branch=True)
    def keys(self, request: IRequest) -> IResource | bytes:
        # docs/keys.md; its routes are relative to ``/api/foreman/keys``.
        if self._keys is None:
            return routing.page_not_found(request)
        if not request.postpath:
            request.postpath = [b""]
        return self._keys

    @app.route("/ui", branch=True)
    def ui(self, request: IRequest) -> IResource | bytes:
        # docs/status-page.md; its routes are relative to ``/ui``.
        return self._ui if self._ui is not None else routing.page_not_found(request)

    # -- relayed as they are -------------------------------------------------

    @app.route("/api/version", methods=["GET", "HEAD"])
    def passthrough(self, request: IRequest) -> Deferred[None]:
        return self._relay_as_is(request)

    @app.route("/api/ps", methods=["GET", "HEAD"])
    async def ps(self, request: IRequest) -> bytes | None:
        others = self._other_boxes()
        if not others:
            await self._relay_as_is(request)
            return None
        # A fleet: what this box's Ollama holds, then what the others hold.
        attempt = await self._relay.fetch(b"GET", b"/api/ps")
        own: list[Any] = []
        if attempt.body is not None and attempt.status == 200:
            try:
                listed = json.loads(attempt.body).get("models")
            except (ValueError, AttributeError):
                listed = None
            own = [entry for entry in listed or [] if isinstance(entry, dict)]
        request.setHeader(b"Content-Type", JSON_CONTENT_TYPE)
        return _whole(request, ps_body(merged(own, others, "ps")))

    @app.route("/api/show", methods=["POST"])
    async def show(self, request: IRequest) -> bytes | None:
        raw, parsed = read_json(request)
        model = _model_of(parsed)
        if model is not None and await self._elsewhere(request, model, raw):
            return None
        await self._relay.forward(request, b"POST", request.path, BytesBodyProducer(raw))
        return None

    @app.route("/api/pull", methods=["POST"])
    @app.route("/api/push", methods=["POST"])
    @app.route("/api/create", methods=["POST"])
    @app.route("/api/copy", methods=["POST"])
    @app.route("/api/delete", methods=["DELETE"])
    async def manage(self, request: IRequest) -> None:
        await self._relay_as_is(request)
        # These change what the target has: look again before answering, so
        # a model pulled through foreman is usable the moment pull returns.
        await self._inventory.refresh()

    @app.route("/api/blobs/<string:digest>", methods=["HEAD", "POST"])
    def blobs(self, request: IRequest, digest: str) -> Deferred[None]:
        return self._relay_as_is(request)

    def _relay_as_is(self, request: IRequest) -> Deferred[None]:
        body = request_body_producer(request)
        return self._relay.forward(request, request.method, request.uri, body)

    # -- calls that name a model ---------------------------------------------

    @app.route("/api/chat", methods=["POST"])
    async def chat(self, request: IRequest) -> bytes | None:
        return await self._generate(request, endpoint_named("chat"))

    @app.route("/api/generate", methods=["POST"])
    async def generate(self, request: IRequest) -> bytes | None:
        return await self._generate(request, endpoint_named("generate"))

    @app.route("/v1/chat/completions", methods=["POST"])
    @app.route("/v1/completions", methods=["POST"])
    @app.route("/v1/responses", methods=["POST"])
    @app.route("/v1/messages", methods=["POST"])
    async def dialect_generation(self, request: IRequest) -> bytes | None:
        # The route matched the decoded path (``/v1/%6Dessages`` too), as gin's does.
        path = unquote(request.path.decode("ascii", "replace"))
        return await self._generate(request, endpoint_named(path))

    @app.route("/v1/audio/transcriptions", methods=["POST"])
    async def transcription(self, request: IRequest) -> bytes | None:
        # A multipart form: its ``model`` field decides the queue's order.
        raw = read_body(request)
        model = form_field(request.getHeader(b"content-type"), raw, "model")
        endpoint = endpoint_named("/v1/audio/transcriptions")
        return await self._queue_or_relay(request, endpoint, raw, model, stream=False)

    @app.route("/v1/models", methods=["GET", "HEAD"])
    @app.route("/v1/models/<string:model>", methods=["GET", "HEAD"])
    def models(self, request: IRequest, model: str | None = None) -> Deferred[None] | bytes | None:
        others = self._other_boxes()
        if not others or self._inventory.tags_body is None:
            return self._relay_as_is(request)
        entries = merged(self._inventory.tags_entries, others, "tags")
        if model is not None:
            wanted = canonical_model_name(model)
            entries = [
                e for e in entries if canonical_model_name(str(e.get("model") or "")) == wanted
            ]
            if not entries or canonical_model_name(model) in self._inventory.model_names:
                return self._relay_as_is(request)  # Ollama's own answer, or its 404
            request.setHeader(b"Content-Type", JSON_CONTENT_TYPE)
            return _whole(request, openai_model_body(entries[0]))
        request.setHeader(b"Content-Type", JSON_CONTENT_TYPE)
        return _whole(request, openai_models_body(entries))

    @app.route("/api/embed", methods=["POST"])
    @app.route("/api/embeddings", methods=["POST"])
    @app.route("/v1/embeddings", methods=["POST"])
    async def embed(self, request: IRequest) -> bytes | None:
        raw, parsed = read_json(request)
        model = _model_of(parsed)
        if model is not None and not is_cloud_model(model):
            request.model = model  # type: ignore[attr-defined]
            # A fleet: a box whose Ollama has it embeds, never queued.
            if await self._elsewhere(request, model, raw):
                return None
            if await self._inventory.knows_model(model) is False:
                return write_json_error(request, 404, embedding_model_not_found(model))
        attempt = await self._relay.relay(request, b"POST", request.path, BytesBodyProducer(raw))
        answer_unreachable(request, attempt)
        self._count_embedding(request, attempt)
        return None

    def _count_embedding(self, request: IRequest, attempt: Attempt) -> None:
        """An embedding answered here is a call of the caller's key, with the
        prompt tokens Ollama counted (docs/keys.md); it never enters the queue."""
        usage = None if self._worker is None else self._worker.usage
        if usage is None or attempt.outcome is not Outcome.DELIVERED:
            return
        caller = caller_of(request)
        name = None if caller is None else caller.name
        usage.called(name)
        tokens = reply_tokens(attempt)
        if tokens is not None:
            usage.tokens(name, tokens.prompt, tokens.output)

    async def _generate(self, request: IRequest, endpoint: Endpoint) -> bytes | None:
        raw, parsed = read_json(request)
        model = _model_of(parsed)
        stream = model is not None and bool(parsed.get("stream", endpoint.streams_by_default))
        return await self._queue_or_relay(request, endpoint, raw, model, stream=stream)

    async def _queue_or_relay(
        self, request: IRequest, endpoint: Endpoint, raw: bytes, model: str | None, *, stream: bool
    ) -> bytes | None:
        if model is None or is_cloud_model(model):
            # No usable model name: nothing can load or run, so Ollama gives
            # its own verdict on the body without any queueing. A cloud
            # model runs on ollama.com, not here: no queue, no residency.
            if model is not None:
                request.model = model  # type: ignore[attr-defined]
            await self._relay.forward(request, b"POST", request.path, BytesBodyProducer(raw))
            return None
        request.model = model  # type: ignore[attr-defined]
        try:
            priority = parse_priority(request.getHeader(PRIORITY_HEADER), Priority.INTERACTIVE)
        except UnknownPriority as e:
            return write_json_error(request, 400, f"{PRIORITY_HEADER.decode()}: {e}")
        # A model some box of a fleet has is placed without asking this
        # box's Ollama again (a round trip on every forwarded call).
        if not self._fleet_has(model) and await self._inventory.knows_model(model) is False:
            return write_json_error(request, 404, model_not_found(model))
        caller = caller_of(request)
        call = GenerationCall(
            endpoint=endpoint,
            model=model,
            body=raw,
            stream=stream,
            priority=priority,
            caller=None if caller is None else caller.name,
        )
        await self._generation.run(call, request)
        return None

    def _other_boxes(self) -> list[BoxRecord]:
        return [] if self._fleet is None else self._fleet.others()

    async def _elsewhere(self, request: IRequest, model: str, raw: bytes) -> bool:
        """Relay a call for ``model`` to another box when this box's Ollama
        lacks it and another's has it (a fleet); whether it was.

        This box's Ollama is judged by its last listing, not asked again: the
        fleet knows the model, so a round trip here would only delay the call.
        """
        if self._fleet_calls is None or not self._fleet_has(model):
            return False
        if canonical_model_name(model) in self._inventory.model_names:
            return False
        return await self._fleet_calls.elsewhere(request, model, raw)

    def _fleet_has(self, model: str) -> bool:
        """Whether another live box of a fleet has ``model`` (a call then goes there)."""
        return self._fleet is not None and self._fleet.has_model(model)

    # -- anything else under /api/ and /v1/ ------------------------------------

    @app.route("/api/<path:rest>")
    @app.route("/v1/<path:rest>")
    @app.route("/v1", strict_slashes=False)
    def unknown(self, request: IRequest, rest: str = "") -> Deferred[None]:
        # An endpoint foreman does not know (a newer Ollama's, or a known
        # path with another method): Ollama answers it, in its own words.
        return self._relay_as_is(request)

    # -- errors ----------------------------------------------------------------

    routing.answer_routing_errors(app)


class _Guarded(Resource):
    """Finds the caller and checks what it may do before any route (or 404)
    is considered (:class:`~foreman.http.auth.BearerTokenGuard`).

    The status page's paths are let through: it checks access itself.
    """

    isLeaf = True

    def __init__(self, inner: IResource, guard: BearerTokenGuard) -> None:
        super().__init__()
        self._inner = inner
        self._guard = guard

    def render(self, request: IRequest) -> bytes | int:
        if not serves(request):
            refused = self._guard.check(request)
            if refused is not None:
                return refused
        result: bytes | int = self._inner.render(request)
        return result if result is not None else NOT_DONE_YET

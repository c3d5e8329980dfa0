"""The simulated Ollama's HTTP surface: routing, the Host guard, the read-only endpoints.

Routing follows gin as Ollama configures it: the Host guard runs before
routing (so even a 404 can be a 403), an unknown path is ``404 page not
found`` and a known path with the wrong method ``405 method not allowed``
(both ``text/plain``). Inference lives in :mod:`._inference`, model
management in :mod:`._management`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import unquote

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from foreman.testing import (
    _anthropic,
    _embeddings,
    _inference,
    _management,
    _openai,
    _openai_audio,
    _responses,
)
from foreman.testing._dialect import NativeHandler as Handler
from foreman.testing._hosts import allowed_host
from foreman.testing._http import empty_body, error_body, json_body, text_body
from foreman.testing._models import (
    details,
    display_shortest,
    is_valid_name,
    show_response,
    tags_listing,
)
from foreman.testing._requests import SHOW, RequestError, decode
from foreman.testing._simulator import RecordedRequest
from foreman.wire.gojson import rfc3339_ns, to_ns

if TYPE_CHECKING:
    from foreman.testing._simulator import SimulatedOllama


def _root(sim: SimulatedOllama, request: Request, body: bytes, param: str) -> bytes:
    return text_body(request, 200, "Ollama is running")


def _version(sim: SimulatedOllama, request: Request, body: bytes, param: str) -> bytes:
    return json_body(request, 200, {"version": sim.version})


def _status(sim: SimulatedOllama, request: Request, body: bytes, param: str) -> bytes:
    return json_body(request, 200, {"cloud": {"disabled": False, "source": "none"}})


def _tags(sim: SimulatedOllama, request: Request, body: bytes, param: str) -> bytes:
    return json_body(request, 200, tags_listing(sim.library.all()))


def _ps(sim: SimulatedOllama, request: Request, body: bytes, param: str) -> bytes:
    now = sim.clock.seconds()
    # Expiry runs on the simulator's clock; shown, it is a calendar time.
    to_wall_ns = to_ns(sim.wall()) - to_ns(now)
    entries = []
    for runner in sim.residency.runners():
        name = display_shortest(runner.model.name)
        expires_ns = runner.expiry_ns(now) + to_wall_ns
        entries.append(
            (
                expires_ns // 1_000_000_000,
                {
                    "name": name,
                    "model": name,
                    "size": runner.model.size,
                    "digest": runner.model.digest,
                    "details": details(runner.model),
                    "expires_at": rfc3339_ns(expires_ns),
                    "size_vram": runner.model.size,
                    "context_length": runner.num_ctx,
                },
            )
        )
    # Longest remaining keep-alive first, compared in whole seconds as Ollama does.
    entries.sort(key=lambda entry: -entry[0])
    return json_body(request, 200, {"models": [entry for _, entry in entries]})


def _show(sim: SimulatedOllama, request: Request, body: bytes, param: str) -> bytes:
    try:
        req = decode(body, SHOW)
    except RequestError as e:
        return error_body(request, e.status, e.message)
    name = req.get("model") or req.get("name") or ""
    if not name:
        return error_body(request, 400, "model is required")
    if not is_valid_name(name):
        return error_body(request, 400, "invalid model name")
    model = sim.library.get(name)
    if model is None:
        return error_body(request, 404, f"model '{display_shortest(name)}' not found")
    return json_body(request, 200, show_response(model, verbose=bool(req.get("verbose"))))


#: path -> {method: handler}; ``/api/blobs/`` takes the digest as its parameter.
ROUTES: dict[str, dict[str, Handler]] = {
    "/": {"GET": _root, "HEAD": _root},
    "/api/version": {"GET": _version, "HEAD": _version},
    "/api/status": {"GET": _status},
    "/api/tags": {"GET": _tags, "HEAD": _tags},
    "/api/ps": {"GET": _ps},
    "/api/show": {"POST": _show},
    "/api/chat": {"POST": _inference.chat},
    "/api/generate": {"POST": _inference.generate},
    "/api/embed": {"POST": _embeddings.embed},
    "/api/embeddings": {"POST": _embeddings.embeddings},
    "/api/pull": {"POST": _management.pull},
    "/api/push": {"POST": _management.push},
    "/api/create": {"POST": _management.create},
    "/api/copy": {"POST": _management.copy},
    "/api/delete": {"DELETE": _management.delete},
    "/api/blobs/": {"POST": _management.create_blob, "HEAD": _management.head_blob},
    # The dialects: a middleware in front of a native handler, as Ollama routes them.
    "/v1/chat/completions": {"POST": _openai.chat_completions(_inference.chat)},
    "/v1/completions": {"POST": _openai.completions(_inference.generate)},
    "/v1/embeddings": {"POST": _openai.embeddings(_embeddings.embed)},
    "/v1/responses": {"POST": _responses.responses(_inference.chat)},
    "/v1/audio/transcriptions": {"POST": _openai_audio.transcriptions(_inference.chat)},
    "/v1/models": {"GET": _openai.list_models(_tags)},
    "/v1/models/": {"GET": _openai.retrieve_model(_show)},
    "/v1/messages": {"POST": _anthropic.messages(_inference.chat)},
}

#: Routes whose last path segment is their parameter (gin's ``:digest``, ``:model``).
_PARAMETER_ROUTES = ("/api/blobs/", "/v1/models/")


def _route(path: str) -> tuple[dict[str, Handler] | None, str]:
    for prefix in _PARAMETER_ROUTES:
        if path.startswith(prefix):
            param = path[len(prefix) :]
            if param and "/" not in param:
                return ROUTES[prefix], param
            return None, ""
    return ROUTES.get(path), ""


def _record(sim: SimulatedOllama, request: Request, body: bytes) -> None:
    headers: dict[str, tuple[str, ...]] = {}
    for name, values in request.requestHeaders.getAllRawHeaders():
        key = name.decode("latin-1").lower()
        headers[key] = headers.get(key, ()) + tuple(v.decode("latin-1") for v in values)
    sim.requests.append(
        RecordedRequest(
            method=request.method.decode("latin-1"),
            path=request.path.decode("latin-1"),
            headers=headers,
            body=body,
            uri=request.uri.decode("latin-1"),
        )
    )
    # A simulator left running (``make run`` without Ollama) must not grow
    # without bound: past the limit, the older half is forgotten.
    if len(sim.requests) > sim.max_recorded_requests:
        del sim.requests[: len(sim.requests) // 2]


class OllamaResource(Resource):
    """Serves every path of the simulated Ollama."""

    isLeaf = True

    def __init__(self, sim: SimulatedOllama) -> None:
        super().__init__()
        self._sim = sim

    def render(self, request: Request) -> bytes | int:
        # gin sends no Server header and no default Content-Type.
        request.responseHeaders.removeHeader(b"server")
        request.defaultContentType = None
        content = getattr(request, "content", None)  # DummyRequest may have none
        body = content.read() if content is not None else b""
        _record(self._sim, request, body)
        method = request.method.decode("latin-1")
        if self._sim.check_host:
            host = request.getHeader(b"host")
            if not allowed_host(host.decode("latin-1") if host is not None else None):
                return empty_body(request, 403)
            if method == "OPTIONS":
                return empty_body(request, 204)
        path = unquote(request.path.decode("latin-1"))
        methods, param = _route(path)
        if methods is None:
            return text_body(request, 404, "404 page not found", b"text/plain")
        handler = methods.get(method)
        if handler is None:
            return text_body(request, 405, "405 method not allowed", b"text/plain")
        result = handler(self._sim, request, body, param)
        return result if isinstance(result, bytes) else NOT_DONE_YET

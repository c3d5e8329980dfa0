"""An upstream whose every move the test makes by hand.

The simulated Ollama shows what Ollama does; this shows what the relay does
with timing and failures Ollama only produces by accident: a header that is
held back, lines released one at a time, a connection that dies mid-body.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, DeferredQueue
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site


class HeldRequest:
    """One request that reached the upstream and waits for the test."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.method: bytes = request.method
        self.path: bytes = request.uri
        content: Any = request.content
        content.seek(0)
        self.body: bytes = content.read()
        self.headers = request.requestHeaders
        #: Fires when foreman closes the connection before the reply is done.
        self.disconnected: Deferred[None] = Deferred()
        self.finished = False
        request.notifyFinish().addErrback(lambda _: self.disconnected.callback(None))

    def start(
        self,
        code: int = 200,
        content_type: bytes = b"application/x-ndjson",
        length: int | None = None,
    ) -> None:
        """Send the status and headers; ``length`` as gin sets it for whole bodies."""
        self.request.setResponseCode(code)
        self.request.setHeader(b"Content-Type", content_type)
        if length is not None:
            self.request.setHeader(b"Content-Length", b"%d" % length)
        # Flushes the status line and headers without any body yet.
        self.request.write(b"")

    def send(self, data: bytes) -> None:
        self.request.write(data)

    def finish(self) -> None:
        self.finished = True
        self.request.finish()

    def die(self) -> None:
        """The upstream process vanishes mid-reply."""
        transport: Any = self.request.channel.transport
        transport.abortConnection()


class ScriptedUpstream(Resource):
    """Holds every call for the test, but answers the inventory's polls itself."""

    isLeaf = True

    def __init__(self, models: tuple[str, ...] = ("scripted:latest",)) -> None:
        super().__init__()
        self.requests: DeferredQueue[HeldRequest] = DeferredQueue()
        self.models = models
        #: (model, "load" | "unload") for every load call answered.
        self.load_calls: list[tuple[Any, str]] = []

    def render(self, request: Request) -> bytes | int:
        metadata = self._metadata(request.path)
        if metadata is None:
            metadata = self._load_call(request)
        if metadata is not None:
            request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
            return json.dumps(metadata).encode()
        self.requests.put(HeldRequest(request))
        return NOT_DONE_YET

    def _load_call(self, request: Request) -> dict[str, Any] | None:
        """Answer load and unload calls (no messages, no prompt) at once."""
        if request.path not in (b"/api/chat", b"/api/generate"):
            return None
        content: Any = request.content
        content.seek(0)
        try:
            body = json.loads(content.read())
        except ValueError:
            return None
        if not isinstance(body, dict) or not body.get("model"):
            return None
        if body.get("messages") or body.get("prompt"):
            return None
        reason = "unload" if body.get("keep_alive") == 0 else "load"
        self.load_calls.append((body.get("model"), reason))
        return {"model": body.get("model"), "done": True, "done_reason": reason}

    def _metadata(self, path: bytes) -> dict[str, Any] | None:
        if path == b"/api/tags":
            return {"models": [{"name": name, "model": name} for name in self.models]}
        if path == b"/api/ps":
            return {"models": []}
        if path == b"/api/version":
            return {"version": "0.0.0-scripted"}
        return None

    def next_request(self) -> Deferred[HeldRequest]:
        return self.requests.get()


async def listen_scripted(reactor: Any) -> tuple[ScriptedUpstream, Any, str]:
    upstream = ScriptedUpstream()
    port = reactor.listenTCP(0, Site(upstream), interface="127.0.0.1")
    return upstream, port, f"http://127.0.0.1:{port.getHost().port}"

"""foreman in front of a bare Ollama-alike that is not ours.

It knows only /api/tags and /api/chat, refuses a chat without messages, and
has no /api/ps or /api/version. foreman must still relay and queue for it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
from treq.client import HTTPClient
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from foreman.queue.job import JobState
from tests.conftest import StartForeman


class BareOllama(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        if request.path == b"/api/tags":
            request.setHeader(b"Content-Type", b"application/json")
            return b'{"models":[{"name":"tiny:latest","model":"tiny:latest"}]}'
        if request.path == b"/api/chat" and request.method == b"POST":
            content: Any = request.content
            body = json.loads(content.read())
            if not body.get("messages"):
                request.setResponseCode(400)
                request.setHeader(b"Content-Type", b"application/json")
                return b'{"error":"messages are required"}'
            words = ["bare", " alike", " reply"]
            if body.get("stream") is False:
                request.setHeader(b"Content-Type", b"application/json")
                return json.dumps(
                    {
                        "model": "tiny",
                        "message": {"role": "assistant", "content": "".join(words)},
                        "done": True,
                        "done_reason": "stop",
                    }
                ).encode()
            request.setHeader(b"Content-Type", b"application/x-ndjson")
            lines = [
                {"model": "tiny", "message": {"role": "assistant", "content": w}, "done": False}
                for w in words
            ]
            lines.append(
                {
                    "model": "tiny",
                    "message": {"role": "assistant", "content": ""},
                    "done": True,
                    "done_reason": "stop",
                }
            )
            return b"".join(json.dumps(line).encode() + b"\n" for line in lines)
        request.setResponseCode(404)
        return b"404 page not found"


@pytest_twisted.ensureDeferred
async def test_chat_through_foreman_to_a_bare_ollama_alike(
    reactor: Any, start_foreman: StartForeman, http: HTTPClient
) -> None:
    port = reactor.listenTCP(0, Site(BareOllama()), interface="127.0.0.1")
    running = await start_foreman(f"http://127.0.0.1:{port.getHost().port}")
    try:
        assert running.foreman.inventory.reachable is True
        for stream in (True, False):
            response = await http.post(
                running.url + "/api/chat",
                json={
                    "model": "tiny",
                    "messages": [{"role": "user", "content": "hi"}],
                    "stream": stream,
                },
            )
            assert response.code == 200
            text = await response.text()
            last = json.loads(text.strip().splitlines()[-1])
            assert last["done"] is True
        queue = running.foreman.queue
        assert queue is not None
        counts = await queue.store.count_by_state()
        assert counts[JobState.DONE] == 2 and counts[JobState.FAILED] == 0
    finally:
        await port.stopListening()

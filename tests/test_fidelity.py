"""foreman answers exactly as the Ollama behind it would, for everything deterministic.

Each request goes to the simulated Ollama directly and through foreman; the
status, content type and body must match byte for byte. The cases are the
ones where foreman might answer by itself (bad bodies, unknown models,
unknown paths) and the metadata it relays or serves from its inventory.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from treq.client import HTTPClient

from tests.conftest import RunningForeman, RunningSimulator

CASES: list[tuple[str, str, bytes | None]] = [
    ("GET", "/", None),
    ("HEAD", "/", None),
    ("GET", "/api/version", None),
    ("GET", "/api/tags", None),
    ("POST", "/api/show", b'{"model": "llama3.2"}'),
    ("POST", "/api/show", b'{"model": "missing"}'),
    ("GET", "/api/nope", None),
    ("GET", "/api/chat", None),
    ("POST", "/api/tags", None),
    ("POST", "/api/chat", b""),
    ("POST", "/api/chat", b"{"),
    ("POST", "/api/chat", b"nonsense"),
    ("POST", "/api/chat", b'{"model": "llama3.2",}'),
    ("POST", "/api/chat", b'{"messages": []}'),
    ("POST", "/api/chat", b'{"model": "missing", "messages": []}'),
    ("POST", "/api/chat", b'{"model": "llama3.2", "keep_alive": true, "messages": []}'),
    ("POST", "/api/chat", b'{"model": "llama3.2", "messages": [{"content": 1}]}'),
    ("POST", "/api/chat", b'{"model": "all-minilm", "messages": [{"role":"user","content":"x"}]}'),
    ("POST", "/api/generate", b""),
    ("POST", "/api/generate", b'{"prompt": "x"}'),
    ("POST", "/api/generate", b'{"model": "missing", "prompt": "x"}'),
    ("POST", "/api/generate", b'{"model": "llama3.2", "stream": "yes"}'),
    ("POST", "/api/embed", b""),
    ("POST", "/api/embed", b'{"model": "missing", "input": "x"}'),
    ("POST", "/api/embed", b'{"model": "all-minilm", "input": 5}'),
    ("POST", "/api/embeddings", b'{"model": "missing", "prompt": "x"}'),
    ("POST", "/api/copy", b'{"source": "missing", "destination": "other"}'),
    ("DELETE", "/api/delete", b'{"model": "missing"}'),
    ("HEAD", "/api/blobs/sha256:" + "0" * 64, None),
]


async def exchange(
    http: HTTPClient, base: str, method: str, path: str, body: bytes | None
) -> tuple[int, list[bytes] | None, bytes]:
    response = await http.request(method, base + path, data=body)
    content: bytes = await response.content()
    return response.code, response.headers.getRawHeaders(b"content-type"), content


@pytest.mark.parametrize(("method", "path", "body"), CASES)
@pytest_twisted.ensureDeferred
async def test_same_answer_direct_and_through_foreman(
    simulator: RunningSimulator,
    foreman: RunningForeman,
    http: HTTPClient,
    method: str,
    path: str,
    body: bytes | None,
) -> None:
    direct = await exchange(http, simulator.url, method, path, body)
    relayed = await exchange(http, foreman.url, method, path, body)
    assert relayed == direct


@pytest_twisted.ensureDeferred
async def test_streamed_chat_has_the_same_shape_through_foreman(
    simulator: RunningSimulator, foreman: RunningForeman, http: HTTPClient
) -> None:
    body = b'{"model": "llama3.2", "messages": [{"role": "user", "content": "same words"}]}'

    def shape(lines: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [(sorted(line), line.get("message"), line.get("done_reason")) for line in lines]

    results = []
    for base in (simulator.url, foreman.url):
        response = await http.post(base + "/api/chat", data=body)
        text = await response.text()
        assert text.endswith("\n") and "\n\n" not in text
        results.append(shape([json.loads(line) for line in text.splitlines()]))
    assert results[0] == results[1]

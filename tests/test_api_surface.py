"""What foreman answers itself: auth, routing, bad input, inventory, health, logs."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet.threads import deferToThread
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.web.http_headers import Headers

from tests.conftest import ScriptedRig, StartForeman, StartScripted
from tests.http_helpers import within
from tests.scripted_upstream import listen_scripted

JSON = [b"application/json; charset=utf-8"]
TOKEN = "correct horse battery staple"


@pytest_twisted.async_yield_fixture
async def guarded(start_scripted: StartScripted) -> AsyncIterator[ScriptedRig]:
    yield await start_scripted(token=TOKEN)


@pytest.fixture
def log_events() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


# -- routing ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_root_says_ollama_is_running(rig: ScriptedRig, http: HTTPClient) -> None:
    response = await http.get(rig.url("/"))
    assert response.code == 200
    assert await response.text() == "Ollama is running"
    head = await http.head(rig.url("/"))
    assert head.code == 200


@pytest_twisted.ensureDeferred
async def test_unknown_path_outside_api_and_v1_is_gins_404(
    rig: ScriptedRig, http: HTTPClient
) -> None:
    response = await http.get(rig.url("/nope"))
    assert response.code == 404
    assert await response.text() == "404 page not found"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        (b"GET", "/api/nope?x=1"),
        (b"POST", "/api/me"),
        (b"GET", "/api/chat"),  # a known path with another method
        (b"PUT", "/api/show"),
        (b"DELETE", "/v1/assistants/abc"),  # /v1/files and /v1/batches are foreman's
    ],
)
@pytest_twisted.ensureDeferred
async def test_unknown_calls_under_api_and_v1_are_relayed_as_they_are(
    rig: ScriptedRig, http: HTTPClient, method: bytes, path: str
) -> None:
    # A newer Ollama's endpoint (or Ollama's own 404/405) reaches the caller
    # through foreman unchanged.
    answer = http.request(method.decode(), rig.url(path), data=b"{}")
    held = await rig.upstream.next_request()
    assert (held.method, held.path) == (method, path.encode())
    held.start(405, b"text/plain", length=22)
    held.send(b"405 method not allowed")
    held.finish()
    response = await answer
    assert response.code == 405
    assert await response.text() == "405 method not allowed"


# -- bad input ------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate", "/api/embed", "/api/embeddings"])
@pytest_twisted.ensureDeferred
async def test_empty_body_is_missing_request_body(
    rig: ScriptedRig, http: HTTPClient, path: str
) -> None:
    response = await http.post(rig.url(path), data=b"")
    assert response.code == 400
    assert response.headers.getRawHeaders(b"content-type") == JSON
    assert await response.json() == {"error": "missing request body"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "unexpected EOF"),
        (b"hello", "invalid character 'h' looking for beginning of value"),
        (b'{"model": "x",}', "invalid character '}' looking for beginning of object key string"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_invalid_json_is_a_400_like_ollamas(
    rig: ScriptedRig, http: HTTPClient, body: bytes, message: str
) -> None:
    response = await http.post(rig.url("/api/chat"), data=body)
    assert response.code == 400
    assert await response.json() == {"error": message}


@pytest_twisted.ensureDeferred
async def test_unknown_model_is_ollamas_404_after_one_fresh_look(
    rig: ScriptedRig, http: HTTPClient
) -> None:
    embed_message = 'model "nope" not found, try pulling it first'
    for path, message in [
        ("/api/chat", "model 'nope' not found"),
        ("/api/generate", "model 'nope' not found"),
        ("/api/embed", embed_message),
        ("/api/embeddings", embed_message),
    ]:
        response = await http.post(rig.url(path), data=b'{"model":"nope","prompt":"x"}')
        assert response.code == 404, path
        assert response.headers.getRawHeaders(b"content-type") == JSON
        assert await response.json() == {"error": message}


@pytest_twisted.ensureDeferred
async def test_a_model_pulled_since_the_last_poll_is_found(
    rig: ScriptedRig, http: HTTPClient, reactor: Any
) -> None:
    rig.upstream.models = ("scripted:latest", "fresh:7b")
    response_d = http.post(
        rig.url("/api/chat"), data=b'{"model":"FRESH:7b","messages":[{"role":"user"}]}'
    )
    held = await within(rig.upstream.next_request(), 5, reactor)
    assert held.path == b"/api/chat"
    held.start(200, b"application/json; charset=utf-8")
    held.send(b'{"done":true,"done_reason":"load"}')
    held.finish()
    assert (await response_d).code == 200


@pytest_twisted.ensureDeferred
async def test_bodies_foreman_cannot_judge_go_to_ollama(
    rig: ScriptedRig, http: HTTPClient, reactor: Any
) -> None:
    # No model name: Ollama's own validation answers, not foreman's guess.
    response_d = http.post(rig.url("/api/chat"), data=b'{"messages":[]}')
    held = await within(rig.upstream.next_request(), 5, reactor)
    held.start(400, b"application/json; charset=utf-8")
    held.send(b'{"error":"model is required"}')
    held.finish()
    response = await response_d
    assert response.code == 400
    assert await response.json() == {"error": "model is required"}


def _raw_exchange(port: int, head: bytes, body_chunks: list[bytes]) -> bytes:
    """Send a request by hand and read whatever comes back (blocking; run in a thread)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head)
        try:
            for part in body_chunks:
                sock.sendall(part)
        except OSError:
            pass  # the server may close while we still send; read what it said
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
        return answer


@pytest_twisted.ensureDeferred
async def test_oversized_body_is_413_before_it_is_read(
    reactor: Any, start_foreman: StartForeman
) -> None:
    upstream, port, url = await listen_scripted(reactor)
    running = await start_foreman(url, max_body_size=1024)
    address = running.port.getHost().port
    head = (
        b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 10000000\r\n\r\n"
    )
    # Only the first 4 KiB of the announced 10 MB are ever sent.
    answer = await deferToThread(_raw_exchange, address, head, [b"x" * 4096])
    assert answer.startswith(b"HTTP/1.1 413 ")
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert "too large" in body["error"]
    assert upstream.requests.pending == []
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_oversized_chunked_body_is_413(reactor: Any, start_foreman: StartForeman) -> None:
    upstream, port, url = await listen_scripted(reactor)
    running = await start_foreman(url, max_body_size=1024)
    head = b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunks = [b"400\r\n" + b"y" * 1024 + b"\r\n" for _ in range(4)] + [b"0\r\n\r\n"]
    answer = await deferToThread(_raw_exchange, running.port.getHost().port, head, chunks)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert upstream.requests.pending == []
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_blob_uploads_are_not_limited(
    reactor: Any, start_foreman: StartForeman, http: HTTPClient
) -> None:
    upstream, port, url = await listen_scripted(reactor)
    running = await start_foreman(url, max_body_size=1024)
    blob = b"\x00gguf" * 500_000  # 2.5 MB, spooled to disk and streamed on
    response_d = http.post(running.url + "/api/blobs/sha256:abc", data=blob)
    held = await within(upstream.next_request(), 10, reactor)
    assert held.body == blob
    held.start(201, b"text/plain; charset=utf-8")
    held.finish()
    assert (await response_d).code == 201
    await port.stopListening()


# -- auth ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, b"Bearer wrong", b"Basic " + TOKEN.encode(), b"Bearer " + TOKEN.encode() + b"x"],
)
@pytest_twisted.ensureDeferred
async def test_missing_or_wrong_token_is_401(
    guarded: ScriptedRig, http: HTTPClient, authorization: bytes | None
) -> None:
    headers: Any = {b"Authorization": [authorization]} if authorization else {}
    for method, path in [("GET", "/api/tags"), ("POST", "/api/chat"), ("GET", "/no/such")]:
        response = await http.request(method, guarded.url(path), headers=headers)
        assert response.code == 401, path
        assert response.headers.getRawHeaders(b"www-authenticate") == [b'Bearer realm="foreman"']
        assert response.headers.getRawHeaders(b"content-type") == JSON
        assert "unauthorized" in (await response.json())["error"]


@pytest_twisted.ensureDeferred
async def test_right_token_passes_and_healthz_needs_none(
    guarded: ScriptedRig, http: HTTPClient
) -> None:
    response = await http.get(
        guarded.url("/api/tags"), headers=Headers({b"Authorization": [b"bearer " + TOKEN.encode()]})
    )
    assert response.code == 200
    assert (await response.json())["models"][0]["name"] == "scripted:latest"
    health = await http.get(guarded.url("/healthz"))
    assert health.code == 200


@pytest_twisted.ensureDeferred
async def test_token_and_prompt_never_reach_the_log(
    guarded: ScriptedRig, http: HTTPClient, log_events: list[LogEvent]
) -> None:
    await http.post(
        guarded.url("/api/chat"),
        data=b'{"model":"nope","messages":[{"role":"user","content":"my secret prompt"}]}',
        headers=Headers({b"Authorization": [b"Bearer " + TOKEN.encode()]}),
    )
    await http.get(guarded.url("/api/tags"), headers=Headers({b"Authorization": [b"Bearer guess"]}))
    text = repr(log_events)
    assert TOKEN not in text and "guess" not in text
    assert "my secret prompt" not in text


# -- access log ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_one_access_line_per_request(
    rig: ScriptedRig, http: HTTPClient, log_events: list[LogEvent]
) -> None:
    response = await http.post(rig.url("/api/chat"), data=b'{"model":"nope","messages":[]}')
    await response.content()
    access = [e for e in log_events if e.get("log_namespace") == "foreman.access"]
    assert len(access) == 1
    event = access[0]
    assert event["method"] == "POST"
    assert event["path"] == "/api/chat"
    assert event["status"] == 404
    assert event["model"] == "nope"
    assert event["bytes"] == len(b'{"error":"model \'nope\' not found"}')
    assert event["duration_ms"] >= 0


# -- inventory and health -------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_tags_are_served_from_the_inventory(rig: ScriptedRig, http: HTTPClient) -> None:
    response = await http.get(rig.url("/api/tags"))
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == JSON
    assert await response.json() == {
        "models": [{"name": "scripted:latest", "model": "scripted:latest"}]
    }
    assert rig.upstream.requests.pending == []


@pytest_twisted.ensureDeferred
async def test_healthz_reports_target_and_degradation(
    reactor: Any, start_foreman: StartForeman, http: HTTPClient
) -> None:
    _upstream, port, url = await listen_scripted(reactor)
    running = await start_foreman(url)
    report = await (await http.get(running.url + "/healthz")).json()
    assert report["status"] == "ok" and report["degraded"] is False
    assert report["upstream"]["url"] == url
    assert report["upstream"]["reachable"] is True
    assert report["upstream"]["ollama_version"] == "0.0.0-scripted"
    assert report["models_available"] == 1

    # The target goes away: no listener, no open connection.
    await port.stopListening()
    await running.foreman.pool.closeCachedConnections()
    await running.foreman.inventory.refresh()
    report = await (await http.get(running.url + "/healthz")).json()
    assert report["status"] == "degraded" and report["degraded"] is True
    assert report["upstream"]["reachable"] is False
    assert report["upstream"]["last_error"]
    # The last inventory is kept while the target is away.
    assert report["models_available"] == 1

    port = reactor.listenTCP(int(url.rsplit(":", 1)[1]), port.factory, interface="127.0.0.1")
    await running.foreman.inventory.refresh()
    report = await (await http.get(running.url + "/healthz")).json()
    assert report["degraded"] is False
    await port.stopListening()

"""The relay over real sockets, against an upstream the test drives by hand."""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
import treq
from treq.client import HTTPClient
from twisted.internet.task import deferLater
from twisted.web.client import ResponseDone

from tests.conftest import ScriptedRig, StartForeman, StartScripted
from tests.http_helpers import StreamingClient, within
from tests.scripted_upstream import listen_scripted

CHAT = json.dumps(
    {"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "think": False}
).encode()


def chunk(text: str, done: bool = False) -> bytes:
    line: dict[str, Any] = {
        "model": "scripted",
        "created_at": "2026-11-22T00:00:00.000000000Z",
        "message": {"role": "assistant", "content": text},
        "done": done,
    }
    if done:
        line["done_reason"] = "stop"
    return json.dumps(line).encode() + b"\n"


@pytest_twisted.ensureDeferred
async def test_each_line_reaches_the_caller_before_the_next_is_produced(
    rig: ScriptedRig, reactor: Any
) -> None:
    response_d = rig.client.request(b"POST", rig.url("/api/chat"), CHAT)
    held = await within(rig.upstream.next_request(), 5, reactor)
    held.start()
    response = await within(response_d, 5, reactor)
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"application/x-ndjson"]
    assert response.headers.getRawHeaders(b"x-accel-buffering") == [b"no"]
    reader = rig.client.read_lines(response)
    for word in ["one", "two", "three"]:
        held.send(chunk(word))
        # The next line is not written upstream until this one arrived.
        line = await within(reader.lines.get(), 5, reactor)
        assert json.loads(line)["message"]["content"] == word
    # A line split across TCP segments is still delivered whole.
    last = chunk("", done=True)
    held.send(last[:10])
    await deferLater(reactor, 0.05, lambda: None)
    assert reader.lines.pending == []
    held.send(last[10:])
    held.finish()
    assert json.loads(await within(reader.lines.get(), 5, reactor))["done"] is True
    await within(reader.ended, 5, reactor)
    assert reader.end is not None and reader.end.check(ResponseDone)


@pytest_twisted.ensureDeferred
async def test_body_and_headers_reach_ollama_as_sent_with_a_local_host(
    reactor: Any, start_foreman: StartForeman
) -> None:
    upstream, port, url = await listen_scripted(reactor)
    running = await start_foreman(url, token="caller-secret", ollama_token="upstream-secret")
    body = (
        b'{"model":"scripted","messages":[{"role":"user","content":"x"}],'
        b'"tools":[{"type":"function"}],"format":{"type":"object"},"options":{"num_ctx":8192},'
        b'"think":"high","images":null,"x_unknown":[1,2,3]}'
    )
    client = StreamingClient(reactor)
    response_d = client.request(
        b"POST",
        running.url + "/api/chat",
        body,
        {
            b"Authorization": b"Bearer caller-secret",
            b"Host": b"foreman.example.ts.net:11435",
            b"User-Agent": b"ollama-python/0.6.3",
        },
    )
    held = await within(upstream.next_request(), 5, reactor)
    assert held.body == body
    assert held.headers.getRawHeaders(b"host") == [url.removeprefix("http://").encode()]
    assert held.headers.getRawHeaders(b"authorization") == [b"Bearer upstream-secret"]
    assert held.headers.getRawHeaders(b"user-agent") == [b"ollama-python/0.6.3"]
    held.start(200, b"application/json; charset=utf-8")
    held.send(b'{"done":true}')
    held.finish()
    response = await within(response_d, 5, reactor)
    assert response.code == 200
    assert await treq.content(response) == b'{"done":true}'
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_caller_hanging_up_while_model_loads_aborts_upstream(
    rig: ScriptedRig, reactor: Any
) -> None:
    response_d = rig.client.request(b"POST", rig.url("/api/chat"), CHAT)
    held = await within(rig.upstream.next_request(), 5, reactor)
    # Ollama sends no headers while loading; the caller gives up.
    response_d.cancel()
    response_d.addErrback(lambda _: None)  # the client side of a hang-up
    await within(held.disconnected, 5, reactor)


@pytest_twisted.ensureDeferred
async def test_caller_hanging_up_mid_stream_aborts_upstream(rig: ScriptedRig, reactor: Any) -> None:
    response_d = rig.client.request(b"POST", rig.url("/api/chat"), CHAT)
    held = await within(rig.upstream.next_request(), 5, reactor)
    held.start()
    held.send(chunk("first"))
    reader = rig.client.read_lines(await within(response_d, 5, reactor))
    await within(reader.lines.get(), 5, reactor)
    reader.abort()
    await within(held.disconnected, 5, reactor)


@pytest_twisted.ensureDeferred
async def test_upstream_dying_mid_stream_ends_with_one_error_line(
    rig: ScriptedRig, reactor: Any
) -> None:
    response_d = rig.client.request(b"POST", rig.url("/api/chat"), CHAT)
    held = await within(rig.upstream.next_request(), 5, reactor)
    queue = rig.foreman.foreman.queue
    assert queue is not None
    assert queue.residency.worker_model == "scripted:latest"
    held.start()
    held.send(chunk("partial answer"))
    held.send(b'{"model":"scripted","message":{"con')  # half a line, then death
    reader = rig.client.read_lines(await within(response_d, 5, reactor))
    await within(reader.lines.get(), 5, reactor)
    held.die()
    await within(reader.ended, 5, reactor)
    # Ollama may have gone down with it: what it holds is asked again next time.
    assert queue.residency.worker_model is None
    assert reader.end is not None and reader.end.check(ResponseDone), (
        "the stream must end cleanly, not be cut"
    )
    lines = reader.json_lines()
    assert [line.get("message", {}).get("content") for line in lines[:1]] == ["partial answer"]
    assert len(lines) == 2
    assert set(lines[1]) == {"error"}
    assert "Ollama" in lines[1]["error"]


@pytest_twisted.ensureDeferred
async def test_error_before_first_byte_keeps_ollamas_status_and_body(
    rig: ScriptedRig, reactor: Any, http: HTTPClient
) -> None:
    response_d = http.post(rig.url("/api/chat"), data=CHAT)
    held = await within(rig.upstream.next_request(), 5, reactor)
    held.start(500, b"application/json; charset=utf-8")
    held.send(b'{"error":"llama runner process has terminated: exit status 2"}')
    held.finish()
    response = await within(response_d, 5, reactor)
    assert response.code == 500
    assert response.headers.getRawHeaders(b"content-type") == [b"application/json; charset=utf-8"]
    body = await response.json()
    assert body == {"error": "llama runner process has terminated: exit status 2"}


@pytest_twisted.ensureDeferred
async def test_upstream_dying_before_headers_is_a_502_once_attempts_run_out(
    start_scripted: StartScripted, reactor: Any, http: HTTPClient
) -> None:
    # One attempt allowed: no backoff to wait through (retries are tested
    # in simulated time in test_worker.py).
    rig = await start_scripted(max_attempts=1)
    response_d = http.post(rig.url("/api/generate"), data=b'{"model":"scripted","prompt":"x"}')
    held = await within(rig.upstream.next_request(), 5, reactor)
    held.die()
    response = await within(response_d, 5, reactor)
    assert response.code == 502
    assert "Ollama" in (await response.json())["error"]


@pytest_twisted.ensureDeferred
async def test_unreachable_target_is_a_502_in_ollamas_shape(
    start_foreman: StartForeman, http: HTTPClient
) -> None:
    running = await start_foreman("http://127.0.0.1:9", connect_timeout=2.0, outage_wait=0.2)
    for path, body, status in [
        # A generation call waits for the target (--outage-wait), then 503.
        ("/api/chat", CHAT, 503),
        ("/api/show", b'{"model":"scripted"}', 502),
        ("/api/embed", b'{"model":"scripted","input":"x"}', 502),
    ]:
        response = await http.post(running.url + path, data=body)
        assert response.code == status, path
        if status == 503:
            assert response.headers.getRawHeaders(b"retry-after") == [b"5"]
        assert response.headers.getRawHeaders(b"content-type") == [
            b"application/json; charset=utf-8"
        ]
        error = (await response.json())["error"]
        assert "cannot reach Ollama at http://127.0.0.1:9" in error


@pytest_twisted.ensureDeferred
async def test_non_streamed_reply_cut_short_is_a_502(
    rig: ScriptedRig, reactor: Any, http: HTTPClient
) -> None:
    response_d = http.post(rig.url("/api/show"), data=b'{"model":"scripted"}')
    held = await within(rig.upstream.next_request(), 5, reactor)
    held.start(200, b"application/json; charset=utf-8", length=100)
    held.send(b'{"license":"')
    await deferLater(reactor, 0.05, lambda: None)
    held.die()
    response = await within(response_d, 5, reactor)
    assert response.code == 502
    assert "error" in await response.json()


@pytest_twisted.ensureDeferred
async def test_an_ollama_alike_streaming_without_ndjson_type_still_streams(
    rig: ScriptedRig, reactor: Any
) -> None:
    # No Content-Length means a stream, whatever the content type says.
    response_d = rig.client.request(b"POST", rig.url("/api/chat"), CHAT)
    held = await within(rig.upstream.next_request(), 5, reactor)
    held.start(200, b"application/json")
    held.send(chunk("early"))
    reader = rig.client.read_lines(await within(response_d, 5, reactor))
    assert json.loads(await within(reader.lines.get(), 5, reactor))["message"]["content"] == "early"
    held.send(chunk("", done=True))
    held.finish()
    await within(reader.ended, 5, reactor)

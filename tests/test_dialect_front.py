"""The OpenAI and Anthropic dialects at foreman's front door, against a scripted upstream.

What foreman itself does on these paths: reads the model (from JSON, a zstd
body, a multipart form), queues the call, answers its own refusals in the
caller's dialect, keeps its credentials to itself, lets ``:cloud`` models
by, and ends a broken event stream with one error event of that dialect.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
import zstandard
from treq.client import HTTPClient
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from tests.conftest import ScriptedRig, StartScripted
from tests.http_helpers import within

TOKEN = "dialect-token"
OPENAI_CHAT = json.dumps(
    {"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "stream": True}
).encode()
ANTHROPIC_MESSAGES = json.dumps(
    {
        "model": "scripted",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    }
).encode()


def _error_of(body: bytes) -> Any:
    return json.loads(body)


async def _read_through(rig: ScriptedRig, response: IResponse, reactor: Any) -> None:
    """Read the reply to its end, so its connection closes."""
    reader = rig.client.read_lines(response)
    await within(reader.ended, 5, reactor)


@pytest.mark.parametrize(
    ("path", "body", "expected_type"),
    [
        ("/v1/chat/completions", b'{"model": "missing", "messages": []}', "not_found_error"),
        (
            "/v1/messages",
            b'{"model": "missing", "max_tokens": 1, "messages": []}',
            "not_found_error",
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_an_unknown_model_is_a_404_in_the_callers_dialect(
    rig: ScriptedRig, http: HTTPClient, path: str, body: bytes, expected_type: str
) -> None:
    response = await http.post(rig.url(path), data=body)
    assert response.code == 404
    document = _error_of(await response.content())
    if path == "/v1/messages":
        assert document["type"] == "error"
        assert document["error"] == {"type": expected_type, "message": "model 'missing' not found"}
        assert document["request_id"].startswith("req_") and len(document["request_id"]) == 28
    else:
        assert document == {
            "error": {
                "message": "model 'missing' not found",
                "type": expected_type,
                "param": None,
                "code": None,
            }
        }


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/v1/chat/completions", {}),
        ("/v1/messages", {b"x-api-key": [b"wrong"]}),
        ("/api/chat", {b"Authorization": [b"Bearer wrong"]}),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_missing_or_wrong_token_is_a_401_in_the_callers_dialect(
    start_scripted: StartScripted, http: HTTPClient, path: str, headers: dict[bytes, list[bytes]]
) -> None:
    rig = await start_scripted(token=TOKEN)
    response = await http.post(rig.url(path), data=OPENAI_CHAT, headers=Headers(headers))
    assert response.code == 401
    document = _error_of(await response.content())
    if path == "/v1/messages":
        assert document["error"]["type"] == "authentication_error"
    elif path.startswith("/v1/"):
        # Ollama's type for the status, OpenAI's code for a wrong key (docs/keys.md).
        assert document["error"]["type"] == "api_error"
        assert document["error"]["code"] == "invalid_api_key"
    else:
        assert set(document) == {"error"}


@pytest.mark.parametrize(
    "credentials",
    [
        {b"x-api-key": [TOKEN.encode()]},
        {b"Authorization": [b"Bearer " + TOKEN.encode()]},
        {b"Authorization": [b"Bearer " + TOKEN.encode()], b"x-api-key": [TOKEN.encode()]},
    ],
)
@pytest_twisted.ensureDeferred
async def test_the_token_is_taken_either_way_and_never_forwarded(
    start_scripted: StartScripted, reactor: Any, credentials: dict[bytes, list[bytes]]
) -> None:
    rig = await start_scripted(token=TOKEN)
    sent = rig.client.request(
        b"POST",
        rig.url("/v1/messages"),
        ANTHROPIC_MESSAGES,
        dict((name, values[0]) for name, values in credentials.items()),
    )
    held = await within(rig.upstream.next_request(), 5, reactor)
    assert held.path == b"/v1/messages"
    assert held.body == ANTHROPIC_MESSAGES
    assert held.headers.getRawHeaders(b"authorization") is None
    assert held.headers.getRawHeaders(b"x-api-key") is None
    held.start(200, b"text/event-stream")
    held.send(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    held.finish()
    response = await within(sent, 5, reactor)
    assert response.code == 200
    # Queued like every generation call.
    assert response.headers.getRawHeaders(b"x-foreman-queue-position") == [b"1"]
    await _read_through(rig, response, reactor)


@pytest_twisted.ensureDeferred
async def test_a_zstd_body_is_read_and_sent_on_plain(rig: ScriptedRig, reactor: Any) -> None:
    compressed = zstandard.ZstdCompressor().compress(OPENAI_CHAT)
    sent = rig.client.request(
        b"POST", rig.url("/v1/chat/completions"), compressed, {b"Content-Encoding": b"zstd"}
    )
    held = await within(rig.upstream.next_request(), 5, reactor)
    assert held.body == OPENAI_CHAT
    assert held.headers.getRawHeaders(b"content-encoding") is None
    held.start(200, b"text/event-stream")
    held.send(b"data: [DONE]\n\n")
    held.finish()
    response = await within(sent, 5, reactor)
    assert response.code == 200
    await _read_through(rig, response, reactor)


@pytest_twisted.ensureDeferred
async def test_a_bad_zstd_body_is_a_400(rig: ScriptedRig, http: HTTPClient) -> None:
    response = await http.post(
        rig.url("/v1/chat/completions"),
        data=b"not zstd at all",
        headers=Headers({b"Content-Encoding": [b"zstd"]}),
    )
    assert response.code == 400
    assert _error_of(await response.content())["error"]["type"] == "invalid_request_error"


@pytest_twisted.ensureDeferred
async def test_a_zstd_body_that_grows_past_the_limit_is_a_413(
    start_scripted: StartScripted, http: HTTPClient
) -> None:
    rig = await start_scripted(max_body_size=4096)
    bomb = zstandard.ZstdCompressor().compress(b"{" + b" " * 100_000 + b"}")
    assert len(bomb) < 4096
    response = await http.post(
        rig.url("/v1/messages"), data=bomb, headers=Headers({b"Content-Encoding": [b"zstd"]})
    )
    assert response.code == 413
    document = _error_of(await response.content())
    assert document["error"]["type"] == "request_too_large"


@pytest_twisted.ensureDeferred
async def test_a_cloud_model_bypasses_the_queue(rig: ScriptedRig, reactor: Any) -> None:
    body = json.dumps({"model": "gpt-oss:120b-cloud", "messages": []}).encode()
    sent = rig.client.request(b"POST", rig.url("/v1/chat/completions"), body)
    held = await within(rig.upstream.next_request(), 5, reactor)
    assert held.body == body
    held.start(200, b"application/json", length=2)
    held.send(b"{}")
    held.finish()
    response = await within(sent, 5, reactor)
    assert response.code == 200
    assert response.headers.getRawHeaders(b"x-foreman-queue-position") is None
    # Nothing was loaded for it either.
    assert rig.upstream.load_calls == []
    await _read_through(rig, response, reactor)


@pytest_twisted.ensureDeferred
async def test_a_transcription_is_queued_by_its_form_model(rig: ScriptedRig, reactor: Any) -> None:
    boundary = b"XyZ"
    form = (
        b'--XyZ\r\nContent-Disposition: form-data; name="model"\r\n\r\nscripted\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\nRIFF....\r\n--XyZ--\r\n"
    )
    sent = rig.client.request(
        b"POST",
        rig.url("/v1/audio/transcriptions"),
        form,
        {b"Content-Type": b"multipart/form-data; boundary=" + boundary},
    )
    held = await within(rig.upstream.next_request(), 5, reactor)
    assert held.path == b"/v1/audio/transcriptions"
    assert held.body == form
    # The model was loaded through a native call first, pinned.
    assert rig.upstream.load_calls == [("scripted", "load")]
    held.start(200, b"application/json", length=13)
    held.send(b'{"text":"hi"}')
    held.finish()
    response = await within(sent, 5, reactor)
    assert response.headers.getRawHeaders(b"x-foreman-queue-position") == [b"1"]
    await _read_through(rig, response, reactor)


@pytest.mark.parametrize(
    ("path", "body", "first_event"),
    [
        (
            "/v1/chat/completions",
            OPENAI_CHAT,
            b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[]}\n\n',
        ),
        (
            "/v1/messages",
            ANTHROPIC_MESSAGES,
            b'event: message_start\ndata: {"type":"message_start"}\n\n',
        ),
    ],
)
@pytest.mark.parametrize("cut_mid_event", [False, True])
@pytest_twisted.ensureDeferred
async def test_a_broken_event_stream_ends_with_one_error_event_of_its_dialect(
    rig: ScriptedRig, reactor: Any, path: str, body: bytes, first_event: bytes, cut_mid_event: bool
) -> None:
    sent = rig.client.request(b"POST", rig.url(path), body)
    held = await within(rig.upstream.next_request(), 5, reactor)
    held.start(200, b"text/event-stream")
    held.send(first_event)
    if cut_mid_event:
        held.send(first_event.split(b"\n", 1)[0] + b"\n")
    reader = rig.client.read_lines(await within(sent, 5, reactor))
    await within(reader.lines.get(), 5, reactor)
    held.die()
    await within(reader.ended, 5, reactor)
    assert reader.end is not None and reader.end.check(ResponseDone)
    events = [event for event in b"\n".join(reader.received).split(b"\n\n") if event.strip()]
    last = [line for line in events[-1].split(b"\n") if line]
    if path == "/v1/messages":
        assert last[0] == b"event: error"
        document = json.loads(last[1].removeprefix(b"data: "))
        assert document["type"] == "error" and document["error"]["type"] == "api_error"
    else:
        assert len(last) == 1
        document = json.loads(last[0].removeprefix(b"data: "))
        assert document["error"]["type"] == "api_error"
    assert "the stream broke" in json.dumps(document)

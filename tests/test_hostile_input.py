"""Hostile input at foreman's front door and at ``/jobs`` (issue 11), over real sockets.

One regression test for each thing tests/test_fuzz_http.py found or issue
11 reported: JSON nested past any limit is a 400 in the caller's dialect,
never a 500 with a traceback; a percent-encoded path is the route (and the
dialect) it decodes to; a zstd body spooled to a temporary file leaves none
open; ``GET /jobs`` refuses a bad cursor or an unknown parameter; ``/jobs``
refuses at once a body Ollama would refuse.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from typing import Any, cast

import pytest
import pytest_twisted
import zstandard
from treq.client import HTTPClient
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.web.iweb import IRequest
from twisted.web.test.requesthelper import DummyRequest

from foreman.http.encoding import decode_body
from tests.conftest import RunningForeman, RunningSimulator, StartForeman
from tests.jobs_http import JobsClient, chat

TOKEN = "hostile-token"
DEEP = 5000


def deep_array(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def deep_field(depth: int, field: str = "messages") -> bytes:
    """A chat body with ``field`` nested ``depth`` levels (``depth + 1`` in all)."""
    hello = b"" if field == "messages" else b'"messages":[{"role":"user","content":"hi"}],'
    return (
        b'{"model":"llama3.2",' + hello + b'"' + field.encode() + b'":' + deep_array(depth) + b"}"
    )


@pytest.fixture
def logged_failures() -> Iterator[list[LogEvent]]:
    """Every event logged with a failure (a traceback) during the test."""
    failures: list[LogEvent] = []

    def observe(event: LogEvent) -> None:
        if "log_failure" in event:
            failures.append(event)

    observer = cast(ILogObserver, observe)
    globalLogPublisher.addObserver(observer)
    yield failures
    globalLogPublisher.removeObserver(observer)


@pytest_twisted.async_yield_fixture
async def guarded(simulator: RunningSimulator, start_foreman: StartForeman) -> Any:
    yield await start_foreman(simulator.url, token=TOKEN)


def client(http: HTTPClient, running: RunningForeman) -> JobsClient:
    return JobsClient(http, running.url, TOKEN)


# -- nesting -------------------------------------------------------------------------------

NESTED_TOO_DEEP = "foreman: JSON nested deeper than 512 levels"


@pytest.mark.parametrize(
    "path", ["/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/jobs"]
)
@pytest.mark.parametrize("body", [deep_array(DEEP), deep_field(DEEP), deep_field(513, "options")])
@pytest_twisted.ensureDeferred
async def test_deep_json_is_a_400_never_a_500(
    guarded: RunningForeman,
    http: HTTPClient,
    logged_failures: list[LogEvent],
    path: str,
    body: bytes,
) -> None:
    answer = await client(http, guarded).call("POST", path, body)
    assert (answer.code, answer.json()) == (400, {"error": NESTED_TOO_DEEP})
    assert logged_failures == []


@pytest_twisted.ensureDeferred
async def test_deep_json_is_refused_in_the_caller_s_dialect(
    guarded: RunningForeman, http: HTTPClient, logged_failures: list[LogEvent]
) -> None:
    jobs = client(http, guarded)
    openai = await jobs.call("POST", "/v1/chat/completions", deep_field(DEEP))
    assert openai.code == 400
    assert openai.json()["error"]["message"] == NESTED_TOO_DEEP
    assert openai.json()["error"]["type"] == "invalid_request_error"
    anthropic = await jobs.call("POST", "/v1/messages", deep_array(DEEP))
    assert anthropic.code == 400
    assert anthropic.json()["type"] == "error"
    assert anthropic.json()["error"] == {
        "type": "invalid_request_error",
        "message": NESTED_TOO_DEEP,
    }
    assert logged_failures == []


@pytest_twisted.ensureDeferred
async def test_json_at_the_depth_limit_is_read_and_past_go_s_limit_is_go_s_error(
    guarded: RunningForeman, http: HTTPClient
) -> None:
    jobs = client(http, guarded)
    # 512 levels in all (the body itself is one): read, and left to Ollama.
    at_limit = await jobs.call("POST", "/api/chat", deep_field(511, "format"))
    assert at_limit.code == 500  # Ollama's own verdict on such a format, relayed
    assert at_limit.json()["error"].startswith("invalid format: ")
    # Past 10000 levels Go refuses it too: Ollama's words, not foreman's.
    past_go = await jobs.call("POST", "/api/chat", deep_array(10001))
    assert (past_go.code, past_go.json()) == (
        400,
        {"error": "invalid character '[' exceeded max depth"},
    )
    broken = await jobs.call("POST", "/api/chat", b"[" * DEEP + b"x")
    assert broken.json() == {"error": "invalid character 'x' looking for beginning of value"}


# -- percent-encoded paths -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_percent_encoded_path_is_the_route_and_the_dialect_it_decodes_to(
    guarded: RunningForeman, http: HTTPClient, logged_failures: list[LogEvent]
) -> None:
    body = json.dumps({"model": "llama3.2", "max_tokens": 8, "messages": [chat()["messages"][0]]})
    called = await client(http, guarded).call("POST", "/v1/%6Dessages", body.encode())
    assert called.code == 200
    assert called.json()["type"] == "message"
    refused = await http.post(guarded.url + "/v1/%6Dessages", data=body.encode())
    assert refused.code == 401
    assert (await refused.json())["error"]["type"] == "authentication_error"
    openai = await http.get(guarded.url + "/%761/models")
    assert (await openai.json())["error"]["type"] == "api_error"
    assert logged_failures == []


# -- zstd ----------------------------------------------------------------------------------


def test_a_zstd_body_in_a_temporary_file_is_closed_once_decompressed() -> None:
    with tempfile.TemporaryFile() as spooled:  # as Twisted spools a chunked body
        spooled.write(zstandard.ZstdCompressor().compress(b'{"model":"llama3.2"}'))
        request = cast(IRequest, DummyRequest([b"api", b"chat"]))
        request.content = spooled
        request.requestHeaders.setRawHeaders(b"content-encoding", [b"zstd"])
        decode_body(request)
        assert spooled.closed
    assert request.content.read() == b'{"model":"llama3.2"}'


# -- GET /jobs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("before=garbage", "before must be a job id (26 characters, as next gives it)"),
        ("before=01JDA9Q4V2M7Y8K3N5P6R7S8T", "before must be a job id"),
        ("before=81JDA9Q4V2M7Y8K3N5P6R7S8T9", "before must be a job id"),
        ("before=01JDA9Q4V2M7Y8K3N5P6R7S8TU", "before must be a job id"),
        ("cursor=garbage", "unknown query parameter 'cursor'; GET /jobs takes state, model"),
        ("State=done", "unknown query parameter 'State'"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_bad_cursor_or_an_unknown_parameter_is_a_400(
    guarded: RunningForeman, http: HTTPClient, query: str, message: str
) -> None:
    answer = await client(http, guarded).call("GET", f"/jobs?{query}")
    assert answer.code == 400
    assert answer.json()["error"].startswith(message)


@pytest_twisted.ensureDeferred
async def test_a_cursor_in_lower_case_is_the_same_cursor(
    reactor: Any, guarded: RunningForeman, http: HTTPClient
) -> None:
    jobs = client(http, guarded)
    older = await jobs.submitted(chat())
    newer = await jobs.submitted(chat())
    page = (await jobs.call("GET", f"/jobs?before={newer.lower()}")).json()
    assert [job["job_id"] for job in page["jobs"]] == [older]
    await jobs.until(newer, "done", reactor=reactor)


# -- POST /jobs: what Ollama would refuse ----------------------------------------------------

GO = "json: cannot unmarshal"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"stream": "yes"}, f"{GO} string into Go struct field ChatRequest.stream of type bool"),
        ({"STREAM": 1}, f"{GO} number into Go struct field ChatRequest.stream of type bool"),
        ({"options": []}, f"{GO} array into Go struct field ChatRequest.options of type map"),
        ({"options": {"num_ctx": "big"}}, 'option "num_ctx" must be of type integer'),
        ({"options": {"stop": [1]}}, 'option "stop" must be of an array of strings'),
        ({"messages": {}}, f"{GO} object into Go struct field ChatRequest.messages of type"),
        (
            {"messages": [{"role": 1}]},
            f"{GO} number into Go struct field ChatRequest.messages.role of type string",
        ),
        (
            {"messages": [{"content": "x", "images": ["!"]}]},
            "illegal base64 data at input byte 0",
        ),
        ({"keep_alive": "soon"}, 'time: invalid duration "soon"'),
        ({"keep_alive": True}, "Unsupported type: 'bool'"),
        ({"format": "xml"}, 'invalid format: "\\"xml\\""; expected "json" or a valid JSON'),
        ({"format": 5}, 'invalid format: "5"; expected "json" or a valid JSON Schema object'),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_chat_job_ollama_would_refuse_is_refused_at_submit(
    guarded: RunningForeman, http: HTTPClient, fields: dict[str, Any], message: str
) -> None:
    answer = await client(http, guarded).submit(chat(**fields))
    assert answer.code == 400, answer
    assert answer.json()["error"].startswith(message)
    queue = guarded.foreman.queue
    assert queue is not None and queue.worker.scheduler.depth == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"endpoint": "generate", "model": "llama3.2", "prompt": "hi", "stream": "no"},
            f"{GO} string into Go struct field GenerateRequest.stream of type bool",
        ),
        (
            {"endpoint": "/v1/chat/completions", "model": 1},
            f"{GO} number into Go struct field ChatCompletionRequest.model of type string",
        ),
        (
            {"endpoint": "/v1/messages", "model": "llama3.2", "stream": "yes"},
            f"{GO} string into Go struct field MessagesRequest.stream of type bool",
        ),
        (
            {"endpoint": "/v1/responses", "model": ["llama3.2"]},
            f"{GO} array into Go struct field ResponsesRequest.model of type string",
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_every_endpoint_s_job_is_checked_with_its_own_request_type(
    guarded: RunningForeman, http: HTTPClient, body: dict[str, Any], message: str
) -> None:
    answer = await client(http, guarded).submit(body)
    assert (answer.code, answer.json()) == (400, {"error": message})


@pytest_twisted.ensureDeferred
async def test_what_ollama_accepts_is_accepted_and_the_rest_left_to_it(
    reactor: Any, guarded: RunningForeman, http: HTTPClient
) -> None:
    jobs = client(http, guarded)
    fine = chat(
        stream=True,
        keep_alive="5m",
        format={"type": "object"},
        options={"num_ctx": 2048, "temperature": 0.5, "stop": ["x"], "mine": [1]},
    )
    assert (await jobs.submit(fine)).code == 202
    # Unchecked here (Ollama's to judge when the job runs): it fails there.
    job_id = await jobs.submitted(chat(think="extreme"))
    view = await jobs.until(job_id, "failed", reactor=reactor)
    assert view["error_status"] == 400
    # The other dialects' bodies are Ollama's to translate and judge.
    other = {"endpoint": "/v1/chat/completions", "model": "llama3.2", "messages": "x"}
    assert (await jobs.submit(other)).code == 202

"""The simulated Ollama given hostile bodies: Ollama's 400 (in its words where the
simulator can read what Ollama reads), never a 500 with a traceback.

Each test is a case tests/test_fuzz_http.py found, or issue 11 reported.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, cast

import pytest
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher

from foreman.testing import SimulatedOllama
from tests.test_simulated_ollama import Reply, call, chat_body

GO = "json: cannot unmarshal"
TOO_DEEP = "simulated Ollama: JSON nested deeper than 512 levels (Ollama reads up to 10000)"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sim(clock: Clock) -> SimulatedOllama:
    return SimulatedOllama(clock, reply_tokens=4)


@pytest.fixture(autouse=True)
def no_traceback() -> Iterator[None]:
    """Every test here fails if anything is logged with a failure."""
    failures: list[LogEvent] = []
    observer = cast(
        ILogObserver, lambda event: failures.append(event) if "log_failure" in event else None
    )
    globalLogPublisher.addObserver(observer)
    yield
    globalLogPublisher.removeObserver(observer)
    assert failures == []


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def post(sim: SimulatedOllama, clock: Clock, path: str, body: object, **kwargs: Any) -> Reply:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return call(sim, clock, "POST", path, data, **kwargs)


def openai_message(reply: Reply) -> str:
    message: str = reply.json()["error"]["message"]
    return message


# --- nesting ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # Go reads it all; an array is not a request, whatever is inside.
        (deep(5000).encode(), f"{GO} array into Go value of type api.ChatRequest"),
        (b'{"model":"llama3.2","format":' + deep(5000).encode() + b"}", TOO_DEEP),
        # Past Go's own limit: Go's own words.
        (deep(10001).encode(), "invalid character '[' exceeded max depth"),
        (b"[" * 5000 + b"x", "invalid character 'x' looking for beginning of value"),
    ],
)
def test_deep_json_is_ollama_s_400_or_the_simulator_s(
    sim: SimulatedOllama, clock: Clock, body: bytes, message: str
) -> None:
    reply = post(sim, clock, "/api/chat", body)
    assert (reply.status, reply.json()) == (400, {"error": message})


def test_deep_json_is_a_400_in_each_dialect(sim: SimulatedOllama, clock: Clock) -> None:
    openai = post(sim, clock, "/v1/chat/completions", deep(5000).encode())
    assert openai.status == 400
    assert (
        openai_message(openai) == f"{GO} array into Go value of type openai.ChatCompletionRequest"
    )
    anthropic = post(sim, clock, "/v1/messages", b'{"metadata":' + deep(5000).encode() + b"}")
    assert anthropic.status == 400
    assert anthropic.json()["error"]["message"] == TOO_DEEP


@pytest.mark.parametrize("arguments", [deep(5000), '{"a":' * 5000 + "1" + "}" * 5000, deep(10001)])
def test_deeply_nested_tool_call_arguments_are_a_400(
    sim: SimulatedOllama, clock: Clock, arguments: str
) -> None:
    call_ = {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
    messages = [*HI, {"role": "assistant", "content": "", "tool_calls": [call_]}]
    reply = post(sim, clock, "/v1/chat/completions", {"model": "llama3.2", "messages": messages})
    assert reply.status == 400
    assert openai_message(reply) in ("invalid tool call arguments", TOO_DEEP)
    item = {"type": "function_call", "call_id": "c", "name": "f", "arguments": arguments}
    responses = post(sim, clock, "/v1/responses", {"model": "llama3.2", "input": [item]})
    assert responses.status == 400


# --- forms ----------------------------------------------------------------------------------


def test_a_form_content_type_on_json_is_still_json(sim: SimulatedOllama, clock: Clock) -> None:
    # Go reads a body only as the handler asks: this is JSON to /api/chat.
    headers = {"Content-Type": "multipart/form-data; boundary=x"}
    reply = post(sim, clock, "/api/chat", chat_body(stream=False), headers=headers)
    assert reply.status == 200
    assert reply.json()["done"] is True


# --- the dialects' nested parts ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (
            {"type": "function_call", "name": "f", "arguments": 5},
            f"input[0]: {GO} number into Go struct field ResponsesFunctionCall.arguments"
            " of type string",
        ),
        (
            {"type": "message", "role": 1},
            f"input[0]: {GO} number into Go struct field .role of type string",
        ),
        (
            {"type": "message", "role": "user", "content": [{"type": []}]},
            f"input: content[0]: {GO} array into Go struct field .type of type string",
        ),
        (
            {"role": "user", "content": [{"type": "input_text", "text": 1}]},
            f"input: content[0]: {GO} number into Go struct field ResponsesTextContent.text"
            " of type string",
        ),
    ],
)
def test_responses_input_items_are_bound_as_go_binds_them(
    sim: SimulatedOllama, clock: Clock, item: dict[str, Any], message: str
) -> None:
    reply = post(sim, clock, "/v1/responses", {"model": "llama3.2", "input": [item]})
    assert (reply.status, openai_message(reply)) == (400, message)


@pytest.mark.parametrize(
    ("members", "kind"), [(5, "[]openai.ResponsesTool"), ([5], "openai.ResponsesTool")]
)
def test_a_namespace_s_tools_are_bound_too(
    sim: SimulatedOllama, clock: Clock, members: object, kind: str
) -> None:
    tools = [{"type": "namespace", "name": "ns", "tools": members}]
    reply = post(sim, clock, "/v1/responses", {"model": "llama3.2", "input": "hi", "tools": tools})
    assert reply.status == 400
    assert openai_message(reply) == (
        f"{GO} number into Go struct field ResponsesRequest.tools.tools of type {kind}"
    )


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"type": "text", "text": 5}, "ContentBlock.text of type string"),
        (
            {"type": "image", "source": {"type": "base64", "data": 5}},
            "ContentBlock.source.data of type string",
        ),
        ({"type": "tool_use", "id": [], "name": "f"}, "ContentBlock.id of type string"),
    ],
)
def test_anthropic_content_blocks_are_bound_as_go_binds_them(
    sim: SimulatedOllama, clock: Clock, block: dict[str, Any], message: str
) -> None:
    body = {
        "model": "llama3.2",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": [block]}],
    }
    reply = post(sim, clock, "/v1/messages", body)
    assert reply.status == 400
    kind = "array" if isinstance(block.get("id"), list) else "number"
    assert reply.json()["error"]["message"] == f"{GO} {kind} into Go struct field {message}"

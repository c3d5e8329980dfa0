"""The simulated Ollama's OpenAI and Anthropic dialects, in memory with a Clock.

The dialects run the native handlers behind a re-encoding writer, so the
scheduler (loads, keep-alive, queueing, cancellation) is the native one;
these tests check the wire shapes and that sharing.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from typing import Any, cast

import pytest
from twisted.internet.task import Clock

from foreman.testing import DEFAULT_MODELS, SimModel, SimulatedOllama
from tests.test_simulated_ollama import Reply, Wire, call

USER = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sim(clock: Clock) -> SimulatedOllama:
    return SimulatedOllama(clock, reply_tokens=4)


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "llama3.2", "messages": USER, **extra}


def anthropic(**extra: Any) -> dict[str, Any]:
    return {"model": "llama3.2", "max_tokens": 100, "messages": USER, **extra}


def frames(reply: Reply) -> list[bytes]:
    """The SSE frames of a stream; every one ends in a blank line."""
    assert reply.body.endswith(b"\n\n")
    return [frame for frame in reply.body.split(b"\n\n")[:-1]]


def data_frames(reply: Reply) -> list[Any]:
    out: list[Any] = []
    for frame in frames(reply):
        assert frame.startswith(b"data: ") and b"\n" not in frame  # no event:, id: or comments
        payload = frame[len(b"data: ") :]
        out.append(payload.decode() if payload == b"[DONE]" else json.loads(payload))
    return out


def events(reply: Reply) -> list[tuple[str, Any]]:
    out = []
    for frame in frames(reply):
        event, data = frame.split(b"\n")
        assert event.startswith(b"event: ") and data.startswith(b"data: ")
        out.append((event[len(b"event: ") :].decode(), json.loads(data[len(b"data: ") :])))
    return out


def slow(load_seconds: float) -> list[SimModel]:
    import attrs

    return [attrs.evolve(m, load_seconds=load_seconds) for m in DEFAULT_MODELS]


# --- OpenAI: chat completions ----------------------------------------------------------------


def test_chat_completion_body(sim: SimulatedOllama, clock: Clock) -> None:
    clock.advance(1_750_000_000.4)
    reply = call(sim, clock, "POST", "/v1/chat/completions", chat())
    assert reply.status == 200
    assert reply.header("content-type") == "application/json"
    assert reply.body.endswith(b"}\n")  # Go's json.Encoder
    assert reply.header("content-length") == str(len(reply.body))
    body = reply.json()
    assert re.fullmatch(r"chatcmpl-\d{1,3}", body.pop("id"))
    assert body == {
        "object": "chat.completion",
        "created": 1_750_000_000,
        "model": "llama3.2",
        "system_fingerprint": "fp_ollama",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Why is the sky"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
    }
    assert list(reply.json()) == [
        "id",
        "object",
        "created",
        "model",
        "system_fingerprint",
        "choices",
        "usage",
    ]
    assert sim.completed_generations == 1


def test_chat_stream_frames(sim: SimulatedOllama, clock: Clock) -> None:
    reply = call(
        sim,
        clock,
        "POST",
        "/v1/chat/completions",
        chat(stream=True, stream_options={"include_usage": True}),
    )
    assert reply.header("content-type") == "text/event-stream"
    assert reply.header("cache-control") is None
    assert reply.header("content-length") is None  # chunked, flushed per token
    chunks = data_frames(reply)
    assert chunks[-1] == "[DONE]"
    ids = {c["id"] for c in chunks[:-1]}
    assert len(ids) == 1 and re.fullmatch(r"chatcmpl-\d{1,3}", ids.pop())
    deltas = [c["choices"][0]["delta"] for c in chunks[:4]]
    assert deltas == [
        {"role": "assistant", "content": "Why"},
        {"content": " is"},
        {"content": " the"},
        {"content": " sky"},
    ]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks[:-1])
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:4])
    finish = chunks[4]
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert "usage" not in finish
    assert chunks[5]["choices"] == []
    assert chunks[5]["usage"] == {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
    assert len(chunks) == 7


def test_chat_stream_without_usage_has_no_usage_chunk(sim: SimulatedOllama, clock: Clock) -> None:
    chunks = data_frames(call(sim, clock, "POST", "/v1/chat/completions", chat(stream=True)))
    assert [c if c == "[DONE]" else c["choices"][0]["finish_reason"] for c in chunks] == [
        None,
        None,
        None,
        None,
        "stop",
        "[DONE]",
    ]


def test_chat_stream_arrives_token_by_token(clock: Clock) -> None:
    sim = SimulatedOllama(clock, tokens_per_second=10, reply_tokens=4)
    wire = Wire(sim, clock)
    wire.send("POST", "/v1/chat/completions", chat(stream=True))
    assert wire.reply() is None  # nothing, not even the status, before the first token
    clock.advance(0.1)
    first = wire.reply()
    assert first is not None and first.status == 200 and not first.complete
    assert first.body.count(b"data: ") == 1
    clock.advance(0.2)
    partial = wire.reply()
    assert partial is not None and partial.body.count(b"data: ") == 3
    clock.advance(0.1)
    done = wire.reply()
    assert done is not None and done.complete and done.body.endswith(b"data: [DONE]\n\n")


def test_no_header_before_the_model_has_loaded(clock: Clock) -> None:
    sim = SimulatedOllama(clock, models=slow(2.0), reply_tokens=4)
    wires = []
    for path, body in [
        ("/v1/chat/completions", chat(stream=True)),
        ("/v1/messages", anthropic(stream=True)),
        ("/v1/chat/completions", chat()),
    ]:
        wire = Wire(sim, clock)
        wire.send("POST", path, body)
        wires.append(wire)
    clock.advance(1.9)
    assert [w.reply() for w in wires] == [None, None, None]
    clock.advance(0.1)
    assert all((r := w.reply()) is not None and r.complete for w in wires)
    assert sim.loads == 1  # one load, shared, as native requests share it


def test_thinking_becomes_reasoning_and_tools_become_tool_calls(
    sim: SimulatedOllama, clock: Clock
) -> None:
    body = call(sim, clock, "POST", "/v1/chat/completions", chat(model="qwen3:8b")).json()
    assert body["choices"][0]["message"]["reasoning"] == "Thinking about"
    effort = chat(model="qwen3:8b", reasoning_effort="none")
    body = call(sim, clock, "POST", "/v1/chat/completions", effort).json()
    assert "reasoning" not in body["choices"][0]["message"]

    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    body = call(sim, clock, "POST", "/v1/chat/completions", chat(tools=[tool])).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (tool_call,) = choice["message"]["tool_calls"]
    assert tool_call["type"] == "function" and tool_call["index"] == 0
    assert tool_call["function"]["name"] == "get_weather"
    assert json.loads(tool_call["function"]["arguments"]) == {"city": "Why is the"}

    chunks = data_frames(
        call(sim, clock, "POST", "/v1/chat/completions", chat(tools=[tool], stream=True))
    )
    assert chunks[0]["choices"][0]["delta"]["tool_calls"][0]["id"] == tool_call["id"]
    assert chunks[1]["choices"][0]["finish_reason"] == "tool_calls"


def test_max_tokens_caps_the_reply(sim: SimulatedOllama, clock: Clock) -> None:
    capped = call(sim, clock, "POST", "/v1/chat/completions", chat(max_tokens=2)).json()
    assert capped["choices"][0]["message"]["content"] == "Why is"
    assert capped["choices"][0]["finish_reason"] == "length"
    roomy = call(sim, clock, "POST", "/v1/chat/completions", chat(max_tokens=4096)).json()
    assert roomy["choices"][0]["finish_reason"] == "stop"
    assert roomy["usage"]["completion_tokens"] == 4


def test_chat_content_parts_and_images(sim: SimulatedOllama, clock: Clock) -> None:
    png = "data:image/png;base64," + base64.b64encode(b"\x89PNG").decode()
    parts = [
        {"type": "text", "text": "describe this"},
        {"type": "image_url", "image_url": {"url": png}},
    ]
    body = chat(messages=[{"role": "user", "content": parts}])
    reply = call(sim, clock, "POST", "/v1/chat/completions", body)
    assert reply.status == 200
    remote = [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]
    refused = call(
        sim,
        clock,
        "POST",
        "/v1/chat/completions",
        chat(messages=[{"role": "user", "content": remote}]),
    )
    assert refused.status == 400
    assert refused.json()["error"]["message"] == (
        "image URLs are not currently supported, please use base64 encoded data instead"
    )


# --- OpenAI: errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v1/chat/completions", {"messages": USER}, 400, "model is required"),
        ("/v1/chat/completions", chat(model="nope"), 404, "model 'nope' not found"),
        ("/v1/completions", {"prompt": "hi"}, 404, "model '' not found"),
        ("/v1/embeddings", {"input": "hi"}, 404, "model '' not found"),
        (
            "/v1/embeddings",
            {"model": "nope", "input": "hi"},
            404,
            'model "nope" not found, try pulling it first',
        ),
        ("/v1/responses", {"input": "hi"}, 400, "model is required"),
        (
            "/v1/chat/completions",
            chat(model="gemma3:12b", reasoning_effort="high"),
            400,
            '"gemma3:12b" does not support thinking',
        ),
    ],
)
def test_native_errors_in_openai_shape(
    sim: SimulatedOllama, clock: Clock, path: str, body: object, status: int, message: str
) -> None:
    reply = call(sim, clock, "POST", path, body)
    assert reply.status == status
    assert reply.header("content-type") == "application/json"
    assert reply.body.endswith(b"\n")
    expected_type = "invalid_request_error" if status == 400 else "not_found_error"
    assert reply.json() == {
        "error": {"message": message, "type": expected_type, "param": None, "code": None}
    }
    assert sim.loads == 0


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/chat/completions", b"", "EOF"),
        ("/v1/chat/completions", chat(messages=[]), "[] is too short - 'messages'"),
        (
            "/v1/chat/completions",
            chat(stream="yes"),
            "json: cannot unmarshal string into Go struct field ChatCompletionRequest.stream "
            "of type bool",
        ),
        (
            "/v1/chat/completions",
            chat(messages=[{"role": "user", "content": 7}]),
            "invalid message content type: float64",
        ),
        (
            "/v1/chat/completions",
            chat(reasoning_effort="huge"),
            'invalid reasoning value: "huge" (must be "minimal", "low", "medium", "high", '
            '"xhigh", "ultra", "max", or "none")',
        ),
        (
            "/v1/completions",
            {"model": "llama3.2", "prompt": ["a", "b"]},
            "json: cannot unmarshal array into Go struct field CompletionRequest.prompt of type "
            "string",
        ),
        (
            "/v1/completions",
            b"[1]",
            "json: cannot unmarshal array into Go value of type openai.CompletionRequest",
        ),
        (
            "/v1/embeddings",
            {"model": "all-minilm", "input": "x", "encoding_format": "int8"},
            "Invalid value for 'encoding_format' = int8. Supported values: ['float', 'base64'].",
        ),
        ("/v1/embeddings", {"model": "all-minilm", "input": []}, "invalid input"),
    ],
)
def test_middleware_refusals(
    sim: SimulatedOllama, clock: Clock, path: str, body: object, message: str
) -> None:
    reply = call(sim, clock, "POST", path, body)
    assert reply.status == 400
    # gin's AbortWithStatusJSON: its own content type, no trailing newline.
    assert reply.header("content-type") == "application/json; charset=utf-8"
    assert not reply.body.endswith(b"\n")
    assert reply.json() == {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    }


def test_server_busy_is_an_api_error_and_overloaded(clock: Clock) -> None:
    sim = SimulatedOllama(clock, max_queue=0)
    reply = call(sim, clock, "POST", "/v1/chat/completions", chat())
    assert reply.status == 503
    assert reply.json()["error"] == {
        "message": "server busy, please try again.  maximum pending requests exceeded",
        "type": "api_error",
        "param": None,
        "code": None,
    }
    busy = call(sim, clock, "POST", "/v1/messages", anthropic())
    assert busy.status == 503
    assert busy.json()["error"]["type"] == "overloaded_error"


def test_unknown_paths_and_methods(sim: SimulatedOllama, clock: Clock) -> None:
    for path in ["/v1/messages/count_tokens", "/v1/images/generations", "/v1/models/hf.co/x/y"]:
        reply = call(sim, clock, "POST" if "models" not in path else "GET", path, {})
        assert (reply.status, reply.body) == (404, b"404 page not found")
    assert call(sim, clock, "GET", "/v1/chat/completions").status == 405
    assert call(sim, clock, "POST", "/v1/models").status == 405
    assert call(sim, clock, "GET", "/v1/messages").status == 405


# --- OpenAI: completions, embeddings, models ------------------------------------------------


def test_completions(sim: SimulatedOllama, clock: Clock) -> None:
    body = call(sim, clock, "POST", "/v1/completions", {"model": "llama3.2", "prompt": "hi you"})
    completion = body.json()
    assert re.fullmatch(r"cmpl-\d{1,3}", completion["id"])
    assert completion["object"] == "text_completion"
    assert completion["choices"] == [{"text": "hi you hi you", "index": 0, "finish_reason": "stop"}]

    stream = {"model": "llama3.2", "prompt": "hi you", "stream": True}
    chunks = data_frames(call(sim, clock, "POST", "/v1/completions", stream))
    assert chunks[-1] == "[DONE]"
    texts = [(c["choices"][0]["text"], c["choices"][0]["finish_reason"]) for c in chunks[:-1]]
    assert texts == [("hi", None), (" you", None), (" hi", None), (" you", None), ("", "stop")]
    assert list(chunks[0]) == [
        "id",
        "object",
        "created",
        "choices",
        "model",
        "system_fingerprint",
    ]

    stream["stream_options"] = {"include_usage": True}
    chunks = data_frames(call(sim, clock, "POST", "/v1/completions", stream))
    assert all(c["usage"]["total_tokens"] == 0 for c in chunks[:5])
    assert chunks[5]["choices"] == [] and chunks[5]["usage"]["completion_tokens"] == 4


def test_embeddings_float_and_base64(sim: SimulatedOllama, clock: Clock) -> None:
    native = call(sim, clock, "POST", "/api/embed", {"model": "all-minilm", "input": ["a", "b"]})
    vectors = native.json()["embeddings"]
    request = {"model": "all-minilm", "input": ["a", "b"]}
    floats = call(sim, clock, "POST", "/v1/embeddings", request).json()
    assert floats["object"] == "list" and floats["model"] == "all-minilm"
    assert [d["embedding"] for d in floats["data"]] == vectors
    assert [(d["object"], d["index"]) for d in floats["data"]] == [
        ("embedding", 0),
        ("embedding", 1),
    ]
    assert floats["usage"] == {"prompt_tokens": 6, "total_tokens": 6}

    request["encoding_format"] = "base64"
    encoded = call(sim, clock, "POST", "/v1/embeddings", request).json()
    raw = base64.b64decode(encoded["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == pytest.approx(vectors[0], rel=1e-6)
    single = call(sim, clock, "POST", "/v1/embeddings", {"model": "all-minilm", "input": "a"})
    assert single.json()["data"][0]["embedding"] == vectors[0]


def test_models_list_and_retrieve(clock: Clock) -> None:
    sim = SimulatedOllama(clock)
    listed = call(sim, clock, "GET", "/v1/models")
    assert listed.header("content-type") == "application/json"
    models = listed.json()
    assert models["object"] == "list"
    assert models["data"][0] == {
        "id": "llama3.2:latest",
        "object": "model",
        "created": 1748736000,
        "owned_by": "library",
    }
    assert len(models["data"]) == len(DEFAULT_MODELS)

    sim.add_model(SimModel(name="hf.co/someone/tiny:Q4", size=1))
    shown = call(sim, clock, "GET", "/v1/models/qwen3:8b").json()
    assert shown == {
        "id": "qwen3:8b",
        "object": "model",
        "created": 1748649600,
        "owned_by": "library",
    }
    assert call(sim, clock, "GET", "/v1/models/llama3.2").json()["id"] == "llama3.2"
    owners = {m["id"]: m["owned_by"] for m in call(sim, clock, "GET", "/v1/models").json()["data"]}
    assert owners["hf.co/someone/tiny:Q4"] == "someone"

    missing = call(sim, clock, "GET", "/v1/models/nope")
    assert missing.status == 404
    assert missing.json()["error"]["type"] == "not_found_error"

    empty = SimulatedOllama(clock, models=[])
    assert call(empty, clock, "GET", "/v1/models").body == b'{"object":"list","data":null}\n'


# --- keep-alive, residency, recording ----------------------------------------------------------


def keep_alive(sim: SimulatedOllama) -> float:
    (runner,) = sim.residency.runners()
    return runner.keep_alive


def test_a_fresh_load_gets_the_default_keep_alive_whatever_the_request_says(
    sim: SimulatedOllama, clock: Clock
) -> None:
    body = chat(keep_alive=-1, options={"keep_alive": "1h"})
    call(sim, clock, "POST", "/v1/chat/completions", body, headers={"Keep-Alive": "timeout=3600"})
    assert keep_alive(sim) == 300.0
    clock.advance(299)
    assert sim.loaded_models() == ["llama3.2:latest"]
    clock.advance(1)
    assert sim.loaded_models() == []


def test_a_loaded_model_keeps_its_keep_alive(sim: SimulatedOllama, clock: Clock) -> None:
    # Pin it natively (an empty-prompt generate), then use it through every dialect.
    call(sim, clock, "POST", "/api/generate", {"model": "llama3.2", "keep_alive": "1h"})
    assert keep_alive(sim) == 3600.0
    call(sim, clock, "POST", "/v1/chat/completions", chat(keep_alive=0))
    call(sim, clock, "POST", "/v1/completions", {"model": "llama3.2", "prompt": "x"})
    call(sim, clock, "POST", "/v1/messages", anthropic())
    call(sim, clock, "POST", "/v1/responses", {"model": "llama3.2", "input": "x"})
    assert keep_alive(sim) == 3600.0
    clock.advance(3599)
    assert sim.loaded_models() == ["llama3.2:latest"]
    assert sim.loads == 1


def test_requests_are_recorded_as_sent(sim: SimulatedOllama, clock: Clock) -> None:
    raw = b'{"model":"llama3.2","messages":[{"role":"user","content":"x"}]}'
    call(sim, clock, "POST", "/v1/chat/completions", raw, headers={"Authorization": "Bearer k"})
    (recorded,) = sim.requests
    assert (recorded.path, recorded.body) == ("/v1/chat/completions", raw)
    assert recorded.header("authorization") == "Bearer k"


def test_a_client_leaving_mid_stream_cancels_the_generation(clock: Clock) -> None:
    sim = SimulatedOllama(clock, tokens_per_second=10, reply_tokens=10)
    wire = Wire(sim, clock)
    wire.send("POST", "/v1/messages", anthropic(stream=True))
    clock.advance(0.25)
    assert sim.active_generations == 1
    wire.disconnect()
    assert (sim.active_generations, sim.cancelled_requests, sim.completed_generations) == (0, 1, 0)


# --- Anthropic -----------------------------------------------------------------------------------


def test_messages_body(sim: SimulatedOllama, clock: Clock) -> None:
    reply = call(sim, clock, "POST", "/v1/messages", anthropic(system="Be brief."))
    assert reply.header("content-type") == "application/json"
    body = reply.json()
    assert re.fullmatch(r"msg_[0-9a-f]{24}", body.pop("id"))
    assert body == {
        "type": "message",
        "role": "assistant",
        "model": "llama3.2",
        "content": [{"type": "text", "text": "Why is the sky"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 15, "output_tokens": 4},
    }
    capped = call(sim, clock, "POST", "/v1/messages", anthropic(max_tokens=1)).json()
    assert (capped["stop_reason"], capped["usage"]["output_tokens"]) == ("max_tokens", 1)


def test_messages_stream_events(sim: SimulatedOllama, clock: Clock) -> None:
    reply = call(sim, clock, "POST", "/v1/messages", anthropic(model="qwen3:8b", stream=True))
    assert reply.header("content-type") == "text/event-stream"
    assert reply.header("cache-control") == "no-cache"
    got = events(reply)
    names = [name for name, _ in got]
    assert names == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        *["content_block_delta"] * 4,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in got)
    start = got[0][1]["message"]
    assert start["content"] == [] and start["usage"] == {"input_tokens": 6, "output_tokens": 0}
    assert "stop_reason" not in start
    assert got[1][1]["content_block"] == {"type": "thinking", "thinking": ""}
    assert got[5][1] == {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "text", "text": ""},
    }
    assert got[6][1]["delta"] == {"type": "text_delta", "text": "Why"}
    assert got[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn"},
        "usage": {"input_tokens": 9, "output_tokens": 6},
    }


def test_messages_tools_thinking_and_content_blocks(sim: SimulatedOllama, clock: Clock) -> None:
    tool = {
        "name": "get_weather",
        "description": "Weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    body = call(sim, clock, "POST", "/v1/messages", anthropic(tools=[tool])).json()
    assert body["stop_reason"] == "tool_use"
    (block,) = body["content"]
    assert block["type"] == "tool_use" and block["input"] == {"city": "Why is the"}
    assert block["name"] == "get_weather"

    streamed = events(
        call(sim, clock, "POST", "/v1/messages", anthropic(tools=[tool], stream=True))
    )
    assert [n for n, _ in streamed][1:4] == [
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
    ]
    assert streamed[1][1]["content_block"]["input"] == {}
    assert streamed[2][1]["delta"]["type"] == "input_json_delta"
    assert json.loads(streamed[2][1]["delta"]["partial_json"]) == {"city": "Why is the"}

    # Thinking asked of a model that cannot think is relaxed, not refused.
    thinking = anthropic(thinking={"type": "enabled", "budget_tokens": 1024})
    assert call(sim, clock, "POST", "/v1/messages", thinking).status == 200
    history = [
        {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}],
        },
    ]
    answer = call(sim, clock, "POST", "/v1/messages", anthropic(messages=history, tools=[tool]))
    # A tool result gets a text answer (from the last user text).
    assert answer.json()["content"][0]["text"].startswith("weather?")
    assert answer.json()["stop_reason"] == "end_turn"


@pytest.mark.parametrize(
    ("body", "status", "error_type", "message"),
    [
        ({"max_tokens": 10, "messages": USER}, 400, "invalid_request_error", "model is required"),
        (
            anthropic(max_tokens=0),
            400,
            "invalid_request_error",
            "max_tokens is required and must be positive",
        ),
        (anthropic(messages=[]), 400, "invalid_request_error", "messages is required"),
        (anthropic(model="nope"), 404, "not_found_error", "model 'nope' not found"),
        (
            anthropic(
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image",
                                "source": {"type": "url", "url": "https://example.com/x.png"},
                            }
                        ],
                    }
                ]
            ),
            400,
            "invalid_request_error",
            "invalid image source type: url. Only base64 images are supported.",
        ),
    ],
)
def test_messages_errors(
    sim: SimulatedOllama,
    clock: Clock,
    body: dict[str, Any],
    status: int,
    error_type: str,
    message: str,
) -> None:
    reply = call(sim, clock, "POST", "/v1/messages", body)
    assert reply.status == status
    error = reply.json()
    assert re.fullmatch(r"req_[0-9a-f]{24}", error.pop("request_id"))
    assert error == {"type": "error", "error": {"type": error_type, "message": message}}


def test_a_streamed_request_that_fails_is_still_plain_json(
    sim: SimulatedOllama, clock: Clock
) -> None:
    reply = call(sim, clock, "POST", "/v1/messages", anthropic(model="nope", stream=True))
    assert reply.status == 404
    assert reply.header("content-type") == "application/json"
    assert reply.header("cache-control") == "no-cache"  # set before the handler ran
    assert reply.json()["error"]["type"] == "not_found_error"


def test_messages_ignore_auth_headers(sim: SimulatedOllama, clock: Clock) -> None:
    headers = {"x-api-key": "anything", "anthropic-version": "2023-06-01"}
    assert call(sim, clock, "POST", "/v1/messages", anthropic(), headers=headers).status == 200


# --- Responses and transcriptions ----------------------------------------------------------------


def test_responses_body_and_stream(sim: SimulatedOllama, clock: Clock) -> None:
    body = {"model": "llama3.2", "input": "hello you", "instructions": "Be brief."}
    response = call(sim, clock, "POST", "/v1/responses", body).json()
    assert re.fullmatch(r"resp_\d+", response["id"])
    assert (response["object"], response["status"]) == ("response", "completed")
    assert response["instructions"] == "Be brief."
    (item,) = response["output"]
    assert item["type"] == "message"
    assert item["content"][0]["text"] == "hello you hello you"
    assert response["usage"]["output_tokens"] == 4

    reply = call(sim, clock, "POST", "/v1/responses", {**body, "stream": True})
    assert reply.header("cache-control") == "no-cache"
    got = events(reply)
    names = [name for name, _ in got]
    assert names[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert names[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [data["sequence_number"] for _, data in got] == list(range(len(got)))
    assert all(list(data) == sorted(data) for _, data in got)  # Go maps: sorted keys
    assert got[-1][1]["response"]["output"][0]["content"][0]["text"] == "hello you hello you"
    assert b"[DONE]" not in reply.body


def test_transcriptions(sim: SimulatedOllama, clock: Clock) -> None:
    boundary = "xyz"
    parts = [
        ('name="model"', b"llama3.2"),
        ('name="file"; filename="a.wav"', b"RIFF0000WAVE"),
    ]
    data = (
        b"".join(
            f"--{boundary}\r\nContent-Disposition: form-data; {disposition}\r\n\r\n".encode()
            + value
            + b"\r\n"
            for disposition, value in parts
        )
        + f"--{boundary}--\r\n".encode()
    )
    content_type = f"multipart/form-data; boundary={boundary}"
    reply = call(
        sim, clock, "POST", "/v1/audio/transcriptions", data, headers={"Content-Type": content_type}
    )
    assert reply.status == 200
    assert reply.json() == {"text": "What exact words are"}
    refused = call(sim, clock, "POST", "/v1/audio/transcriptions", {"model": "llama3.2"})
    assert refused.status == 400
    assert refused.json()["error"]["message"].startswith("failed to parse multipart form")


# --- a native error line mid-stream (the writers, directly) -----------------------------------


def test_an_error_line_mid_stream_is_re_encoded_as_ollama_does() -> None:
    from twisted.web.server import Request
    from twisted.web.test.requesthelper import DummyRequest

    from foreman.testing._anthropic import MessagesWriter
    from foreman.testing._openai import ChatWriter

    token = b'{"model":"m","created_at":"2025-06-01T00:00:00Z",'
    token += b'"message":{"role":"assistant","content":"a"},"done":false}\n'
    failure = b'{"error":"an error was encountered while running the model"}\n'

    openai_writer = ChatWriter(
        cast(Request, DummyRequest([b""])), lambda: 0.0, "chatcmpl-1", True, True
    )
    assert openai_writer.encode(200, token).startswith(b"data: ")
    # One empty-content chunk; no finish chunk, no usage, no [DONE].
    broken = openai_writer.encode(200, failure)
    assert broken.count(b"data: ") == 1 and b"[DONE]" not in broken
    (chunk,) = [json.loads(f[len(b"data: ") :]) for f in broken.split(b"\n\n") if f]
    assert chunk["model"] == "" and chunk["choices"][0]["delta"] == {"content": ""}
    assert chunk["choices"][0]["finish_reason"] is None

    sim = SimulatedOllama(Clock())
    anthropic_writer = MessagesWriter(
        cast(Request, DummyRequest([b""])), sim, "msg_1", "m", True, 1
    )
    assert b"message_start" in anthropic_writer.encode(200, token)
    assert anthropic_writer.encode(200, failure) == b""  # nothing, and no message_stop

"""Ollama's token counts in every dialect, whole and streamed (issue 21): read
from a reply's end by :mod:`foreman.wire.token_counts`, and counted per key
when foreman relays the reply (a stream's end as :class:`LineRelay` keeps it)."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import pytest
import pytest_twisted
from treq.client import HTTPClient

from foreman.queue.usage import NO_KEY, UsageTotals
from foreman.wire.token_counts import TokenCounts, counts_in_reply, counts_in_stream
from tests.conftest import StartForeman, StartSimulator
from tests.http_helpers import eventually


def ndjson(*documents: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(each).encode() + b"\n" for each in documents)


def sse(*events: tuple[str | None, dict[str, Any] | str]) -> bytes:
    out = b""
    for name, data in events:
        if name is not None:
            out += f"event: {name}\n".encode()
        text = data if isinstance(data, str) else json.dumps(data)
        out += f"data: {text}\n\n".encode()
    return out


CHUNK = {"model": "llama3.2", "message": {"role": "assistant", "content": "hi"}, "done": False}
FINAL = {"model": "llama3.2", "done": True, "prompt_eval_count": 26, "eval_count": 12}
OPENAI_CHUNK = {"object": "chat.completion.chunk", "choices": [{"delta": {"content": "hi"}}]}
OPENAI_USAGE = {"prompt_tokens": 26, "completion_tokens": 12, "total_tokens": 38}
RESPONSE_USAGE = {"input_tokens": 26, "output_tokens": 12, "total_tokens": 38}


@pytest.mark.parametrize(
    ("body", "counts"),
    [
        pytest.param(json.dumps(FINAL).encode(), TokenCounts(26, 12), id="native"),
        pytest.param(
            json.dumps({"model": "llama3.2", "done": True, "eval_count": 3}).encode(),
            TokenCounts(0, 3),
            id="native, the prompt from the cache",
        ),
        pytest.param(
            json.dumps({"model": "m", "embeddings": [[0.1]], "prompt_eval_count": 4}).encode(),
            TokenCounts(4, 0),
            id="native embed",
        ),
        pytest.param(
            json.dumps({"object": "chat.completion", "usage": OPENAI_USAGE}).encode(),
            TokenCounts(26, 12),
            id="openai chat",
        ),
        pytest.param(
            json.dumps(
                {"object": "list", "usage": {"prompt_tokens": 5, "total_tokens": 5}}
            ).encode(),
            TokenCounts(5, 0),
            id="openai embeddings",
        ),
        pytest.param(
            json.dumps({"object": "response", "usage": RESPONSE_USAGE}).encode(),
            TokenCounts(26, 12),
            id="openai responses",
        ),
        pytest.param(
            json.dumps(
                {"type": "message", "usage": {"input_tokens": 26, "output_tokens": 12}}
            ).encode(),
            TokenCounts(26, 12),
            id="anthropic",
        ),
        pytest.param(ndjson(CHUNK, CHUNK, FINAL), TokenCounts(26, 12), id="ndjson read whole"),
        pytest.param(b'{"error":"model not found"}', None, id="an error"),
        pytest.param(b"not json", None, id="not json"),
        pytest.param(b"[1, 2]", None, id="not an object"),
        pytest.param(
            json.dumps({"usage": {"prompt_tokens": "many", "completion_tokens": -1}}).encode(),
            None,
            id="counts that are not counts",
        ),
    ],
)
def test_a_whole_reply_in_each_dialect(body: bytes, counts: TokenCounts | None) -> None:
    assert counts_in_reply(body) == counts


def test_only_the_top_level_counts_count() -> None:
    # A tool call's arguments are the model's words, whatever their keys.
    arguments = {"eval_count": 999, "usage": {"prompt_tokens": 999}}
    call = {"function": {"name": "f", "arguments": arguments}}
    chunk = {**CHUNK, "message": {"role": "assistant", "content": "", "tool_calls": [call]}}
    assert counts_in_stream(ndjson(CHUNK, chunk)) is None
    assert counts_in_stream(ndjson(chunk, FINAL)) == TokenCounts(26, 12)


@pytest.mark.parametrize(
    ("tail", "head", "counts"),
    [
        pytest.param(ndjson(CHUNK, FINAL), b"", TokenCounts(26, 12), id="native ndjson"),
        pytest.param(
            ndjson(CHUNK, FINAL)[:-1], b"", TokenCounts(26, 12), id="native, no last newline"
        ),
        pytest.param(
            sse(
                (None, OPENAI_CHUNK),
                (None, {**OPENAI_CHUNK, "choices": [], "usage": OPENAI_USAGE}),
                (None, "[DONE]"),
            ),
            b"",
            TokenCounts(26, 12),
            id="openai, include_usage",
        ),
        pytest.param(
            sse(
                (None, {**OPENAI_CHUNK, "usage": {"prompt_tokens": 0, "completion_tokens": 0}}),
                (None, {**OPENAI_CHUNK, "choices": [], "usage": OPENAI_USAGE}),
                (None, "[DONE]"),
            ),
            b"",
            TokenCounts(26, 12),
            id="openai completions, zero usage on every chunk",
        ),
        pytest.param(
            sse((None, OPENAI_CHUNK), (None, OPENAI_CHUNK), (None, "[DONE]")),
            b"",
            None,
            id="openai without include_usage: nothing said",
        ),
        pytest.param(
            sse(
                ("response.output_text.done", {"type": "response.output_text.done"}),
                (
                    "response.completed",
                    {"type": "response.completed", "response": {"usage": RESPONSE_USAGE}},
                ),
            ),
            b"",
            TokenCounts(26, 12),
            id="openai responses",
        ),
        pytest.param(
            sse(
                ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                (
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": "end_turn"},
                        "usage": {"input_tokens": 26, "output_tokens": 12},
                    },
                ),
                ("message_stop", {"type": "message_stop"}),
            ),
            b"",
            TokenCounts(26, 12),
            id="anthropic as ollama streams it",
        ),
        pytest.param(
            sse(
                (
                    "message_delta",
                    {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 12}},
                ),
                ("message_stop", {"type": "message_stop"}),
            ),
            sse(
                (
                    "message_start",
                    {
                        "type": "message_start",
                        "message": {"usage": {"input_tokens": 26, "output_tokens": 1}},
                    },
                ),
                ("content_block_start", {"type": "content_block_start"}),
            ),
            TokenCounts(26, 12),
            id="anthropic, the input count in message_start",
        ),
        pytest.param(b"", b"", None, id="nothing"),
    ],
)
def test_a_streams_end_in_each_dialect(
    tail: bytes, head: bytes, counts: TokenCounts | None
) -> None:
    assert counts_in_stream(tail, head) == counts


def test_a_long_stream_is_not_read_past_its_end() -> None:
    # The counts are at the end; a stream that has none there is given up
    # on after a few dozen lines, whatever came before.
    early = ndjson(FINAL) + ndjson(*[CHUNK] * 100)
    assert counts_in_stream(early) is None
    assert counts_in_stream(ndjson(*[CHUNK] * 10, FINAL)) == TokenCounts(26, 12)


# -- through foreman: the relay keeps a stream's end, the worker counts it -----------------

NATIVE, OPENAI, COMPLETIONS = "/api/chat", "/v1/chat/completions", "/v1/completions"
RESPONSES, ANTHROPIC, GENERATE = "/v1/responses", "/v1/messages", "/api/generate"


def call_body(path: str, stream: bool, *, include_usage: bool = True) -> dict[str, Any]:
    text = "Why is the sky blue?"
    messages = [{"role": "user", "content": text}]
    body: dict[str, Any]
    if path == NATIVE:
        body = {"model": "llama3.2", "messages": messages}
    elif path == GENERATE:
        body = {"model": "llama3.2", "prompt": text}
    elif path == ANTHROPIC:
        body = {"model": "llama3.2", "max_tokens": 64, "messages": messages}
    elif path == COMPLETIONS:
        body = {"model": "llama3.2", "prompt": text}
    elif path == RESPONSES:
        body = {"model": "llama3.2", "input": text}
    else:
        body = {"model": "llama3.2", "messages": messages}
    body["stream"] = stream
    if stream and include_usage and path in (OPENAI, COMPLETIONS):
        body["stream_options"] = {"include_usage": True}
    return body


def as_the_client_reads_it(path: str, stream: bool, body: bytes) -> tuple[int, int]:
    """The counts a client of the dialect finds in the reply."""
    if not stream:
        document = json.loads(body)
        if path in (NATIVE, GENERATE):
            return document["prompt_eval_count"], document["eval_count"]
        usage = document["usage"]
        if path in (OPENAI, COMPLETIONS):
            return usage["prompt_tokens"], usage["completion_tokens"]
        return usage["input_tokens"], usage["output_tokens"]
    if path in (NATIVE, GENERATE):
        final = json.loads(body.splitlines()[-1])
        return final["prompt_eval_count"], final["eval_count"]
    events = [
        json.loads(line[len(b"data: ") :])
        for line in body.splitlines()
        if line.startswith(b"data: {")
    ]
    if path in (OPENAI, COMPLETIONS):
        usage = next(e["usage"] for e in events if not e["choices"] and e.get("usage"))
        return usage["prompt_tokens"], usage["completion_tokens"]
    if path == RESPONSES:
        completed = next(e for e in events if e["type"] == "response.completed")
        usage = completed["response"]["usage"]
        return usage["input_tokens"], usage["output_tokens"]
    delta = next(e for e in events if e["type"] == "message_delta")
    return delta["usage"]["input_tokens"], delta["usage"]["output_tokens"]


@pytest.mark.parametrize(
    "tokens_per_second",
    [pytest.param(0.0, id="at once"), pytest.param(400.0, id="token by token")],
)
@pytest_twisted.ensureDeferred
async def test_each_dialects_counts_are_counted_streamed_or_whole(
    reactor: Any,
    start_simulator: StartSimulator,
    start_foreman: StartForeman,
    http: HTTPClient,
    tokens_per_second: float,
) -> None:
    # Token by token, a stream arrives in many pieces: its end is a few of them.
    simulator = await start_simulator(tokens_per_second=tokens_per_second, reply_tokens=40)
    running = await start_foreman(simulator.url)
    queue = running.foreman.queue
    assert queue is not None and queue.usage is not None
    usage = queue.usage

    def counted() -> UsageTotals:
        return usage.since_start().get(NO_KEY, UsageTotals())

    def ran_one_more(before: UsageTotals) -> bool:
        now = counted()
        return now.calls == before.calls + 1 and now.worker_seconds > before.worker_seconds

    for path in (NATIVE, GENERATE, OPENAI, COMPLETIONS, RESPONSES, ANTHROPIC):
        for stream in (False, True):
            before = counted()
            response = await http.post(running.url + path, json=call_body(path, stream))
            body = await response.content()
            assert response.code == 200, (path, stream, body)
            prompt, output = as_the_client_reads_it(path, stream, body)
            assert prompt > 0 and output > 0
            await eventually(partial(ran_one_more, before), reactor)
            after = counted()
            assert (
                after.prompt_tokens - before.prompt_tokens,
                after.output_tokens - before.output_tokens,
            ) == (prompt, output), (path, stream)

    # An OpenAI stream without include_usage says no counts: none are made up.
    before = counted()
    response = await http.post(
        running.url + OPENAI, json=call_body(OPENAI, True, include_usage=False)
    )
    assert response.code == 200
    await response.content()
    await eventually(lambda: ran_one_more(before), reactor)
    after = counted()
    assert (after.prompt_tokens, after.output_tokens) == (
        before.prompt_tokens,
        before.output_tokens,
    )

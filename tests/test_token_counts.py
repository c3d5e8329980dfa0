"""Ollama's token counts in every dialect, whole and streamed (issue 21): read
from a reply's end by :mod:`foreman.wire.token_counts`, and counted per key
when foreman relays the reply (a stream's end as :class:`LineRelay` keeps it)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from foreman.wire.token_counts import TokenCounts, counts_in_reply, counts_in_stream


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

"""Helpers for tests that drive the official OpenAI and Anthropic SDKs at foreman.

The SDKs are synchronous httpx clients: they run in a thread while the
reactor serves foreman and the simulated Ollama on real 127.0.0.1 sockets.
Retries are off, so an error reaches the test as the SDK raises it first.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import anthropic
import openai
from twisted.internet.threads import deferToThread

from tests.http_helpers import LineReader, StreamingClient, within

T = TypeVar("T")
USER: Any = [{"role": "user", "content": "Why is the sky blue?"}]


async def in_thread(function: Callable[[], T]) -> T:
    result: T = await deferToThread(function)
    return result


def openai_client(url: str, api_key: str = "ollama") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0)


def anthropic_client(url: str, **credentials: Any) -> anthropic.Anthropic:
    if not credentials:
        credentials = {"api_key": "ollama"}
    return anthropic.Anthropic(base_url=url, max_retries=0, **credentials)


def warm_up_stream(client: openai.OpenAI | anthropic.Anthropic) -> None:
    """Stream one token, so the SDK has built its stream-event models.

    The first stream an SDK parses in a process builds pydantic validators,
    which holds the GIL for a fifth of a second: the reactor (foreman and the
    simulator, in this process) stalls and the tokens pile up. Only a test
    measuring arrival times needs this.
    """
    if isinstance(client, openai.OpenAI):
        with client.chat.completions.create(
            model="llama3.2", messages=USER, max_tokens=1, stream=True
        ) as stream:
            for _ in stream:
                pass
    else:
        with client.messages.stream(model="llama3.2", max_tokens=1, messages=USER) as stream:
            stream.until_done()


def stream_openai_chat(client: openai.OpenAI) -> tuple[list[str], list[float], Any]:
    """Stream a chat completion: its texts, each chunk's arrival, the last chunk."""
    texts: list[str] = []
    arrivals: list[float] = []
    last: Any = None
    stream = client.chat.completions.create(
        model="llama3.2", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    with stream:
        for chunk in stream:
            arrivals.append(time.monotonic())
            if chunk.choices and chunk.choices[0].delta.content:
                texts.append(chunk.choices[0].delta.content)
            last = chunk
    return texts, arrivals, last


def spread(arrivals: list[float]) -> float:
    """Seconds between the first and the last item's arrival."""
    return arrivals[-1] - arrivals[0]


def raised(call: Callable[[], object]) -> Exception:
    """The exception ``call`` raises (it must raise one)."""
    try:
        call()
    except Exception as e:
        return e
    raise AssertionError("no error")


async def endless_chat(
    reactor: Any, client: StreamingClient, url: str, model: str = "llama3.2", token: str = ""
) -> LineReader:
    """A native streamed chat that generates until the test hangs up; its first line has come."""
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "endless"}],
            "options": {"num_predict": 100_000},
        }
    ).encode()
    headers = {b"Authorization": b"Bearer " + token.encode()} if token else None
    response = await within(client.request(b"POST", url + "/api/chat", body, headers), 5, reactor)
    assert response.code == 200
    reader = client.read_lines(response)
    await within(reader.lines.get(), 5, reactor)
    return reader

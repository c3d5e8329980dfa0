"""Helpers for the tests of daily faults over real processes (issue 16):
Ollama restarting, foreman sent SIGTERM, a store that cannot be written."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import ollama
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from tests.daemons import Daemon
from tests.http_helpers import within
from tests.sdk_helpers import openai_client

T = TypeVar("T")
MODEL = "llama3.2"


def chat(marker: str, tokens: int) -> dict[str, Any]:
    """A native chat body: the simulator's reply repeats ``marker`` ``tokens`` times."""
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": marker}],
        "options": {"num_predict": tokens},
    }


def in_thread(function: Callable[[], T]) -> Deferred[T]:
    """Run a blocking client in a thread of the reactor's pool."""
    running: Deferred[T] = deferToThread(function)
    return running


async def sleep(reactor: Any, seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def until(
    reactor: Any,
    condition: Callable[[], Awaitable[bool] | bool],
    what: str,
    seconds: float = 10.0,
    daemon: Daemon | None = None,
) -> float:
    """Poll ``condition`` until it holds; the seconds it took. Fails after ``seconds``."""
    started = time.monotonic()
    while True:
        if daemon is not None and daemon.process.poll() is not None:
            raise AssertionError(f"twistd exited waiting for {what}: {daemon.log.read_text()}")
        held = condition()
        if not isinstance(held, bool):
            held = await held
        if held:
            return time.monotonic() - started
        if time.monotonic() - started > seconds:
            log = daemon.log.read_text() if daemon is not None else ""
            raise AssertionError(f"timed out after {seconds} s waiting for {what}\n{log}")
        await sleep(reactor, 0.05)


async def health(http: HTTPClient, url: str) -> dict[str, Any]:
    response = await http.get(url + "/healthz")
    report: dict[str, Any] = json.loads(await response.content())
    return report


async def queue_report(http: HTTPClient, url: str) -> dict[str, Any]:
    response = await http.get(url + "/api/foreman/queue")
    report: dict[str, Any] = json.loads(await response.content())
    return report


def ollama_client(url: str) -> ollama.Client:
    # A limit, so that a test fails rather than hangs; the client has none.
    return ollama.Client(host=url, timeout=60)


def reply_text(view: dict[str, Any]) -> str:
    """The completion of a done ``/jobs`` chat job."""
    content: str = view["result"]["message"]["content"]
    return content


#: What a :class:`Stream` asks: the simulator's reply repeats "stream".
STREAM_MESSAGES: Any = [{"role": "user", "content": "stream"}]


class Stream:
    """One client's streamed chat, read in a thread: what came, and how it ended."""

    def __init__(self, client: str, url: str) -> None:
        self.client = client
        self._url = url
        self.chunks: list[Any] = []
        self.first = threading.Event()
        #: When the client returned or raised (``time.monotonic``).
        self.ended_at: float | None = None
        self.outcome: Deferred[Any] = in_thread(self._read)

    def _read(self) -> Any:
        try:
            if self.client == "ollama":
                return self._read_native()
            return self._read_openai()
        except Exception as e:
            return e
        finally:
            self.ended_at = time.monotonic()
            self.first.set()  # whoever waits for a chunk stops waiting

    def _read_native(self) -> list[Any]:
        client = ollama_client(self._url)
        try:
            for part in client.chat(model=MODEL, messages=STREAM_MESSAGES, stream=True):
                self.chunks.append(part)
                self.first.set()
        finally:
            client.close()
        return self.chunks

    def _read_openai(self) -> list[Any]:
        with openai_client(self._url) as client:
            stream = client.chat.completions.create(
                model=MODEL, messages=STREAM_MESSAGES, stream=True
            )
            with stream:
                for chunk in stream:
                    self.chunks.append(chunk)
                    self.first.set()
        return self.chunks

    async def started(self, reactor: Any) -> None:
        """Wait for its first chunk."""
        assert await within(in_thread(lambda: self.first.wait(15)), 20, reactor)
        assert self.chunks, f"the {self.client} stream ended before its first chunk"

    def text(self) -> str:
        if self.client == "ollama":
            return "".join(part.message.content for part in self.chunks)
        return "".join(
            chunk.choices[0].delta.content or "" for chunk in self.chunks if chunk.choices
        )

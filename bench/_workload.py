"""The load generator of ``bench/scheduler.py``: HTTP client, workload plans, callers.

Everything here is the same for both paths (straight at the simulated Ollama
and through foreman): the plans are seeded, and closed-loop callers, open-loop
arrivals and the embedding stream send the same calls either way.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import attrs
from twisted.internet import defer, task
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from bench._common import percentile
from foreman.relay.upstream import BytesBodyProducer

EMBED_MODEL = "all-minilm"
HEADERS = Headers({b"Content-Type": [b"application/json"]})

#: Open-loop chats arrive as a Poisson process at this mean rate. One chat's
#: tokens take 0.2 s (5/s if the model never changed); with a 1 s load every
#: four chats, about 0.45 s (2.2/s): 2.5/s is about the machine's capacity.
ARRIVALS_PER_SECOND = 2.5

#: No single call may take longer than this; the whole run is bounded by it.
REQUEST_TIMEOUT = 120.0


@attrs.frozen
class Settings:
    callers: int
    chats_per_caller: int
    embeds_per_second: float
    baseline_seconds: float
    overhead_rounds: int
    overhead_calls_per_round: int


FULL = Settings(
    callers=6,
    chats_per_caller=8,
    embeds_per_second=10.0,
    baseline_seconds=6.0,
    overhead_rounds=10,
    overhead_calls_per_round=100,
)
QUICK = Settings(
    callers=6,
    chats_per_caller=3,
    embeds_per_second=10.0,
    baseline_seconds=2.0,
    overhead_rounds=4,
    overhead_calls_per_round=50,
)


# -- HTTP ------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    body: bytes
    started: float
    ended: float
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.ended - self.started


class _Body(Protocol):
    """Collects a response body (``readBody`` warns about the Agent's transport)."""

    def __init__(self) -> None:
        self.done: defer.Deferred[bytes] = defer.Deferred()
        self._parts: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self._parts.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._parts))
        else:
            self.done.errback(reason)


class Client:
    """A persistent-connection HTTP client with a timeout on every call; with
    ``token``, every call carries ``Authorization: Bearer <token>``."""

    def __init__(self, reactor: Any, token: str | None = None) -> None:
        self.reactor = reactor
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 64
        self.agent = Agent(reactor, pool=self.pool)
        self.headers = HEADERS.copy()
        if token is not None:
            self.headers.setRawHeaders(b"Authorization", [f"Bearer {token}".encode()])

    def post(self, url: str, document: dict[str, Any] | list[Any]) -> defer.Deferred[Reply]:
        call = defer.ensureDeferred(self._request(b"POST", url, json.dumps(document).encode()))
        call.addTimeout(REQUEST_TIMEOUT, self.reactor)
        return call

    def get(self, url: str) -> defer.Deferred[Reply]:
        call = defer.ensureDeferred(self._request(b"GET", url, None))
        call.addTimeout(REQUEST_TIMEOUT, self.reactor)
        return call

    async def _request(self, method: bytes, url: str, body: bytes | None) -> Reply:
        started = time.perf_counter()
        producer = BytesBodyProducer(body) if body is not None else None
        response: IResponse = await self.agent.request(method, url.encode(), self.headers, producer)
        body_reader = _Body()
        response.deliverBody(body_reader)
        content = await body_reader.done
        headers = {
            name.decode().lower(): values[-1].decode()
            for name, values in response.headers.getAllRawHeaders()
        }
        return Reply(response.code, content, started, time.perf_counter(), headers)

    async def close(self) -> None:
        await self.pool.closeCachedConnections()


def chat_body(model: str, text: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "stream": False,
    }
    if model.startswith("qwen3"):
        body["think"] = False
    return body


def embed_body(index: int) -> dict[str, Any]:
    return {"model": EMBED_MODEL, "input": f"document number {index} about the sky"}


# -- figures ---------------------------------------------------------------------


def summary_ms(samples: list[float]) -> dict[str, float]:
    return {
        "count": len(samples),
        "p50_ms": percentile(samples, 0.50) * 1e3,
        "p95_ms": percentile(samples, 0.95) * 1e3,
        "p99_ms": percentile(samples, 0.99) * 1e3,
        "max_ms": max(samples, default=float("nan")) * 1e3,
    }


# -- part 1: the mixed workload -----------------------------------------------------


def workload(settings: Settings, seed: int, models: Sequence[str]) -> list[list[str]]:
    """Each caller's models, in order: seeded, identical for both runs."""
    rng = random.Random(seed)
    return [
        [rng.choice(models) for _ in range(settings.chats_per_caller)]
        for _ in range(settings.callers)
    ]


def open_schedule(plan: list[list[str]], seed: int) -> list[tuple[float, str]]:
    """The plan's chats (same models, same counts) as seeded Poisson arrivals:
    (seconds after the first, model), identical for both runs."""
    rng = random.Random(seed + 1)
    models = [model for models in plan for model in models]
    rng.shuffle(models)
    schedule, at = [], 0.0
    for model in models:
        schedule.append((at, model))
        at += rng.expovariate(ARRIVALS_PER_SECOND)
    return schedule


class EmbedStream:
    """``/api/embed`` calls at a fixed rate, open loop (not waiting for replies)."""

    def __init__(self, client: Client, url: str, per_second: float) -> None:
        self._client = client
        self._url = url + "/api/embed"
        self._interval = 1.0 / per_second
        self._calls: list[defer.Deferred[None]] = []
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._loop = task.LoopingCall(self._fire)
        self._loop.clock = client.reactor

    def start(self) -> None:
        self._loop.start(self._interval, now=True)

    async def stop(self) -> None:
        """Send no more; wait for every reply still due."""
        if self._loop.running:
            self._loop.stop()
        await defer.gatherResults(self._calls, consumeErrors=True)

    def _fire(self) -> None:
        index = len(self._calls)
        self._calls.append(defer.ensureDeferred(self._one(index)))

    async def _one(self, index: int) -> None:
        try:
            reply = await self._client.post(self._url, embed_body(index))
        except Exception as e:
            self.errors.append(f"embed {index}: {type(e).__name__}: {e}")
            return
        if reply.status != 200:
            self.errors.append(f"embed {index}: {reply.status} {reply.body[:200]!r}")
            return
        self.latencies.append(reply.seconds)


async def sleep(reactor: Any, seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def embeddings_alone(
    client: Client, url: str, settings: Settings, reactor: Any
) -> tuple[list[float], list[str]]:
    stream = EmbedStream(client, url, settings.embeds_per_second)
    stream.start()
    await sleep(reactor, settings.baseline_seconds)
    await stream.stop()
    return stream.latencies, stream.errors


@dataclass
class ChatSample:
    caller: int
    turn: int
    model: str
    status: int
    started: float
    ended: float
    queue_position: str | None
    error: str | None = None


async def one_chat(
    client: Client, chat_url: str, number: int, turn: int, model: str, started: float
) -> ChatSample:
    """One non-streamed chat; its latency counts from ``started`` (when it was due)."""
    text = f"caller {number}, turn {turn}: why is the sky blue?"
    try:
        reply = await client.post(chat_url, chat_body(model, text))
    except Exception as e:
        failure = f"{type(e).__name__}: {e}"
        return ChatSample(number, turn, model, 0, started, time.perf_counter(), None, failure)
    error = None
    if reply.status != 200:
        error = reply.body[:200].decode(errors="replace")
    elif json.loads(reply.body).get("done") is not True:
        error = "reply not done"
    return ChatSample(
        number,
        turn,
        model,
        reply.status,
        started,
        reply.ended,
        reply.headers.get("x-foreman-queue-position"),
        error,
    )


async def closed_loop(client: Client, chat_url: str, plan: list[list[str]]) -> list[ChatSample]:
    """Each caller sends its chats one at a time, each once the last was answered."""

    async def caller(number: int, models: list[str]) -> list[ChatSample]:
        return [
            await one_chat(client, chat_url, number, turn, model, time.perf_counter())
            for turn, model in enumerate(models)
        ]

    per_caller = await defer.gatherResults(
        [defer.ensureDeferred(caller(n, models)) for n, models in enumerate(plan)],
        consumeErrors=True,
    )
    return [sample for samples in per_caller for sample in samples]


async def open_loop(
    client: Client, chat_url: str, schedule: list[tuple[float, str]], reactor: Any
) -> list[ChatSample]:
    """Every chat sent at its time in ``schedule``, whatever is still unanswered."""
    first = time.perf_counter()

    async def send(number: int, offset: float, model: str) -> ChatSample:
        await sleep(reactor, max(0.0, first + offset - time.perf_counter()))
        return await one_chat(client, chat_url, number, 0, model, first + offset)

    calls = [
        defer.ensureDeferred(send(number, offset, model))
        for number, (offset, model) in enumerate(schedule)
    ]
    samples: list[ChatSample] = await defer.gatherResults(calls, consumeErrors=True)
    return samples


async def mixed(
    client: Client,
    url: str,
    settings: Settings,
    chats: Callable[[str], Awaitable[list[ChatSample]]],
) -> tuple[list[ChatSample], EmbedStream]:
    """The chats, with embeddings arriving open-loop for as long as they last."""
    stream = EmbedStream(client, url, settings.embeds_per_second)
    stream.start()
    try:
        samples = await chats(url + "/api/chat")
    finally:
        await stream.stop()
    return samples, stream

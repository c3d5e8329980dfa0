"""The simulated Ollama over real sockets: streaming, backpressure, disconnects, the CLI."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import pytest_twisted
import treq
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from foreman.testing import DEFAULT_MODELS, SimulatedOllama

_CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hello over tcp"}]}


@pytest_twisted.async_yield_fixture
async def running() -> AsyncIterator[Callable[..., Any]]:
    """Start simulators on 127.0.0.1 (real reactor clock); stop them afterwards."""
    from twisted.internet import reactor

    started: list[tuple[SimulatedOllama, Any]] = []

    async def start(**kwargs: Any) -> tuple[SimulatedOllama, int]:
        sim = SimulatedOllama(reactor, **kwargs)
        port = await sim.listen("tcp:0:interface=127.0.0.1")
        started.append((sim, port))
        address: Any = port.getHost()
        return sim, address.port

    yield start
    for sim, port in started:
        sim.shutdown()
        await port.stopListening()


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    from twisted.internet import reactor

    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await deferLater(reactor, 0.01)
    raise AssertionError("condition never became true")


class RawClient(Protocol):
    """A bare HTTP/1.1 client that can stop reading or hang up mid-response."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.closed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        self.closed.callback(None)

    def request(self, path: str, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        assert self.transport is not None
        self.transport.write(
            f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + data
        )

    @property
    def complete(self) -> bool:
        return bytes(self.received).endswith(b"\r\n0\r\n\r\n")


async def connect(port: int) -> RawClient:
    from twisted.internet import reactor

    client: RawClient = await connectProtocol(
        TCP4ClientEndpoint(reactor, "127.0.0.1", port), RawClient()
    )
    return client


@pytest_twisted.ensureDeferred
async def test_listen_serves_the_api(running: Callable[..., Any]) -> None:
    sim, port = await running()
    response = await treq.get(f"http://127.0.0.1:{port}/", persistent=False)
    assert await response.text() == "Ollama is running"
    response = await treq.post(f"http://127.0.0.1:{port}/api/chat", json=_CHAT, persistent=False)
    assert response.headers.getRawHeaders("content-type") == ["application/x-ndjson"]
    lines = (await response.content()).splitlines()
    assert json.loads(lines[0])["message"]["content"] == "hello"
    assert json.loads(lines[-1])["done"] is True
    refused = await treq.get(
        f"http://127.0.0.1:{port}/api/tags",
        headers=Headers({"Host": ["attacker.example"]}),
        persistent=False,
    )
    assert refused.code == 403
    await refused.content()
    assert [r.header("host") for r in sim.requests][-1] == "attacker.example"


@pytest_twisted.ensureDeferred
async def test_tokens_arrive_paced_in_real_time(running: Callable[..., Any]) -> None:
    from twisted.internet import reactor

    sim, port = await running(tokens_per_second=50, reply_tokens=10)
    client = await connect(port)
    started = reactor.seconds()
    client.request("/api/chat", _CHAT)
    await wait_until(lambda: b'"done":false' in client.received)
    first_line = reactor.seconds() - started
    await client.closed
    elapsed = reactor.seconds() - started
    assert client.complete
    assert 0.01 < first_line < 0.15
    assert 0.18 < elapsed < 1.0  # ten tokens at 50/s
    assert sim.completed_generations == 1


@pytest_twisted.ensureDeferred
async def test_a_reader_that_stops_reading_stops_the_generator(running: Callable[..., Any]) -> None:
    from twisted.internet import reactor

    sim, port = await running(token_size=10_000)
    client = await connect(port)
    transport: Any = client.transport
    transport.pauseProducing()  # stop reading: kernel buffers fill up
    client.request(
        "/api/generate", {"model": "llama3.2", "prompt": "bulk", "options": {"num_predict": 2_000}}
    )  # ~20 MB
    await deferLater(reactor, 0.5)
    # Unthrottled, 20 MB would have been generated in well under 0.5 s.
    assert sim.active_generations == 1 and sim.completed_generations == 0
    transport.resumeProducing()
    await client.closed
    assert client.complete and len(client.received) > 20_000_000
    assert sim.completed_generations == 1


@pytest_twisted.ensureDeferred
async def test_hanging_up_mid_stream_cancels_the_generation(running: Callable[..., Any]) -> None:
    sim, port = await running(tokens_per_second=100, reply_tokens=1000)
    client = await connect(port)
    client.request("/api/chat", _CHAT)
    await wait_until(lambda: client.received.count(b'"done":false') >= 3)
    assert sim.active_generations == 1
    assert client.transport is not None
    client.transport.loseConnection()
    await wait_until(lambda: sim.cancelled_requests == 1)
    assert (sim.active_generations, sim.completed_generations) == (0, 0)


@pytest_twisted.ensureDeferred
async def test_hanging_up_during_a_load(running: Callable[..., Any]) -> None:
    sim, port = await running(models=[attrs.evolve(DEFAULT_MODELS[0], load_seconds=30)])
    client = await connect(port)
    client.request("/api/chat", _CHAT)
    await wait_until(lambda: len(sim.requests) == 1)
    assert client.transport is not None
    client.transport.loseConnection()
    await wait_until(lambda: sim.cancelled_requests == 1)
    assert sim.loads == 0 and client.received == b""


class _Output(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.listening: Deferred[str] = Deferred()
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        match = re.search(rb"SIMULATED Ollama .* listening on (http://[\d.:]+)", self.output)
        if match and not self.listening.called:
            self.listening.callback(match.group(1).decode())

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)


@pytest_twisted.ensureDeferred
async def test_the_command_line_runs_a_simulator() -> None:
    from twisted.internet import reactor

    output = _Output()
    process = reactor.spawnProcess(
        output,
        sys.executable,
        [
            sys.executable,
            "-m",
            "foreman.testing",
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--tokens-per-second",
            "200",
            "--load-seconds",
            "0.1",
            "--token-size",
            "4",
        ],
        env=None,
    )
    try:
        url = await output.listening
        response = await treq.post(f"{url}/api/chat", json=_CHAT, persistent=False)
        lines = [json.loads(line) for line in (await response.content()).splitlines()]
        assert lines[0]["message"]["content"] == "hell"
        assert lines[-1]["load_duration"] >= 100_000_000
        assert b"host check: on" in output.output
    finally:
        process.signalProcess("TERM")
        await output.ended

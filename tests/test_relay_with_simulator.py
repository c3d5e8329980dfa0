"""The relay against the simulated Ollama: cancellation it observes, and backpressure."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from foreman.testing import DEFAULT_MODELS, SimModel
from tests.conftest import StartForeman, StartSimulator
from tests.http_helpers import StreamingClient, eventually, within

SLOW_LOADER = SimModel(name="slowload:latest", size=4_000_000_000, load_seconds=30.0)


@pytest_twisted.ensureDeferred
async def test_hanging_up_during_a_model_load_cancels_it_upstream(
    reactor: Any, start_simulator: StartSimulator, start_foreman: StartForeman
) -> None:
    running_sim = await start_simulator(models=[*DEFAULT_MODELS, SLOW_LOADER])
    sim = running_sim.sim
    running = await start_foreman(running_sim.url)
    client = StreamingClient(reactor)
    body = json.dumps({"model": "slowload", "messages": [{"role": "user", "content": "hi"}]})
    response_d = client.request(b"POST", running.url + "/api/chat", body.encode())
    await eventually(lambda: any(r.path == "/api/chat" for r in sim.requests), reactor)
    response_d.cancel()
    response_d.addErrback(lambda _: None)  # the client side of a hang-up
    await eventually(lambda: sim.cancelled_requests == 1, reactor)
    assert sim.active_generations == 0
    sim.shutdown()


@pytest_twisted.ensureDeferred
async def test_hanging_up_mid_stream_stops_generation_upstream(
    reactor: Any, start_simulator: StartSimulator, start_foreman: StartForeman
) -> None:
    running_sim = await start_simulator(tokens_per_second=50.0, reply_tokens=10_000)
    sim = running_sim.sim
    running = await start_foreman(running_sim.url)
    client = StreamingClient(reactor)
    body = json.dumps({"model": "llama3.2", "messages": [{"role": "user", "content": "go"}]})
    response = await within(
        client.request(b"POST", running.url + "/api/chat", body.encode()), 5, reactor
    )
    reader = client.read_lines(response)
    await within(reader.lines.get(), 5, reactor)
    await within(reader.lines.get(), 5, reactor)
    assert sim.active_generations == 1
    reader.abort()
    await eventually(lambda: sim.cancelled_requests == 1 and sim.active_generations == 0, reactor)
    assert sim.completed_generations == 0
    sim.shutdown()


def resident_memory() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class SlowReader(Protocol):
    """Reads about ``rate`` bytes per second by pausing its socket between bursts."""

    def __init__(self, reactor: Any, rate: float, burst: int = 1 << 20) -> None:
        self.reactor = reactor
        self.pause_for = burst / rate
        self.burst = burst
        self.received = 0
        self.since_pause = 0
        self.tail = b""
        self.peak_memory = 0
        self.done: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        self.since_pause += len(data)
        self.tail = (self.tail + data)[-4096:]
        if self.since_pause >= self.burst:
            self.since_pause = 0
            self.peak_memory = max(self.peak_memory, resident_memory())
            transport: Any = self.transport
            transport.pauseProducing()
            self.reactor.callLater(self.pause_for, transport.resumeProducing)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        self.done.callback(None)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads RSS from /proc")
@pytest_twisted.ensureDeferred
async def test_a_slow_reader_slows_the_upstream_instead_of_filling_memory(
    reactor: Any, start_simulator: StartSimulator, start_foreman: StartForeman
) -> None:
    token_size = 16 * 1024
    tokens = 6_400  # about 105 MB of NDJSON
    running_sim = await start_simulator(token_size=token_size)
    running = await start_foreman(running_sim.url)
    client = StreamingClient(reactor)
    body = json.dumps(
        {"model": "llama3.2", "messages": [], "options": {"num_predict": tokens}}
    ).encode()
    # A load call first, so the measured request is pure streaming.
    loaded = await client.request(b"POST", running.url + "/api/chat", body)
    assert json.loads(await treq.content(loaded))["done_reason"] == "load"
    chat = body.replace(b'"messages": []', b'"messages": [{"role": "user", "content": "x"}]')
    baseline = resident_memory()
    response = await within(client.request(b"POST", running.url + "/api/chat", chat), 10, reactor)
    reader = SlowReader(reactor, rate=40e6)
    response.deliverBody(reader)
    await within(reader.done, 60, reactor)
    assert reader.received > 100_000_000
    assert json.loads(reader.tail.rstrip(b"\n").rsplit(b"\n", 1)[-1])["done"] is True
    growth = reader.peak_memory - baseline
    # Without backpressure foreman would hold most of the 100 MB in its
    # write buffer; with it, memory stays within a few socket buffers.
    assert growth < 40_000_000, f"memory grew by {growth / 1e6:.0f} MB"
    running_sim.sim.shutdown()

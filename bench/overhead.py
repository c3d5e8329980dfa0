"""What foreman costs: the same calls straight to Ollama and through foreman, side by side.

This measures the relay: foreman runs with ``--no-queue`` so that calls at
concurrency 16 are not serialised by the worker (that is the queue's job, and
``bench/scheduler.py`` measures what the queue adds). Runs the simulated
Ollama and foreman (under twistd) as separate processes on this machine and
drives both from here, alternating between the direct and the relayed path so
drift in the machine's load hits both alike. Prints:

* added latency p50/p99 for a small non-streamed chat at concurrency 1 and 16,
* throughput at concurrency 16, relayed over direct,
* added time to the first line of a stream,
* per-line relay delay p99 (line arrival minus the simulator's ``created_at``).

Usage: ``python bench/overhead.py [--quick] [--json FILE]``
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from bench._common import main as bench_main
from bench._common import percentile
from bench._processes import foreman, simulated_ollama
from foreman.relay.upstream import BytesBodyProducer

SMALL_CHAT = json.dumps(
    {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}
).encode()
STREAM_CHAT = json.dumps(
    {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": True}
).encode()
HEADERS = Headers({b"Content-Type": [b"application/json"]})


class _Timed(Protocol):
    """Collects a body, noting when the first and each later line arrived."""

    def __init__(self) -> None:
        self.done: defer.Deferred[None] = defer.Deferred()
        self.first_line_at: float | None = None
        self.lines: list[tuple[float, bytes]] = []
        self._partial = b""

    def dataReceived(self, data: bytes) -> None:
        now = time.perf_counter()
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        for line in complete:
            if self.first_line_at is None:
                self.first_line_at = now
            self.lines.append((time.time(), line))

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        self.done.callback(None)


class Driver:
    def __init__(self, reactor: Any) -> None:
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 64
        self.agent = Agent(reactor, pool=pool)
        self.pool = pool

    async def call(self, url: bytes, body: bytes) -> tuple[float, _Timed]:
        started = time.perf_counter()
        response: IResponse = await self.agent.request(
            b"POST", url, HEADERS, BytesBodyProducer(body)
        )
        timed = _Timed()
        response.deliverBody(timed)
        await timed.done
        if response.code != 200:
            raise RuntimeError(f"{url!r} answered {response.code}")
        return started, timed

    async def latencies(self, url: bytes, count: int, concurrency: int) -> list[float]:
        samples: list[float] = []

        async def worker(share: int) -> None:
            for _ in range(share):
                started, _timed = await self.call(url, SMALL_CHAT)
                samples.append(time.perf_counter() - started)

        shares = [count // concurrency] * concurrency
        await defer.gatherResults([defer.ensureDeferred(worker(s)) for s in shares])
        return samples

    async def throughput(self, url: bytes, seconds: float, concurrency: int) -> float:
        deadline = time.perf_counter() + seconds
        completed = 0

        async def worker() -> None:
            nonlocal completed
            while time.perf_counter() < deadline:
                await self.call(url, SMALL_CHAT)
                completed += 1

        started = time.perf_counter()
        await defer.gatherResults([defer.ensureDeferred(worker()) for _ in range(concurrency)])
        return completed / (time.perf_counter() - started)

    async def first_line(self, url: bytes, count: int) -> list[float]:
        samples = []
        for _ in range(count):
            started, timed = await self.call(url, STREAM_CHAT)
            assert timed.first_line_at is not None
            samples.append(timed.first_line_at - started)
        return samples

    async def line_delays(self, url: bytes, streams: int) -> list[float]:
        delays = []
        for _ in range(streams):
            _started, timed = await self.call(url, STREAM_CHAT)
            for arrived, line in timed.lines:
                created = _parse_created_at(json.loads(line)["created_at"])
                delays.append(arrived - created)
        return delays


def _parse_created_at(text: str) -> float:
    # RFC 3339 with nanoseconds: trim to microseconds for datetime.
    head, _, fraction = text.rstrip("Z").partition(".")
    moment = datetime.fromisoformat(head + "." + (fraction + "000000")[:6] + "+00:00")
    return moment.timestamp()


async def alternate(
    measure: Callable[[bytes], Any], direct: bytes, relayed: bytes, rounds: int
) -> tuple[list[Any], list[Any]]:
    """Run ``measure`` on both paths in turns: A, B, A, B, ..."""
    direct_results, relayed_results = [], []
    for _ in range(rounds):
        direct_results.append(await measure(direct))
        relayed_results.append(await measure(relayed))
    return direct_results, relayed_results


def _flatten(results: list[list[float]]) -> list[float]:
    return [sample for batch in results for sample in batch]


async def run(reactor: Any, quick: bool) -> dict[str, Any]:
    scale = 0.25 if quick else 1.0
    results: dict[str, Any] = {}
    driver = Driver(reactor)
    with (
        simulated_ollama("--num-parallel", "32", "--reply-tokens", "8") as fast_sim,
        foreman(fast_sim, "--no-queue") as fast_foreman,
    ):
        direct = (fast_sim + "/api/chat").encode()
        relayed = (fast_foreman + "/api/chat").encode()
        await driver.latencies(direct, 200, 4)  # warm up both paths and the model
        await driver.latencies(relayed, 200, 4)
        for concurrency in (1, 16):
            count = int((1000 if concurrency == 1 else 3200) * scale)

            async def measure(url: bytes, count: int = count, c: int = concurrency) -> list[float]:
                return await driver.latencies(url, count // 4, c)

            d, r = await alternate(measure, direct, relayed, 4)
            d_all, r_all = _flatten(d), _flatten(r)
            results[f"c{concurrency}"] = {
                "direct_p50_ms": percentile(d_all, 0.5) * 1e3,
                "direct_p99_ms": percentile(d_all, 0.99) * 1e3,
                "foreman_p50_ms": percentile(r_all, 0.5) * 1e3,
                "foreman_p99_ms": percentile(r_all, 0.99) * 1e3,
            }

        async def rate(url: bytes) -> float:
            return await driver.throughput(url, 3.0 * scale, 16)

        d_rates, r_rates = await alternate(rate, direct, relayed, 2)
        results["throughput_c16"] = {
            "direct_rps": statistics.mean(d_rates),
            "foreman_rps": statistics.mean(r_rates),
        }

        async def ttfl(url: bytes) -> list[float]:
            return await driver.first_line(url, int(100 * scale))

        d, r = await alternate(ttfl, direct, relayed, 4)
        results["first_line"] = {
            "direct_p50_ms": percentile(_flatten(d), 0.5) * 1e3,
            "foreman_p50_ms": percentile(_flatten(r), 0.5) * 1e3,
        }
    await driver.pool.closeCachedConnections()

    driver = Driver(reactor)
    with (
        simulated_ollama("--tokens-per-second", "50", "--reply-tokens", "100") as paced_sim,
        foreman(paced_sim, "--no-queue") as paced_foreman,
    ):
        direct = (paced_sim + "/api/chat").encode()
        relayed = (paced_foreman + "/api/chat").encode()

        async def delays(url: bytes) -> list[float]:
            return await driver.line_delays(url, max(1, int(4 * scale)))

        d, r = await alternate(delays, direct, relayed, 2)
        results["line_delay"] = {
            "direct_p99_ms": percentile(_flatten(d), 0.99) * 1e3,
            "foreman_p99_ms": percentile(_flatten(r), 0.99) * 1e3,
            "lines": len(_flatten(r)),
        }
    await driver.pool.closeCachedConnections()
    return results


def report(results: dict[str, Any]) -> str:
    c1, c16 = results["c1"], results["c16"]
    rates, first, lines = results["throughput_c16"], results["first_line"], results["line_delay"]
    rows = [
        ("added latency p50, c=1", c1["foreman_p50_ms"] - c1["direct_p50_ms"], "ms", "<= 1 ms"),
        ("added latency p99, c=1", c1["foreman_p99_ms"] - c1["direct_p99_ms"], "ms", ""),
        ("added latency p50, c=16", c16["foreman_p50_ms"] - c16["direct_p50_ms"], "ms", ""),
        ("added latency p99, c=16", c16["foreman_p99_ms"] - c16["direct_p99_ms"], "ms", ""),
        ("throughput c=16, direct", rates["direct_rps"], "req/s", ""),
        ("throughput c=16, foreman", rates["foreman_rps"], "req/s", ""),
        ("throughput ratio", rates["foreman_rps"] / rates["direct_rps"], "x", ">= 0.25"),
        (
            "added time to first line",
            first["foreman_p50_ms"] - first["direct_p50_ms"],
            "ms",
            "<= 2 ms",
        ),
        ("per-line delay p99, direct", lines["direct_p99_ms"], "ms", ""),
        ("per-line delay p99, foreman", lines["foreman_p99_ms"], "ms", ""),
        (
            "added per-line delay p99",
            lines["foreman_p99_ms"] - lines["direct_p99_ms"],
            "ms",
            "<= 2 ms",
        ),
    ]
    out = ["| measure | value | target |", "|---|---:|---|"]
    for name, value, unit, target in rows:
        out.append(f"| {name} | {value:.3f} {unit} | {target} |")
    detail = (
        f"\nc=1: direct p50 {c1['direct_p50_ms']:.2f} ms, foreman p50 {c1['foreman_p50_ms']:.2f} ms"
        f"; c=16: direct p50 {c16['direct_p50_ms']:.2f} ms, "
        f"foreman p50 {c16['foreman_p50_ms']:.2f} ms; lines measured: {lines['lines']}"
    )
    return "\n".join(out) + detail


def main() -> None:
    bench_main(
        __doc__.splitlines()[0],
        "a quarter of the samples",
        lambda reactor, arguments: run(reactor, arguments.quick),
        report,
    )


if __name__ == "__main__":
    main()

"""What foreman costs a stream in each dialect: native NDJSON, OpenAI SSE, Anthropic SSE.

The same streamed chat, straight to the simulated Ollama and through foreman,
in turns, for ``/api/chat`` (NDJSON), ``/v1/chat/completions`` and
``/v1/messages`` (both server-sent events). foreman runs with ``--no-queue``,
as in ``bench/overhead.py``: this measures the relay, not the queue
(``bench/scheduler.py`` measures what the queue adds). Prints, per dialect:

* added time to the first event: request sent to the first complete event
  (an NDJSON line; an SSE event, up to its blank line), p50 through foreman
  minus p50 direct;
* per-event delay p99, direct and through foreman, and what foreman adds.

Per-event delay. The native stream carries the simulator's ``created_at``
(nanoseconds) on each line, so ``bench/overhead.py`` takes arrival minus
``created_at``. The SSE streams carry no such clock (an OpenAI chunk's
``created`` is whole seconds; an Anthropic event has none), so this script
uses the simulator's schedule instead: paced at ``R`` tokens per second, it
emits the k-th token of a stream at ``start + k / R`` (an absolute schedule,
not a chain of sleeps). For the k-th token-carrying event (native: a line with
content; OpenAI: a chunk with ``delta.content``; Anthropic: a
``content_block_delta``) arriving at ``a_k``, its lateness is ``a_k - k / R``,
and its delay is that lateness minus the smallest lateness in the same
stream: how much later than the stream's best-served token it arrived. A
constant cost paid by every event (the extra hop itself) cancels out here and
is what the time to the first event shows; what remains is queuing, batching
or stalls in the relay. The native stream is measured both ways, so the two
methods can be compared on the same run.

Usage: ``python bench/dialects.py [--quick] [--json FILE]``
"""

from __future__ import annotations

import json
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

#: Paced streams: 50 tokens a second, 100 tokens each (two seconds a stream).
TOKENS_PER_SECOND = 50.0
REPLY_TOKENS = 100

MESSAGES = [{"role": "user", "content": "hi"}]


def _body(value: dict[str, Any]) -> bytes:
    return json.dumps(value).encode()


#: name -> (path, body, framing)
DIALECTS: dict[str, tuple[str, bytes, bytes]] = {
    "native": (
        "/api/chat",
        _body({"model": "llama3.2", "messages": MESSAGES, "stream": True}),
        b"\n",
    ),
    "openai": (
        "/v1/chat/completions",
        _body({"model": "llama3.2", "messages": MESSAGES, "stream": True}),
        b"\n\n",
    ),
    "anthropic": (
        "/v1/messages",
        _body({"model": "llama3.2", "max_tokens": 4096, "messages": MESSAGES, "stream": True}),
        b"\n\n",
    ),
}
HEADERS = Headers({b"Content-Type": [b"application/json"], b"Accept": [b"text/event-stream"]})


class _Events(Protocol):
    """Collects a streamed body as events (split on ``separator``), each with
    the ``perf_counter`` and wall-clock time its last byte arrived."""

    def __init__(self, separator: bytes) -> None:
        self.done: defer.Deferred[None] = defer.Deferred()
        self.separator = separator
        #: (perf_counter, time.time(), event bytes)
        self.events: list[tuple[float, float, bytes]] = []
        self._partial = b""

    def dataReceived(self, data: bytes) -> None:
        now, wall = time.perf_counter(), time.time()
        data = self._partial + data
        *complete, self._partial = data.split(self.separator)
        self.events.extend((now, wall, event) for event in complete if event.strip())

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        self.done.callback(None)


def carries_token(dialect: str, event: bytes) -> bool:
    """Whether ``event`` (one NDJSON line or one SSE event) carries a generated token."""
    if dialect == "native":
        line = json.loads(event)
        return not line.get("done") and bool(line.get("message", {}).get("content"))
    fields = dict(line.split(b": ", 1) for line in event.split(b"\n") if b": " in line)
    data = fields.get(b"data", b"")
    if dialect == "anthropic":
        return fields.get(b"event") == b"content_block_delta"
    if not data or data == b"[DONE]":
        return False
    choices = json.loads(data).get("choices") or []
    return bool(choices and choices[0].get("delta", {}).get("content"))


def schedule_delays(arrivals: list[float], tokens_per_second: float) -> list[float]:
    """Each token's arrival against the simulator's schedule, less the stream's best."""
    lateness = [arrived - k / tokens_per_second for k, arrived in enumerate(arrivals)]
    best = min(lateness)
    return [late - best for late in lateness]


def _parse_created_at(text: str) -> float:
    # RFC 3339 with nanoseconds: trim to microseconds for datetime.
    head, _, fraction = text.rstrip("Z").partition(".")
    moment = datetime.fromisoformat(head + "." + (fraction + "000000")[:6] + "+00:00")
    return moment.timestamp()


class Driver:
    def __init__(self, reactor: Any) -> None:
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.agent = Agent(reactor, pool=self.pool)

    async def stream(self, base: str, dialect: str) -> tuple[float, _Events]:
        path, body, separator = DIALECTS[dialect]
        started = time.perf_counter()
        response: IResponse = await self.agent.request(
            b"POST", (base + path).encode(), HEADERS, BytesBodyProducer(body)
        )
        events = _Events(separator)
        response.deliverBody(events)
        await events.done
        if response.code != 200:
            raise RuntimeError(f"{base}{path} answered {response.code}")
        return started, events

    async def first_event(self, base: str, dialect: str, count: int) -> list[float]:
        samples = []
        for _ in range(count):
            started, events = await self.stream(base, dialect)
            samples.append(events.events[0][0] - started)
        return samples

    async def event_delays(self, base: str, dialect: str, streams: int) -> dict[str, list[float]]:
        """``schedule``: delays by the schedule method; ``created_at`` (native only):
        arrival minus the simulator's stamp, as ``bench/overhead.py`` measures."""
        found: dict[str, list[float]] = {"schedule": [], "created_at": []}
        for _ in range(streams):
            _started, events = await self.stream(base, dialect)
            tokens = [(at, wall, e) for at, wall, e in events.events if carries_token(dialect, e)]
            if len(tokens) < REPLY_TOKENS // 2:
                raise RuntimeError(f"{dialect}: only {len(tokens)} token events in a stream")
            found["schedule"] += schedule_delays([at for at, _, _ in tokens], TOKENS_PER_SECOND)
            if dialect == "native":
                found["created_at"] += [
                    wall - _parse_created_at(json.loads(e)["created_at"]) for _, wall, e in tokens
                ]
        return found


async def alternate(
    measure: Callable[[str], Any], direct: str, relayed: str, rounds: int
) -> tuple[list[Any], list[Any]]:
    """Run ``measure`` on both paths in turns: A, B, A, B, ..."""
    direct_results, relayed_results = [], []
    for _ in range(rounds):
        direct_results.append(await measure(direct))
        relayed_results.append(await measure(relayed))
    return direct_results, relayed_results


def _ms(samples: list[float], fraction: float) -> float:
    return percentile(samples, fraction) * 1e3


async def run(reactor: Any, quick: bool) -> dict[str, Any]:
    scale = 0.25 if quick else 1.0
    results: dict[str, Any] = {name: {} for name in DIALECTS}
    driver = Driver(reactor)
    with (
        simulated_ollama("--num-parallel", "32", "--reply-tokens", "8") as fast_sim,
        foreman(fast_sim, "--no-queue") as fast_foreman,
    ):
        for dialect in DIALECTS:  # warm up both paths and the model
            await driver.first_event(fast_sim, dialect, 20)
            await driver.first_event(fast_foreman, dialect, 20)
        for dialect in DIALECTS:

            async def first(base: str, dialect: str = dialect) -> list[float]:
                return await driver.first_event(base, dialect, int(100 * scale))

            d, r = await alternate(first, fast_sim, fast_foreman, 4)
            d_all = [x for batch in d for x in batch]
            r_all = [x for batch in r for x in batch]
            results[dialect]["first_event"] = {
                "direct_p50_ms": _ms(d_all, 0.5),
                "direct_p99_ms": _ms(d_all, 0.99),
                "foreman_p50_ms": _ms(r_all, 0.5),
                "foreman_p99_ms": _ms(r_all, 0.99),
                "samples": len(r_all),
            }
    await driver.pool.closeCachedConnections()

    driver = Driver(reactor)
    paced = ("--tokens-per-second", f"{TOKENS_PER_SECOND:g}", "--reply-tokens", str(REPLY_TOKENS))
    with (
        simulated_ollama(*paced) as paced_sim,
        foreman(paced_sim, "--no-queue") as paced_foreman,
    ):
        for dialect in DIALECTS:

            async def delays(base: str, dialect: str = dialect) -> dict[str, list[float]]:
                return await driver.event_delays(base, dialect, max(1, int(4 * scale)))

            d, r = await alternate(delays, paced_sim, paced_foreman, 2)
            figures: dict[str, Any] = {}
            for method in ("schedule", "created_at"):
                d_all = [x for batch in d for x in batch[method]]
                r_all = [x for batch in r for x in batch[method]]
                if r_all:
                    figures[method] = {
                        "direct_p99_ms": _ms(d_all, 0.99),
                        "foreman_p99_ms": _ms(r_all, 0.99),
                        "direct_max_ms": max(d_all) * 1e3,
                        "foreman_max_ms": max(r_all) * 1e3,
                        "events": len(r_all),
                    }
            results[dialect]["event_delay"] = figures
    await driver.pool.closeCachedConnections()
    return results


def report(results: dict[str, Any]) -> str:
    out = [
        "| dialect | added time to first event (p50) | per-event delay p99, direct → foreman"
        " | added per-event delay p99 |",
        "|---|---:|---:|---:|",
    ]
    for dialect, figures in results.items():
        first = figures["first_event"]
        delay = figures["event_delay"]["schedule"]
        out.append(
            f"| {dialect} | {first['foreman_p50_ms'] - first['direct_p50_ms']:.3f} ms"
            f" | {delay['direct_p99_ms']:.3f} → {delay['foreman_p99_ms']:.3f} ms"
            f" | {delay['foreman_p99_ms'] - delay['direct_p99_ms']:.3f} ms |"
        )
    out.append("| target | ≤ 2 ms | | ≤ 2 ms |")
    native = results["native"]["event_delay"].get("created_at")
    if native:
        out.append(
            "\nNative per-line delay p99 by the simulator's created_at (bench/overhead.py's"
            f" method): direct {native['direct_p99_ms']:.3f} ms, foreman"
            f" {native['foreman_p99_ms']:.3f} ms, added"
            f" {native['foreman_p99_ms'] - native['direct_p99_ms']:.3f} ms."
        )
    detail = "; ".join(
        f"{dialect}: first event direct p50 {f['first_event']['direct_p50_ms']:.2f} ms,"
        f" foreman p50 {f['first_event']['foreman_p50_ms']:.2f} ms,"
        f" {f['event_delay']['schedule']['events']} token events, largest delay direct"
        f" {f['event_delay']['schedule']['direct_max_ms']:.2f} ms, foreman"
        f" {f['event_delay']['schedule']['foreman_max_ms']:.2f} ms"
        for dialect, f in results.items()
    )
    return "\n".join(out) + "\n\n" + detail


def main() -> None:
    bench_main(
        __doc__.splitlines()[0],
        "a quarter of the samples",
        lambda reactor, arguments: run(reactor, arguments.quick),
        report,
    )


if __name__ == "__main__":
    main()

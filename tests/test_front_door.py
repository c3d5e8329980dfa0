"""The front door over real sockets: arrival deadlines (408), idle connections,
oversized headers (431, 414), the connection cap, and 499 in the access log."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher

from tests.conftest import RunningForeman, StartForeman, StartSimulator
from tests.http_helpers import StreamingClient, eventually, within
from tests.raw_clients import RawConnection, connect, parse_answer, trickle

FAST = {"header_timeout": 1.0, "body_timeout": 1.0, "idle_timeout": 1.0}


@pytest.fixture
def log_events() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


def access(events: list[LogEvent], path: str) -> list[LogEvent]:
    return [e for e in events if e.get("log_namespace") == "foreman.access" and e["path"] == path]


async def closed_within(connection: RawConnection, seconds: float, reactor: Any) -> bytes:
    received: bytes = await within(connection.closed, seconds, reactor)
    return received


# -- arrival deadlines --------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_headers_trickling_in_get_408_within_the_limit(
    reactor: Any, simulator: Any, start_foreman: StartForeman, log_events: list[LogEvent]
) -> None:
    running = await start_foreman(simulator.url, **FAST)
    connection = await connect(reactor, running.url)
    started = time.monotonic()
    # A header byte every 0.2 s: each byte would restart an idle timer.
    connection.send(b"GET /api/tags HTTP/1.1\r\n")
    sending = trickle(connection, b"Host: x\r\nX-Slow: " + b"a" * 200, 0.2, reactor)
    answer = parse_answer(await closed_within(connection, 5, reactor))
    took = time.monotonic() - started
    assert sending.running is False or connection.open is False
    assert answer.status == 408
    assert answer.json() == {"error": "foreman: the request's headers took longer than 1s"}
    assert answer.headers[b"connection"] == b"close"
    assert 1.0 <= took < 2.5
    await eventually(lambda: bool(access(log_events, "/api/tags")), reactor, 8)
    assert access(log_events, "/api/tags")[0]["status"] == 408


@pytest_twisted.ensureDeferred
async def test_a_request_line_trickling_in_gets_408_and_an_access_line(
    reactor: Any, simulator: Any, start_foreman: StartForeman, log_events: list[LogEvent]
) -> None:
    running = await start_foreman(simulator.url, **FAST)
    connection = await connect(reactor, running.url)
    trickle(connection, b"GET /api/tags HTTP/1.1\r\n", 0.2, reactor)
    answer = parse_answer(await closed_within(connection, 5, reactor))
    assert answer.status == 408
    await eventually(lambda: bool(access(log_events, "?")), reactor)
    assert access(log_events, "?")[0]["status"] == 408


@pytest_twisted.ensureDeferred
async def test_a_body_trickling_in_gets_408_in_the_callers_dialect(
    reactor: Any, simulator: Any, start_foreman: StartForeman
) -> None:
    running = await start_foreman(simulator.url, **FAST)
    connection = await connect(reactor, running.url)
    body = json.dumps({"model": "llama3.2", "messages": []}).encode().ljust(400)
    connection.send(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    started = time.monotonic()
    trickle(connection, body, 0.2, reactor)
    answer = parse_answer(await closed_within(connection, 5, reactor))
    assert answer.status == 408
    assert answer.json()["error"]["message"] == "foreman: the request's body took longer than 1s"
    assert 1.0 <= time.monotonic() - started < 2.5


@pytest_twisted.ensureDeferred
async def test_idle_connections_are_closed_after_the_idle_timeout(
    reactor: Any, simulator: Any, start_foreman: StartForeman
) -> None:
    running = await start_foreman(simulator.url, **FAST)
    silent = await connect(reactor, running.url)
    served = await connect(reactor, running.url)
    served.send(b"GET /api/version HTTP/1.1\r\nHost: x\r\n\r\n")
    await eventually(lambda: b"\r\n\r\n" in served.received, reactor)
    started = time.monotonic()
    # Kept alive after its answer, then idle: closed, as is one never used.
    assert parse_answer(await closed_within(served, 5, reactor)).status == 200
    assert await closed_within(silent, 5, reactor) == b""
    assert 0.5 <= time.monotonic() - started < 2.5


@pytest_twisted.ensureDeferred
async def test_callers_waiting_in_the_queue_or_on_a_slow_stream_are_never_cut(
    reactor: Any, start_simulator: StartSimulator, start_foreman: StartForeman
) -> None:
    # Each call takes about 2.5 s, a token every 0.7 s: longer than every limit.
    sim = await start_simulator(tokens_per_second=1.4, reply_tokens=3)
    running = await start_foreman(sim.url, **{k: 0.5 for k in FAST})
    client = StreamingClient(reactor)

    async def call(text: str) -> list[dict[str, Any]]:
        body = json.dumps(
            {"model": "llama3.2", "messages": [{"role": "user", "content": text}]}
        ).encode()
        response = await client.request(b"POST", running.url + "/api/chat", body)
        assert response.code == 200
        lines = client.read_lines(response)
        await lines.ended
        return lines.json_lines()

    first, second = (ensureDeferred(call(text)) for text in ("one", "two"))
    for reply in (await within(first, 20, reactor), await within(second, 20, reactor)):
        assert reply[-1]["done"] is True and len(reply) == 4
    sim.sim.shutdown()


# -- oversized headers ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status", "message_start"),
    [
        (
            b"POST /jobs HTTP/1.1\r\nHost: x\r\nIdempotency-Key: " + b"k" * 20_000 + b"\r\n\r\n",
            431,
            "foreman: request headers too large",
        ),
        (
            b"GET /api/tags HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-H%d: %d\r\n" % (n, n) for n in range(600))
            + b"\r\n",
            431,
            "foreman: request headers too large",
        ),
        (
            b"GET /api/tags?" + b"q" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            414,
            "foreman: the request line is too long",
        ),
        (
            b"POST /api/chat HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
            400,
            "foreman: malformed HTTP request",
        ),
    ],
    ids=["one huge header", "too many headers", "huge request line", "malformed header"],
)
@pytest_twisted.ensureDeferred
async def test_oversized_headers_get_an_answer_with_a_body(
    reactor: Any,
    simulator: Any,
    start_foreman: StartForeman,
    request_bytes: bytes,
    status: int,
    message_start: str,
) -> None:
    running = await start_foreman(simulator.url)
    connection = await connect(reactor, running.url)
    connection.send(request_bytes)
    answer = parse_answer(await closed_within(connection, 5, reactor))
    assert answer.status == status
    assert answer.json()["error"].startswith(message_start)
    await _still_answers(reactor, running)


async def _still_answers(reactor: Any, running: RunningForeman) -> None:
    connection = await connect(reactor, running.url)
    connection.send(b"GET /api/version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert parse_answer(await closed_within(connection, 5, reactor)).status == 200


# -- 499 ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_caller_who_left_is_logged_with_499(
    reactor: Any,
    start_simulator: StartSimulator,
    start_foreman: StartForeman,
    log_events: list[LogEvent],
) -> None:
    sim = await start_simulator(tokens_per_second=20.0, reply_tokens=10_000)
    running = await start_foreman(sim.url)
    client = StreamingClient(reactor)
    body = json.dumps({"model": "llama3.2", "messages": [{"role": "user", "content": "x"}]})
    first = await within(
        client.request(b"POST", running.url + "/api/chat", body.encode()), 5, reactor
    )
    lines = client.read_lines(first)
    await within(lines.lines.get(), 5, reactor)
    queued: Deferred[Any] = client.request(
        b"POST", running.url + "/api/generate", b'{"model":"gemma3:12b","prompt":"y"}'
    )
    queue = running.foreman.queue
    assert queue is not None
    await eventually(lambda: queue.worker.scheduler.depth == 1, reactor)
    queued.cancel()
    queued.addErrback(lambda _: None)
    lines.abort()
    await eventually(lambda: len(access(log_events, "/api/generate")) == 1, reactor)
    await eventually(lambda: len(access(log_events, "/api/chat")) == 1, reactor)
    for path in ("/api/generate", "/api/chat"):  # mid-queue, mid-stream
        (line,) = access(log_events, path)
        assert line["status"] == 499 and line["client_gone"] is True
        assert "499" in line["line"]
    sim.sim.shutdown()


# -- the connection cap --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_at_the_cap_the_longest_idle_connection_makes_room(
    reactor: Any, simulator: Any, start_foreman: StartForeman
) -> None:
    running = await start_foreman(simulator.url, max_connections=4)
    idle = []
    for _ in range(4):
        idle.append(await connect(reactor, running.url))
        await eventually(lambda: running.foreman.site.connections.count == len(idle), reactor)
    # A fifth caller is served at once; the oldest idle connection gave way.
    await _still_answers(reactor, running)
    assert await closed_within(idle[0], 2, reactor) == b""
    assert all(each.open for each in idle[1:])
    assert running.foreman.site.connections.evicted == 1
    metrics = running.foreman.metrics.render().decode()
    assert "foreman_client_connections_limit 4.0" in metrics
    assert "foreman_client_connections_closed_idle_total 1.0" in metrics


@pytest_twisted.ensureDeferred
async def test_at_the_cap_with_every_connection_busy_a_newcomer_gets_503(
    reactor: Any, start_simulator: StartSimulator, start_foreman: StartForeman
) -> None:
    sim = await start_simulator(tokens_per_second=20.0, reply_tokens=10_000)
    running = await start_foreman(sim.url, max_connections=3)
    busy = []
    for n in range(3):  # one streaming, two waiting in the queue
        connection = await connect(reactor, running.url)
        body = json.dumps({"model": "llama3.2", "messages": [{"role": "user", "content": str(n)}]})
        connection.send(
            b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body.encode())
        )
        busy.append(connection)
    queue = running.foreman.queue
    assert queue is not None
    await eventually(lambda: queue.worker.scheduler.depth == 2, reactor)
    newcomer = await connect(reactor, running.url)
    answer = parse_answer(await closed_within(newcomer, 5, reactor))
    assert answer.status == 503
    assert answer.headers[b"retry-after"] == b"1"
    assert answer.json()["error"].startswith("foreman: too many connections")
    # Nobody with a request in progress was dropped.
    assert all(each.open for each in busy)
    assert running.foreman.site.connections.refused == 1
    assert (
        "foreman_client_connections_refused_total 1.0" in running.foreman.metrics.render().decode()
    )
    for each in busy:
        each.close()
    sim.sim.shutdown()

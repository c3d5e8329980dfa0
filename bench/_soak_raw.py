"""The raw-socket side of ``bench/soak.py``'s load: hang-ups, idle and slow connections,
and requests no HTTP client library would send.

An HTTP client library hides what these need: the moment a connection is cut
(with a reset or a FIN), a request's headers trickled a few bytes at a time,
a connection held open and idle. So they write bytes on a plain TCP
connection and read what comes back.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from bench._soak_load import Tally, chat_body

#: How long any raw exchange may take before it counts as hung.
RAW_TIMEOUT = 120.0


class Stop:
    """Fires every waiter once the load stops."""

    def __init__(self) -> None:
        self.stopped = False
        self._waiters: list[defer.Deferred[None]] = []

    def wait(self) -> defer.Deferred[None]:
        waiter: defer.Deferred[None] = defer.Deferred()
        if self.stopped:
            waiter.callback(None)
        else:
            self._waiters.append(waiter)
        return waiter

    def fire(self) -> None:
        self.stopped = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)


@dataclass
class FrontDoor:
    """The header, body and idle timeouts and connection cap of the foreman under test,
    when it has them (seconds; ``None``: it has no such option)."""

    header_timeout: float | None = None
    body_timeout: float | None = None
    idle_timeout: float | None = None
    max_connections: int | None = None
    #: The options these were read from, as ``twistd foreman --help`` names them.
    options: list[str] = field(default_factory=list)


class Raw(Protocol):
    """A plain connection: keeps what arrives and when, and fires ``closed`` at the end."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.received = b""
        self.first_byte_at: float | None = None
        self.closed: defer.Deferred[None] = defer.Deferred()
        self.waiting: list[tuple[Callable[[bytes], bool], defer.Deferred[None]]] = []
        self.gone = False

    def dataReceived(self, data: bytes) -> None:
        if self.first_byte_at is None:
            self.first_byte_at = time.monotonic()
        self.received += data
        for entry in list(self.waiting):
            arrived, waiter = entry
            if arrived(self.received) and not waiter.called:
                self.waiting.remove(entry)
                waiter.callback(None)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.gone = True
        self.closed.callback(None)
        for _, waiter in self.waiting:
            if not waiter.called:
                waiter.errback(ConnectionError(f"closed: {reason.getErrorMessage()}"))

    def until(
        self, marker: bytes, count: int = 1, seconds: float = RAW_TIMEOUT
    ) -> defer.Deferred[None]:
        """Fires once ``marker`` has arrived ``count`` times; fails if the connection
        ends first."""
        return self.until_true(lambda received: received.count(marker) >= count, seconds)

    def until_true(
        self, arrived: Callable[[bytes], bool], seconds: float = RAW_TIMEOUT
    ) -> defer.Deferred[None]:
        """Fires once ``arrived(everything received)``; fails if the connection ends first."""
        waiter: defer.Deferred[None] = defer.Deferred()
        if arrived(self.received):
            waiter.callback(None)
        elif self.gone:
            waiter.errback(ConnectionError("closed"))
        else:
            self.waiting.append((arrived, waiter))
            waiter.addTimeout(seconds, self.reactor)
        return waiter

    @property
    def status(self) -> int | None:
        line = self.received.split(b"\r\n", 1)[0].split()
        return int(line[1]) if len(line) > 1 and line[1].isdigit() else None

    def send(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        """Abort the connection if it is still open (on any path that gives up on it)."""
        if self.transport is not None and not self.gone:
            cast(ITCPTransport, self.transport).abortConnection()

    def cut(self, rng: random.Random) -> str:
        """Hang up as a client that dies (reset) or one that closes (FIN) would."""
        if self.transport is None:
            return "gone"
        if rng.random() < 0.5:
            cast(ITCPTransport, self.transport).abortConnection()
            return "reset"
        self.transport.loseConnection()
        return "FIN"


async def connect(raw: Raw, port: int) -> None:
    """Connect ``raw`` (made before, so that every path can close it) to foreman."""
    endpoint = TCP4ClientEndpoint(raw.reactor, "127.0.0.1", port, timeout=10)
    await connectProtocol(endpoint, raw)


def request_bytes(
    method: str, path: str, token: str | None, body: bytes = b"", **more: str
) -> bytes:
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if token is not None:
        head.append(f"Authorization: Bearer {token}")
    if body or method == "POST":
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    head += [f"{name.replace('_', '-')}: {value}" for name, value in more.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _sleep(reactor: Any, seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


# -- hang-ups -----------------------------------------------------------------------------


async def hang_up_mid_stream(
    reactor: Any, port: int, token: str, tally: Tally, rng: random.Random, n: int
) -> None:
    """A streamed chat, cut after its third line."""
    kind = "hang-up mid-stream"
    body = json.dumps(chat_body(rng, n)).encode()
    raw = Raw(reactor)
    try:
        await connect(raw, port)
        raw.send(request_bytes("POST", "/api/chat", token, body))
        await raw.until(b"\r\n\r\n")
        if raw.status != 200:
            raw.cut(rng)
            tally.unexpected(kind, f"answered {raw.status}: {raw.received[:200]!r}")
            return
        await raw.until(b"}\n", count=3)
    except Exception as e:
        raw.close()
        tally.unexpected(kind, f"{type(e).__name__}: {e}")
        return
    if b'"done":true' in raw.received.replace(b" ", b""):
        raw.close()
        tally.unexpected(kind, "the stream ended before the hang-up")
        return
    how = raw.cut(rng)
    tally.on_purpose(kind, f"after 3 lines ({how})")


async def hang_up_mid_queue(
    reactor: Any, port: int, token: str, tally: Tally, rng: random.Random, n: int
) -> None:
    """A chat (half of them batch, which waits longer), cut soon after it was sent."""
    kind = "hang-up mid-queue"
    body = json.dumps(chat_body(rng, n, stream=rng.random() < 0.5)).encode()
    priority = rng.choice(("interactive", "batch"))
    raw = Raw(reactor)
    try:
        await connect(raw, port)
        request = request_bytes("POST", "/api/chat", token, body, X_Foreman_Priority=priority)
        raw.send(request)
        await _sleep(reactor, rng.uniform(0.02, 0.4))
    except Exception as e:
        raw.close()
        tally.unexpected(kind, f"{type(e).__name__}: {e}")
        return
    if raw.gone:
        tally.unexpected(kind, f"closed by foreman before the hang-up: {raw.received[:200]!r}")
        return
    status = raw.status
    if status is not None and status != 200:
        tally.unexpected(kind, f"answered {status}: {raw.received[:200]!r}")
    where = "before any answer" if raw.first_byte_at is None else "once answering"
    how = raw.cut(rng)
    tally.on_purpose(kind, f"{priority}, {where} ({how})")


# -- requests no client library sends ---------------------------------------------------------


def raw_hostile_requests(token: str) -> list[tuple[str, bytes]]:
    auth = f"Authorization: Bearer {token}\r\n".encode()
    return [
        ("garbage request line", b"GARBAGE\r\n\r\n"),
        (
            "lying Content-Length (1 GB)",
            b"POST /api/chat HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Length: 1000000000\r\n"
            b"Content-Type: application/json\r\n\r\n{}",
        ),
        (
            "header over 16 KB",
            b"GET /api/version HTTP/1.1\r\nHost: x\r\n"
            + auth
            + b"X-Big: "
            + b"a" * 20_000
            + b"\r\n\r\n",
        ),
        ("HTTP/0.9-style request", b"GET /\r\n\r\n"),
        (
            "bad Content-Length",
            b"POST /api/chat HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Length: -5\r\n\r\n",
        ),
    ]


async def raw_hostile(reactor: Any, port: int, token: str, tally: Tally, n: int) -> None:
    """One malformed request: answered 4xx, or cut at once (what Twisted does for some)."""
    requests = raw_hostile_requests(token)
    name, request = requests[n % len(requests)]
    raw = Raw(reactor)
    try:
        await connect(raw, port)
        raw.send(request)
        with contextlib.suppress(ConnectionError):  # closed without (a whole) answer
            await raw.until(b"\r\n\r\n", seconds=30)
        raw.cut(random.Random(n))
    except Exception as e:
        raw.close()
        tally.unexpected("raw hostile", f"{name}: {type(e).__name__}: {e}")
        return
    status = raw.status
    if status is not None and 400 <= status < 500:
        tally.on_purpose("raw hostile", f"{name}: {status}")
    elif status is None:  # every refusal is an answer (ADR-0022)
        tally.unexpected("raw hostile", f"{name}: closed without an answer")
    else:
        tally.unexpected("raw hostile", f"{name}: answered {status}: {raw.received[:200]!r}")


# -- idle and slow connections ---------------------------------------------------------------


def _at_least(size: int, received: bytes) -> bool:
    return len(received) >= size


async def _exchange(raw: Raw, request: bytes) -> int | None:
    """Send a GET on a kept-alive connection and read its whole answer (Content-Length)."""
    raw.received = b""
    raw.send(request)
    await raw.until(b"\r\n\r\n", seconds=30)
    head = raw.received.partition(b"\r\n\r\n")[0]
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            whole = len(head) + 4 + int(value)
            await raw.until_true(partial(_at_least, whole), 30)
    return raw.status


async def idle_holder(
    reactor: Any,
    port: int,
    token: str,
    tally: Tally,
    rng: random.Random,
    front: FrontDoor,
    stop: Stop,
) -> None:
    """A connection held open and idle for a while (after one request, or before any),
    then used: foreman must still answer on it, unless it has an idle timeout and cut it.
    When the load stops it is used at once."""
    kind = "idle connection"
    hold = rng.uniform(20, 90)
    request = request_bytes("GET", "/api/version", token)
    raw = Raw(reactor)
    try:
        await connect(raw, port)
        first = rng.random() < 0.7
        if first and await _exchange(raw, request) != 200:
            tally.unexpected(kind, f"first request answered {raw.received[:200]!r}")
            raw.cut(rng)
            return
        started = time.monotonic()
        sleeping = task.deferLater(reactor, hold, lambda: None)
        waiting = [raw.closed, sleeping, stop.wait()]
        await defer.DeferredList(waiting, fireOnOneCallback=True, consumeErrors=True)
        sleeping.cancel()  # a no-op once it has fired
        idle = time.monotonic() - started
        # The header deadline counts from the first byte: before any, only the idle
        # timeout runs.
        limit = front.idle_timeout
        if raw.gone:
            if limit is not None and idle >= limit - 1:
                tally.on_purpose(kind, "cut by foreman when idle")
            else:
                tally.unexpected(kind, f"closed by foreman after {idle:.1f} s idle")
            return
        status = await _exchange(raw, request)
    except Exception as e:
        raw.close()
        tally.unexpected(kind, f"{type(e).__name__}: {e}")
        return
    raw.cut(rng)
    if status == 200:
        tally.ok(kind, "used after idling" if first else "first request after idling")
    else:
        tally.unexpected(kind, f"after {hold:.0f} s idle answered {raw.received[:200]!r}")


async def slow_sender(
    reactor: Any, port: int, token: str, tally: Tally, rng: random.Random, n: int, front: FrontDoor
) -> None:
    """A request trickled a few bytes a second: its headers (even ``n``) or its body.
    With a header or body timeout foreman must cut it with 408; without, answer it."""
    kind = "slow sender"
    headers_slow = n % 2 == 0
    limit = front.header_timeout if headers_slow else front.body_timeout
    seconds = min(75.0, limit + 10) if limit is not None else 20.0
    body = json.dumps({"model": "all-minilm", "input": "slow " * 40}).encode()
    request = request_bytes("POST", "/api/embed", token, body, X_Pad="p" * 60)
    split = request.index(b"\r\n\r\n") + 4
    # (sent at once, trickled over ``seconds``, sent at once after)
    if headers_slow:
        before, trickled, after = request[:20], request[20:split], request[split:]
    else:
        before, trickled, after = request[:split], request[split:], b""
    step = max(1, -(-len(trickled) // int(seconds)))
    pieces = [trickled[i : i + step] for i in range(0, len(trickled), step)]
    started = time.monotonic()
    raw = Raw(reactor)
    try:
        await connect(raw, port)
        raw.send(before)
        for piece in pieces:
            await _sleep(reactor, seconds / len(pieces))
            if raw.gone or raw.received:
                break
            raw.send(piece)
        else:
            raw.send(after)
        if not raw.gone:
            await raw.until(b"\r\n\r\n", seconds=30)
    except ConnectionError:
        pass
    except Exception as e:
        raw.close()
        tally.unexpected(kind, f"{type(e).__name__}: {e}")
        return
    took = time.monotonic() - started
    what = "headers" if headers_slow else "body"
    status = raw.status
    raw.cut(rng)
    if limit is None:
        if status == 200:
            tally.ok(kind, f"slow {what} answered (no timeout option)")
        else:
            tally.unexpected(
                kind, f"slow {what}: {status} after {took:.0f} s: {raw.received[:200]!r}"
            )
    elif status == 408 and took <= limit + 5:
        tally.on_purpose(kind, f"slow {what} cut with 408")
    else:
        tally.unexpected(
            kind, f"slow {what}: {status} after {took:.0f} s ({what} timeout {limit:g} s)"
        )

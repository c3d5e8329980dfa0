"""Client-side helpers for tests that need to see bytes as a socket delivers them."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from foreman.relay.upstream import BytesBodyProducer


def within(d: Deferred[Any], seconds: float, reactor: Any) -> Deferred[Any]:
    """Fail the test instead of hanging when something never happens."""
    return d.addTimeout(seconds, reactor)


async def eventually(condition: Callable[[], bool], reactor: Any, seconds: float = 5.0) -> None:
    """Wait (briefly, on the real reactor) for another socket's side to catch up."""
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("condition never became true")


class LineReader(Protocol):
    """Hands each NDJSON line to the test the moment it is received."""

    def __init__(self) -> None:
        self.lines: DeferredQueue[bytes] = DeferredQueue()
        self.received: list[bytes] = []
        #: Fires with ``None`` when the body ends; the reason is in ``end``.
        self.ended: Deferred[None] = Deferred()
        self.end: Failure | None = None
        self._partial = b""

    def dataReceived(self, data: bytes) -> None:
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        for line in complete:
            self.received.append(line)
            self.lines.put(line)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        self.end = reason
        self.ended.callback(None)

    def abort(self) -> None:
        """The caller hangs up."""
        self.transport.stopProducing()  # type: ignore[union-attr]

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.received]


class StreamingClient:
    """A raw Agent client (no pooling, so hanging up really closes the socket)."""

    def __init__(self, reactor: Any) -> None:
        self.agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))

    def request(
        self,
        method: bytes,
        url: str,
        body: bytes | None = None,
        headers: dict[bytes, bytes] | None = None,
    ) -> Deferred[IResponse]:
        raw = Headers({name: [value] for name, value in (headers or {}).items()})
        producer = BytesBodyProducer(body) if body is not None else None
        return self.agent.request(method, url.encode(), raw, producer)

    @staticmethod
    def read_lines(response: IResponse) -> LineReader:
        reader = LineReader()
        response.deliverBody(reader)
        return reader

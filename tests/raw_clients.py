"""Raw TCP clients on the test's reactor: for what an HTTP library will not
do on purpose (trickle a request, hold a connection idle, send oversized
headers) and for reading exactly what foreman sends back."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure


class RawConnection(Protocol):
    def __init__(self) -> None:
        self.received = bytearray()
        #: Fires with everything received once the connection is gone.
        self.closed: Deferred[bytes] = Deferred()
        self.open = False

    def connectionMade(self) -> None:
        self.open = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.open = False
        if not self.closed.called:
            self.closed.callback(bytes(self.received))

    def send(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def close(self) -> None:
        if self.open:
            self.transport.loseConnection()  # type: ignore[union-attr]


async def connect(reactor: Any, url: str) -> RawConnection:
    parts = urlsplit(url)
    endpoint = TCP4ClientEndpoint(reactor, parts.hostname or "127.0.0.1", parts.port or 80)
    connection: RawConnection = await connectProtocol(endpoint, RawConnection())
    return connection


def trickle(connection: RawConnection, data: bytes, every: float, reactor: Any) -> LoopingCall:
    """Send ``data`` one byte every ``every`` seconds until it or the connection ends."""
    remaining = iter(data)

    def one() -> None:
        byte = next(remaining, None)
        if byte is None or not connection.open:
            loop.stop()
            return
        connection.send(bytes([byte]))

    loop = LoopingCall(one)
    loop.clock = reactor
    loop.start(every, now=True).addErrback(lambda _: None)
    return loop


@attrs.frozen
class RawAnswer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def parse_answer(raw: bytes) -> RawAnswer:
    """The first HTTP response in ``raw`` (Content-Length framed)."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get(b"content-length", b"0"))
    return RawAnswer(status, headers, rest[:length])

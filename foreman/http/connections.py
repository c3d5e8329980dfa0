"""The cap on open client connections, and who gives way at it.

Every connection holds a file descriptor, and the process has a limited
number (256 by default for a launchd agent): Ollama connections, the SQLite
files and webhook deliveries need theirs too. So the site accepts at most
``limit`` client connections. At the cap a new caller gets room the way
busy web servers make it: the connection idle the longest (no request
arriving or in progress) is closed, which HTTP clients retry without
complaint; only when every connection has a request in progress is the
newcomer refused, with a ``503`` in Ollama's shape. A caller with a request
in progress is never dropped to make room.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger

from foreman.http.channel import write_early_answer

log = Logger()

#: How long a refused caller has to read its 503 before the socket is cut.
_REFUSAL_LINGER = 2.0


class Channel(Protocol):
    #: Since when it has had no request arriving or in progress; ``None``: busy.
    idle_since: float | None

    def loseConnection(self) -> None: ...


class Connections:
    """The open client connections of one site, against a cap."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: set[Channel] = set()
        #: Since start: idle connections closed to make room, callers refused.
        self.evicted = 0
        self.refused = 0

    @property
    def count(self) -> int:
        return len(self._open)

    def opened(self, channel: Channel) -> None:
        self._open.add(channel)

    def closed(self, channel: Channel) -> None:
        self._open.discard(channel)

    @property
    def busy(self) -> int:
        """Connections with a request arriving or in progress."""
        return sum(1 for channel in self._open if channel.idle_since is None)

    def close_idle(self) -> int:
        """Close every connection with no request arriving or in progress."""
        idle = [channel for channel in self._open if channel.idle_since is not None]
        for channel in idle:
            self._open.discard(channel)
            channel.loseConnection()
        return len(idle)

    def close_all(self) -> None:
        """Close every connection, once what was written to it has gone out."""
        for channel in list(self._open):
            self._open.discard(channel)
            channel.loseConnection()

    def make_room(self) -> bool:
        """Whether one more connection may open, closing an idle one if needed."""
        if len(self._open) < self.limit:
            return True
        idle = [channel for channel in self._open if channel.idle_since is not None]
        if not idle:
            self.refused += 1
            return False
        oldest = min(idle, key=lambda channel: channel.idle_since or 0.0)
        # Counted out now: its socket closes on the reactor's next turn.
        self._open.discard(oldest)
        self.evicted += 1
        oldest.loseConnection()
        return True


class TooManyConnections(TwistedProtocol):
    """Answers ``503`` at once and closes: every connection is busy."""

    def __init__(self, clock: IReactorTime, limit: int) -> None:
        self._clock = clock
        self._limit = limit

    def connectionMade(self) -> None:
        log.warn(
            "Refused a connection: all {limit} client connections have a request in progress",
            limit=self._limit,
        )
        transport: Any = self.transport
        write_early_answer(
            transport,
            503,
            f"foreman: too many connections: all {self._limit} have a request in progress; "
            "try again shortly",
            extra_headers=b"Retry-After: 1\r\n",
        )
        self._cut = self._clock.callLater(_REFUSAL_LINGER, transport.abortConnection)

    def dataReceived(self, data: bytes) -> None:
        pass  # drained unread: the answer is already on its way

    def connectionLost(self, reason: Any = None) -> None:
        if self._cut.active():
            self._cut.cancel()

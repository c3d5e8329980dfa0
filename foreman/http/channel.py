"""One client connection: how long a request may take to arrive, and oversized headers.

twisted.web closes a connection that is silent for its idle timeout, but the
timer restarts with every byte, so a client that trickles its request (a
header byte every 50 s) holds the connection for ever. Here the headers and
the body each have a deadline of their own, counted from their first byte
however slowly the rest comes: past it the caller gets ``408`` and the
connection closes. Once a request is whole, no deadline runs: a caller
waiting in the queue, or reading a slow stream, is never cut off.

Headers over twisted.web's limits (a line over 16 KiB, 16 KiB in all, or too
many of them) get ``431`` with a body instead of a bare close; a request line
over the limit gets ``414``.

The channel also tells the site's :class:`~foreman.http.connections.Connections`
whether it is idle (between requests) and since when: that decides which
connection gives way when the connection cap is reached.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

from foreman.http.access_log import log_access
from foreman.http.dialects import Dialect, dialect_of, error_document
from foreman.http.errors import error_content_type

if TYPE_CHECKING:
    from foreman.http.site import ForemanSite

log = Logger()

#: Blob uploads are gigabytes by nature: only the idle timeout applies to them.
_UNTIMED_BODIES = (b"/api/blobs/",)
#: After an early answer the caller has this long to read it before the
#: connection is cut, whatever it still sends.
_LINGER_SECONDS = 5.0

_REASONS = {
    408: b"Request Timeout",
    413: b"Request Entity Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


def write_early_answer(
    transport: Any,
    status: int,
    message: str,
    dialect: Dialect = Dialect.OLLAMA,
    extra_headers: bytes = b"",
) -> int:
    """Answer on ``transport`` before (or instead of) any request handling,
    in the dialect's error shape, and half-close it; the body's length.

    Half-closing lets the caller read the answer while whatever it is still
    sending is drained, instead of being reset before it can read it.
    """
    body = error_document(dialect, status, message)
    head = (
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Error"))
        + b"Content-Type: "
        + error_content_type(dialect)
        + b"\r\nContent-Length: %d\r\n" % len(body)
        + extra_headers
        + b"Connection: close\r\n\r\n"
    )
    transport.write(head + body)
    transport.loseWriteConnection()
    return len(body)


class Arrivals:
    """The requests still arriving on a site's connections, each with its deadline.

    One timer looks at them all, every ``tick`` seconds, and only while some
    request is arriving: a timer per request (set at its first byte, moved at
    its headers' end, cancelled at its body's end) cost a measurable share of
    a small call's time. So a deadline is kept within ``tick`` of its limit.
    """

    def __init__(self, clock: IReactorTime, tick: float) -> None:
        self._clock = clock
        self.tick = tick
        self._due: dict[ForemanChannel, tuple[float, str, float]] = {}
        self._sweeper: LoopingCall | None = None

    def expect(self, channel: ForemanChannel, part: str, seconds: float) -> None:
        """``channel``'s request's ``part`` must be in within ``seconds``."""
        self._due[channel] = (self._clock.seconds() + seconds, part, seconds)
        if self._sweeper is None:
            self._sweeper = LoopingCall(self._sweep)
            self._sweeper.clock = self._clock
            self._sweeper.start(self.tick, now=False)

    def arrived(self, channel: ForemanChannel) -> None:
        self._due.pop(channel, None)

    def _sweep(self) -> None:
        now = self._clock.seconds()
        late = [(channel, due) for channel, due in self._due.items() if due[0] <= now]
        for channel, (_when, part, seconds) in late:
            del self._due[channel]
            try:
                channel.too_slow(part, seconds)
            except Exception:
                # One connection's trouble must not stop the timer for all.
                log.failure("Could not time out a slow client")
        if not self._due and self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper = None


class ForemanChannel(HTTPChannel):
    """An HTTP connection with arrival deadlines, 431s and an idle clock."""

    site: ForemanSite

    def __init__(self) -> None:
        super().__init__()
        #: When the connection last became idle (no request arriving or in
        #: progress); ``None`` while one is.
        self.idle_since: float | None = None
        #: A request is arriving (its first byte came, its body is not all in).
        self._arriving = False
        self._header_lines = 0
        #: Set once an early answer was sent: nothing more is read.
        self._answered_early = False
        self._linger: IDelayedCall | None = None

    # -- the idle clock ---------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        self.idle_since = self._now()
        self.site.connections.opened(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.site.arrivals.arrived(self)
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self.site.connections.closed(self)
        super().connectionLost(reason)

    def requestDone(self, request: Any) -> None:
        if self.site.draining:
            # foreman is stopping: the answer goes out, then the connection closes.
            self.persistent = False
        super().requestDone(request)
        if not self.requests:
            self.idle_since = self._now()

    def _now(self) -> float:
        return float(self.site.reactor.seconds())

    # -- deadlines ------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._answered_early:
            return
        if data and not self._arriving and not self._handlingRequest:
            # The first byte of a request: its headers' clock starts.
            self._arriving = True
            self.idle_since = None
            self._header_lines = 0
            self.site.arrivals.expect(self, "headers", self.site.header_timeout)
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        super().allHeadersReceived()
        path: bytes = getattr(self, "_path", b"") or b""
        if path.startswith(_UNTIMED_BODIES):
            self.site.arrivals.arrived(self)
        else:
            # Let go of again at once when there is no body to wait for.
            self.site.arrivals.expect(self, "body", self.site.body_timeout)

    def allContentReceived(self) -> None:
        self._arriving = False
        self.site.arrivals.arrived(self)
        super().allContentReceived()

    def too_slow(self, part: str, seconds: float) -> None:
        """The request's ``part`` did not arrive within ``seconds``."""
        log.info(
            "Timing out a slow client: its request's {part} took over {seconds}s",
            part=part,
            seconds=seconds,
        )
        self._answer_early(408, f"foreman: the request's {part} took longer than {seconds:g}s")

    # -- oversized headers ------------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        if self._answered_early:
            return
        if hasattr(self, "_command"):  # past the request line: a header
            if line and line[:1] not in (b" ", b"\t"):
                self._header_lines += 1
            too_big = self._receivedHeaderSize + len(line) > self.totalHeadersSize
            if too_big or self._header_lines > self.maxHeaders:
                self._refuse_headers(line)
                return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> int | None:
        self._refuse_headers(line)
        return None

    def _refuse_headers(self, line: bytes) -> None:
        if not hasattr(self, "_command"):
            self._answer_early(414, "foreman: the request line is too long")
            return
        limit = self.totalHeadersSize
        self._answer_early(
            431,
            f"foreman: request headers too large: the limits are {self.MAX_LENGTH} bytes a "
            f"line, {limit} bytes in all and {self.maxHeaders} headers",
        )

    def _respondToBadRequestAndDisconnect(self) -> None:
        # twisted.web's answer to a request it cannot parse (a header without
        # a colon, a bad Content-Length ...) is a bare 400 with no body;
        # callers get a body in their dialect instead.
        self._answer_early(400, "foreman: malformed HTTP request")

    # -- answering before the request is whole -----------------------------------------

    def _answer_early(self, status: int, message: str) -> None:
        """Answer now, whatever is still arriving, and close."""
        request = self.requests[-1] if self.requests else None
        if self._answered_early or getattr(request, "answered_early", False):
            return  # answered already (a 413 drains its body on its own clock)
        self._answered_early = True
        self.site.arrivals.arrived(self)
        path: bytes = (getattr(self, "_path", b"") or b"").split(b"?", 1)[0]
        sent = write_early_answer(self.transport, status, message, dialect_of(path))
        if request is not None:
            # Its access line says what happened, once the connection is gone.
            request.code = status
            request.sentLength = sent
            request.path = path or b"?"
            request.method = getattr(self, "_command", request.method)
            request.answered_early = True
        else:
            # Not even a request line yet: no request will log itself.
            log_access(
                {
                    "method": "?",
                    "path": "?",
                    "status": status,
                    "model": "-",
                    "duration_ms": 0.0,
                    "bytes": sent,
                    "client_gone": False,
                }
            )
        self.setTimeout(None)
        self._linger = self.callLater(_LINGER_SECONDS, self._cut)

    def _cut(self) -> None:
        self._linger = None
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

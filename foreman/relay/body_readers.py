"""Reading Ollama's answer for :class:`~foreman.relay.forward.Relay`: whole, or
line by line to the caller.

:class:`WholeBody` collects a small JSON answer, so that a failure half-way
through can still become a clean error status. :class:`LineRelay` writes each
complete NDJSON line (or SSE event) to the caller as soon as it arrives, with
the upstream connection as the producer of the caller's response, so a slow
reader slows Ollama down. Both end their ``finished`` Deferred when the body
ends; cancelling it closes the upstream connection, which is how Ollama learns
to stop generating.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IRequest
from zope.interface import implementer

from foreman.http.errors import error_line
from foreman.relay.inflight import (
    InFlight,
)
from foreman.relay.upstream import (
    ReplyCutShort,
    Target,
    describe_failure,
    unreachable_message,
)

log = Logger()

#: A single NDJSON line larger than this is not a reply but a fault.
MAX_LINE_BYTES = 64 * 1024 * 1024
#: The pieces of a stream kept for its :attr:`LineRelay.tail` (each as it
#: arrived: enough for an answer's last events, however they were split).
TAIL_PIECES = 8

_DONE = Failure(ResponseDone())


class CancellableBodyReader(Protocol):
    """Shared plumbing: a ``finished`` Deferred whose cancel aborts upstream,
    and a note to the call's record each time something arrives."""

    transport: IPushProducer  # type: ignore[assignment]

    def __init__(self, call: InFlight) -> None:
        self.finished: Deferred[Any] = Deferred(self._cancel)
        self._cancelled = False
        self._call = call

    def _cancel(self, _: Deferred[Any]) -> None:
        self._cancelled = True
        self.stop()

    def stop(self) -> None:
        """Close the upstream connection; ``connectionLost`` follows."""
        if self.transport is not None:
            self.transport.stopProducing()


class WholeBody(CancellableBodyReader):
    def __init__(self, call: InFlight) -> None:
        super().__init__(call)
        self._chunks: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self._call.heard = True
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = _DONE) -> None:
        if self._cancelled or self.finished.called:
            return
        # A body of unknown length ends with the connection: cut by foreman,
        # it is not whole, whatever the parser thinks.
        whole = reason.check(ResponseDone) or (
            reason.check(PotentialDataLoss) and self._call.cut is None
        )
        if whole:
            self.finished.callback(b"".join(self._chunks))
        else:
            self.finished.errback(ReplyCutShort())


@implementer(IPushProducer)
class LineRelay(CancellableBodyReader):
    """Writes each complete NDJSON line to the caller as soon as it arrives.

    It is the producer of the caller's response, standing in for the
    upstream socket, so that the silence of a stream held back by a slow
    caller is not counted against Ollama.
    """

    def __init__(self, request: IRequest, target: Target, call: InFlight) -> None:
        super().__init__(call)
        # IRequest omits the consumer half that twisted.web's Request has.
        self._request: Any = request
        self._target = target
        self._partial = b""
        self._registered = False
        #: The last complete line relayed so far.
        self.last_line = b""
        #: The first complete lines relayed, as they arrived together.
        self.head: bytes | None = None
        # The last complete lines relayed, as they arrived: a reference per
        # piece, nothing parsed or copied while the stream runs.
        self._tail: deque[bytes] = deque(maxlen=TAIL_PIECES)
        # Whether what was relayed ends between two Server-Sent Events.
        self._ended_event = True
        self._last_byte = b""

    @property
    def tail(self) -> bytes:
        """The last lines relayed (a few pieces of the stream, joined): where
        Ollama's counts are, in every dialect."""
        return b"".join(self._tail)

    def connectionMade(self) -> None:
        # Backpressure: the caller's socket pauses the upstream socket.
        self._request.registerProducer(self, True)
        self._registered = True

    def pauseProducing(self) -> None:
        self._call.paused = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._call.paused = False
        self._call.heard = True
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        # The caller hung up.
        self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        self._call.heard = True
        if self._partial:
            data = self._partial + data
        end = data.rfind(b"\n") + 1
        if end:
            complete = data[:end]
            self._request.write(complete)
            self._ended_event = complete.endswith(b"\n\n") or (
                end == 1 and self._last_byte == b"\n"
            )
            self._last_byte = b"\n"
            self._partial = data[end:]
            self.last_line = data[data.rfind(b"\n", 0, end - 1) + 1 : end - 1]
            if self.head is None:
                self.head = complete
            self._tail.append(complete)
        else:
            self._partial = data
        if len(self._partial) > MAX_LINE_BYTES:
            self._partial = b""
            self.transport.stopProducing()

    def connectionLost(self, reason: Failure = _DONE) -> None:
        if self._registered:
            self._registered = False
            # A request whose caller hung up has no channel left to detach.
            if getattr(self._request, "channel", None) is not None:
                self._request.unregisterProducer()
        if self._cancelled or self.finished.called:
            return
        if reason.check(ResponseDone):
            if self._partial:
                self._request.write(self._partial)
                self.last_line = self._partial
                self._tail.append(self._partial)
            self.finished.callback(None)
            return
        # Status 200 is long gone: the only honest signal left is one final
        # error line, which every Ollama client understands.
        cut = self._call.cut
        if cut is not None:
            message = cut.message
        else:
            log.info("Upstream stream broke: {why}", why=describe_failure(reason))
            message = unreachable_message(self._target, "the stream broke before it was done")
        ending = error_line(message, self._request.path)
        if ending.startswith((b"data:", b"event:")) and not self._ended_event:
            # Close the half-sent event first, or the SSE parser would fold
            # the error into it.
            ending = b"\n" + ending
        self._request.write(ending)
        # The finished value is the breakage, for the caller's bookkeeping.
        self.finished.callback(message)

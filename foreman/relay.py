"""Forward one call to Ollama and its answer back to the caller, faithfully.

Streams (``application/x-ndjson``) are relayed line by line as they arrive,
with the upstream connection registered as the producer of the caller's
response, so a slow reader slows Ollama down instead of filling foreman's
memory. Anything else is small JSON and is relayed whole, which lets a
failure half-way through still become a clean error status.

A caller that goes away cancels the upstream call: while Ollama has not
answered yet (a model is loading) through the Deferred's canceller, and
mid-body by stopping the upstream transport. Closing the connection is how
Ollama learns to stop generating.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError, ConnectingCancelledError, TimeoutError
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IBodyProducer, IRequest, IResponse

from foreman.errors import error_line, write_json_error
from foreman.upstream import (
    DROPPED_RESPONSE_HEADERS,
    Target,
    outgoing_headers,
    unreachable_message,
)

log = Logger()

NDJSON = b"application/x-ndjson"

#: A single NDJSON line larger than this is not a reply but a fault.
MAX_LINE_BYTES = 64 * 1024 * 1024

_DONE = Failure(ResponseDone())


class Relay:
    """Relays calls to one target through one Agent."""

    def __init__(self, agent: IAgent, target: Target) -> None:
        self._agent = agent
        self.target = target

    def forward(
        self,
        request: IRequest,
        method: bytes,
        path: bytes,
        body: IBodyProducer | None,
    ) -> Deferred[bytes | None]:
        """Send the call upstream and answer ``request`` with Ollama's reply.

        The result is a body for the caller to write, or ``None`` when the
        reply was already streamed into ``request``. Never fails, except
        with :class:`CancelledError` when the caller is gone.
        """
        headers = outgoing_headers(request.requestHeaders, self.target)
        sent = self._agent.request(method, self.target.url(path), headers, body)
        relayed: Deferred[bytes | None] = sent.addCallback(self._relay_response, request)
        relayed.addErrback(self._upstream_failed, request)
        return relayed

    def _relay_response(self, response: IResponse, request: IRequest) -> Deferred[bytes | None]:
        request.setResponseCode(response.code)
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() not in DROPPED_RESPONSE_HEADERS:
                # treq-era lesson: an empty header value is noise, not data.
                kept = [value for value in values if value]
                if kept:
                    request.responseHeaders.setRawHeaders(name, kept)
        content_type = response.headers.getRawHeaders(b"content-type", [b""])[0]
        is_ndjson = content_type.split(b";", 1)[0].strip().lower() == NDJSON
        # Ollama streams NDJSON, chunked; an Ollama-alike that streams under
        # another content type still has no length up front, so it streams too.
        if is_ndjson or response.length is UNKNOWN_LENGTH:
            request.setHeader(b"X-Accel-Buffering", b"no")
            # Pass the headers on as soon as Ollama sent them, not with the
            # first line: the caller learns at once that the model is ready.
            request.write(b"")
            streaming = _LineRelay(request, self.target)
            response.deliverBody(streaming)
            return streaming.finished
        whole = _WholeBody()
        response.deliverBody(whole)
        return whole.finished

    def _upstream_failed(self, failure: Failure, request: IRequest) -> bytes:
        if _is_cancellation(failure):
            # The caller is gone; Klein expects exactly this and stays quiet.
            raise CancelledError()
        if failure.check(ConnectError, TimeoutError):
            reason = failure.getErrorMessage()
            return write_json_error(request, 502, unreachable_message(self.target, reason))
        if failure.check(_BodyFailed):
            message = "foreman: Ollama's reply was cut short"
            return write_json_error(request, 502, message)
        if failure.check(CancelledError):
            raise CancelledError()
        # ResponseNeverReceived, RequestTransmissionFailed and anything else:
        # Ollama went away before answering (crashed, restarted, killed).
        log.info(
            "Upstream call failed before a reply: {why}",
            why=failure.getErrorMessage() or repr(failure.value),
        )
        message = unreachable_message(self.target, "the connection closed before a reply")
        return write_json_error(request, 502, message)


def _is_cancellation(failure: Failure) -> bool:
    """The Agent reports a cancel while waiting for headers wrapped in a list."""
    if failure.check(CancelledError, ConnectingCancelledError):
        return True
    reasons = getattr(failure.value, "reasons", None) or []
    return bool(reasons) and all(
        isinstance(reason, Failure) and reason.check(CancelledError) is not None
        for reason in reasons
    )


class _BodyFailed(Exception):
    """The upstream body ended early, before anything reached the caller."""


class _CancellableBodyReader(Protocol):
    """Shared plumbing: a ``finished`` Deferred whose cancel aborts upstream."""

    transport: IPushProducer  # type: ignore[assignment]

    def __init__(self) -> None:
        self.finished: Deferred[bytes | None] = Deferred(self._cancel)
        self._cancelled = False

    def _cancel(self, _: Deferred[bytes | None]) -> None:
        self._cancelled = True
        if self.transport is not None:
            self.transport.stopProducing()


class _WholeBody(_CancellableBodyReader):
    def __init__(self) -> None:
        super().__init__()
        self._chunks: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = _DONE) -> None:
        if self._cancelled or self.finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self._chunks))
        else:
            self.finished.errback(_BodyFailed(reason.getErrorMessage()))


class _LineRelay(_CancellableBodyReader):
    """Writes each complete NDJSON line to the caller as soon as it arrives."""

    def __init__(self, request: IRequest, target: Target) -> None:
        super().__init__()
        # IRequest omits the consumer half that twisted.web's Request has.
        self._request: Any = request
        self._target = target
        self._partial = b""
        self._registered = False

    def connectionMade(self) -> None:
        # Backpressure: the caller's socket pauses the upstream socket.
        self._request.registerProducer(self.transport, True)
        self._registered = True

    def dataReceived(self, data: bytes) -> None:
        if self._partial:
            data = self._partial + data
        end = data.rfind(b"\n") + 1
        if end:
            self._request.write(data[:end])
            self._partial = data[end:]
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
        else:
            # Status 200 is long gone: the only honest signal left is one
            # final error line, which every Ollama client understands.
            log.info(
                "Upstream stream broke: {why}", why=reason.getErrorMessage() or repr(reason.value)
            )
            self._request.write(
                error_line(unreachable_message(self._target, "the stream broke before it was done"))
            )
        self.finished.callback(None)

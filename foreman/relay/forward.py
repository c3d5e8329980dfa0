"""Forward one call to Ollama and its answer back to the caller, faithfully.

Streams (``application/x-ndjson``, and the OpenAI and Anthropic dialects'
``text/event-stream``) are relayed line by line as they arrive,
with the upstream connection registered as the producer of the caller's
response, so a slow reader slows Ollama down instead of filling foreman's
memory. Anything else is small JSON and is relayed whole, which lets a
failure half-way through still become a clean error status.

A caller that goes away cancels the upstream call: while Ollama has not
answered yet (a model is loading) through the Deferred's canceller, and
mid-body by stopping the upstream transport. Closing the connection is how
Ollama learns to stop generating.

foreman closes it too when Ollama stays silent too long, or when every call
must stop (:mod:`foreman.relay.inflight`). A call that has written nothing
to its caller yet then ends ``UNREACHABLE``, in words; a stream already
relaying ends with its dialect's broken-stream error.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError, ConnectingCancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IBodyProducer, IRequest, IResponse

from foreman.http.errors import answer_with_error
from foreman.relay.body_readers import LineRelay, WholeBody
from foreman.relay.inflight import (
    DEFAULT_LOAD_TIMEOUT,
    DEFAULT_STALL_TIMEOUT,
    Cut,
    InFlight,
    InFlightCalls,
)
from foreman.relay.upstream import (
    DROPPED_RESPONSE_HEADERS,
    BytesBodyProducer,
    ReplyCutShort,
    Target,
    describe_failure,
    outgoing_headers,
    unreachable_message,
)

log = Logger()

NDJSON = b"application/x-ndjson"


#: What a call cut by :meth:`Relay.cut_all` tells a caller it has sent nothing yet.
CUT_STATUS = 503
CUT_RETRY_AFTER = 5


class Outcome(enum.Enum):
    """How one upstream call ended, as far as a retry decision cares."""

    #: A success status, relayed in full.
    DELIVERED = "delivered"
    #: Ollama answered with an error status (404, 400, a failed load...).
    REFUSED = "refused"
    #: A stream broke after bytes were sent; one error line ended it.
    BROKEN = "broken"
    #: Nothing usable came back and nothing was written: safe to retry.
    UNREACHABLE = "unreachable"


@attrs.frozen
class Attempt:
    outcome: Outcome
    status: int | None = None
    #: Ollama's error message, or foreman's description of the failure.
    error: str | None = None
    #: The body, when it was received whole.
    body: bytes | None = None
    #: The last line of a relayed stream (Ollama's final, with its metrics).
    last_line: bytes | None = None
    #: A relayed stream's first lines and last lines (:class:`LineRelay`'s
    #: ``head`` and ``tail``): where its dialect puts the tokens counted.
    head: bytes | None = None
    tail: bytes | None = None
    #: Seconds a caller should wait before trying again, when foreman knows.
    retry_after: int | None = None


def answer_unreachable(request: IRequest, attempt: Attempt) -> None:
    """Answer ``request`` with foreman's own error when ``attempt`` could not
    reach Ollama (502; 503 with ``Retry-After`` when the call was cut); a
    reply Ollama gave has been relayed already."""
    if attempt.outcome is Outcome.UNREACHABLE:
        headers = None
        if attempt.retry_after is not None:
            headers = {b"Retry-After": b"%d" % attempt.retry_after}
        answer_with_error(request, attempt.status or 502, attempt.error or "", headers)


#: Told of every delivered reply: (path, whole body or last streamed line).
ReplyObserver = Callable[[bytes, bytes], None]


class Relay:
    """Relays calls to one target through one Agent.

    With a ``clock``, Ollama's silence is limited: ``load_timeout`` before
    its reply begins, ``stall_timeout`` once it has (``None``: no limit).
    Without one, nothing is timed.
    """

    def __init__(
        self,
        agent: IAgent,
        target: Target,
        *,
        clock: IReactorTime | None = None,
        load_timeout: float | None = DEFAULT_LOAD_TIMEOUT,
        stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
    ) -> None:
        self._agent = agent
        self.target = target
        self._observers: list[ReplyObserver] = []
        self._calls = InFlightCalls(
            target, clock, load_timeout=load_timeout, stall_timeout=stall_timeout
        )

    @property
    def in_flight(self) -> int:
        """How many calls to Ollama are under way."""
        return len(self._calls)

    def cut_all(self, message: str) -> int:
        """Stop every call in flight now (foreman is stopping); how many were.

        Each upstream connection is closed. A stream already relaying ends
        with its dialect's broken-stream error saying ``message`` (``BROKEN``);
        a call that has written nothing yet ends ``UNREACHABLE`` with status
        503 and a ``retry_after``, which :meth:`forward` passes on.
        """
        cut = Cut(message, CUT_STATUS, CUT_RETRY_AFTER)
        cut_off = self._calls.cut_all(cut)
        if cut_off:
            log.info("Cut {count} call(s) to Ollama in flight: {why}", count=cut_off, why=message)
        return cut_off

    def observe(self, observer: ReplyObserver) -> None:
        """Call ``observer`` with every delivered reply (for metrics)."""
        self._observers.append(observer)

    def _delivered(self, path: bytes) -> Callable[[Attempt], Attempt]:
        def tell(attempt: Attempt) -> Attempt:
            if attempt.outcome is Outcome.DELIVERED and self._observers:
                final = attempt.last_line if attempt.last_line is not None else attempt.body
                for observer in self._observers:
                    try:
                        observer(path, final or b"")
                    except Exception:
                        log.failure("A reply observer failed")
            return attempt

        return tell

    def forward(
        self,
        request: IRequest,
        method: bytes,
        path: bytes,
        body: IBodyProducer | None,
    ) -> Deferred[None]:
        """Answer ``request`` with Ollama's reply to the same call, or an error
        of foreman's own (502; 503 with ``Retry-After`` when the call was cut).

        Never fails, except with :class:`CancelledError` when the caller is
        gone (which Klein expects and ignores).
        """

        def answer(attempt: Attempt) -> None:
            answer_unreachable(request, attempt)

        return self.relay(request, method, path, body).addCallback(answer)

    def relay(
        self,
        request: IRequest,
        method: bytes,
        path: bytes,
        body: IBodyProducer | None,
    ) -> Deferred[Attempt]:
        """Send the call upstream and relay what comes back into ``request``.

        Nothing is written when the outcome is ``UNREACHABLE``, so the caller
        of this method may try again or answer in its own words.
        """
        headers = outgoing_headers(request.requestHeaders, self.target)
        call = self._calls.begin()
        sent = self._agent.request(method, self.target.url(path), headers, body)
        # Before the reply, cancelling the request closes its connection.
        call.stop_with(sent.cancel)
        relayed: Deferred[Attempt] = sent.addCallback(self._relay_response, request, call)
        relayed.addErrback(self._unreachable, call)
        relayed.addBoth(self._ended, call)
        return relayed.addCallback(self._delivered(path))

    def fetch(self, method: bytes, path: bytes, body: bytes | None = None) -> Deferred[Attempt]:
        """Make a call of foreman's own and keep the whole reply."""
        headers = outgoing_headers(Headers({b"Content-Type": [b"application/json"]}), self.target)
        producer = None if body is None else BytesBodyProducer(body)
        call = self._calls.begin()
        sent = self._agent.request(method, self.target.url(path), headers, producer)
        call.stop_with(sent.cancel)

        def collect(response: IResponse) -> Deferred[Attempt]:
            whole = WholeBody(call)
            call.answered(whole.stop)
            response.deliverBody(whole)

            def judge(content: bytes | None) -> Attempt:
                return _judged(response.code, content or b"")

            return whole.finished.addCallback(judge)

        fetched: Deferred[Attempt] = sent.addCallback(collect)
        fetched.addErrback(self._unreachable, call)
        fetched.addBoth(self._ended, call)
        return fetched.addCallback(self._delivered(path))

    def _ended(self, result: Any, call: InFlight) -> Any:
        self._calls.end(call)
        return result

    def _relay_response(
        self, response: IResponse, request: IRequest, call: InFlight
    ) -> Deferred[Attempt]:
        content_type = response.headers.getRawHeaders(b"content-type", [b""])[0]
        is_ndjson = content_type.split(b";", 1)[0].strip().lower() == NDJSON
        # Ollama streams NDJSON, chunked; an Ollama-alike that streams under
        # another content type still has no length up front, so it streams too.
        if is_ndjson or response.length is UNKNOWN_LENGTH:
            _copy_response_head(response, request)
            request.setHeader(b"X-Accel-Buffering", b"no")
            # Pass the headers on as soon as Ollama sent them, not with the
            # first line: the caller learns at once that the model is ready.
            request.write(b"")
            streaming = LineRelay(request, self.target, call)
            call.answered(streaming.stop)
            response.deliverBody(streaming)
            return streaming.finished.addCallback(
                lambda broke: (
                    Attempt(Outcome.BROKEN, response.code, broke)
                    if broke
                    else attrs.evolve(
                        _judged(response.code, b""),
                        last_line=streaming.last_line,
                        head=streaming.head,
                        tail=streaming.tail,
                    )
                )
            )
        whole = WholeBody(call)
        call.answered(whole.stop)
        response.deliverBody(whole)

        def deliver(content: bytes | None) -> Attempt:
            # Status and headers are copied only now: a reply cut short
            # leaves the caller's response untouched for a retry.
            _copy_response_head(response, request)
            body = content or b""
            request.setHeader(b"Content-Length", b"%d" % len(body))
            request.write(body)
            return _judged(response.code, body)

        return whole.finished.addCallback(deliver)

    def _unreachable(self, failure: Failure, call: InFlight) -> Attempt:
        cut = call.cut
        if cut is not None:
            # foreman closed the connection itself; nothing reached the caller.
            return Attempt(
                Outcome.UNREACHABLE, cut.status, cut.message, retry_after=cut.retry_after
            )
        if _is_cancellation(failure) or failure.check(CancelledError):
            raise CancelledError()
        reason = describe_failure(failure)
        if not failure.check(ConnectError, ReplyCutShort):
            # ResponseNeverReceived, RequestTransmissionFailed and the like:
            # Ollama went away before answering (crashed, restarted, killed).
            log.info("Upstream call failed before a reply: {why}", why=reason)
        return Attempt(Outcome.UNREACHABLE, None, unreachable_message(self.target, reason))


def _copy_response_head(response: IResponse, request: IRequest) -> None:
    request.setResponseCode(response.code)
    for name, values in response.headers.getAllRawHeaders():
        if name.lower() not in DROPPED_RESPONSE_HEADERS:
            # treq-era lesson: an empty header value is noise, not data.
            kept = [value for value in values if value]
            if kept:
                request.responseHeaders.setRawHeaders(name, kept)


def _judged(status: int, body: bytes) -> Attempt:
    if status < 400:
        return Attempt(Outcome.DELIVERED, status, None, body)
    return Attempt(Outcome.REFUSED, status, _error_message(body, status), body)


def _error_message(body: bytes, status: int) -> str:
    try:
        message = json.loads(body).get("error")
    except (ValueError, AttributeError):
        message = None
    if isinstance(message, str):
        return message
    return body.decode("utf-8", "replace").strip() or f"Ollama answered {status}"


def _is_cancellation(failure: Failure) -> bool:
    """The Agent reports a cancel while waiting for headers wrapped in a list."""
    if failure.check(CancelledError, ConnectingCancelledError):
        return True
    reasons = getattr(failure.value, "reasons", None) or []
    return bool(reasons) and all(
        isinstance(reason, Failure) and reason.check(CancelledError) is not None
        for reason in reasons
    )

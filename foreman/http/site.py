"""The HTTP server side: foreman's Request and Site.

Two jobs live here because only the request object sees them early enough:
refusing an oversized body with 413 as soon as its size is known (before it
is buffered), and writing one access line per request, including requests
whose caller hung up.
"""

from __future__ import annotations

import time
from typing import Any, Protocol, cast

from twisted.internet.interfaces import IReactorTime
from twisted.logger import ILogObserver, LogEvent, Logger, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import IResource
from zope.interface import implementer

from foreman.http.cors import CorsGate, OriginPolicy, Verdict
from foreman.http.dialects import dialect_of, error_document
from foreman.http.errors import error_content_type


class RequestObserver(Protocol):
    """Told of every finished request (``/metrics`` is one: :mod:`foreman.ops.metrics`)."""

    def request_finished(self, path: str, method: str, status: int, seconds: float) -> None: ...


#: Model weights are uploaded here; they are gigabytes by nature.
_UNLIMITED_PREFIXES = (b"/api/blobs/",)

#: After refusing a body we keep reading (and discarding) this much more of
#: it, so the client is not reset before it can read the 413.
_DRAIN_ALLOWANCE = 16 * 1024 * 1024
_DRAIN_SECONDS = 5.0


@implementer(ILogObserver)
class AfterSend:
    """Passes access events on once the reactor has sent the response.

    A request's access line is ready when its answer is written to the
    transport, but Twisted sends those bytes only on the reactor's next
    pass. Formatting and writing the line there, first, delayed every reply
    by a measurable part of foreman's whole cost; two ``callLater(0)`` hops
    let a poll (and the send) run first. Nothing is reordered or dropped:
    events keep their own ``log_time`` and go out in order, a whole batch at
    once when many requests finish together.
    """

    def __init__(
        self, clock: IReactorTime | None = None, publisher: ILogObserver = globalLogPublisher
    ) -> None:
        self._clock = clock
        self._publisher = publisher
        self._events: list[LogEvent] = []

    def __call__(self, event: LogEvent) -> None:
        self._events.append(event)
        if len(self._events) == 1:
            clock = self._clock
            if clock is None:
                from twisted.internet import reactor as clock
            assert clock is not None
            clock.callLater(0, clock.callLater, 0, self.flush)

    def flush(self) -> None:
        events, self._events = self._events, []
        for event in events:
            self._publisher(event)


_after_send = AfterSend()
access_log = Logger(namespace="foreman.access", observer=_after_send)


class ForemanRequest(server.Request):
    """A request that enforces the body limit and logs its own access line."""

    site: ForemanSite

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started = time.perf_counter()
        # Taken now: by the time a request whose caller left is logged, its
        # channel may no longer know its site.
        site = getattr(self.channel, "site", None)
        self._metrics: RequestObserver | None = getattr(site, "metrics", None)
        #: The model named in the body, once a handler has read it.
        self.model: str | None = None
        self._body_limit: int | None = None
        self._body_received = 0
        self._refused_size = False
        self._drain_deadline: Any = None
        self.notifyFinish().addBoth(self._log_access)

    # -- body size limit ------------------------------------------------

    def gotLength(self, length: int | None) -> None:
        site = cast(ForemanSite, self.channel.site)  # type: ignore[attr-defined]
        # The request line is only on the channel at this point.
        path: bytes = getattr(self.channel, "_path", b"") or b""
        if not path.startswith(_UNLIMITED_PREFIXES):
            self._body_limit = site.max_body_size
        if length is not None and self._body_limit is not None and length > self._body_limit:
            self._refuse_oversized_body()
        super().gotLength(None if self._refused_size else length)

    def handleContentChunk(self, data: bytes) -> None:
        self._body_received += len(data)
        if self._refused_size:
            if self._body_received > (self._body_limit or 0) + _DRAIN_ALLOWANCE:
                self.channel.loseConnection()
            return
        if self._body_limit is not None and self._body_received > self._body_limit:
            self._refuse_oversized_body()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused_size:
            # The 413 has been sent; the body was drained only to let the
            # client read it. Nothing of this request is processed.
            if self._drain_deadline is not None and self._drain_deadline.active():
                self._drain_deadline.cancel()
            self.channel.loseConnection()
            return
        super().requestReceived(command, path, version)

    def _refuse_oversized_body(self) -> None:
        if self._refused_size:
            return
        self._refused_size = True
        # The request line is only on the channel while the body arrives, and
        # this request is never processed: keep it for the access line.
        self.method = getattr(self.channel, "_command", self.method)
        self.path = getattr(self.channel, "_path", b"?").split(b"?", 1)[0]
        dialect = dialect_of(self.path)
        message = f"request body too large: the limit is {self._body_limit} bytes"
        body = error_document(dialect, 413, message)
        # The channel is still reading the body, so the normal response
        # machinery is not ready; answer directly and close afterwards.
        head = (
            b"HTTP/1.1 413 Request Entity Too Large\r\n"
            b"Content-Type: " + error_content_type(dialect) + b"\r\n"
            b"Content-Length: "
            + str(len(body)).encode()
            + b"\r\n"
            + self._cors_lines()
            + b"Connection: close\r\n\r\n"
        )
        transport = cast(Any, self.channel.transport)
        transport.write(head + body)
        # Half-close: the caller reads the 413 and sees the end of the reply
        # while whatever it still sends is drained, so it is not reset
        # before reading the answer. A caller that never stops is cut off.
        transport.loseWriteConnection()
        self._drain_deadline = self.channel.callLater(_DRAIN_SECONDS, self.channel.loseConnection)
        self.code = 413
        self.sentLength = len(body)
        if self.content is not None:
            self.content.close()

    def _cors_lines(self) -> bytes:
        """The CORS headers a page from an allowed origin reads this 413 with."""
        policy = cast(ForemanSite, self.channel.site).cors  # type: ignore[attr-defined]
        if policy is None:
            return b""
        # A page from an origin not allowed reads nothing of it either way.
        method: bytes = getattr(self.channel, "_command", b"") or b""
        verdict, origin = policy.judge(method, self.requestHeaders)
        if verdict is not Verdict.ALLOWED:
            return b""
        return b"".join(
            name + b": " + value + b"\r\n" for name, value in policy.response_headers(origin)
        )

    def connectionLost(self, reason: Failure) -> None:
        if self._drain_deadline is not None and self._drain_deadline.active():
            self._drain_deadline.cancel()
        super().connectionLost(reason)

    # -- access log -----------------------------------------------------

    def _log_access(self, result: object) -> None:
        lost = isinstance(result, Failure) and not self._refused_size
        # A caller that hung up while sending its body left a request that was
        # never processed: its request line is still on the channel.
        path = getattr(self, "path", None) or getattr(self.channel, "_path", None) or b"?"
        method = self.method
        if method == server.Request.method:
            method = getattr(self.channel, "_command", None) or b"?"
        method_text = method.decode("ascii", "replace")
        path_text = path.decode("utf-8", "replace").split("?", 1)[0]
        fields = {
            "method": method_text,
            "path": path_text,
            "status": self.code,
            "model": self.model or "-",
            "duration_ms": round((time.perf_counter() - self.started) * 1000.0, 3),
            "bytes": self.sentLength,
            "client_gone": lost,
        }
        # The line is put together here, once and cheaply: this runs for
        # every request, and a format string with many fields is measurably
        # slower to render in the log observer.
        line = (
            f"{fields['method']} {fields['path']} {fields['status']} model={fields['model']}"
            f" {fields['duration_ms']:.1f}ms {fields['bytes']}B"
            + (" (client disconnected)" if lost else "")
        )
        access_log.info("{line}", line=line, **fields)
        if self._metrics is not None:
            self._metrics.request_finished(
                path_text, method_text, self.code, time.perf_counter() - self.started
            )
        # notifyFinish's errback is consumed here: a caller hanging up is an
        # ordinary event, not an unhandled error.
        return None


class ForemanSite(server.Site):
    """A Site whose requests enforce ``max_body_size`` and log themselves.

    With ``cors``, the whole ``resource`` is behind a :class:`~foreman.http.cors.CorsGate`:
    browsers are answered as Ollama answers them, before anything else.
    """

    requestFactory = ForemanRequest
    noisy = False

    def __init__(
        self,
        resource: IResource,
        *,
        max_body_size: int,
        metrics: RequestObserver | None = None,
        cors: OriginPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        if cors is not None:
            resource = CorsGate(resource, cors)
        # Twisted parses every POST's Content-Type with the email package to
        # fill ``request.args`` from forms. foreman reads JSON bodies only, and
        # that parse was a measurable share of a small call's CPU time.
        super().__init__(resource, parsePOSTFormSubmission=False, **kwargs)
        self.max_body_size = max_body_size
        #: Told of every finished request, when ``/metrics`` is served.
        self.metrics = metrics
        #: Which browser origins may call (``None``: CORS is not answered).
        self.cors = cors
        # The version of twisted.web is nobody's business.
        self.displayTracebacks = False

    def stopFactory(self) -> None:
        # The last requests' lines, before the listening port is gone.
        _after_send.flush()
        super().stopFactory()

    def log(self, request: object) -> None:
        # ForemanRequest writes its own line through twisted.logger.
        pass

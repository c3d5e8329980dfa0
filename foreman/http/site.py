"""The HTTP server side: foreman's Request and Site.

Two jobs live here because only the request object sees them early enough:
refusing an oversized body with 413 as soon as its size is known (before it
is buffered), and writing one access line per request, including requests
whose caller hung up (status 499, as nginx logs them). The connection's own
limits (arrival deadlines, oversized headers) are :mod:`foreman.http.channel`'s;
the cap on open connections is :mod:`foreman.http.connections`'.
"""

from __future__ import annotations

import time
from typing import Any, Protocol, cast

from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import IResource

from foreman.http.access_log import CLIENT_CLOSED_REQUEST, flush_access_log, log_access
from foreman.http.channel import Arrivals, ForemanChannel, write_early_answer
from foreman.http.connections import Connections, TooManyConnections
from foreman.http.cors import CorsGate, OriginPolicy, Verdict
from foreman.http.dialects import dialect_of
from foreman.http.errors import write_json_error

#: What a caller hears when foreman stops before its call could run or finish.
STOPPING_MESSAGE = "foreman is stopping; try again shortly"
#: launchd brings foreman back within its ThrottleInterval (10 s) or sooner.
STOPPING_RETRY_AFTER = 5


class RequestObserver(Protocol):
    """Told of every finished request (``/metrics`` is one: :mod:`foreman.ops.metrics`)."""

    def request_finished(self, path: str, method: str, status: int, seconds: float) -> None: ...


#: Model weights are uploaded here; they are gigabytes by nature.
_UNLIMITED_PREFIXES = (b"/api/blobs/",)

#: After refusing a body we keep reading (and discarding) this much more of
#: it, so the client is not reset before it can read the 413.
_DRAIN_ALLOWANCE = 16 * 1024 * 1024
_DRAIN_SECONDS = 5.0


#: Defaults, as nginx's: ``client_header_timeout``, ``client_body_timeout``
#: (here for the whole body, not between two reads) and ``keepalive_timeout``.
DEFAULT_HEADER_TIMEOUT = 60.0
DEFAULT_BODY_TIMEOUT = 60.0
DEFAULT_IDLE_TIMEOUT = 75.0


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
        #: Answered before the request was whole (413, 408, 431): its
        #: connection closing is not the caller leaving.
        self.answered_early = False
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
        message = f"request body too large: the limit is {self._body_limit} bytes"
        # The channel is still reading the body, so the normal response
        # machinery is not ready; answer directly and close afterwards. The
        # caller reads the 413 while whatever it still sends is drained; a
        # caller that never stops is cut off.
        transport = cast(Any, self.channel.transport)
        sent = write_early_answer(
            transport, 413, message, dialect_of(self.path), self._cors_lines()
        )
        self.answered_early = True
        self._drain_deadline = self.channel.callLater(_DRAIN_SECONDS, self.channel.loseConnection)
        self.code = 413
        self.sentLength = sent
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

    # -- a stop in progress ---------------------------------------------

    def process(self) -> None:
        site = cast(ForemanSite, self.channel.site)  # type: ignore[attr-defined]
        if site.draining:
            # A request on a kept-alive connection while foreman stops:
            # refused in the caller's dialect, and the connection closes.
            self.site = site
            self.setHeader(b"Connection", b"close")
            body = write_json_error(
                self, 503, STOPPING_MESSAGE, {b"Retry-After": b"%d" % STOPPING_RETRY_AFTER}
            )
            self.setHeader(b"Content-Length", b"%d" % len(body))
            self.write(body)
            self.finish()
            return
        super().process()

    # -- access log -----------------------------------------------------

    def _log_access(self, result: object) -> None:
        lost = isinstance(result, Failure) and not self.answered_early
        # A caller that hung up while sending its body left a request that was
        # never processed: its request line is still on the channel.
        path = getattr(self, "path", None) or getattr(self.channel, "_path", None) or b"?"
        method = self.method
        if method == server.Request.method:
            method = getattr(self.channel, "_command", None) or b"?"
        method_text = method.decode("ascii", "replace")
        path_text = path.decode("utf-8", "replace").split("?", 1)[0]
        status = CLIENT_CLOSED_REQUEST if lost else self.code
        fields: dict[str, Any] = {
            "method": method_text,
            "path": path_text,
            "status": status,
            "model": self.model or "-",
            "duration_ms": round((time.perf_counter() - self.started) * 1000.0, 3),
            "bytes": self.sentLength,
            "client_gone": lost,
        }
        log_access(fields)
        if self._metrics is not None:
            self._metrics.request_finished(
                path_text, method_text, status, time.perf_counter() - self.started
            )
        # notifyFinish's errback is consumed here: a caller hanging up is an
        # ordinary event, not an unhandled error.
        return None


class ForemanSite(server.Site):
    """A Site whose requests enforce ``max_body_size`` and log themselves,
    whose connections have arrival deadlines, and which holds at most
    ``max_connections`` of them.

    With ``cors``, the whole ``resource`` is behind a :class:`~foreman.http.cors.CorsGate`:
    browsers are answered as Ollama answers them, before anything else.
    """

    requestFactory = ForemanRequest
    protocol = ForemanChannel  # type: ignore[assignment]
    noisy = False

    def __init__(
        self,
        resource: IResource,
        *,
        max_body_size: int,
        metrics: RequestObserver | None = None,
        cors: OriginPolicy | None = None,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_connections: int = 1024,
        **kwargs: Any,
    ) -> None:
        if cors is not None:
            resource = CorsGate(resource, cors)
        # Twisted parses every POST's Content-Type with the email package to
        # fill ``request.args`` from forms. foreman reads JSON bodies only, and
        # that parse was a measurable share of a small call's CPU time.
        kwargs.setdefault("timeout", idle_timeout)
        super().__init__(resource, parsePOSTFormSubmission=False, **kwargs)
        self.max_body_size = max_body_size
        #: The time a request's headers, then its body, may take to arrive.
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        tick = min(1.0, header_timeout / 4, body_timeout / 4)
        self.arrivals = Arrivals(self.reactor, tick)
        self.connections = Connections(max_connections)
        #: Stopping: requests get 503, connections close once answered.
        self.draining = False
        #: Told of every finished request, when ``/metrics`` is served.
        self.metrics = metrics
        #: Which browser origins may call (``None``: CORS is not answered).
        self.cors = cors
        # The version of twisted.web is nobody's business.
        self.displayTracebacks = False

    def drain(self) -> None:
        """foreman is stopping: refuse new requests, close idle connections, and
        close the others once their answer is out."""
        self.draining = True
        self.connections.close_idle()

    @property
    def busy(self) -> int:
        """Connections with a request arriving or in progress."""
        return self.connections.busy

    def buildProtocol(self, addr: Any) -> Any:
        if not self.connections.make_room():
            return TooManyConnections(self.reactor, self.connections.limit)
        return super().buildProtocol(addr)

    def stopFactory(self) -> None:
        # The last requests' lines, before the listening port is gone.
        flush_access_log()
        super().stopFactory()

    def log(self, request: object) -> None:
        # ForemanRequest writes its own line through twisted.logger.
        pass

"""The one Ollama foreman fronts: its address, credentials and HTTP agent,
and what to tell a person when a call to it fails."""

from __future__ import annotations

import os
import re

import attrs
from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IConsumer, IReactorTCP, IStreamClientEndpoint
from twisted.python.failure import Failure
from twisted.web._newclient import RequestNotSent
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    RequestGenerationFailed,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
    _HTTP11ClientFactory,
)
from twisted.web.http import PotentialDataLoss, _DataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

#: Enough idle connections that 16+ concurrent callers reuse sockets instead
#: of opening (and leaving in TIME_WAIT) a new one per call.
MAX_PERSISTENT_PER_HOST = 64

#: Close idle upstream connections before a server-side idle timeout would,
#: so a pooled connection is rarely stale when reused.
CACHED_CONNECTION_TIMEOUT = 60


@attrs.frozen(repr=False)
class Target:
    """Where the Ollama is, and what to present to it."""

    base_url: str
    token: str | None = None

    def url(self, path: bytes) -> bytes:
        return self.base_url.encode("ascii") + path

    def __repr__(self) -> str:
        return f"Target({self.base_url!r}, token={'<set>' if self.token else None})"


def make_agent(reactor: IReactorTCP, connect_timeout: float) -> tuple[IAgent, HTTPConnectionPool]:
    """The raw Agent used for relaying; no timeout but the connect one.

    A response-header or read timeout here would turn a slow model load
    (minutes on a laptop) into a spurious error: the limits on Ollama's
    silence are the relay's own (:mod:`foreman.relay.inflight`), generous and
    kept by one timer for all calls.
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool._factory = _QuietClientFactory
    pool.maxPersistentPerHost = MAX_PERSISTENT_PER_HOST
    pool.cachedConnectionTimeout = CACHED_CONNECTION_TIMEOUT
    pool.retryAutomatically = True
    endpoints = _ReusedEndpoints(reactor, connect_timeout)
    return Agent.usingEndpointFactory(reactor, endpoints, pool=pool), pool


@implementer(IAgentEndpointFactory)
class _ReusedEndpoints:
    """One endpoint per target address, made once.

    ``Agent`` builds a fresh endpoint for every request, even when a pooled
    connection serves it, and that (IDNA-encoding the host each time) was a
    measurable share of a small relayed call. An endpoint can connect any
    number of times, so one per address serves them all.
    """

    def __init__(self, reactor: IReactorTCP, connect_timeout: float) -> None:
        self._reactor = reactor
        self._connect_timeout = connect_timeout
        self._tls_policy = BrowserLikePolicyForHTTPS()
        self._endpoints: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            host = uri.host.decode("ascii")
            endpoint = HostnameEndpoint(
                self._reactor, host, uri.port, timeout=self._connect_timeout
            )
            if uri.scheme == b"https":
                endpoint = wrapClientTLS(
                    self._tls_policy.creatorForNetloc(uri.host, uri.port), endpoint
                )
            self._endpoints[key] = endpoint
        return endpoint


class _QuietClientFactory(_HTTP11ClientFactory):
    # Without this every new upstream connection logs "Starting factory".
    noisy = False


@implementer(IBodyProducer)
class BytesBodyProducer:
    """A request body already in memory, written in one go.

    ``FileBodyProducer`` would read it back in 64 KiB steps through a
    cooperator, which costs more than the request itself for small calls.
    """

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def outgoing_headers(incoming: Headers, target: Target) -> Headers:
    """The caller's headers as they should reach Ollama.

    Hop-by-hop headers stay on this hop; ``Host`` becomes the target's own
    (Ollama answers 403 to a non-local Host); the caller's credentials for
    foreman are replaced by foreman's for Ollama; compression is not asked
    for so that NDJSON can be relayed line by line. ``Origin`` was judged by
    foreman (``foreman.http.cors``): Ollama would judge it again by its own list.
    """
    headers = Headers()
    for name, values in incoming.getAllRawHeaders():
        if name.lower() not in _DROPPED_REQUEST_HEADERS:
            headers.setRawHeaders(name, values)
    if target.token:
        headers.setRawHeaders(b"Authorization", [b"Bearer " + target.token.encode("utf-8")])
    return headers


HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)

_DROPPED_REQUEST_HEADERS = HOP_BY_HOP | {
    b"host",
    b"authorization",
    b"x-api-key",
    b"content-length",
    b"accept-encoding",
    b"expect",
    b"origin",
}

#: Twisted writes its own Date, Server and framing headers.
DROPPED_RESPONSE_HEADERS = HOP_BY_HOP | {b"content-length", b"date", b"server"}


def unreachable_message(target: Target, reason: str) -> str:
    return f"foreman: cannot reach Ollama at {target.base_url}: {reason}"


def silence_message(target: Target, *, waiting: bool, seconds: float) -> str:
    """What a caller is told when a call was stopped for Ollama's silence."""
    if waiting:
        return (
            f"foreman: Ollama at {target.base_url} had not begun its reply after "
            f"{describe_seconds(seconds)}; the call was stopped (limit: --load-timeout)"
        )
    return (
        f"foreman: Ollama at {target.base_url} sent nothing for {describe_seconds(seconds)} "
        "in the middle of its reply; the call was stopped (limit: --stall-timeout)"
    )


def describe_seconds(seconds: float) -> str:
    """``10 s``, ``1.5 s``, ``5 minutes``: a limit as a person reads it."""
    if seconds >= 120 and seconds % 60 == 0:
        return f"{seconds / 60:g} minutes"
    return f"{seconds:g} s"


class UpstreamStatusError(Exception):
    """The target answered a metadata call with an error status."""

    def __init__(self, path: bytes, status: int) -> None:
        super().__init__(f"{path.decode('ascii', 'replace')} answered {status}")
        self.path = path
        self.status = status


class UpstreamTimeout(Exception):
    """The target sent no answer within a limit of foreman's."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no answer within {describe_seconds(seconds)}")
        self.seconds = seconds


class ReplyCutShort(Exception):
    """The reply's body ended before it was whole."""


_CANCELLED = "the call was cancelled"
_ABORTED = "the connection was aborted"
_CLOSED_CLEANLY = "the connection was closed"
_LOST = "the connection was lost"
_CLOSED = frozenset({_ABORTED, _CLOSED_CLEANLY, _LOST})

#: Only these characters of a path are repeated back in a message.
_PLAIN_PATH = re.compile(rb"[^A-Za-z0-9/_.\-]")


def describe_failure(failure: Failure | BaseException) -> str:
    """What went wrong with a call to Ollama, as a short phrase for a person.

    It reads after "cannot reach Ollama at …:" and ends up in callers'
    error bodies, jobs' errors and ``/healthz``, so it is never a Python
    repr: no ``Failure``, no address object, no bytes literal. Twisted's
    messages are not used either; they are written for programmers
    (``User timeout caused connection failure.``).
    """
    value = failure.value if isinstance(failure, Failure) else failure
    if value is None:
        return "an unknown error"
    return _describe(value, 0)


def _describe(value: BaseException, depth: int) -> str:
    if isinstance(value, UpstreamTimeout):
        return f"no answer within {describe_seconds(value.seconds)}"
    if isinstance(value, UpstreamStatusError):
        path = _PLAIN_PATH.sub(b"", value.path).decode("ascii")
        return f"{path or 'a call'} answered with status {int(value.status)}"
    if isinstance(value, ResponseNeverReceived):
        inner = _inner(value, depth)
        if inner is None or inner in _CLOSED:
            return "the connection closed before a reply"
        if inner == _CANCELLED:
            return "the call was cancelled before a reply"
        return f"no reply came ({inner})"
    if isinstance(value, RequestTransmissionFailed):
        return "the connection closed while the request was being sent"
    if isinstance(value, RequestGenerationFailed):
        return "the request's body could not be sent"
    if isinstance(value, RequestNotSent):
        return "the request could not be sent"
    if isinstance(value, (ResponseFailed, ReplyCutShort, PotentialDataLoss, _DataLoss)):
        return "the reply was cut short"
    if isinstance(value, error.ConnectingCancelledError):
        return "the call was cancelled while connecting"
    if isinstance(value, CancelledError):
        return _CANCELLED
    if isinstance(value, (error.TimeoutError, error.TCPTimedOutError)):
        return "connecting took too long"
    if isinstance(value, (DeferredTimeoutError, TimeoutError)):
        return "no answer in time"
    if isinstance(value, error.ConnectionRefusedError):
        return "the connection was refused"
    if isinstance(value, (error.UnknownHostError, error.DNSLookupError)):
        return "its host name could not be resolved"
    if isinstance(value, error.NoRouteError):
        return "there is no route to its host"
    if isinstance(value, error.SSLError) or type(value).__module__.startswith("OpenSSL"):
        return "the TLS connection failed"
    if isinstance(value, error.ConnectError):
        return "the connection could not be opened"
    if isinstance(value, error.ConnectionAborted):
        return _ABORTED
    if isinstance(value, error.ConnectionDone):
        return _CLOSED_CLEANLY
    if isinstance(value, error.ConnectionLost):
        return _LOST
    if isinstance(value, ValueError):
        return "its reply could not be read"
    if isinstance(value, OSError):
        if isinstance(value.errno, int) and value.errno > 0:
            return os.strerror(value.errno).lower()
        return "the connection failed"
    return f"an unexpected error ({type(value).__name__})"


def _inner(wrapper: Exception, depth: int) -> str | None:
    """The first reason a Twisted wrapper exception (its ``reasons``) holds."""
    if depth > 3:
        return None
    for reason in getattr(wrapper, "reasons", None) or []:
        value = reason.value if isinstance(reason, Failure) else reason
        if isinstance(value, BaseException):
            return _describe(value, depth + 1)
    return None

"""The one Ollama foreman fronts: its address, credentials and HTTP agent."""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IConsumer, IReactorTCP, IStreamClientEndpoint
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    _HTTP11ClientFactory,
)
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

    A response-header or read timeout would turn a slow model load (minutes
    on a laptop) into a spurious error, so there is none.
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

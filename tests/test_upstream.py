"""The upstream Agent's plumbing: endpoints made once per target address."""

from __future__ import annotations

from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.web.client import URI

from foreman.relay.upstream import _ReusedEndpoints


def test_one_endpoint_serves_every_request_to_an_address() -> None:
    endpoints = _ReusedEndpoints(MemoryReactorClock(), connect_timeout=3.0)
    first = endpoints.endpointForURI(URI.fromBytes(b"http://127.0.0.1:11434/api/chat"))
    again = endpoints.endpointForURI(URI.fromBytes(b"http://127.0.0.1:11434/api/tags"))
    other = endpoints.endpointForURI(URI.fromBytes(b"http://127.0.0.1:11435/api/chat"))
    assert first is again
    assert other is not first
    assert isinstance(first, HostnameEndpoint)


def test_https_targets_get_tls_and_the_connect_timeout_holds() -> None:
    reactor = MemoryReactorClock()
    endpoints = _ReusedEndpoints(reactor, connect_timeout=3.0)
    plain = endpoints.endpointForURI(URI.fromBytes(b"http://ollama.lan:11434/"))
    secure = endpoints.endpointForURI(URI.fromBytes(b"https://ollama.lan:11434/"))
    assert secure is not plain
    assert not isinstance(secure, HostnameEndpoint)  # wrapped in TLS
    assert isinstance(plain, HostnameEndpoint)
    assert plain._timeout == 3.0

"""A webhook receiver on a real socket: records each request, answers as scripted.

Tests wait for requests with :meth:`WebhookReceiver.arrived`, never by
sleeping, and :meth:`WebhookReceiver.close` leaves no port or connection open.
"""

from __future__ import annotations

from typing import Any, cast

import attrs
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import ITCPTransport
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

#: Safety net for a test that waits for something that never comes.
WAIT_LIMIT = 20.0


@attrs.frozen
class Answer:
    """A whole answer."""

    status: int = 200
    headers: dict[str, str] = attrs.Factory(dict)
    body: bytes = b"ok"


@attrs.frozen
class Hang:
    """Read the request, never answer."""


@attrs.frozen
class Trickle:
    """Send the status line, headers and a first chunk, never the rest."""

    status: int = 200


Behaviour = Answer | Hang | Trickle
OK = Answer()


@attrs.frozen
class Received:
    path: str
    #: Lower-case names; the last value of each.
    headers: dict[str, str]
    body: bytes


class WebhookReceiver:
    def __init__(self, reactor: Any, *answers: Behaviour, default: Behaviour = OK) -> None:
        self._reactor = reactor
        #: Answers for the coming requests in order, then ``default`` for the rest.
        self.answers = list(answers)
        self.default = default
        self.received: list[Received] = []
        self._waiting: list[tuple[int, Deferred[Received]]] = []
        self._ports: list[Any] = []
        self._channels: dict[_Channel, Deferred[None]] = {}

    def listen(self, port: int = 0) -> int:
        """Listen on 127.0.0.1 (again, after :meth:`stop_listening`); the port number."""
        site = _Site(_Resource(self), self)
        listening = self._reactor.listenTCP(port, site, interface="127.0.0.1")
        self._ports.append(listening)
        number: int = listening.getHost().port
        return number

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self._ports[-1].getHost().port}{path}"

    async def stop_listening(self) -> None:
        ports, self._ports = self._ports, []
        for port in ports:
            await port.stopListening()

    def arrived(self, count: int) -> Deferred[Received]:
        """Fires with the ``count``-th request, on the reactor turn after it came."""
        waiting: Deferred[Received] = Deferred()
        self._waiting.append((count, waiting))
        self._wake()
        return waiting.addTimeout(WAIT_LIMIT, self._reactor)

    def idle(self) -> Deferred[None]:
        """Fires once every connection opened so far has closed."""
        closing = gatherResults(list(self._channels.values()))
        return closing.addCallback(lambda _: None).addTimeout(WAIT_LIMIT, self._reactor)

    async def close(self) -> None:
        """Stop listening, cut the connections still open, and wait until they are gone."""
        await self.stop_listening()
        for channel in list(self._channels):
            if channel.transport is not None:
                cast(ITCPTransport, channel.transport).abortConnection()
        await gatherResults(list(self._channels.values()))

    # -- called by the site -------------------------------------------------------------

    def _request(self, request: Request) -> Behaviour:
        headers = {
            name.decode("latin-1").lower(): values[-1].decode("latin-1")
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        assert request.content is not None
        path = request.uri.decode("latin-1")
        self.received.append(Received(path, headers, request.content.read()))
        self._wake()
        return self.answers.pop(0) if self.answers else self.default

    def _wake(self) -> None:
        for entry in list(self._waiting):
            count, waiting = entry
            if len(self.received) >= count:
                self._waiting.remove(entry)
                # Later, so the sender finishes what it is doing before the test goes on.
                self._reactor.callLater(0, waiting.callback, self.received[count - 1])

    def _opened(self, channel: _Channel) -> None:
        self._channels[channel] = Deferred()

    def _lost(self, channel: _Channel) -> None:
        self._channels[channel].callback(None)


class _Resource(Resource):
    isLeaf = True

    def __init__(self, receiver: WebhookReceiver) -> None:
        super().__init__()
        self._receiver = receiver

    def render(self, request: Request) -> bytes | int:
        behaviour = self._receiver._request(request)
        if isinstance(behaviour, Hang):
            return NOT_DONE_YET
        if isinstance(behaviour, Trickle):
            request.setResponseCode(behaviour.status)
            request.setHeader(b"Content-Length", b"1000")
            request.write(b"x")
            # Keeps the request's own error quiet when the connection is cut.
            request.notifyFinish().addErrback(lambda _: None)
            return NOT_DONE_YET
        request.setResponseCode(behaviour.status)
        for name, value in behaviour.headers.items():
            request.setHeader(name, value)
        return behaviour.body


class _Channel(HTTPChannel):
    site: _Site

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.receiver._opened(self)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        super().connectionLost(reason)
        self.site.receiver._lost(self)


class _Site(Site):
    # A plain HTTP/1.1 channel (not the HTTP/2-capable default), to see it close.
    protocol = _Channel  # type: ignore[assignment]
    noisy = False

    def __init__(self, resource: Resource, receiver: WebhookReceiver) -> None:
        super().__init__(resource)
        self.receiver = receiver

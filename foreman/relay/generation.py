"""The seam every generation call passes through.

``/api/chat`` and ``/api/generate`` (and, later, ``POST /jobs``) hand a
:class:`GenerationCall` to a :class:`GenerationRunner`. Today's runner relays
it straight to Ollama; the durable queue replaces it with one that waits for
the worker's turn first. Nothing else in the HTTP layer needs to change.
"""

from __future__ import annotations

from typing import Literal, Protocol

import attrs
from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest

from foreman.relay.forward import Relay
from foreman.relay.upstream import BytesBodyProducer

Endpoint = Literal["chat", "generate"]


@attrs.frozen
class GenerationCall:
    """One generation call, body kept as the caller's raw bytes."""

    endpoint: Endpoint
    model: str
    #: Exactly what the caller sent, so unknown fields reach Ollama untouched.
    body: bytes
    stream: bool

    @property
    def path(self) -> bytes:
        return b"/api/chat" if self.endpoint == "chat" else b"/api/generate"


class GenerationRunner(Protocol):
    def run(self, call: GenerationCall, request: IRequest) -> Deferred[None]:
        """Answer ``request`` with the result of ``call`` (see :meth:`Relay.forward`)."""


class DirectGeneration:
    """Relays each call at once: no queue, Ollama schedules by itself."""

    def __init__(self, relay: Relay) -> None:
        self._relay = relay

    def run(self, call: GenerationCall, request: IRequest) -> Deferred[None]:
        return self._relay.forward(request, b"POST", call.path, BytesBodyProducer(call.body))

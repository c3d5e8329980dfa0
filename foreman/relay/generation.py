"""The seam every generation call passes through.

Every generation call, in every dialect, is handed as a
:class:`GenerationCall` to a :class:`GenerationRunner`. Without a queue the
runner relays it straight to Ollama; the durable queue's worker is a runner
that waits for its turn first. Nothing else in the HTTP layer needs to change.
"""

from __future__ import annotations

from typing import Protocol

import attrs
from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest

from foreman.relay.forward import Relay
from foreman.relay.upstream import BytesBodyProducer
from foreman.wire.endpoints import Endpoint, endpoint_named
from foreman.wire.priority import Priority


def as_endpoint(value: Endpoint | str) -> Endpoint:
    """An endpoint, given it or its name."""
    return value if isinstance(value, Endpoint) else endpoint_named(value)


@attrs.frozen
class GenerationCall:
    """One generation call, body kept as the caller's raw bytes."""

    #: The endpoint, or its name (``chat``, ``/v1/messages`` ...).
    endpoint: Endpoint = attrs.field(converter=as_endpoint)
    model: str
    #: Exactly what the caller sent, so unknown fields reach Ollama untouched.
    body: bytes
    stream: bool
    #: Its class in the queue (``X-Foreman-Priority``); people's calls by default.
    priority: Priority = Priority.INTERACTIVE
    #: The name of the caller's key (ADR-0030), or ``None``.
    caller: str | None = None

    @property
    def path(self) -> bytes:
        return self.endpoint.path


class GenerationRunner(Protocol):
    def run(self, call: GenerationCall, request: IRequest) -> Deferred[None]:
        """Answer ``request`` with the result of ``call`` (see :meth:`Relay.forward`)."""


class DirectGeneration:
    """Relays each call at once: no queue, Ollama schedules by itself."""

    def __init__(self, relay: Relay) -> None:
        self._relay = relay

    def run(self, call: GenerationCall, request: IRequest) -> Deferred[None]:
        return self._relay.forward(request, b"POST", call.path, BytesBodyProducer(call.body))

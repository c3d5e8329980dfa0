"""The access log: one line per request, written after its answer is sent.

Every request, including those whose caller hung up (status 499, as nginx
logs them) and those answered before they were whole (408, 413, 414, 431),
gets one line in the ``foreman.access`` namespace with its fields as well.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import ILogObserver, LogEvent, Logger, globalLogPublisher
from zope.interface import implementer

#: nginx's status for a request whose caller closed the connection before
#: the answer was complete.
CLIENT_CLOSED_REQUEST = 499


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


def log_access(fields: dict[str, Any]) -> None:
    """One access line: ``method``, ``path``, ``status``, ``model``,
    ``duration_ms``, ``bytes`` and ``client_gone``."""
    # The line is put together here, once and cheaply: this runs for every
    # request, and a format string with many fields is measurably slower to
    # render in the log observer.
    line = (
        f"{fields['method']} {fields['path']} {fields['status']} model={fields['model']}"
        f" {fields['duration_ms']:.1f}ms {fields['bytes']}B"
        + (" (client disconnected)" if fields["client_gone"] else "")
    )
    access_log.info("{line}", line=line, **fields)


def flush_access_log() -> None:
    """Write the lines still waiting for their answers to be sent."""
    _after_send.flush()

"""Writing a generation out over time: token pacing and backpressure.

A generation is a lazy iterator of events: :data:`PACE` marks the cost of
one token (``1 / tokens_per_second`` of the injected clock), anything else
is emitted as it comes. :class:`EventPump` drives such an iterator and is
an ``IPushProducer``: registered on the request, a paused transport stops
it, so relaying a huge reply to a slow reader never piles up in memory.
Because the iterator is lazy, everything after a ``PACE`` (timestamps,
durations) is computed only once that token's time has come.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from zope.interface import implementer

T = TypeVar("T")


class Pace:
    def __repr__(self) -> str:
        return "PACE"


#: Yielded before each token: wait for that token's share of time.
PACE = Pace()

# Clock arithmetic in floats: 0.1 * 3 > 0.3. Tokens within this of their
# due time are written without another timer.
_TOLERANCE = 1e-9


@implementer(IPushProducer)
class EventPump(Generic[T]):
    """Drive ``events`` into ``emit``, pacing tokens and honouring pauses."""

    def __init__(
        self,
        clock: IReactorTime,
        events: Iterator[T | Pace],
        emit: Callable[[T], None],
        *,
        tokens_per_second: float,
        on_finished: Callable[[], None],
    ) -> None:
        self._clock = clock
        self._events = events
        self._emit = emit
        self._interval = 1.0 / tokens_per_second if tokens_per_second > 0 else 0.0
        self._on_finished = on_finished
        self._start = 0.0
        self._paced = 0
        self._due: float | None = None
        self._timer: IDelayedCall | None = None
        self._paused = False
        self._stopped = False
        self._running = False

    def start(self) -> None:
        self._start = self._clock.seconds()
        self._run()

    # IPushProducer

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if self._timer is None:
            self._run()

    def stopProducing(self) -> None:
        """The consumer is gone: stop now and never call ``on_finished``."""
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    @property
    def stopped(self) -> bool:
        return self._stopped

    def _tick(self) -> None:
        self._timer = None
        self._run()

    def _run(self) -> None:
        # A write can pause and resume us synchronously; don't nest.
        if self._running:
            return
        self._running = True
        try:
            self._pump()
        finally:
            self._running = False

    def _pump(self) -> None:
        while not self._paused and not self._stopped:
            if self._due is not None:
                delay = self._due - self._clock.seconds()
                if delay > _TOLERANCE:
                    # Aim a hair early so float error never costs a clock tick.
                    self._timer = self._clock.callLater(delay - _TOLERANCE / 2, self._tick)
                    return
                self._due = None
            try:
                event = next(self._events)
            except StopIteration:
                self._stopped = True
                self._on_finished()
                return
            if isinstance(event, Pace):
                if self._interval > 0:
                    self._paced += 1
                    self._due = self._start + self._paced * self._interval
                continue
            self._emit(event)

"""Writing a generation out over time: token pacing and backpressure.

A generation is a lazy iterator of events: :data:`PACE` marks the cost of
one token (``1 / tokens_per_second`` of the injected clock), anything else
is emitted as it comes. :class:`EventPump` drives such an iterator and is
an ``IPushProducer``: registered on the request, a paused transport stops
it, so relaying a huge reply to a slow reader never piles up in memory.
Because the iterator is lazy, everything after a ``PACE`` (timestamps,
durations) is computed only once that token's time has come.

With a :class:`SharedBandwidth` the pumps of all generations in progress
share one token rate, as generations on one bandwidth-bound GPU do: with N
in progress each gets ``tokens_per_second / N``, re-evaluated whenever one
starts or ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

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


class SharedBandwidth:
    """One token rate divided evenly among the generations in progress.

    Processor sharing in "virtual tokens": :meth:`progress` is how many
    tokens each member has been able to produce since this object was
    made; it grows at ``tokens_per_second / N`` while N pumps are members.
    A member's k-th token is due when progress reaches the value at which
    it joined plus k. When N changes, progress so far is settled at the old
    rate and every member's timer is re-aimed at the new one.
    """

    def __init__(self, clock: IReactorTime, tokens_per_second: float) -> None:
        if tokens_per_second <= 0:
            raise ValueError("a shared bandwidth needs tokens_per_second > 0")
        self._clock = clock
        self.tokens_per_second = tokens_per_second
        self._members: list[EventPump[Any]] = []
        self._progress = 0.0
        self._settled_at = clock.seconds()

    @property
    def members(self) -> int:
        """Generations in progress that share the rate now."""
        return len(self._members)

    def rate(self) -> float:
        """Tokens per second each member gets now."""
        return self.tokens_per_second / max(1, len(self._members))

    def progress(self) -> float:
        return self._progress + (self._clock.seconds() - self._settled_at) * self.rate()

    def seconds_until(self, progress: float) -> float:
        return (progress - self.progress()) / self.rate()

    def join(self, pump: EventPump[Any]) -> float:
        """Add ``pump``; returns the progress it starts from."""
        self._settle()
        self._members.append(pump)
        self._rate_changed(pump)
        return self._progress

    def leave(self, pump: EventPump[Any]) -> None:
        if pump not in self._members:
            return
        self._settle()
        self._members.remove(pump)
        self._rate_changed(None)

    def _settle(self) -> None:
        now = self._clock.seconds()
        self._progress += (now - self._settled_at) * self.rate()
        self._settled_at = now

    def _rate_changed(self, joining: EventPump[Any] | None) -> None:
        for member in list(self._members):
            if member is not joining:
                member._reaim()


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
        bandwidth: SharedBandwidth | None = None,
    ) -> None:
        self._clock = clock
        #: When set, tokens come at this shared rate and ``tokens_per_second`` is unused.
        self._bandwidth = bandwidth
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
        if self._bandwidth is not None:
            # In shared mode ``_start`` and ``_due`` count virtual tokens, not seconds.
            self._start = self._bandwidth.join(self)
        else:
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
        self._cancel_timer()
        self._leave()

    @property
    def stopped(self) -> bool:
        return self._stopped

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _leave(self) -> None:
        if self._bandwidth is not None:
            self._bandwidth.leave(self)

    def _delay(self, due: float) -> float:
        """Seconds until ``due`` (a time, or in shared mode a progress)."""
        if self._bandwidth is not None:
            return self._bandwidth.seconds_until(due)
        return due - self._clock.seconds()

    def _reaim(self) -> None:
        """The shared rate changed: move a pending token's timer to its new time."""
        if self._timer is None or self._due is None or self._stopped:
            return
        self._cancel_timer()
        delay = max(0.0, self._delay(self._due) - _TOLERANCE / 2)
        self._timer = self._clock.callLater(delay, self._tick)

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
                delay = self._delay(self._due)
                if delay > _TOLERANCE:
                    # Aim a hair early so float error never costs a clock tick.
                    self._timer = self._clock.callLater(delay - _TOLERANCE / 2, self._tick)
                    return
                self._due = None
            try:
                event = next(self._events)
            except StopIteration:
                self._stopped = True
                self._leave()
                self._on_finished()
                return
            if isinstance(event, Pace):
                if self._bandwidth is not None:
                    self._paced += 1
                    self._due = self._start + self._paced
                elif self._interval > 0:
                    self._paced += 1
                    self._due = self._start + self._paced * self._interval
                continue
            self._emit(event)

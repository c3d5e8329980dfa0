"""foreman's two clocks: one to measure and schedule by, one to stamp with (ADR-0023).

The *reactor's* clock (``IReactorTime.seconds``) schedules every timer and
measures every wait. In the daemon it is monotonic
(:func:`foreman.ops.reactor_clock.use_monotonic_clock`): it never jumps when
the wall clock is stepped (NTP after a sleep, a manual change), so a backoff,
a poll or a deadline keeps its pace. Its values mean nothing outside the process.

The *wall* clock (``time.time``) stamps what people read and what outlives
the process: a job's ``created_at``, a webhook's ``timestamp``, a
delivery's ``next_at`` in the store. A stamp read back to schedule by is
turned into a delay first (:meth:`Clocks.delay_until`), never compared with
the reactor's clock.

Tests pass a ``Clock`` as the reactor and, by default, read the wall from it
too; a test of a clock step passes a wall clock of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import attrs

WallClock = Callable[[], float]


class ReactorTime(Protocol):
    """The one method of ``IReactorTime`` read here."""

    def seconds(self) -> float: ...


@attrs.frozen
class Clocks:
    #: Schedules and measures; monotonic in the daemon.
    reactor: ReactorTime
    #: Stamps; ``None``: the reactor's clock stands in (tests).
    wall_clock: WallClock | None = None

    @classmethod
    def real(cls, reactor: ReactorTime) -> Clocks:
        """The daemon's: the reactor's clock, and the system's wall clock."""
        return cls(reactor, time.time)

    def now(self) -> float:
        """The reactor's time: for timers and waits, never for display."""
        return self.reactor.seconds()

    def wall(self) -> float:
        """Seconds since the epoch: for stamps people read and the store keeps."""
        if self.wall_clock is None:
            return self.reactor.seconds()
        return self.wall_clock()

    def delay_until(self, stamp: float, *, at_most: float = float("inf")) -> float:
        """Seconds from now until the wall-clock moment ``stamp``, within
        ``[0, at_most]``: a moment stored by an earlier process (or before a
        step of the wall clock) can never make a wait longer than its own rule."""
        return min(at_most, max(0.0, stamp - self.wall()))

    def since(self, stamp: float) -> float:
        """Seconds since the wall-clock moment ``stamp`` (0 if it seems to lie ahead)."""
        return max(0.0, self.wall() - stamp)


class WallTime:
    """The wall clock behind ``IReactorTime``'s reading method, for code that
    only reads stamps (the status page's timeline)."""

    def __init__(self, wall: WallClock = time.time) -> None:
        self._wall = wall

    def seconds(self) -> float:
        return self._wall()

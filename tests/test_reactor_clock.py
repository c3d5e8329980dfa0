"""``use_monotonic_clock``: a reactor whose timers keep their pace when the
wall clock is stepped (ADR-0023).

Each test builds a fresh reactor instance of its own (never the global one,
never installed), gives it a wall clock the test can step in place of
``time.time``, and drives its timers by hand: ``timeout()`` is how long the
reactor would sleep, ``runUntilCurrent()`` what it does when it wakes. The
asyncio reactor's loop wakes it on asyncio's (monotonic) clock, then runs
the same ``runUntilCurrent``: ``_onTimer`` is that wake-up.
"""

from __future__ import annotations

import asyncio
import select
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.base import ReactorBase
from twisted.internet.selectreactor import SelectReactor
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from foreman.ops.reactor_clock import use_monotonic_clock

WALL_NOW = 1_800_000_000.0
MONOTONIC_NOW = 5_000.0
HOUR = 3600.0
DAY = 24 * HOUR


class Dial:
    """A clock the test sets; the reactor reads it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _asyncio_reactor() -> ReactorBase:
    # A loop of its own, never run and never made current: nothing global changes.
    return AsyncioSelectorReactor(asyncio.new_event_loop())


def _poll_reactor() -> ReactorBase:
    from twisted.internet.pollreactor import PollReactor

    return PollReactor()


def _epoll_reactor() -> ReactorBase:
    from twisted.internet.epollreactor import EPollReactor

    return EPollReactor()


FACTORIES: dict[str, Callable[[], ReactorBase]] = {"select": SelectReactor}
if hasattr(select, "poll"):
    FACTORIES["poll"] = _poll_reactor
if hasattr(select, "epoll"):
    FACTORIES["epoll"] = _epoll_reactor
FACTORIES["asyncio"] = _asyncio_reactor


def dispose(reactor: Any) -> None:
    """Close what a reactor opened when it was built (its waker's pipe)."""
    for call in reactor.getDelayedCalls():
        call.cancel()
    for reader in list(getattr(reactor, "_internalReaders", ())):
        reactor.removeReader(reader)
        reader.connectionLost(None)
    reactor._internalReaders.clear()
    reactor.disconnectAll()
    loop = getattr(reactor, "_asyncioEventloop", None)
    if loop is not None:
        loop.close()


@pytest.fixture(params=list(FACTORIES))
def fresh(request: pytest.FixtureRequest) -> Iterator[ReactorBase]:
    reactor = FACTORIES[request.param]()
    try:
        yield reactor
    finally:
        dispose(reactor)


@pytest.fixture
def wall() -> Dial:
    return Dial(WALL_NOW)


@pytest.fixture
def monotonic() -> Dial:
    return Dial(MONOTONIC_NOW)


def on_the_wall_clock(reactor: Any, wall: Dial) -> None:
    """The reactor as Twisted builds it, with ``time.time`` the test can step."""
    reactor.seconds = wall


def elapse(seconds: float, *dials: Dial) -> None:
    """Time passes: every clock moves on by ``seconds``."""
    for dial in dials:
        dial.now += seconds


def wake(reactor: Any) -> None:
    """What the reactor does when it wakes from its sleep."""
    if isinstance(reactor, AsyncioSelectorReactor):
        reactor._onTimer()
    else:
        reactor.runUntilCurrent()


def left(reactor: Any) -> list[float]:
    """Seconds from now to each pending call, on the reactor's own clock."""
    now = reactor.seconds()
    return sorted(round(call.getTime() - now, 6) for call in reactor.getDelayedCalls())


def test_on_the_wall_clock_a_step_back_holds_every_timer(fresh: Any, wall: Dial) -> None:
    # What foreman saw in the field, with every reactor Twisted offers here.
    on_the_wall_clock(fresh, wall)
    fired: list[str] = []
    fresh.callLater(10.0, fired.append, "backoff")

    elapse(1.0, wall)
    wall.now -= HOUR
    elapse(9.0, wall)
    wake(fresh)

    assert fired == []
    assert fresh.timeout() == pytest.approx(HOUR)


@pytest.mark.parametrize("step", [-HOUR, DAY], ids=["back-an-hour", "forward-a-day"])
def test_calls_scheduled_before_keep_what_they_had_left(
    fresh: Any, wall: Dial, monotonic: Dial, step: float
) -> None:
    on_the_wall_clock(fresh, wall)
    fired: list[str] = []
    fresh.callLater(10.0, fired.append, "a")
    fresh.callLater(30.0, fired.append, "b")
    fresh.timeout()  # the reactor's turn: both are in its heap now
    fresh.callLater(20.0, fired.append, "c")  # still among the new calls
    # Cancelled, but still in a heap (the asyncio reactor's at once), where it moves too.
    fresh.callLater(50.0, fired.append, "cancelled").cancel()
    delayed = fresh.callLater(40.0, fired.append, "e")
    delayed.delay(5.0)
    elapse(2.0, wall, monotonic)

    assert use_monotonic_clock(fresh, monotonic=monotonic) is True

    assert fresh.seconds() == MONOTONIC_NOW + 2.0
    assert left(fresh) == [8.0, 18.0, 28.0, 43.0]
    assert fresh.timeout() == pytest.approx(8.0)
    # The wall clock jumps; nothing the reactor does changes.
    wall.now += step
    after = fresh.callLater(1.0, fired.append, "after")
    assert after.getTime() == pytest.approx(monotonic.now + 1.0)
    assert left(fresh) == [1.0, 8.0, 18.0, 28.0, 43.0]

    for seconds, expected in [
        (1.0, ["after"]),
        (7.0, ["after", "a"]),
        (10.0, ["after", "a", "c"]),
        (10.0, ["after", "a", "c", "b"]),
    ]:
        assert fresh.timeout() == pytest.approx(seconds)
        elapse(seconds, wall, monotonic)
        wake(fresh)
        assert fired == expected
    elapse(14.9, wall, monotonic)
    wake(fresh)
    assert fired[-1] == "b"
    elapse(0.1, wall, monotonic)
    wake(fresh)
    assert fired[-1] == "e"
    assert fresh.getDelayedCalls() == []


def test_a_rebased_call_resets_on_the_monotonic_clock(
    fresh: Any, wall: Dial, monotonic: Dial
) -> None:
    on_the_wall_clock(fresh, wall)
    fired: list[str] = []
    deadline = fresh.callLater(60.0, fired.append, "deadline")
    fresh.timeout()
    use_monotonic_clock(fresh, monotonic=monotonic)
    wall.now -= HOUR

    # An idle timeout pushed back, then brought forward, as protocols do.
    deadline.reset(120.0)
    assert left(fresh) == [120.0]
    deadline.reset(3.0)
    assert left(fresh) == [3.0]
    elapse(3.0, wall, monotonic)
    wake(fresh)
    assert fired == ["deadline"]


def test_it_is_idempotent(fresh: Any, wall: Dial, monotonic: Dial) -> None:
    on_the_wall_clock(fresh, wall)
    fresh.callLater(10.0, lambda: None)
    assert use_monotonic_clock(fresh, monotonic=monotonic) is True
    elapse(4.0, wall, monotonic)

    another = Dial(123.0)
    assert use_monotonic_clock(fresh, monotonic=another) is True
    assert use_monotonic_clock(fresh) is True

    assert fresh.seconds() == monotonic.now
    assert left(fresh) == [6.0]


def test_the_default_is_time_monotonic(fresh: Any) -> None:
    import time

    assert use_monotonic_clock(fresh) is True
    assert fresh.seconds is time.monotonic
    call = fresh.callLater(30.0, lambda: None)
    assert call.getTime() - time.monotonic() == pytest.approx(30.0, abs=1.0)


@pytest.mark.parametrize("make", [Clock, MemoryReactorClock], ids=["Clock", "MemoryReactorClock"])
def test_a_simulated_clock_is_left_alone(make: Callable[[], Clock], monotonic: Dial) -> None:
    clock = make()
    clock.advance(WALL_NOW)
    call = clock.callLater(10.0, lambda: None)

    assert use_monotonic_clock(clock, monotonic=monotonic) is False

    assert clock.seconds() == WALL_NOW
    assert call.getTime() == WALL_NOW + 10.0
    assert "seconds" not in vars(clock)


def test_something_that_is_no_reactor_is_left_alone(monotonic: Dial) -> None:
    class Elsewhere:
        def seconds(self) -> float:
            return WALL_NOW

    thing = Elsewhere()
    assert use_monotonic_clock(thing, monotonic=monotonic) is False
    assert thing.seconds() == WALL_NOW

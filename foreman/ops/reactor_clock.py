"""The daemon's reactor on a monotonic clock, so its timers survive a clock step.

Twisted's reactors schedule ``callLater`` on ``seconds()``, which is
``time.time`` (twisted/twisted#2424, #5552): a call is due when the wall
clock reaches ``seconds() + delay``. When the wall clock is stepped back (NTP
after a sleep, a manual change), every pending timer waits out the step as
well; stepped forward, all fire at once. foreman schedules and measures on
the reactor's clock and stamps with the wall clock (:mod:`foreman.wire.clocks`,
ADR-0023), so :func:`use_monotonic_clock` gives the daemon's reactor a
monotonic ``seconds()``.

**Why this is sound.** ``ReactorBase`` reads the time only through
``self.seconds`` or a ``DelayedCall``'s own ``seconds``, in ``callLater``
(a new call's ``time`` is ``self.seconds() + delay``, and the call keeps
``seconds=self.seconds``), ``timeout`` (how long the reactor may sleep: the
first call's ``time`` minus ``self.seconds()``), ``runUntilCurrent`` (calls
whose ``time`` is at most ``self.seconds()`` run), ``DelayedCall.reset``
and its ``repr``. Setting ``seconds`` on the instance changes the first
three; each call already scheduled gets the new clock for the others,
and its ``time``, on the old clock, is moved onto the new one
by the same offset for all, so each keeps the delay it had left and their order
(both heaps, ``_pendingTimedCalls`` and ``_newTimedCalls``) is unchanged.
``delayed_time`` is relative and stays as it is. The asyncio reactor is
one of these: it asks its loop to wake it after ``timeout()``, but decides
what is due in ``runUntilCurrent`` by ``seconds()``, so it freezes on a step
back like the others and gets the same treatment (asyncio's own clock is
``time.monotonic`` too). A :class:`~twisted.internet.task.Clock` (tests)
is left alone.

What the reactor's clock now gives is seconds since an arbitrary start:
nothing that means a calendar time may read it. In foreman those are the
stamps of :class:`~foreman.wire.clocks.Clocks`; in Twisted, the web
server's access-log date (``HTTPFactory._updateLogDateTime``, unused: foreman
writes its own access log) and a ``twisted.web`` session's ``lastModified``
(foreman has none). Log events carry ``time.time`` stamps of their own.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.base import DelayedCall, ReactorBase

#: Set on a reactor whose ``seconds`` this module replaced: the clock it runs on.
_MARK = "_foreman_monotonic_clock"


def use_monotonic_clock(reactor: Any, monotonic: Callable[[], float] = time.monotonic) -> bool:
    """Make ``reactor`` schedule and measure on ``monotonic``; whether it does now.

    Acts on a reactor built on Twisted's ``ReactorBase`` (select, poll,
    epoll, kqueue, asyncio, CoreFoundation): sets ``reactor.seconds`` and
    moves every call already scheduled onto the new clock, each with the
    delay it had left. Returns ``True`` when the reactor runs on a monotonic
    clock after the call, this one or an earlier one (idempotent: a second
    call changes nothing). Returns ``False``, and changes nothing, for
    anything else: a ``Clock`` or ``MemoryReactorClock`` (simulated time),
    or a reactor whose timers this module does not know.

    Call it before the reactor runs, from the reactor's thread.
    """
    if getattr(reactor, _MARK, None) is not None:
        return True
    if not isinstance(reactor, ReactorBase):
        return False
    heaps = _timer_heaps(reactor)
    if heaps is None:
        return False
    # The same moment on both clocks: each call keeps what it had left to wait.
    offset = monotonic() - reactor.seconds()
    for heap in heaps:
        for call in heap:
            _rebase(call, offset, monotonic)
        # The shift keeps the order; kept a heap whatever floats do.
        heapq.heapify(heap)
    # Calls made from now on read it too (``callLater`` passes ``self.seconds``).
    reactor.seconds = monotonic
    setattr(reactor, _MARK, monotonic)
    return True


def _timer_heaps(reactor: ReactorBase) -> tuple[list[DelayedCall], list[DelayedCall]] | None:
    pending = getattr(reactor, "_pendingTimedCalls", None)
    new = getattr(reactor, "_newTimedCalls", None)
    if not isinstance(pending, list) or not isinstance(new, list):
        return None
    return pending, new


def _rebase(call: DelayedCall, offset: float, monotonic: Callable[[], float]) -> None:
    call.time += offset
    # ``reset`` and ``repr`` read the time through the call's own clock.
    call.seconds = monotonic

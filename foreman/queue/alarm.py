"""Sleep until woken, or until a moment on a clock, whichever comes first."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Alarm:
    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._wakeup: Deferred[None] | None = None
        self._timer: IDelayedCall | None = None

    async def sleep(self, until: float | None = None) -> None:
        if until is not None:
            # ``until`` may have passed since the caller read the clock:
            # callLater refuses a negative delay, so it becomes "at once".
            delay = max(0.0, until - self._clock.seconds())
            self._timer = self._clock.callLater(delay, self.wake)
        self._wakeup = Deferred()
        await self._wakeup
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def wake(self) -> None:
        """End the sleep now (nothing happens if nobody sleeps)."""
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None and not wakeup.called:
            wakeup.callback(None)

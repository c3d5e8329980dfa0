"""The calls to Ollama in flight: limits on their silence, and cutting them all.

Ollama sends nothing while it loads a model and reads a prompt (not even its
status line), and an Ollama that is stopped or wedged sends nothing for ever.
Two limits bound that silence: ``load_timeout`` until the reply's headers
arrive, ``stall_timeout`` between its later bytes. Past either the call is
cut, and so is every call when foreman must stop: its upstream connection is
closed (that is how Ollama learns to stop) and the relay ends it in words
(:mod:`foreman.relay.forward`).

As with the front door's arrival deadlines (``foreman.http.channel.Arrivals``),
one timer looks at every call in flight, and only while there are some: a
timer per call, moved at every chunk, would cost a share of a small call. A
call only notes that it heard something (one attribute set per chunk); the
sweep turns that into a time. So a call is cut between its limit and its
limit plus one tick after the last byte, never before.

Only time foreman itself was running counts as silence: a sweep that comes
much later than its tick (the Mac slept, the process was stopped, the clock
was stepped) starts every call's silence afresh, so a stream that survives a
sleep is not cut for it the moment the Mac wakes.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from foreman.relay.upstream import Target, describe_seconds, silence_message

log = Logger()

#: How long Ollama may take to begin its reply (a cold load, a long prompt).
#: Longer than Ollama's own ``OLLAMA_LOAD_TIMEOUT`` (5 m), so Ollama's own
#: error is the one a caller sees when a load fails.
DEFAULT_LOAD_TIMEOUT = 600.0
#: How long a reply that has begun may send nothing.
DEFAULT_STALL_TIMEOUT = 300.0
#: The sweep runs at least this often, and four times per shortest limit.
MAX_TICK = 1.0
#: A sweep this many ticks late means foreman was not running meanwhile.
LATE_TICKS = 4


@attrs.frozen
class Cut:
    """Why foreman cut a call, for the attempt it ends in."""

    message: str
    #: The status a caller that has been sent nothing yet gets (``None``: 502).
    status: int | None = None
    retry_after: int | None = None


class InFlight:
    """One call to Ollama, as the sweep sees it."""

    __slots__ = ("_stop", "cut", "heard", "paused", "quiet_since", "waiting")

    def __init__(self) -> None:
        #: No reply headers yet: the load limit applies, not the stall limit.
        self.waiting = True
        #: Something arrived since the last sweep.
        self.heard = True
        #: The caller's socket holds the upstream one back: the silence is
        #: the caller's, not Ollama's.
        self.paused = False
        self.quiet_since = 0.0
        #: Set once foreman cut the call.
        self.cut: Cut | None = None
        self._stop: Callable[[], object] | None = None

    def stop_with(self, stop: Callable[[], object]) -> None:
        """``stop`` closes the call's upstream connection (before the reply)."""
        self._stop = stop

    def answered(self, stop: Callable[[], object]) -> None:
        """The reply's headers arrived; from now on ``stop`` closes its connection."""
        self.waiting = False
        self.heard = True
        self._stop = stop

    def cut_off(self, cut: Cut) -> bool:
        """Cut the call (once); whoever waits on it sees ``cut``."""
        if self.cut is not None:
            return False
        self.cut = cut
        if self._stop is not None:
            self._stop()
        return True


class InFlightCalls:
    """Every call to one target in flight, with one timer for their silence.

    Without a clock no limit applies, but the calls can still be cut.
    """

    def __init__(
        self,
        target: Target,
        clock: IReactorTime | None = None,
        *,
        load_timeout: float | None = DEFAULT_LOAD_TIMEOUT,
        stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
    ) -> None:
        self._target = target
        self._clock = clock
        self.load_timeout = load_timeout if clock is not None else None
        self.stall_timeout = stall_timeout if clock is not None else None
        limits = [limit for limit in (self.load_timeout, self.stall_timeout) if limit is not None]
        #: How often the sweep looks; ``None`` when no limit applies.
        self.tick = min(MAX_TICK, min(limits) / 4) if limits else None
        self._calls: dict[InFlight, None] = {}
        self._sweeper: LoopingCall | None = None
        self._last_sweep = 0.0

    def __len__(self) -> int:
        return len(self._calls)

    def begin(self) -> InFlight:
        call = InFlight()
        self._calls[call] = None
        if self._sweeper is None and self._clock is not None and self.tick is not None:
            self._sweeper = LoopingCall(self._sweep)
            self._sweeper.clock = self._clock
            self._last_sweep = self._clock.seconds()
            self._sweeper.start(self.tick, now=False)
        return call

    def end(self, call: InFlight) -> None:
        self._calls.pop(call, None)

    def cut_all(self, cut: Cut) -> int:
        """Cut every call in flight; how many were."""
        done = 0
        for call in list(self._calls):
            try:
                done += call.cut_off(cut)
            except Exception:
                log.failure("Could not cut a call to Ollama")
        return done

    def _sweep(self) -> None:
        assert self._clock is not None and self.tick is not None
        now = self._clock.seconds()
        elapsed, self._last_sweep = now - self._last_sweep, now
        awake = 0 <= elapsed <= LATE_TICKS * self.tick
        for call in list(self._calls):
            if call.heard or call.paused or not awake:
                call.heard = False
                call.quiet_since = now
                continue
            limit = self.load_timeout if call.waiting else self.stall_timeout
            if limit is None or now - call.quiet_since < limit or call.cut is not None:
                continue
            log.warn(
                "Ollama at {url} sent nothing for {silence} {when}; foreman closed the call",
                url=self._target.base_url,
                silence=describe_seconds(limit),
                when="before its reply" if call.waiting else "in the middle of its reply",
            )
            try:
                call.cut_off(
                    Cut(silence_message(self._target, waiting=call.waiting, seconds=limit))
                )
            except Exception:
                # One call's trouble must not stop the timer for the others.
                log.failure("Could not stop a silent call to Ollama")
        if not self._calls and self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper = None

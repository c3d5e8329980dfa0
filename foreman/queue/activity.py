"""How the worker spends its time, for ``/metrics`` and the status page (ADR-0024).

``idle`` (nothing to run), ``holding`` (keeping the resident model for its
next call), ``loading`` (making a job's model resident: a swap's unload and
load), ``generating`` (a job's own call) and ``paused`` (waiting for Ollama
or for the store). The share spent loading is what swaps cost.
"""

from __future__ import annotations

from typing import Literal

from foreman.wire.clocks import ReactorTime

Kind = Literal["idle", "holding", "loading", "generating", "paused"]
KINDS: tuple[Kind, ...] = ("idle", "holding", "loading", "generating", "paused")


class Activity:
    def __init__(self, clock: ReactorTime) -> None:
        self._clock = clock
        self.now: Kind = "idle"
        self._since = clock.seconds()
        self._spent: dict[Kind, float] = dict.fromkeys(KINDS, 0.0)

    def switch(self, kind: Kind) -> None:
        if kind == self.now:
            return
        now = self._clock.seconds()
        self._spent[self.now] += max(0.0, now - self._since)
        self.now = kind
        self._since = now

    def seconds(self) -> dict[Kind, float]:
        """Seconds spent in each activity since start, the current one included."""
        spent = dict(self._spent)
        spent[self.now] += max(0.0, self._clock.seconds() - self._since)
        return spent

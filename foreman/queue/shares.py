"""The fair share between keys: rounds in which each active key has its turn (ADR-0030).

Within a class, the keys with jobs ready are served in *rounds*: in each
round, every such key starts one job (``weight`` jobs for a key weighted
more), and the order chooses among the keys whose turn it still is in the
round by its usual rule, the resident model's jobs first. So a key with a few
jobs is never held behind another key's thousands: once its key has a job
ready, that job waits for at most one job of each other key in the round,
whatever was queued before it. Keys that share the resident model run their
jobs together within a round, so drain by model is kept wherever it costs no
key its turn.

Each class keeps one number per key, the round its next job belongs to,
and the round of the last job started, the class's *virtual time*. A key
that was idle takes its turn in the current round, not in the rounds it
missed: a key cannot save turns by staying away. With one key (or none:
every job without a key is one caller), every round is that key's, and the
order is exactly the order without keys.

The bounds stay on top (:mod:`foreman.queue.order`): an overdue job runs
whoever's it is, and the batch class's turn comes as before.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import attrs

#: Rounds closer than this are the same round (weights give fractions).
_SAME_ROUND = 1e-9
#: Keys remembered beyond their round are forgotten past this many.
_PRUNE_BEYOND = 64


class Shares(Protocol):
    """What each key is given: how many jobs it starts in each round (1
    unless its key says more), and how many of its jobs may wait at once
    (``None``: as many as the queue takes)."""

    def weight(self, caller: str | None) -> float: ...

    def max_waiting(self, caller: str | None) -> int | None: ...


class EqualShares:
    """Every key alike, with no limit of its own (no keys, or the tests)."""

    def weight(self, caller: str | None) -> float:
        return 1.0

    def max_waiting(self, caller: str | None) -> int | None:
        return None


@attrs.define
class Rounds:
    """One class's rounds: its virtual time, and each key's next round."""

    virtual: float = 0.0
    next_round: dict[str | None, float] = attrs.field(factory=dict)

    def round_of(self, caller: str | None) -> float:
        """The round ``caller``'s next job belongs to: never one already past."""
        return max(self.next_round.get(caller, self.virtual), self.virtual)

    def turn(self, callers: Iterable[str | None]) -> list[str | None]:
        """Of ``callers`` (the keys with jobs ready), those whose turn it is:
        the ones in the earliest round."""
        rounds = [(self.round_of(caller), caller) for caller in callers]
        if not rounds:
            return []
        first = min(number for number, _ in rounds)
        return [caller for number, caller in rounds if number <= first + _SAME_ROUND]

    def started(self, caller: str | None, weight: float = 1.0) -> None:
        """A job of ``caller`` started: its key's next job is a round later
        (a fraction of one, for a key of weight above 1)."""
        current = self.round_of(caller)
        self.virtual = current
        self.next_round[caller] = current + 1.0 / max(weight, 1e-3)
        if len(self.next_round) > _PRUNE_BEYOND:
            # A key whose round has passed is where a new key would start.
            self.next_round = {
                key: number for key, number in self.next_round.items() if number > self.virtual
            }

    def copy(self) -> Rounds:
        return Rounds(self.virtual, dict(self.next_round))

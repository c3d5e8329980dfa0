"""Rent or buy: hold the worker for the resident model's next call only while it pays (ADR-0024).

Agents call in closed loops: each waits for its answer, works a moment (a
tool, a file), and calls again, so its next call is never queued when the
worker becomes free. When the resident model's queue is empty and another
model's work waits, the worker can swap at once, or hold the resident model
for its next call. Holding costs the waiting work the time held; swapping
costs a load now and, when the resident model's caller comes back, a load
back. So the worker holds only when the resident model's callers usually
come back sooner than that load back takes (:class:`~foreman.queue.costs.ModelCosts`
learns both), for at most their usual gap and never longer than the load it
may save, nor past the resident model's quantum; callers slow to come back
get no hold at all. A model whose callers' gaps are not known yet is held
for at most one load of it (the break-even hold of the rent-or-buy problem:
whatever the callers do, it never costs more than twice the best choice made
knowing them), or for ``--swap-grace`` when that is set.

No hold is worth it for a job that has waited its bound (nothing may
overtake it) or a person waiting after a batch job (a batch follow-up could
never go first).
"""

from __future__ import annotations

from collections import deque

import attrs

from foreman.queue.costs import ModelCosts
from foreman.queue.job import Job
from foreman.wire.model_names import canonical_model_name

#: A learned gap is stretched this much before it limits a hold: a caller
#: is rarely exactly as quick as last time.
MARGIN = 1.25
#: Holds remembered, for the status page.
RECENT = 64
#: ``--swap-rule fixed``'s hold, when ``--swap-grace`` is not set.
FIXED_GRACE = 0.25


@attrs.frozen
class Holding:
    """A hold in progress, for the queue report and the status page."""

    model: str
    since: float
    until: float
    #: What a load of the model cost when the hold began: no hold lasts longer.
    cost: float
    #: Cut short by the resident model's quantum: a miss then says little of its callers.
    cut_by_quantum: bool = False

    def describe(self, now: float) -> str:
        return (
            f"holding {self.model} for its next call, {max(0.0, now - self.since):.1f} s "
            f"of at most {self.until - self.since:.1f} s"
        )


class SwapHold:
    def __init__(
        self, costs: ModelCosts, *, unknown: float | None = None, learned: bool = True
    ) -> None:
        self._costs = costs
        #: The hold for a model whose callers' gaps are not known yet
        #: (``None``: up to a load of it).
        self.unknown = unknown
        #: False: always hold ``unknown`` (the rule before this one, for comparison).
        self.learned = learned
        self._last_finished_at = float("-inf")
        self._last_was_batch = False
        self._last_model: str | None = None
        #: The hold in progress, if any.
        self.holding: Holding | None = None
        #: Holds since start, and those that ended with the call they waited for.
        self.holds = 0
        self.hits = 0
        #: The last holds begun.
        self.recent: deque[Holding] = deque(maxlen=RECENT)

    def finished(self, job: Job, now: float) -> None:
        """The worker's last job ended at ``now``."""
        self._last_finished_at = now
        self._last_was_batch = job.batch
        self._last_model = canonical_model_name(job.model)

    def limit(self, resident: str) -> float:
        """The longest hold for ``resident``'s next call (0: swap at once)."""
        if not self.learned:
            return FIXED_GRACE if self.unknown is None else self.unknown
        cost = self._costs.load_seconds(resident)
        gap = self._costs.expected_gap(resident)
        if gap is None:
            return cost if self.unknown is None else min(self.unknown, cost)
        if gap > cost:
            return 0.0  # its callers are slow to come back: the load back is cheaper
        return min(gap * MARGIN, cost)

    def until(self, job: Job, resident: str | None, *, overdue: bool, quantum_left: float) -> float:
        """Until when the worker holds before swapping to ``job`` (0: not at all)."""
        if resident is None or canonical_model_name(job.model) == resident:
            return 0.0  # no swap to save
        if overdue or (not job.batch and self._last_was_batch):
            return 0.0
        if self._last_model != resident:
            return 0.0  # the resident model's last job did not just end
        limit = self.limit(resident)
        if self.learned:
            limit = min(limit, max(0.0, quantum_left))
        return self._last_finished_at + limit if limit > 0 else 0.0

    def begin(self, resident: str, until: float) -> None:
        """The worker holds for ``resident`` until ``until``."""
        if self.holding is not None and self.holding.model == resident:
            return
        self.holds += 1
        full = self._last_finished_at + self.limit(resident)
        cost = self._costs.load_seconds(resident)
        self.holding = Holding(resident, self._last_finished_at, until, cost, until < full - 1e-9)
        self.recent.append(self.holding)

    def end(self, started: Job | None) -> None:
        """The hold is over: the worker starts ``started`` (or nothing waits any more).

        A hold that ends with another model's job is a miss: the model's
        callers come back later than it waited, and the next hold is shorter.
        """
        holding, self.holding = self.holding, None
        if holding is None:
            return
        if started is not None and canonical_model_name(started.model) == holding.model:
            self.hits += 1
        elif started is not None and self.learned and not holding.cut_by_quantum:
            self._costs.missed(holding.model, holding.until - holding.since)

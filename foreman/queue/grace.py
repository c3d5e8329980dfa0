"""The swap grace: a moment's wait for more work for the loaded model before a swap.

A caller just served often asks the same model again at once; waiting a
quarter of a second for that call can save a whole swap (5-10 s on a
laptop). The wait is only worth it when the call it waits for could go
first, so it is skipped for a job that has waited its bound (nothing may
overtake it) and for a person waiting after a batch job (a batch job's
follow-up never goes before a person). See ADR-0017 and ADR-0021.
"""

from __future__ import annotations

from foreman.queue.job import Job
from foreman.wire.model_names import canonical_model_name


class SwapGrace:
    def __init__(self, seconds: float) -> None:
        #: How long to wait for more work for the resident model before a swap.
        self.seconds = seconds
        self._last_finished_at = float("-inf")
        self._last_was_batch = False

    def finished(self, job: Job, now: float) -> None:
        """The worker's last job ended at ``now``."""
        self._last_finished_at = now
        self._last_was_batch = job.batch

    def hold_until(self, job: Job, resident: str | None, *, overdue: bool) -> float:
        """Until when ``job``, chosen next, should wait before its swap (0: not at all)."""
        if resident is None or canonical_model_name(job.model) == resident:
            return 0.0  # no swap to save
        if overdue or (not job.batch and self._last_was_batch):
            return 0.0
        return self._last_finished_at + self.seconds

"""What keeps the worker from taking a job: a store that refuses writes, or an
Ollama that does not answer (ADR-0023).

The worker asks :meth:`Pauses.paused` before each choice, and then
:meth:`Pauses.wait`. While the store is troubled it tries it again with
backoff (:class:`~foreman.queue.journal.Journal`); while the target is
silent it asks it again with backoff (:class:`~foreman.queue.outage.Outage`)
and answers, with ``503``, the sync callers whose wait for it is over.
Either way it sleeps until the next thing worth looking at.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from foreman.queue.callers import Callers
from foreman.queue.job import Job, JobState
from foreman.queue.journal import Journal
from foreman.queue.outage import RETRY_AFTER, Outage
from foreman.queue.scheduler import Scheduler
from foreman.wire.clocks import Clocks

#: The worker's sleep: until woken, or until the given moment on the reactor's clock.
Sleep = Callable[[float], Awaitable[None]]
#: Stores a job's new state, or keeps it to be stored later.
SaveSoon = Callable[[Job, JobState | None], None]


class Pauses:
    def __init__(
        self,
        journal: Journal,
        outage: Outage,
        scheduler: Scheduler,
        callers: Callers,
        clocks: Clocks,
        *,
        sleep: Sleep,
        save_soon: SaveSoon,
    ) -> None:
        self._journal = journal
        self._outage = outage
        self._scheduler = scheduler
        self._callers = callers
        self._clocks = clocks
        self._sleep = sleep
        self._save_soon = save_soon

    @property
    def reason(self) -> str | None:
        """Why the worker takes no jobs now, in a sentence; ``None`` if nothing holds it."""
        if self._journal.troubled:
            return f"the store cannot be written: {self._journal.error}"
        if self._outage.active:
            return f"Ollama does not answer: {self._outage.reason}"
        return None

    def paused(self, now: float) -> bool:
        """Whether something keeps the worker from taking a job at ``now``
        (an outage begins or ends here, by what the target last said)."""
        return self._journal.troubled or self._target_away(now)

    async def wait(self, now: float) -> None:
        """Wait on what keeps the worker, a while: until it may be over."""
        if self._journal.troubled:
            await self._wait_for_store(now)
        elif self._outage.active:
            await self._wait_for_target(now)

    async def _wait_for_store(self, now: float) -> None:
        journal = self._journal
        if now >= journal.next_try_at:
            if await journal.recover(now):
                return
            journal.schedule_retry(self._clocks.now())
        await self._sleep(journal.next_try_at)

    def _target_away(self, now: float) -> bool:
        """Whether the worker waits for the target (starting or ending an outage)."""
        outage = self._outage
        silent = outage.target_silent
        if silent and not outage.active:
            outage.begin(now)
        elif not silent and outage.active:
            outage.end(now)
        return outage.active

    async def _wait_for_target(self, now: float) -> None:
        outage = self._outage
        # A caller whose wait is over is refused only after one more look:
        # the target may have come back since the last one, up to a gap ago.
        if now >= outage.next_probe_at or self._wait_over(now):
            if await outage.probe(now):
                outage.end(self._clocks.now())
                return
            now = self._clocks.now()
        self._refuse_waiting_callers(now)
        wake_at = outage.next_probe_at
        for job in self._scheduler.sync_jobs():
            if job.sync:
                wake_at = min(wake_at, outage.caller_deadline(self._scheduler.arrival(job)))
        await self._sleep(wake_at)

    def _wait_over(self, now: float) -> bool:
        """Whether a sync caller's wait for the target is over."""
        outage = self._outage
        return any(
            job.sync and now >= outage.caller_deadline(self._scheduler.arrival(job))
            for job in self._scheduler.sync_jobs()
        )

    def _refuse_waiting_callers(self, now: float) -> None:
        """Sync callers whose wait for the target is over get ``503``."""
        outage = self._outage
        for job in self._scheduler.sync_jobs():
            if job.sync and now >= outage.caller_deadline(self._scheduler.arrival(job)):
                message = outage.refusal()
                self._scheduler.remove(job.id)
                outage.callers_refused += 1
                failed = job.moved(
                    JobState.FAILED, self._clocks.wall(), last_error=message, error_status=503
                )
                self._save_soon(failed, job.state)
                self._callers.answer(job.id, 503, message, RETRY_AFTER)

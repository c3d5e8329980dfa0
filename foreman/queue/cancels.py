"""Cancelling a ``/jobs`` job: queued here, running here, or anywhere in a fleet.

A part of :class:`~foreman.queue.worker.Worker` (through
:class:`~foreman.queue.intake.Intake`), which holds what it uses. A queued
job's cancel is recorded before it is answered, and the job goes back to the
queue if the store refuses; a running job is stopped and ends cancelled; in a
fleet, the store's cancel wins whichever box owns the job (ADR-0026).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime

from foreman.queue.callers import Callers
from foreman.queue.job import Job, JobState
from foreman.queue.journal import Journal, StoreUnavailable
from foreman.queue.scheduler import Scheduler
from foreman.queue.settlement import CANCELLED_QUEUED, CANCELLED_RUNNING
from foreman.queue.store import JobStore
from foreman.queue.transitions import Transitions
from foreman.wire.clocks import Clocks


class Cancels:
    _store: JobStore
    _clock: IReactorTime
    _callers: Callers
    _on_ended: list[Deferred[None]]
    scheduler: Scheduler
    clocks: Clocks
    journal: Journal
    transitions: Transitions

    if TYPE_CHECKING:  # the worker's own, and its doors'

        @property
        def current(self) -> Job | None:
            raise NotImplementedError

        def _running(self, job_id: str) -> bool:
            raise NotImplementedError

        def _enqueue(
            self, job: Job, *, reserved: bool = False, arrived: float | None = None
        ) -> None: ...

        def _abandon(self, job_id: str) -> None: ...

    def cancel(self, job_id: str) -> Deferred[Job | None]:
        """Cancel a queued or running asynchronous job; fires with the job as it
        ended (cancelled, or a terminal state it reached first), or ``None``
        if the worker does not hold it. Sync jobs are their callers' to cancel.
        Fails with :class:`StoreUnavailable` when the cancel of a queued job
        cannot be recorded: the job stays queued.
        """
        return ensureDeferred(self._cancel(job_id))

    async def _cancel(self, job_id: str) -> Job | None:
        if job_id in self._callers:
            return None
        if self._store.box is not None and not self._running(job_id):
            # A fleet: the job may be queued for any box, or run on another;
            # the store's cancel wins whoever owns it (ADR-0026).
            queued = self.scheduler.remove(job_id)
            try:
                return await self._cancel_elsewhere(job_id)
            except StoreUnavailable:
                if queued is not None:
                    self._enqueue(queued)
                raise
        queued = self.scheduler.remove(job_id)
        if queued is not None:
            now = self._clock.seconds()
            job = queued.moved(JobState.CANCELLED, self.clocks.wall(), last_error=CANCELLED_QUEUED)
            try:
                await self.journal.save(job, queued.state, now)
            except StoreUnavailable:
                self._enqueue(queued)
                raise
            return job
        if self.current is None or self.current.id != job_id:
            # Ended already, with its last state still to be written?
            return self.journal.holds(job_id)
        ended: Deferred[None] = Deferred()
        self._on_ended.append(ended)
        self._abandon(job_id)
        await ended  # the job's execution, its last save included, is over
        return self.journal.holds(job_id) or await self._store.get(job_id)

    async def _cancel_elsewhere(self, job_id: str) -> Job | None:
        """Cancel ``job_id`` in the fleet's store, whichever box owns it: its
        owner's later writes are fenced off, and it stops the run when it
        hears (the fleet's notification, or its next look)."""
        now = self._clock.seconds()
        stored = await self._store.get(job_id)
        if stored is None or stored.state.terminal:
            return stored
        why = CANCELLED_QUEUED if stored.state is JobState.QUEUED else CANCELLED_RUNNING
        transition = self.transitions.begin(
            stored.moved(JobState.CANCELLED, self.clocks.wall(), last_error=why), stored.state
        )
        write = transition.write
        try:
            cancelled = await self._store.cancel(
                job_id,
                now=self.clocks.wall(),
                also=None if write is None else lambda db, _job, _previous: write(db),
            )
        except Exception as e:
            self.journal.refused_elsewhere(e, now)
            raise StoreUnavailable(self.journal.error) from e
        if cancelled is not None:
            transition.stored()
        return cancelled

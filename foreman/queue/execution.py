"""One run of one job: stored ``loading``, its model made resident, stored
``working``, performed, and settled (ADR-0009, ADR-0023).

What each attempt's outcome means for the job is
:mod:`foreman.queue.settlement`'s; this module adds what an outcome means for
the worker. An unreachable target is asked once more: silent, it is an
outage (:mod:`foreman.queue.outage`) and the job goes back to its place with
its attempt given back; answering, the failure was the job's and the
attempt counts. A write the store refuses before anything was generated puts
the job back as the store still has it; after, the state is kept by the
:class:`~foreman.queue.journal.Journal` and written once the store takes writes.

A run ends cancelled when its caller hangs up or a ``/jobs`` cancel lands
(:meth:`Execution.abandon`), and as *stopped* when foreman's stop cuts it: a
sync caller is told so in its dialect, an asynchronous job waits in the store
for the next start with its attempt given back.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import attrs
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.logger import Logger

from foreman.http.errors import answer_with_error
from foreman.queue.activity import Activity
from foreman.queue.callers import Caller, Callers
from foreman.queue.job import Job, JobState
from foreman.queue.journal import Journal, StoreUnavailable
from foreman.queue.leases import Fenced
from foreman.queue.outage import Outage
from foreman.queue.residency import Residency, pin_keep_alive, whole_reply_body
from foreman.queue.settlement import CANCELLED_RUNNING, LEFT_RUNNING, STOPPED, Retries, settle
from foreman.queue.usage import reply_tokens
from foreman.relay.forward import Attempt, Outcome, Relay
from foreman.relay.upstream import BytesBodyProducer
from foreman.wire.clocks import Clocks
from foreman.wire.endpoints import Dialect
from foreman.wire.gojson import GoJSONError
from foreman.wire.token_counts import TokenCounts

log = Logger()
T = TypeVar("T")

#: A sync caller's answer when its job was taken from this box (a fleet).
TAKEN = "foreman: the job was taken from this box before it ended; try again"


@attrs.frozen
class Crew:
    """What every run works with: the worker's parts."""

    journal: Journal
    residency: Residency
    relay: Relay
    callers: Callers
    clocks: Clocks
    retries: Retries
    outage: Outage
    #: Puts a job (back) in the scheduler.
    enqueue: Callable[[Job], None]
    #: Whether foreman's stop is cutting what runs.
    stopping: Callable[[], bool]
    #: Told of each load made here, and how long it took.
    loaded: Callable[[str, float], None]
    #: How the worker spends its time.
    activity: Activity
    #: How long a claimed job is this box's without a heartbeat (a fleet, ADR-0026).
    lease: float = 30.0


class Execution:
    def __init__(self, queued: Job, crew: Crew) -> None:
        self.queued = queued
        #: The job as last moved (what the worker shows as running).
        self.job = queued
        self.caller: Caller | None = crew.callers.get(queued.id)
        self._crew = crew
        self._step: Deferred[Any] | None = None
        self._abandoned = False
        self._fenced = False
        #: Another box took the job (or cancelled it) before it ended here.
        self.taken = False
        #: The run loaded the job's model first (usage per key).
        self.loaded = False
        #: The tokens Ollama counted for the reply it delivered, if it did.
        self.tokens: TokenCounts | None = None

    def abandon(self) -> None:
        """Stop the run: it ends cancelled. Between two steps there is nothing
        to cancel yet; the mark stops the next one from starting."""
        self._abandoned = True
        self.interrupt()

    def interrupt(self) -> None:
        """Cancel the step in progress, if any."""
        if self._step is not None:
            self._step.cancel()

    async def run(self) -> None:
        crew = self._crew
        queued = self.queued
        job = self.job = queued.moved(
            JobState.LOADING, crew.clocks.wall(), attempt=queued.attempt + 1
        )
        try:
            try:
                claimed = await crew.journal.claim(job, crew.clocks.now(), lease=crew.lease)
            except StoreUnavailable:
                self._requeue()  # as the store still has it
                return
            if claimed is None:
                self._taken()
                return
            job = self.job = claimed
            unreachable = await self._prepare()
            if unreachable is not None:
                await self._settle(unreachable)
                return
            working = job.moved(JobState.WORKING, crew.clocks.wall())
            try:
                await crew.journal.save(working, JobState.LOADING, crew.clocks.now())
            except StoreUnavailable:
                # Nothing generated yet: the job waits for the store in the queue.
                self._requeue()
                return
            self.job = working
            crew.activity.switch("generating")
            attempt = await self._run_step(self._perform())
            self.tokens = reply_tokens(attempt)
            await self._settle(attempt)
        except CancelledError:
            if self._fenced:
                self._taken()
                return
            await self._cancelled()
        except Fenced:
            self._taken()

    def fence(self) -> None:
        """The job is no longer this box's (its lease ran out and the fleet
        took it back, or a box cancelled it): stop, and write nothing more."""
        self._fenced = True
        self.interrupt()

    def _taken(self) -> None:
        """Another box took the job, or cancelled it, before or while it ran
        here: the fleet's record of it stands. A caller waiting here (a sync
        job is this box's from the start, so this is rare) is told."""
        crew = self._crew
        self.taken = True
        if self._fenced:
            crew.residency.forget()
        log.info("Job {job_id} is no longer this box's; it stops here", job_id=self.queued.id)
        if self.caller is not None:
            answer_with_error(self.caller.request, 503, TAKEN, {b"Retry-After": b"5"})
            crew.callers.release(self.queued.id)

    async def _prepare(self) -> Attempt | None:
        """Make the job's model resident; a load it takes is measured."""
        crew = self._crew
        crew.activity.switch("loading")
        loads = crew.residency.loads
        began = crew.clocks.now()
        unreachable = await self._run_step(crew.residency.prepare(self.job))
        if crew.residency.loads > loads:
            self.loaded = True
            crew.loaded(self.job.model, crew.clocks.now() - began)
        return unreachable

    def _requeue(self) -> None:
        """Put back a job that could not start, unless its caller left meanwhile."""
        if self._abandoned:
            raise CancelledError()
        self._crew.enqueue(self.queued)

    async def _run_step(self, work: Coroutine[Any, Any, T]) -> T:
        if self._abandoned or self._fenced or self._crew.stopping():
            work.close()
            raise CancelledError()
        step = ensureDeferred(work)
        self._step = step
        try:
            return await step
        finally:
            self._step = None

    async def _perform(self) -> Attempt:
        job = self.job
        keep_alive = self._crew.residency.keep_alive
        relay = self._crew.relay
        native = job.route.dialect is Dialect.OLLAMA
        try:
            if self.caller is not None:
                # Only a native body can carry keep_alive; the others reach
                # Ollama byte for byte (the model was pinned when loaded).
                body = pin_keep_alive(job.body, keep_alive) if native else job.body
                producer = BytesBodyProducer(body)
                return await relay.relay(self.caller.request, b"POST", job.path, producer)
            whole = whole_reply_body(job.body, keep_alive, native=native)
            return await relay.fetch(b"POST", job.path, whole)
        except GoJSONError as e:
            return Attempt(Outcome.REFUSED, 400, str(e))

    async def _settle(self, attempt: Attempt) -> None:
        crew = self._crew
        job = self.job
        if self._abandoned:
            # The caller left as the step ended: whatever the step saw (a
            # stream cut off by the hang-up), the job was cancelled.
            raise CancelledError()
        if crew.stopping() and attempt.outcome in (Outcome.UNREACHABLE, Outcome.BROKEN):
            # Cut by the stop: a stream already ended with its dialect's error.
            crew.residency.forget()
            await self._stopped(told=attempt.outcome is Outcome.BROKEN)
            return
        if attempt.outcome is Outcome.BROKEN:
            # A stream that broke may be Ollama going down: what it holds is
            # asked again before the next job, which then loads with foreman's
            # keep_alive, not Ollama's default.
            crew.residency.forget()
        if attempt.outcome is Outcome.UNREACHABLE:
            crew.residency.forget()
            answers = await self._target_answers()
            if self._abandoned:
                raise CancelledError()  # the caller left while the target was asked
            if not answers:
                # An outage, not the job's failure: the attempt is given back
                # and the job waits in its place for the target.
                crew.outage.begin(crew.clocks.now())
                await self._back_in_queue(attempt.error)
                return
        settled = settle(job, attempt, crew.clocks.wall(), crew.retries)
        if settled.retry_in is not None:
            log.info(
                "Job {job_id}: {error}; attempt {next} of {most} in {delay}s",
                job_id=job.id,
                error=attempt.error,
                next=job.attempt + 1,
                most=crew.retries.max_attempts,
                delay=settled.retry_in,
            )
            await crew.journal.save_or_keep(settled.job, job.state, crew.clocks.now())
            crew.enqueue(settled.job)
            return  # a sync caller simply keeps waiting
        if self.caller is not None and settled.caller_error is not None:
            answer_with_error(self.caller.request, *settled.caller_error)
        await crew.journal.save_or_keep(settled.job, job.state, crew.clocks.now())
        crew.callers.release(job.id)

    async def _target_answers(self) -> bool:
        await self._crew.residency.inventory.refresh()
        return not self._crew.outage.target_silent

    async def _back_in_queue(self, why: str | None) -> None:
        """The job goes back to its place, its attempt given back."""
        crew = self._crew
        back = self.job.moved(
            JobState.QUEUED,
            crew.clocks.wall(),
            attempt=max(0, self.job.attempt - 1),
            not_before=0.0,
            last_error=why,
        )
        await crew.journal.save_or_keep(back, self.job.state, crew.clocks.now())
        crew.enqueue(back)

    async def _stopped(self, *, told: bool = False) -> None:
        """The stop cut the run: a caller is told so (unless ``told`` already);
        an asynchronous job waits in the store for the next start, its attempt
        given back."""
        crew = self._crew
        job = self.job
        if not job.sync:
            back = job.moved(
                JobState.QUEUED, crew.clocks.wall(), attempt=max(0, job.attempt - 1), not_before=0.0
            )
            await crew.journal.save_or_keep(back, job.state, crew.clocks.now())
            return
        failed = job.moved(JobState.FAILED, crew.clocks.wall(), **STOPPED)
        await crew.journal.save_or_keep(failed, job.state, crew.clocks.now())
        if told:
            crew.callers.release(job.id)
        else:
            crew.callers.answer_stopped(job.id)

    async def _cancelled(self) -> None:
        crew = self._crew
        crew.residency.forget()
        if crew.stopping():
            await self._stopped()
            return
        job = self.job
        why = LEFT_RUNNING if job.sync else CANCELLED_RUNNING
        cancelled = job.moved(JobState.CANCELLED, crew.clocks.wall(), last_error=why)
        await crew.journal.save_or_keep(cancelled, job.state, crew.clocks.now())
        crew.callers.release(job.id)

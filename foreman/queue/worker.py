"""The single worker: generation jobs one at a time, drained by model (ADR-0009).

The worker takes the next job from the :class:`~foreman.queue.scheduler.Scheduler`,
passes a ``DeferredSemaphore`` of one (the gate: at most one generation
towards the target, ever), makes the job's model resident, and runs it:
into the waiting caller's response for a sync job, into the store for an
asynchronous one. Every transition is written to the store first.

What each attempt's outcome means for its job (done, failed, or back in
the queue with backoff) is :mod:`foreman.queue.settlement`'s. A caller that hangs up
cancels its job: while queued it is dropped before it can cause a load;
while running its upstream call is aborted and the worker moves on.
``cancel`` does the same for an asynchronous job. Each transition is
stored together with what its recorders write (a ``/jobs`` job's webhook
event, in the same transaction), then announced to the listeners of
:mod:`foreman.queue.transitions`.
"""

from __future__ import annotations

import math
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from foreman.http.errors import SERVER_BUSY, answer_with_error
from foreman.queue.alarm import Alarm
from foreman.queue.callers import Caller, Callers
from foreman.queue.grace import SwapGrace
from foreman.queue.job import Job, JobState
from foreman.queue.residency import Residency, pin_keep_alive, whole_reply_body
from foreman.queue.scheduler import QueueFull, Scheduler
from foreman.queue.settlement import (
    CANCELLED_QUEUED,
    CANCELLED_RUNNING,
    LEFT_QUEUED,
    LEFT_RUNNING,
    STOPPED,
    Retries,
    settle,
)
from foreman.queue.store import JobStore
from foreman.queue.transitions import (
    Transition,
    TransitionListener,
    TransitionRecorder,
    Transitions,
)
from foreman.queue.ulid import new_ulid
from foreman.relay.forward import Attempt, Outcome, Relay
from foreman.relay.generation import GenerationCall
from foreman.relay.upstream import BytesBodyProducer
from foreman.wire.endpoints import Dialect
from foreman.wire.gojson import GoJSONError

log = Logger()
T = TypeVar("T")

QUEUE_POSITION_HEADER = b"X-Foreman-Queue-Position"


class Worker(Service):
    def __init__(
        self,
        store: JobStore,
        scheduler: Scheduler,
        residency: Residency,
        relay: Relay,
        clock: IReactorTime,
        *,
        max_attempts: int = 3,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        swap_grace: float = 0.25,
    ) -> None:
        self._store = store
        self.scheduler = scheduler
        self.residency = residency
        self._relay = relay
        self._clock = clock
        #: How a job is retried while the target is unreachable.
        self.retries = Retries(max_attempts, backoff_base, backoff_cap)
        self.grace = SwapGrace(swap_grace)
        #: At most one generation towards the target at any time.
        self.gate = DeferredSemaphore(1)
        self.current: Job | None = None
        self._current_since = 0.0
        self._callers = Callers()
        self._step: Deferred[Any] | None = None
        self._alarm = Alarm(clock)
        self._loop_done: Deferred[None] | None = None
        self._stopping = False
        self._abandoned: str | None = None
        #: Smoothed seconds per job, for ``Retry-After``.
        self.average_job_seconds = 5.0
        #: What each state change writes with it, and who hears of it.
        self.transitions = Transitions()
        #: Fired when the running job's execution ends.
        self._on_ended: list[Deferred[None]] = []

    def on_transition(self, listener: TransitionListener) -> None:
        """Call ``listener(job, previous_state)`` after each state is stored."""
        self.transitions.add(listener)

    def record_transitions(self, recorder: TransitionRecorder) -> None:
        """Write what ``recorder`` makes of each transition in the transaction
        that stores it (:mod:`foreman.queue.transitions`)."""
        self.transitions.add_recorder(recorder)

    # -- intake ------------------------------------------------------------------

    def run(self, call: GenerationCall, request: IRequest) -> Deferred[None]:
        """The native API's seam: queue a sync job and answer when it is done."""
        return ensureDeferred(self._run_sync(call, request))

    async def _run_sync(self, call: GenerationCall, request: IRequest) -> None:
        now = self._clock.seconds()
        job = Job(
            id=new_ulid(now),
            model=call.model,
            endpoint=call.endpoint.name,
            body=call.body,
            sync=True,
            created_at=now,
            updated_at=now,
            priority=call.priority,
        )
        try:
            self.scheduler.reserve()
        except QueueFull:
            self._refuse_busy(request)
            return
        transition = self.transitions.begin(job, None)
        try:
            await self._store.insert(job, transition.write)
        except CancelledError:
            # The caller left while the row was being written.
            self.scheduler.release()
            self._save_soon(job.moved(JobState.CANCELLED, now, last_error=LEFT_QUEUED), None)
            raise
        except Exception:
            self.scheduler.release()
            log.failure("Could not record a new job")
            message = "foreman: could not record the job; see its log"
            answer_with_error(request, 503, message, {b"Retry-After": b"%d" % self.retry_after()})
            return
        done = self._callers.wait(job.id, request, self._caller_left)
        self.scheduler.add(job)
        transition.stored()
        request.setHeader(QUEUE_POSITION_HEADER, b"%d" % self.position(job.id))
        self._wake()
        await done

    def submit(self, job: Job) -> Deferred[Job]:
        """Queue an asynchronous job (no caller waits); fails with QueueFull."""
        return ensureDeferred(self._submit(job))

    async def _submit(self, job: Job) -> Job:
        self.scheduler.reserve()
        # The job and its first event (``queued``) in one transaction: a 202
        # means both are stored.
        transition = self.transitions.begin(job, None)
        try:
            stored = await self._store.insert_unless_known(job, transition.write)
        except BaseException:
            self.scheduler.release()
            raise
        if stored.id != job.id:
            # A retried submit (same Idempotency-Key): the first one's job.
            self.scheduler.release()
            return stored
        self.scheduler.add(job)
        transition.stored()
        self._wake()
        return job

    def cancel(self, job_id: str) -> Deferred[Job | None]:
        """Cancel a queued or running asynchronous job; fires with the job as it
        ended (cancelled, or a terminal state it reached first), or ``None``
        if the worker does not hold it. Sync jobs are their callers' to cancel.
        """
        return ensureDeferred(self._cancel(job_id))

    async def _cancel(self, job_id: str) -> Job | None:
        if job_id in self._callers:
            return None
        queued = self.scheduler.remove(job_id)
        if queued is not None:
            now = self._clock.seconds()
            job = queued.moved(JobState.CANCELLED, now, last_error=CANCELLED_QUEUED)
            await self._save(job, queued.state)
            return job
        if self.current is None or self.current.id != job_id:
            return None
        ended: Deferred[None] = Deferred()
        self._on_ended.append(ended)
        self._abandon(job_id)
        await ended  # the job's execution, its last save included, is over
        return await self._store.get(job_id)

    def restore(self, jobs: list[Job], requeued: Sequence[Transition] = ()) -> None:
        """Queue jobs recovered from the store at start-up (beyond any bound);
        ``requeued``: recovery's moves back to the queue, written in its
        transaction (:func:`foreman.queue.lifecycle.recover_queue`), now announced."""
        for job in jobs:
            if job.state is JobState.QUEUED and not job.sync:
                self.scheduler.add(job, reserved=False)
        for transition in requeued:
            transition.stored()
        self._wake()

    def position(self, job_id: str) -> int:
        """1 when the job runs next (counting a job in progress as ahead of it)."""
        ahead = 1 if self.current is not None else 0
        return ahead + self.scheduler.position(
            job_id, self.residency.worker_model, self._next_choice_at(), self.average_job_seconds
        )

    def _next_choice_at(self) -> float:
        """When the worker will next choose a job, by the smoothed job time."""
        now = self._clock.seconds()
        if self.current is None:
            return now
        return max(now, self._current_since + self.average_job_seconds)

    def retry_after(self) -> int:
        estimate = self.average_job_seconds * max(1, self.scheduler.depth)
        return max(1, min(300, math.ceil(estimate)))

    def _refuse_busy(self, request: IRequest) -> None:
        retry = b"%d" % self.retry_after()
        answer_with_error(request, 503, SERVER_BUSY, {b"Retry-After": retry})

    def _caller_left(self, job_id: str) -> None:
        # Klein cancels the caller's wait when its connection closes.
        queued = self.scheduler.remove(job_id)
        if queued is not None:
            self._callers.forget(job_id)
            now = self._clock.seconds()
            cancelled = queued.moved(JobState.CANCELLED, now, last_error=LEFT_QUEUED)
            self._save_soon(cancelled, queued.state)
            return
        self._abandon(job_id)

    def _abandon(self, job_id: str) -> None:
        """Stop the running job ``job_id``: it ends cancelled."""
        if self.current is not None and self.current.id == job_id:
            # Between two steps there is nothing to cancel yet: the mark
            # stops the next step from starting.
            self._abandoned = job_id
            if self._step is not None:
                self._step.cancel()

    # -- the loop ------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self._loop_done = ensureDeferred(self._loop())

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self._stopping = True
        # Waiting sync callers get an answer now; nothing could serve them
        # after a restart (asynchronous jobs simply stay queued).
        now = self._clock.seconds()
        for job in list(self.scheduler.jobs()):
            if job.sync:
                self.scheduler.remove(job.id)
                self._save_soon(job.moved(JobState.FAILED, now, **STOPPED), job.state)
                self._callers.answer_stopped(job.id)
        if self._step is not None:
            self._step.cancel()
        self._wake()
        return self._loop_done

    async def _loop(self) -> None:
        while self.running:
            try:
                await self._turn()
            except Exception:
                # Nothing may end the loop but a stop: a worker that quietly
                # stopped taking jobs would leave every caller waiting.
                log.failure("The worker's loop failed; it goes on")
                await self._sleep(until=self._clock.seconds() + 1.0)

    async def _turn(self) -> None:
        """Start the next job, or wait until there may be one."""
        now = self._clock.seconds()
        job = self.scheduler.pick(self.residency.worker_model, now)
        if job is None:
            await self._sleep()
            return
        hold_until = self._swap_hold_until(job)
        if now < hold_until:
            await self._sleep(until=hold_until)
            return
        self.scheduler.take(job, now)
        try:
            await self.gate.run(self._execute, job)
        except Exception:
            log.failure("The worker failed while running job {job_id}", job_id=job.id)

    def _swap_hold_until(self, job: Job) -> float:
        overdue = self.scheduler.overdue(job, self._clock.seconds())
        return self.grace.hold_until(job, self.residency.worker_model, overdue=overdue)

    async def _sleep(self, until: float | None = None) -> None:
        """Until woken, ``until``, or the next job backing off is ready."""
        ready_at = self.scheduler.next_ready_at(self._clock.seconds())
        if until is not None:
            ready_at = until if ready_at is None else min(ready_at, until)
        await self._alarm.sleep(ready_at)

    def _wake(self) -> None:
        self._alarm.wake()

    async def _execute(self, job: Job) -> None:
        caller = self._callers.get(job.id)
        started = self._current_since = self._clock.seconds()
        previous = job.state
        job = job.moved(JobState.LOADING, started, attempt=job.attempt + 1)
        self.current = job
        try:
            await self._save(job, previous)
            unreachable = await self._run_step(job, self.residency.prepare(job))
            if unreachable is None:
                job = self.current = job.moved(JobState.WORKING, self._clock.seconds())
                await self._save(job, JobState.LOADING)
                attempt = await self._run_step(job, self._perform(job, caller))
                await self._settle(job, attempt, caller)
            else:
                await self._settle(job, unreachable, caller)
        except CancelledError:
            await self._cancelled(job)
        finally:
            self.current = None
            self._step = None
            self._abandoned = None
            self.grace.finished(job, self._clock.seconds())
            ended, self._on_ended = self._on_ended, []
            for each in ended:
                each.callback(None)
        elapsed = self._clock.seconds() - started
        self.average_job_seconds = 0.8 * self.average_job_seconds + 0.2 * elapsed

    async def _run_step(self, job: Job, work: Coroutine[Any, Any, T]) -> T:
        if self._abandoned == job.id or self._stopping:
            work.close()
            raise CancelledError()
        step = ensureDeferred(work)
        self._step = step
        try:
            return await step
        finally:
            self._step = None

    async def _perform(self, job: Job, caller: Caller | None) -> Attempt:
        keep_alive = self.residency.keep_alive
        route = job.route
        native = route.dialect is Dialect.OLLAMA
        try:
            if caller is not None:
                # Only a native body can carry keep_alive; the others reach
                # Ollama byte for byte (the model was pinned when loaded).
                body = pin_keep_alive(job.body, keep_alive) if native else job.body
                return await self._relay.relay(
                    caller.request, b"POST", job.path, BytesBodyProducer(body)
                )
            return await self._relay.fetch(
                b"POST", job.path, whole_reply_body(job.body, keep_alive, native=native)
            )
        except GoJSONError as e:
            return Attempt(Outcome.REFUSED, 400, str(e))

    async def _settle(self, job: Job, attempt: Attempt, caller: Caller | None) -> None:
        if self._abandoned == job.id:
            # The caller left as the step ended: whatever the step saw (a
            # stream cut off by the hang-up), the job was cancelled.
            raise CancelledError()
        if attempt.outcome is Outcome.UNREACHABLE:
            self.residency.forget()
        previous = job.state
        settled = settle(job, attempt, self._clock.seconds(), self.retries)
        if settled.retry_in is not None:
            log.info(
                "Job {job_id}: target unreachable ({error}); attempt {next} of {most} in {delay}s",
                job_id=job.id,
                error=attempt.error,
                next=job.attempt + 1,
                most=self.retries.max_attempts,
                delay=settled.retry_in,
            )
            await self._save(settled.job, previous)
            self.scheduler.add(settled.job, reserved=False)
            return  # a sync caller simply keeps waiting
        if caller is not None and settled.caller_error is not None:
            answer_with_error(caller.request, *settled.caller_error)
        await self._save(settled.job, previous)
        self._callers.release(job.id)

    async def _cancelled(self, job: Job) -> None:
        now = self._clock.seconds()
        self.residency.forget()
        if self._stopping:
            if not job.sync:
                return  # left running in the store: the next start re-queues it
            await self._save(job.moved(JobState.FAILED, now, **STOPPED), job.state)
            self._callers.answer_stopped(job.id)
            return
        why = LEFT_RUNNING if job.sync else CANCELLED_RUNNING
        await self._save(job.moved(JobState.CANCELLED, now, last_error=why), job.state)
        self._callers.release(job.id)

    async def _save(self, job: Job, previous: JobState | None) -> None:
        """Record ``job``'s new state (it left ``previous``) with what its
        recorders write, in one transaction; then announce it."""
        transition = self.transitions.begin(job, previous)
        try:
            await self._store.update(job, transition.write)
        except Exception:
            log.failure(
                "Could not record job {job_id} as {state}", job_id=job.id, state=job.state.value
            )
            return
        transition.stored()

    def _save_soon(self, job: Job, previous: JobState | None) -> None:
        ensureDeferred(self._save(job, previous))

    # -- visibility -------------------------------------------------------------------

    def snapshot(self) -> list[tuple[Job, int]]:
        """The running job (position 0) and the queued ones with their positions."""
        shown: list[tuple[Job, int]] = []
        ahead = 0
        if self.current is not None:
            shown.append((self.current, 0))
            ahead = 1
        queued = self.scheduler.ordered(
            self.residency.worker_model, self._next_choice_at(), self.average_job_seconds
        )
        shown.extend((job, ahead + index) for index, job in enumerate(queued, start=1))
        return shown

"""The queue's doors: sync calls and ``/jobs`` submits coming in, hang-ups,
and jobs recovered at start-up (ADR-0009); cancels are
:mod:`foreman.queue.cancels`'.

Each job enters the scheduler with its stamps read on the reactor's clock
(ADR-0023) and its arrival noted for the swap rule (ADR-0024). A part of
:class:`~foreman.queue.worker.Worker`, which holds what it uses.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from foreman.http.errors import SERVER_BUSY, answer_with_error
from foreman.http.site import STOPPING_MESSAGE, STOPPING_RETRY_AFTER
from foreman.queue.callers import Callers
from foreman.queue.cancels import Cancels
from foreman.queue.costs import ModelCosts
from foreman.queue.engines import Connection
from foreman.queue.execution import Execution
from foreman.queue.job import Job, JobState
from foreman.queue.journal import Journal
from foreman.queue.scheduler import CallerQueueFull, QueueFull, Scheduler
from foreman.queue.settlement import LEFT_QUEUED, Retries
from foreman.queue.store import JobStore
from foreman.queue.transitions import Transition, Transitions
from foreman.queue.ulid import new_ulid
from foreman.queue.usage import KeyUsage
from foreman.relay.generation import GenerationCall
from foreman.wire.clocks import Clocks
from foreman.wire.model_names import canonical_model_name
from foreman.wire.priority import Priority

log = Logger()

QUEUE_POSITION_HEADER = b"X-Foreman-Queue-Position"


class Intake(Cancels):
    _store: JobStore
    _clock: IReactorTime
    _callers: Callers
    _run: Execution | None
    _on_ended: list[Deferred[None]]
    scheduler: Scheduler
    clocks: Clocks
    retries: Retries
    costs: ModelCosts
    journal: Journal
    transitions: Transitions
    #: Each key's calls, work and refusals (ADR-0030), when counted.
    usage: KeyUsage | None
    draining: bool
    average_job_seconds: float
    #: Whether this box queues an asynchronous job submitted here at once (a
    #: fleet may leave it to the fleet's queue: another box's Ollama has its
    #: model, or another box runs it or holds it resident, ADR-0026).
    takes_here: Callable[[Job], bool]

    if TYPE_CHECKING:  # the worker's own, and its visibility's

        def _wake(self) -> None: ...

        def _save_soon(self, job: Job, previous: JobState | None) -> None: ...

        def position(self, job_id: str) -> int:
            raise NotImplementedError

        @property
        def current(self) -> Job | None:
            raise NotImplementedError

    def retry_after(self) -> int:
        estimate = self.average_job_seconds * max(1, self.scheduler.depth)
        return max(1, min(300, math.ceil(estimate)))

    def run(self, call: GenerationCall, request: IRequest) -> Deferred[None]:
        """The native API's seam: queue a sync job and answer when it is done."""
        return ensureDeferred(self._run_sync(call, request))

    async def _run_sync(self, call: GenerationCall, request: IRequest) -> None:
        if self.draining:
            retry = {b"Retry-After": b"%d" % STOPPING_RETRY_AFTER}
            answer_with_error(request, 503, STOPPING_MESSAGE, retry)
            return
        stamp = self.clocks.wall()
        job = Job(
            id=new_ulid(stamp),
            model=call.model,
            endpoint=call.endpoint.name,
            body=call.body,
            sync=True,
            created_at=stamp,
            updated_at=stamp,
            priority=call.priority,
            caller=call.caller,
        )
        try:
            self._reserve(job.priority, 1, job.caller)
        except CallerQueueFull as e:
            self._refuse_busy(request, e)
            return
        except QueueFull:
            self._refuse_busy(request)
            return
        transition = self.transitions.begin(job, None)
        try:
            await self._store.insert(job, transition.write)
        except CancelledError:
            # The caller left while the row was being written.
            self.scheduler.release(job.priority, caller=job.caller)
            cancelled = job.moved(JobState.CANCELLED, self.clocks.wall(), last_error=LEFT_QUEUED)
            self._save_soon(cancelled, None)
            raise
        except Exception as e:
            self.scheduler.release(job.priority, caller=job.caller)
            log.failure("Could not record a new job")
            self._store_refused(e)
            message = "foreman: could not record the job; see its log"
            answer_with_error(request, 503, message, {b"Retry-After": b"%d" % self.retry_after()})
            return
        done = self._callers.wait(job.id, request, self._caller_left)
        self._arrived(job)
        self._enqueue(job, reserved=True)
        transition.stored()
        request.setHeader(QUEUE_POSITION_HEADER, b"%d" % self.position(job.id))
        self._wake()
        await done

    def submit(self, job: Job) -> Deferred[Job]:
        """Queue an asynchronous job (no caller waits); fails with QueueFull."""
        return ensureDeferred(self._submit(job))

    async def _submit(self, job: Job) -> Job:
        self._reserve(job.priority, 1, job.caller)
        # The job and its first event (``queued``) in one transaction: a 202
        # means both are stored. During a stop it is stored all the same and
        # runs after the next start.
        transition = self.transitions.begin(job, None)
        try:
            stored = await self._store.insert_unless_known(job, transition.write)
        except BaseException as e:
            self.scheduler.release(job.priority, caller=job.caller)
            if isinstance(e, Exception) and not isinstance(e, CancelledError):
                self._store_refused(e)
            raise
        if stored.id != job.id:
            # A retried submit (same Idempotency-Key): the first one's job.
            self.scheduler.release(job.priority, caller=job.caller)
            return stored
        self._arrived(job)
        if not self.takes_here(job):
            # A fleet: the job is left to the fleet's queue (another box's
            # Ollama has the model, or another box holds it); a box claims it.
            self.scheduler.release(job.priority, caller=job.caller)
            transition.stored()
            return job
        self._enqueue(job, reserved=True)
        transition.stored()
        self._wake()
        return job

    def submit_many(
        self, jobs: Sequence[Job], also: Callable[[Connection], None] | None = None
    ) -> Deferred[list[Job]]:
        """Queue asynchronous jobs as one (a batch): all stored in one
        transaction, with ``also(connection)``, or none; fails with
        :class:`QueueFull` when a class cannot take all of its jobs."""
        return ensureDeferred(self._submit_many(jobs, also))

    async def _submit_many(
        self, jobs: Sequence[Job], also: Callable[[Connection], None] | None
    ) -> list[Job]:
        counts = Counter((job.priority, job.caller) for job in jobs)
        reserved: list[tuple[Priority, str | None]] = []
        try:
            for (priority, caller), count in counts.items():
                self._reserve(priority, count, caller)
                reserved.append((priority, caller))
        except QueueFull:
            for priority, caller in reserved:
                self.scheduler.release(priority, counts[priority, caller], caller)
            raise
        transitions = [self.transitions.begin(job, None) for job in jobs]
        writes = [write for t in transitions if (write := t.write) is not None]

        def write_all(db: Connection) -> None:
            for write in writes:
                write(db)
            if also is not None:
                also(db)

        try:
            stored = await self._store.insert_many(jobs, write_all)
        except BaseException as e:
            for (priority, caller), count in counts.items():
                self.scheduler.release(priority, count, caller)
            if isinstance(e, Exception) and not isinstance(e, CancelledError):
                self._store_refused(e)
            raise
        for model in {job.model for job in stored}:
            self._arrived(next(job for job in stored if job.model == model))
        arrivals: dict[float, float] = {}
        for job in stored:
            if self.takes_here(job):
                if job.created_at not in arrivals:
                    arrivals[job.created_at] = self._clock.seconds() - self.clocks.since(
                        job.created_at
                    )
                self._enqueue(job, reserved=True, arrived=arrivals[job.created_at])
            else:
                self.scheduler.release(job.priority, caller=job.caller)
        for transition in transitions:
            transition.stored()
        self._wake()
        return stored

    def _store_refused(self, error: Exception) -> None:
        """A new job's row was refused: the store is troubled (``/healthz``
        says so) and the worker pauses until it takes writes again."""
        self.journal.refused_elsewhere(error, self._clock.seconds())
        self._wake()

    def restore(self, jobs: list[Job], requeued: Sequence[Transition] = ()) -> None:
        """Queue jobs recovered from the store at start-up (beyond any bound);
        ``requeued``: recovery's moves back to the queue, written in its
        transaction (:func:`foreman.queue.lifecycle.recover_queue`), now announced."""
        for job in jobs:
            if job.state is JobState.QUEUED and not job.sync:
                self._enqueue(job)
        for transition in requeued:
            transition.stored()
        self._wake()

    # -- the fleet's queue (ADR-0026) -------------------------------------------------

    def adopt(self, jobs: Sequence[Job]) -> int:
        """Queue here the fleet's jobs this box may run (submitted at any box),
        unless already queued or running here; how many were new. They are
        claimed in the store before they start, so a job another box takes
        first is only let go."""
        new = 0
        for job in jobs:
            if job.id in self.scheduler or self._running(job.id) or job.sync:
                continue
            self._enqueue(job)
            new += 1
        if new:
            self._wake()
        return new

    def withdraw(self, batch_id: str) -> list[Job]:
        """Take a batch's queued lines out of the queue, before its cancel is
        stored; should that fail, :meth:`adopt` puts them back."""
        taken = [job for job in self.scheduler.jobs() if job.batch_id == batch_id]
        for job in taken:
            self.scheduler.remove(job.id)
        return taken

    def let_go(self, job_ids: Sequence[str]) -> int:
        """Forget queued jobs another box took or cancelled; how many."""
        gone = 0
        for job_id in job_ids:
            if job_id not in self._callers and self.scheduler.remove(job_id) is not None:
                gone += 1
        return gone

    def queued_here(self) -> list[str]:
        """The ids of the asynchronous jobs queued here: the fleet may have
        taken some."""
        return [job.id for job in self.scheduler.jobs() if not job.sync]

    def fence_current(self, job_id: str) -> bool:
        """The running job ``job_id`` is no longer this box's (cancelled from
        another box, or its lease ran out): stop it, writing nothing more."""
        if self._run is None or self._run.queued.id != job_id:
            return False
        self._run.fence()
        return True

    def _running(self, job_id: str) -> bool:
        return self._run is not None and self._run.queued.id == job_id

    def _loaded(self, model: str, seconds: float) -> None:
        """The worker loaded ``model``, in ``seconds``."""
        self.costs.loaded(model, seconds)
        self.scheduler.turns.loaded(model, self._clock.seconds())

    def _arrived(self, job: Job) -> None:
        """A new call for ``job``'s model: how soon its callers came back."""
        running = self.current is not None and canonical_model_name(
            self.current.model
        ) == canonical_model_name(job.model)
        pending = running or self.scheduler.queued_for(job.model) > 0
        self.costs.arrived(job.model, self._clock.seconds(), others_pending=pending)

    def _enqueue(self, job: Job, *, reserved: bool = False, arrived: float | None = None) -> None:
        """Put ``job`` in the scheduler, its stamps read on the reactor's clock
        (``arrived``: its arrival there, read once for a batch's lines, so
        that lines made at one instant keep their order)."""
        now = self._clock.seconds()
        if arrived is None:
            arrived = now - self.clocks.since(job.created_at)
        # A backoff stored by an earlier process, or before the wall clock
        # was stepped back, is never longer than the rule that made it.
        ready_at = now + self.clocks.delay_until(job.not_before, at_most=self.retries.backoff_cap)
        self.scheduler.add(job, reserved=reserved, arrived=arrived, ready_at=ready_at, now=now)

    def _reserve(self, priority: Priority, count: int, caller: str | None) -> None:
        """Claim places in the queue; a refusal counts against the key."""
        try:
            self.scheduler.reserve(priority, count, caller)
        except QueueFull:
            if self.usage is not None:
                self.usage.refused(caller)
            raise

    def _refuse_busy(self, request: IRequest, own: CallerQueueFull | None = None) -> None:
        retry = b"%d" % self.retry_after()
        if own is not None:
            # The key's own limit, not the queue's: too many requests (ADR-0030).
            answer_with_error(request, 429, str(own), {b"Retry-After": retry})
            return
        answer_with_error(request, 503, SERVER_BUSY, {b"Retry-After": retry})

    def _caller_left(self, job_id: str) -> None:
        # Klein cancels the caller's wait when its connection closes.
        queued = self.scheduler.remove(job_id)
        if queued is not None:
            self._callers.forget(job_id)
            cancelled = queued.moved(JobState.CANCELLED, self.clocks.wall(), last_error=LEFT_QUEUED)
            self._save_soon(cancelled, queued.state)
            return
        self._abandon(job_id)

    def _abandon(self, job_id: str) -> None:
        """Stop the running job ``job_id``: it ends cancelled."""
        if self._run is not None and self._run.queued.id == job_id:
            self._run.abandon()

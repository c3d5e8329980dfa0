"""The single worker: generation jobs one at a time, drained by model (ADR-0009).

The worker takes the next job from the :class:`~foreman.queue.scheduler.Scheduler`,
passes a ``DeferredSemaphore`` of one (the gate: at most one generation
towards the target, ever), makes the job's model resident, and runs it:
into the waiting caller's response for a sync job, into the store for an
asynchronous one. Every transition is written to the store first, through
the :class:`~foreman.queue.journal.Journal`.

What each attempt's outcome means for its job (done, failed, or back in
the queue with backoff) is :mod:`foreman.queue.settlement`'s. A caller that hangs up
cancels its job: while queued it is dropped before it can cause a load;
while running its upstream call is aborted and the worker moves on.
``cancel`` does the same for an asynchronous job.

The faults of daily life pause the worker; none loses a job (ADR-0023).
While Ollama does not answer, the worker waits for it
(:mod:`foreman.queue.outage`); while the store refuses writes, it starts
nothing (:mod:`foreman.queue.journal`). On a stop it drains: it takes no
more jobs, answers waiting sync callers, and lets the running job finish
(:meth:`Worker.drain`), or is cut (:meth:`Worker.cut`) when the drain's time is up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredSemaphore,
    ensureDeferred,
    succeed,
)
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from foreman.http.errors import SERVER_BUSY, answer_with_error
from foreman.http.site import STOPPING_MESSAGE, STOPPING_RETRY_AFTER
from foreman.queue.activity import Activity
from foreman.queue.alarm import Alarm
from foreman.queue.callers import Callers
from foreman.queue.costs import ModelCosts
from foreman.queue.execution import Crew, Execution
from foreman.queue.hold import SwapHold
from foreman.queue.job import Job, JobState
from foreman.queue.journal import Journal, StoreUnavailable
from foreman.queue.outage import DEFAULT_CALLER_WAIT, Outage
from foreman.queue.pauses import Pauses
from foreman.queue.residency import Residency
from foreman.queue.scheduler import QueueFull, Scheduler
from foreman.queue.settlement import CANCELLED_QUEUED, LEFT_QUEUED, STOPPED, Retries
from foreman.queue.store import JobStore
from foreman.queue.transitions import (
    Transition,
    TransitionListener,
    TransitionRecorder,
    Transitions,
)
from foreman.queue.ulid import new_ulid
from foreman.relay.forward import Relay
from foreman.relay.generation import GenerationCall
from foreman.wire.clocks import Clocks
from foreman.wire.model_names import canonical_model_name

log = Logger()

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
        caller_wait: float = DEFAULT_CALLER_WAIT,
        clocks: Clocks | None = None,
        costs: ModelCosts | None = None,
        learned_holds: bool = True,
    ) -> None:
        self._store = store
        self.scheduler = scheduler
        self.residency = residency
        self._relay = relay
        self._clock = clock
        #: Scheduling by the reactor's clock, stamps by the wall clock.
        self.clocks = clocks or Clocks(clock)
        #: How a job is retried while the target answers but the job fails.
        self.retries = Retries(max_attempts, backoff_base, backoff_cap)
        #: What loads cost and how soon each model's callers come back.
        self.costs = costs or ModelCosts(residency.inventory.model_sizes)
        # The order's quantum is counted in the loads these costs measure.
        scheduler.policy = attrs.evolve(scheduler.policy, costs=self.costs)
        #: Rent or buy: holding the resident model for its next call.
        self.hold = SwapHold(self.costs, unknown=swap_grace, learned=learned_holds)
        #: How the worker spends its time.
        self.activity = Activity(clock)
        #: Waiting for a target that does not answer.
        self.outage = Outage(residency.inventory, caller_wait=caller_wait)
        #: At most one generation towards the target at any time.
        self.gate = DeferredSemaphore(1)
        self._run: Execution | None = None
        #: Whether the running job had waited its bound when it started.
        self.current_overdue = False
        self._current_since = 0.0
        self._callers = Callers()
        self._alarm = Alarm(clock)
        self._loop_done: Deferred[None] | None = None
        #: Taking no more jobs (a stop has begun).
        self.draining = False
        #: Cutting what runs: the stop's time is up.
        self._stopping = False
        #: Smoothed seconds per job, for ``Retry-After``.
        self.average_job_seconds = 5.0
        #: What each state change writes with it, and who hears of it.
        self.transitions = Transitions()
        self.journal = Journal(store, self.transitions)
        #: Fired when the running job's execution ends.
        self._on_ended: list[Deferred[None]] = []
        self._crew = Crew(
            journal=self.journal,
            residency=residency,
            relay=relay,
            callers=self._callers,
            clocks=self.clocks,
            retries=self.retries,
            outage=self.outage,
            enqueue=self._enqueue,
            stopping=lambda: self._stopping,
            loaded=self._loaded,
            activity=self.activity,
        )
        self._pauses = Pauses(
            self.journal,
            self.outage,
            scheduler,
            self._callers,
            self.clocks,
            sleep=lambda until: self._sleep(until=until),
            save_soon=self._save_soon,
        )
        residency.inventory.on_reachable(self._wake)

    @property
    def current(self) -> Job | None:
        """The running job, as last moved."""
        return None if self._run is None else self._run.job

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
            cancelled = job.moved(JobState.CANCELLED, self.clocks.wall(), last_error=LEFT_QUEUED)
            self._save_soon(cancelled, None)
            raise
        except Exception as e:
            self.scheduler.release()
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
        self.scheduler.reserve()
        # The job and its first event (``queued``) in one transaction: a 202
        # means both are stored. During a stop it is stored all the same and
        # runs after the next start.
        transition = self.transitions.begin(job, None)
        try:
            stored = await self._store.insert_unless_known(job, transition.write)
        except BaseException as e:
            self.scheduler.release()
            if isinstance(e, Exception) and not isinstance(e, CancelledError):
                self._store_refused(e)
            raise
        if stored.id != job.id:
            # A retried submit (same Idempotency-Key): the first one's job.
            self.scheduler.release()
            return stored
        self._arrived(job)
        self._enqueue(job, reserved=True)
        transition.stored()
        self._wake()
        return job

    def _store_refused(self, error: Exception) -> None:
        """A new job's row was refused: the store is troubled (``/healthz``
        says so) and the worker pauses until it takes writes again."""
        self.journal.refused_elsewhere(error, self._clock.seconds())
        self._wake()

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

    def _enqueue(self, job: Job, *, reserved: bool = False) -> None:
        """Put ``job`` in the scheduler, its stamps read on the reactor's clock."""
        now = self._clock.seconds()
        arrived = now - self.clocks.since(job.created_at)
        # A backoff stored by an earlier process, or before the wall clock
        # was stepped back, is never longer than the rule that made it.
        ready_at = now + self.clocks.delay_until(job.not_before, at_most=self.retries.backoff_cap)
        self.scheduler.add(job, reserved=reserved, arrived=arrived, ready_at=ready_at)

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

    def waited(self, job: Job) -> float:
        """How long ``job`` has waited (queued), or waited before it started (running)."""
        arrived = self.scheduler.arrival(job)
        if self.current is not None and self.current.id == job.id:
            return max(0.0, self._current_since - arrived)
        return max(0.0, self._clock.seconds() - arrived)

    def overdue(self, job: Job) -> bool:
        """Whether queued ``job`` has waited its class's bound."""
        return self.scheduler.overdue(job, self._clock.seconds())

    def quantum_report(self) -> dict[str, object] | None:
        """The resident model's quantum while a person's call for another model
        waits (ADR-0024); ``None`` when no such call waits or there is no quantum."""
        resident = self.residency.worker_model
        if resident is None:
            return None
        waiting = self.scheduler.oldest_other(resident)
        policy = self.scheduler.policy
        if waiting is None or policy.swap_quantum <= 0:
            return None
        now = self._clock.seconds()
        seen = self.scheduler.seen(waiting)
        limit = policy.quantum(seen)
        used = min(limit, max(0.0, now - max(self.scheduler.turns.since, seen.created_at)))
        return {
            "model": resident,
            "used_seconds": round(used, 3),
            "limit_seconds": round(limit, 3),
            "waiting_model": canonical_model_name(waiting.model),
        }

    def doing(self) -> str:
        """What the worker does now, in a few words for a person."""
        now = self._clock.seconds()
        kind = self.activity.now
        current = self.current
        if kind == "paused":
            return f"paused: {self.paused or 'a fault'}"
        if kind == "holding" and self.hold.holding is not None:
            text = self.hold.holding.describe(now)
        elif kind in ("loading", "generating") and current is not None:
            verb = "loading" if kind == "loading" else "generating with"
            text = f"{verb} {canonical_model_name(current.model)} for job {current.id}"
        elif self.scheduler.depth:
            text = "waiting for the next job to be ready"
        else:
            text = "idle"
        quantum = self.quantum_report()
        if quantum is not None:
            text += (
                f"; quantum {quantum['used_seconds']:.1f} s of {quantum['limit_seconds']:.1f} s "
                f"used, {quantum['waiting_model']} waiting"
            )
        return text

    def retry_after(self) -> int:
        estimate = self.average_job_seconds * max(1, self.scheduler.depth)
        return max(1, min(300, math.ceil(estimate)))

    @property
    def paused(self) -> str | None:
        """Why the worker takes no jobs now, in a sentence; ``None`` if it does."""
        if self.draining:
            return "foreman is stopping"
        return self._pauses.reason

    def _refuse_busy(self, request: IRequest) -> None:
        retry = b"%d" % self.retry_after()
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

    # -- starting and stopping ------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self.draining = False
        self._loop_done = ensureDeferred(self._loop())

    def drain(self) -> Deferred[None]:
        """Take no more jobs and answer the sync callers still waiting (503);
        fires once the running job, if any, has ended. Asynchronous jobs stay
        queued in the store for the next start."""
        self.draining = True
        self._answer_waiting_callers()
        self._wake()
        if self.current is None:
            return succeed(None)
        ended: Deferred[None] = Deferred()
        self._on_ended.append(ended)
        return ended

    def cut(self) -> None:
        """The stop's time is up: what runs now ends as stopped, not as failed.

        Called before the relay cuts its calls (:meth:`Relay.cut_all`): a sync
        caller's stream then ends with its dialect's error, and an
        asynchronous job goes back to the queue with its attempt given back.
        """
        self.draining = True
        self._stopping = True

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self.cut()
        self._answer_waiting_callers()
        if self._run is not None:
            self._run.interrupt()
        self._wake()
        ended = self._loop_done or succeed(None)
        return ended.addCallback(lambda _: ensureDeferred(self._last_writes()))

    def _answer_waiting_callers(self) -> None:
        # Nothing could serve them after a restart (asynchronous jobs simply
        # stay queued).
        wall = self.clocks.wall()
        for job in list(self.scheduler.jobs()):
            if job.sync:
                self.scheduler.remove(job.id)
                self._save_soon(job.moved(JobState.FAILED, wall, **STOPPED), job.state)
                self._callers.answer_stopped(job.id)

    async def _last_writes(self) -> None:
        if self.journal.kept and not await self.journal.recover(self._clock.seconds()):
            log.error(
                "{count} job state(s) could not be recorded before stopping ({error}); "
                "the next start runs those jobs again",
                count=self.journal.kept,
                error=self.journal.error,
            )

    # -- the loop ------------------------------------------------------------------

    async def _loop(self) -> None:
        while self.running and not self.draining:
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
        if self._pauses.paused(now):
            self.activity.switch("paused")
            await self._pauses.wait(now)
            return
        resident = self.residency.worker_model
        job = self.scheduler.pick(resident, now)
        if job is None:
            self.hold.end(None)
            self.activity.switch("idle")
            await self._sleep()
            return
        hold_until = self._swap_hold_until(job, now)
        if now < hold_until:
            assert resident is not None
            self.hold.begin(resident, hold_until)
            self.activity.switch("holding")
            await self._sleep(until=hold_until)
            return
        self.hold.end(job)
        self.current_overdue = self.scheduler.overdue(job, now)
        self.scheduler.take(job, now)
        try:
            await self.gate.run(self._execute, job)
        except Exception:
            log.failure("The worker failed while running job {job_id}", job_id=job.id)

    def _swap_hold_until(self, job: Job, now: float) -> float:
        """Until when to hold the resident model before swapping to ``job``."""
        scheduler = self.scheduler
        quantum_left = scheduler.policy.quantum_left(scheduler.turns, scheduler.seen(job), now)
        return self.hold.until(
            job,
            self.residency.worker_model,
            overdue=scheduler.overdue(job, now),
            quantum_left=quantum_left,
        )

    async def _sleep(self, until: float | None = None) -> None:
        """Until woken, ``until``, or the next job backing off is ready."""
        ready_at = self.scheduler.next_ready_at(self._clock.seconds())
        if until is not None:
            ready_at = until if ready_at is None else min(ready_at, until)
        await self._alarm.sleep(ready_at)

    def _wake(self) -> None:
        self._alarm.wake()

    # -- one job -----------------------------------------------------------------------

    async def _execute(self, queued: Job) -> None:
        started = self._current_since = self._clock.seconds()
        run = self._run = Execution(queued, self._crew)
        try:
            await run.run()
        finally:
            now = self._clock.seconds()
            self._run = None
            self.scheduler.forget(queued.id)
            self.hold.finished(run.job, now)
            self.costs.job_ended(run.job.model, now)
            self.activity.switch("idle")
            ended, self._on_ended = self._on_ended, []
            for each in ended:
                each.callback(None)
        elapsed = self._clock.seconds() - started
        self.average_job_seconds = 0.8 * self.average_job_seconds + 0.2 * elapsed

    def _save_soon(self, job: Job, previous: JobState | None) -> None:
        ensureDeferred(self.journal.save_or_keep(job, previous, self._clock.seconds()))

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

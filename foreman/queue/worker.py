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

from collections.abc import Callable

import attrs
from twisted.application.service import Service
from twisted.internet.defer import (
    Deferred,
    DeferredSemaphore,
    ensureDeferred,
    succeed,
)
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from foreman.queue.activity import Activity
from foreman.queue.alarm import Alarm
from foreman.queue.callers import Callers
from foreman.queue.costs import ModelCosts
from foreman.queue.execution import Crew, Execution
from foreman.queue.hold import SwapHold
from foreman.queue.intake import QUEUE_POSITION_HEADER, Intake
from foreman.queue.job import Job, JobState
from foreman.queue.journal import Journal
from foreman.queue.outage import DEFAULT_CALLER_WAIT, Outage
from foreman.queue.pauses import Pauses
from foreman.queue.residency import Residency
from foreman.queue.scheduler import Scheduler
from foreman.queue.settlement import STOPPED, Retries
from foreman.queue.store import JobStore
from foreman.queue.transitions import (
    TransitionListener,
    TransitionRecorder,
    Transitions,
)
from foreman.queue.usage import KeyUsage
from foreman.queue.visibility import Visibility
from foreman.relay.forward import Relay
from foreman.wire.clocks import Clocks

log = Logger()

__all__ = ["QUEUE_POSITION_HEADER", "Worker"]


class Worker(Intake, Visibility, Service):
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
        swap_grace: float | None = None,
        caller_wait: float = DEFAULT_CALLER_WAIT,
        clocks: Clocks | None = None,
        costs: ModelCosts | None = None,
        learned_holds: bool = True,
        lease: float = 30.0,
        usage: KeyUsage | None = None,
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
        #: What each key used (calls, tokens, worker time, loads), if counted.
        self.usage = usage
        if usage is not None:
            self.transitions.add(usage.job_moved)
        #: Fired when the running job's execution ends.
        self._on_ended: list[Deferred[None]] = []
        #: Called when another box took a job before or while it ran here (a fleet).
        self.on_taken: Callable[[], object] = lambda: None
        self.takes_here: Callable[[Job], bool] = lambda job: True
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
            lease=lease,
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

    def on_transition(self, listener: TransitionListener) -> None:
        """Call ``listener(job, previous_state)`` after each state is stored."""
        self.transitions.add(listener)

    def record_transitions(self, recorder: TransitionRecorder) -> None:
        """Write what ``recorder`` makes of each transition in the transaction
        that stores it (:mod:`foreman.queue.transitions`)."""
        self.transitions.add_recorder(recorder)

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
        for job in self.scheduler.sync_jobs():
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
            if run.taken:
                self.on_taken()
            self.scheduler.forget(queued.id)
            self.hold.finished(run.job, now)
            self.costs.job_ended(run.job.model, now)
            self.activity.switch("idle")
            ended, self._on_ended = self._on_ended, []
            for each in ended:
                each.callback(None)
        elapsed = self._clock.seconds() - started
        self.average_job_seconds = 0.8 * self.average_job_seconds + 0.2 * elapsed
        self._count_usage(run, elapsed)

    def _count_usage(self, run: Execution, seconds: float) -> None:
        """What the run used, for the key its job was sent with."""
        usage = self.usage
        if usage is None:
            return
        caller = run.queued.caller
        usage.worked(caller, seconds)
        if run.loaded:
            usage.loaded(caller)
        if run.tokens is not None:
            usage.tokens(caller, run.tokens.prompt, run.tokens.output)

    def _save_soon(self, job: Job, previous: JobState | None) -> None:
        ensureDeferred(self.journal.save_or_keep(job, previous, self._clock.seconds()))

"""The queue's life around the worker: the store's database thread as a service,
start-up recovery, which puts back in the queue what a previous process left
running (each return written with its recorded transition), and the TTL sweep.

:func:`foreman.service.build_queue` assembles these with the worker and the
``/jobs`` webhook outbox.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from foreman.queue.engines import Connection
from foreman.queue.job import Job, JobState
from foreman.queue.store import JobStore, Recovery
from foreman.queue.transitions import Transition
from foreman.queue.worker import Worker
from foreman.wire.clocks import WallClock

log = Logger()

#: How often finished jobs past their TTL are deleted, at most.
SWEEP_INTERVAL = 600.0


class OneAfterAnother(MultiService):
    """Stops its services in reverse order, each once the one before has stopped.

    Twisted's ``MultiService`` stops them all at once; the queue's parts must
    not: the worker's last writes must reach the store before it closes.
    """

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return ensureDeferred(self._stop_each())

    async def _stop_each(self) -> None:
        for service in reversed(list(self)):
            try:
                await maybeDeferred(service.stopService)
            except Exception:
                log.failure("{service} failed to stop", service=service)


class StoreService(Service):
    """Runs the store's single database thread; stops after the worker."""

    def __init__(self, store: JobStore, pool: ThreadPool) -> None:
        self._store = store
        self._pool = pool

    def startService(self) -> None:
        super().startService()
        self._pool.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        closed = self._store.close()
        closed.addBoth(lambda _: self._pool.stop())
        return closed


def recover_queue(store: JobStore, worker: Worker, now: float) -> Recovery:
    """Open the store, recover what a previous process left, and queue it.

    Blocking: for start-up, before the reactor runs. Recovery puts running
    asynchronous jobs back in the queue; each return is a transition whose
    recorders (the ``queued`` event) write in recovery's own transaction, so
    no crash can separate the two. Listeners hear of them once the worker has
    the jobs; the outbox sends the events once it starts.
    """
    requeued: list[Transition] = []

    def requeue(db: Connection, job: Job, previous: JobState) -> None:
        transition = worker.transitions.begin(job, previous)
        if transition.write is not None:
            transition.write(db)
        requeued.append(transition)

    recovery, unfinished = store.startup(now, requeue)
    worker.restore(unfinished, requeued)
    return recovery


def ttl_sweeper(
    store: JobStore,
    clock: IReactorTime,
    ttl: float,
    wall: WallClock | None = None,
    *,
    also: Callable[[float], Deferred[int]] | None = None,
) -> TimerService:
    """Deletes finished jobs (and, with them, their artifacts) older than ``ttl``;
    ``also(cutoff)`` sweeps what else ends with them (finished batches).

    The sweep runs on the reactor's clock; a job's age is read on the wall
    clock its ``finished_at`` was stamped with (``wall``; the reactor's by default).
    """
    stamp = wall or clock.seconds

    def sweep() -> Deferred[int]:
        cutoff = stamp() - ttl
        swept = store.sweep(cutoff)
        swept.addCallback(_log_sweep)
        if also is not None:
            swept.addCallback(lambda deleted: also(cutoff).addCallback(lambda _: deleted))
        return swept

    sweeper = TimerService(min(SWEEP_INTERVAL, ttl), sweep)
    sweeper.clock = clock
    return sweeper


def _log_sweep(deleted: int) -> int:
    if deleted:
        log.info("Deleted {count} finished job(s) past their TTL", count=deleted)
    return deleted

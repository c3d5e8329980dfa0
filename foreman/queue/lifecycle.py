"""The durable queue, assembled: store, webhook outbox, scheduler, residency,
worker and sweeper; and start-up recovery, which puts back in the queue what
a previous process left running, each return written with its event."""

from __future__ import annotations

import math
import sqlite3
from typing import Any

import attrs
from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from foreman.config import Config
from foreman.jobs.events import JobEvents
from foreman.jobs.outbox import WebhookOutbox
from foreman.queue.job import Job, JobState
from foreman.queue.residency import Residency
from foreman.queue.scheduler import Scheduler
from foreman.queue.store import DATABASE_NAME, JobStore, Recovery, thread_runner
from foreman.queue.transitions import Transition
from foreman.queue.worker import Worker
from foreman.relay.forward import Relay
from foreman.relay.inventory import Inventory

log = Logger()

#: How often finished jobs past their TTL are deleted, at most.
SWEEP_INTERVAL = 600.0


class QueueUnavailable(SystemExit):
    """The job store cannot be opened; the message says why."""


@attrs.frozen
class Queue:
    store: JobStore
    worker: Worker
    residency: Residency
    recovery: Recovery
    outbox: WebhookOutbox


class _StoreService(Service):
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


def build_queue(
    config: Config, reactor: Any, relay: Relay, inventory: Inventory
) -> tuple[Queue, MultiService]:
    """Open the store (blocking, before the reactor runs) and wire the worker."""
    services = MultiService()
    pool = ThreadPool(minthreads=1, maxthreads=1, name="foreman-store")
    store = JobStore(config.data_dir / DATABASE_NAME, thread_runner(reactor, pool))
    outbox = WebhookOutbox(store, reactor, secret=config.webhook_secret)
    residency = Residency(
        relay, inventory, keep_alive=config.keep_alive, embed_model=config.embed_model
    )
    worker = Worker(
        store,
        Scheduler(config.max_queue),
        residency,
        relay,
        reactor,
        max_attempts=config.max_attempts,
        swap_grace=config.swap_grace,
    )
    # Recording before anything is written, recovery included: every
    # transition of a /jobs job stores its event in the same transaction.
    worker.record_transitions(JobEvents(outbox, inline_limit=config.artifact_inline_limit))
    try:
        recovery = recover_queue(store, worker, reactor.seconds())
    except (sqlite3.Error, RuntimeError) as e:
        raise QueueUnavailable(f"foreman: cannot open the job store {store.path}: {e}") from None
    _StoreService(store, pool).setServiceParent(services)
    # Started after the store (its pending deliveries are read from it, the
    # events of recovery's returns to the queue among them) and, children
    # being stopped in reverse, stopped before it. Events the worker stores
    # as it stops are sent after the next start.
    outbox.setServiceParent(services)
    if recovery.requeued or recovery.abandoned:
        log.info(
            "Recovered after a restart: {requeued} job(s) back in the queue, {abandoned} "
            "sync job(s) failed because their callers were gone",
            requeued=recovery.requeued,
            abandoned=recovery.abandoned,
        )
    worker.setServiceParent(services)

    def target_reachable() -> None:
        # After an outage nothing is known about what is loaded; and the
        # embedder is pinned again (at first contact too).
        residency.forget()
        ensureDeferred(residency.warm_embedder())

    inventory.on_reachable(target_reachable)

    if math.isfinite(config.job_ttl):
        ttl_sweeper(store, reactor, config.job_ttl).setServiceParent(services)
    return Queue(store, worker, residency, recovery, outbox), services


def recover_queue(store: JobStore, worker: Worker, now: float) -> Recovery:
    """Open the store, recover what a previous process left, and queue it.

    Blocking: for start-up, before the reactor runs. Recovery puts running
    asynchronous jobs back in the queue; each return is a transition whose
    recorders (the ``queued`` event) write in recovery's own transaction, so
    no crash can separate the two. Listeners hear of them once the worker has
    the jobs; the outbox sends the events once it starts.
    """
    requeued: list[Transition] = []

    def requeue(db: sqlite3.Connection, job: Job, previous: JobState) -> None:
        transition = worker.transitions.begin(job, previous)
        if transition.write is not None:
            transition.write(db)
        requeued.append(transition)

    recovery, unfinished = store.startup(now, requeue)
    worker.restore(unfinished, requeued)
    return recovery


def ttl_sweeper(store: JobStore, clock: IReactorTime, ttl: float) -> TimerService:
    """Deletes finished jobs (and, with them, their artifacts) older than ``ttl``."""

    def sweep() -> Deferred[int]:
        swept = store.sweep(clock.seconds() - ttl)
        swept.addCallback(_log_sweep)
        return swept

    sweeper = TimerService(min(SWEEP_INTERVAL, ttl), sweep)
    sweeper.clock = clock
    return sweeper


def _log_sweep(deleted: int) -> int:
    if deleted:
        log.info("Deleted {count} finished job(s) past their TTL", count=deleted)
    return deleted

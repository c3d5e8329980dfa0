"""The job queue assembled: the store, the worker, the outbox, batches, the keys, a fleet's box."""

from __future__ import annotations

import math
from typing import Any

import attrs
from twisted.application.service import MultiService
from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from foreman.config import (
    Config,
    SwapRule,
)
from foreman.jobs.api import JobsAPI
from foreman.jobs.batches import table as batch_table
from foreman.jobs.batches.api import BatchesAPI
from foreman.jobs.batches.api import build as build_batches
from foreman.jobs.batches.files_api import FilesAPI
from foreman.jobs.batches.progress import BatchProgress
from foreman.jobs.events import JobEvents
from foreman.jobs.outbox import WebhookOutbox
from foreman.queue.costs import ModelCosts, Remember
from foreman.queue.engines import engine_for
from foreman.queue.fleet.identity import identify
from foreman.queue.fleet.member import FleetMember
from foreman.queue.key_book import KeyBook
from foreman.queue.lifecycle import OneAfterAnother, StoreService, recover_queue, ttl_sweeper
from foreman.queue.order import Policy
from foreman.queue.residency import Residency
from foreman.queue.runners import thread_runner
from foreman.queue.scheduler import Scheduler
from foreman.queue.schema import DATABASE_NAME
from foreman.queue.store import JobStore, Recovery
from foreman.queue.usage import KeyUsage
from foreman.queue.worker import Worker
from foreman.relay.forward import Relay
from foreman.relay.inventory import Inventory
from foreman.wire.clocks import Clocks

log = Logger()


class QueueUnavailable(SystemExit):
    """The job store cannot be opened; the message says why."""


@attrs.frozen
class Queue:
    store: JobStore
    worker: Worker
    residency: Residency
    recovery: Recovery
    outbox: WebhookOutbox
    #: This box's part in a fleet, when the store is shared.
    member: FleetMember | None = None
    progress: BatchProgress | None = None
    #: What each key used (``await usage.totals()``: every box's, summed).
    usage: KeyUsage | None = None
    #: The keys callers may present, and each key's share (docs/keys.md).
    keys: KeyBook | None = None


def build_queue(
    config: Config, reactor: Any, relay: Relay, inventory: Inventory
) -> tuple[Queue, MultiService]:
    """Open the store (blocking, before the reactor runs) and wire the worker."""
    services = OneAfterAnother()
    clocks = Clocks.real(reactor)
    pool = ThreadPool(minthreads=1, maxthreads=1, name="foreman-store")
    engine = engine_for(config.database, config.data_dir / DATABASE_NAME)
    if config.database:
        log.info(
            "The job store is {store} ({engine})", store=engine.description, engine=engine.name
        )
    # A database several foremans share makes this one a box of a fleet.
    identity = (
        identify(config.data_dir, config.box_name, config.advertise_url, config.listen)
        if engine.shared
        else None
    )
    store = JobStore(
        engine, thread_runner(reactor, pool), box=None if identity is None else identity.id
    )
    outbox = WebhookOutbox(
        store,
        reactor,
        secret=config.webhook_secret,
        openai_secret=config.openai_webhook_secret,
        clocks=clocks,
    )
    residency = Residency(
        relay, inventory, keep_alive=config.keep_alive, embed_model=config.embed_model
    )
    costs = ModelCosts(inventory.model_sizes, remember=_remember_in(store, clocks))
    usage = KeyUsage(store, reactor, clocks=clocks)
    # Read once the store is open (below); the order asks it each key's share.
    keys = KeyBook(store, reactor, token=config.token is not None, threads=reactor)
    worker = Worker(
        store,
        Scheduler(
            config.max_queue,
            Policy(
                config.max_wait,
                config.batch_max_wait,
                swap_quantum=config.swap_quantum if config.swap_rule is SwapRule.LEARNED else 0,
                shares=keys,
            ),
            max_batch_queue=config.max_batch_queue,
        ),
        residency,
        relay,
        reactor,
        max_attempts=config.max_attempts,
        swap_grace=config.swap_grace,
        caller_wait=config.outage_wait,
        clocks=clocks,
        costs=costs,
        learned_holds=config.swap_rule is SwapRule.LEARNED,
        lease=config.box_lease,
        usage=usage,
    )
    # Counts wait while the jobs' own writes are refused (a locked store).
    usage.paused = lambda: worker.journal.troubled
    # Recording before anything is written, recovery included: every
    # transition of a /jobs job stores its event in the same transaction.
    worker.record_transitions(JobEvents(outbox, inline_limit=config.artifact_inline_limit))
    # A batch's counts move in the transaction that ends each of its lines.
    progress = BatchProgress(
        store, outbox, clocks.wall, openai_form=config.openai_webhook_secret is not None
    )
    worker.record_transitions(progress)
    try:
        recovery = recover_queue(store, worker, clocks.wall())
        costs.remembered(store.known_load_costs())
    except (engine.Error, RuntimeError) as e:
        raise QueueUnavailable(
            f"foreman: cannot open the job store {engine.description}: {e}"
        ) from None
    StoreService(store, pool).setServiceParent(services)
    # Before the first request can arrive; a failure leaves the keys shut
    # (only the token opens) until a look succeeds. Stopped before the store.
    keys.load_now()
    keys.setServiceParent(services)
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
    # Stopped after the worker, so the last run's usage is written, and
    # before the store closes.
    usage.setServiceParent(services)
    worker.setServiceParent(services)
    member = None
    if identity is not None:
        member = FleetMember(
            store, worker, identity, reactor, lease=config.box_lease, threads=reactor
        )
        member.setServiceParent(services)
        log.info(
            "This foreman is box {name} ({id}) of a fleet, reachable at {url}",
            name=identity.name,
            id=identity.id,
            url=identity.url or "(no --advertise-url)",
        )

    def target_reachable() -> None:
        # After an outage nothing is known about what is loaded; and the
        # embedder is pinned again (at first contact too).
        residency.forget()
        ensureDeferred(residency.warm_embedder())

    inventory.on_reachable(target_reachable)

    if math.isfinite(config.job_ttl):
        ttl_sweeper(
            store,
            reactor,
            config.job_ttl,
            clocks.wall,
            also=lambda cutoff: store.transact(lambda db: batch_table.prune(db, cutoff)),
        ).setServiceParent(services)
    # Batches a stopped foreman left finalizing are finished once it runs.
    reactor.callWhenRunning(progress.resume)
    queue = Queue(store, worker, residency, recovery, outbox, member, progress, usage, keys)
    return queue, services


def batches_for(queue: Queue, jobs: JobsAPI) -> tuple[FilesAPI, BatchesAPI]:
    """OpenAI's Files and Batch APIs on the queue (ADR-0029)."""
    assert queue.progress is not None
    return build_batches(
        queue.store,
        queue.worker,
        queue.worker.clocks.wall,
        knows_model=jobs.knows_model,
        outbox=queue.outbox,
        progress=queue.progress,
    )


def _remember_in(store: JobStore, clocks: Clocks) -> Remember:
    """Keep each new load measurement in the store; a failure is only logged."""

    def remember(model: str, seconds: float, loads: int) -> None:
        kept = store.remember_load_cost(model, seconds, loads, clocks.wall())
        kept.addErrback(lambda failure: log.failure("Could not keep a load time", failure))

    return remember

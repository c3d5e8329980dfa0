"""The webhook sender: a durable outbox of signed state events (ADR-0005).

Another module builds each event's JSON body; this one delivers the raw bytes
at least once. Every delivery is a row in the ``deliveries`` table before the
first attempt, so a restart resumes what was pending. A job's event row is
written by :func:`store_event` inside the transaction that stores the job's
state (:mod:`foreman.jobs.events`), then handed to :meth:`WebhookOutbox.schedule`
once committed: the state and its event exist together or not at all, and a
process that dies before the hand-over leaves the row for the next start. A
failed attempt is retried with exponential backoff and jitter a bounded number
of times, then the event is dropped and logged. Nothing here ever touches a
job: ``GET /jobs/{id}`` stays the truth when a receiver misses events.

Timers (backoff and the per-attempt timeout) run on an injected clock, the
HTTP on the reactor, so tests drive the schedule in simulated time over real
sockets.

**Two clocks** (:mod:`foreman.wire.clocks`, ADR-0023). A delivery's
``next_at`` in the table is a wall-clock stamp: it outlives the process and
is read by people. The waits are delays on the reactor's clock (monotonic in
the daemon): a failed attempt waits its backoff from the moment it failed,
and a row loaded at start-up (or handed over by :meth:`WebhookOutbox.schedule`)
waits until its ``next_at``, turned into a delay once and never longer than
the backoff that set it. Within a process a step of the wall clock changes
no wait; across a restart, one stepped back cannot hold a retry longer than
its backoff.

**Several foremans on one store** (issue 18; the store has a box id). Each
attempt is made by one box at a time: before it, the box claims the row
(:mod:`foreman.jobs.outbox_table`), which it cannot while another box holds
it or once another box made an attempt of its own; a failed attempt lets the
row go. A run that cannot claim its row ends: the box that holds it goes on.
Every ``poll_interval`` seconds each box also claims rows that are due and
that nobody holds, or whose holder's lease ran out (a box that died): every
event leaves, at least once, whichever box wrote it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgent

from foreman.jobs import outbox_table as table
from foreman.jobs.delivery import (
    EVENT,
    USER_AGENT,
    body_timestamp,
    describe,
    event_headers,
    event_type,
    for_log,
    is_openai_event,
    post_event,
    standard_headers,
)
from foreman.jobs.outbox_table import DeliveryRow, StoredEvent, store_event
from foreman.queue.engines import Connection
from foreman.queue.store import JobStore
from foreman.wire.clocks import Clocks

log = Logger()

#: On a box: how long a claimed row is its own, in seconds of the database's
#: clock (renewed by the heartbeat with the box's jobs); how often it looks
#: for due rows nobody holds, and how many it claims at once.
DELIVERY_LEASE = 60.0
POLL_INTERVAL = 5.0
POLL_BATCH = 20

__all__ = ["EVENT", "USER_AGENT", "StoredEvent", "WebhookOutbox", "store_event"]


@attrs.define
class _Delivery:
    """One event on its way: a row of ``deliveries`` plus what is in flight."""

    id: int
    job_id: str
    url: str
    body: bytes
    attempt: int
    #: When the next attempt is due, on the wall clock (as the table keeps it).
    next_at: float
    last_error: str | None = None
    #: Set by ``stopService``: whatever the run's await returns, it stops there.
    stopped: bool = False
    #: On a box: claimed already for its next attempt (by a poll).
    held: bool = False
    timestamp: str | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self.timestamp = body_timestamp(self.body)

    @classmethod
    def of(cls, row: DeliveryRow, *, held: bool = False) -> _Delivery:
        return cls(**attrs.asdict(row, recurse=False), held=held)


class WebhookOutbox(Service):
    """POSTs state events, durably and at least once; counts what happened."""

    def __init__(
        self,
        store: JobStore,
        reactor: Any,
        *,
        secret: str | None,
        openai_secret: str | None = None,
        max_retries: int = 5,
        base_delay: float = 1.0,
        max_delay: float = 300.0,
        attempt_timeout: float = 10.0,
        jitter: Callable[[], float] = random.random,
        agent: IAgent | None = None,
        clock: IReactorTime | None = None,
        clocks: Clocks | None = None,
        lease: float = DELIVERY_LEASE,
        poll_interval: float = POLL_INTERVAL,
        poll_batch: int = POLL_BATCH,
    ) -> None:
        self._store = store
        #: The store's box id: ``None`` when this foreman is alone on it.
        self._box = store.box
        self._lease = lease
        self._poll_interval = poll_interval
        self._poll_batch = poll_batch
        self._poll: LoopingCall | None = None
        #: Timers: backoff waits and each attempt's timeout.
        self._clock: IReactorTime = reactor if clock is None else clock
        #: Stamps (``next_at``, ``created_at``) on ``clocks``' wall clock;
        #: without one, on ``clock`` (tests).
        self._clocks = Clocks(self._clock) if clocks is None else clocks
        self._secret = secret
        #: Signs events in OpenAI's form (Standard Webhooks), when configured.
        self._openai_secret = openai_secret
        self._max_retries = max_retries
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._attempt_timeout = attempt_timeout
        self._jitter = jitter
        if agent is None:
            # Not persistent: receivers are many hosts, each hit a few times per
            # job. An idle kept-alive connection that the receiver has closed
            # meanwhile would fail the next POST (a POST is never replayed), so a
            # new connection per attempt is both simpler and more reliable; the
            # handshake is nothing at webhook rates, and nothing is left open at stop.
            pool = HTTPConnectionPool(reactor, persistent=False)
            agent = Agent(reactor, connectTimeout=attempt_timeout, pool=pool)
        self._agent = agent
        self._runs: dict[int, tuple[_Delivery, Deferred[None]]] = {}
        self.delivered = 0
        self.failed_attempts = 0
        self.dropped = 0

    # -- the service -------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        box, engine = self._box, self._store.engine
        loading = self._store.transact(lambda db: table.pending(db, box, engine))
        loading.addCallbacks(self._resume, self._load_failed)
        if box is not None:
            self._poll = LoopingCall(lambda: Deferred.fromCoroutine(self._poll_due()))
            self._poll.clock = self._clock
            self._poll.start(self._poll_interval, now=False)

    def _resume(self, rows: list[DeliveryRow]) -> None:
        if rows:
            log.info("Resuming {count} pending webhook(s)", count=len(rows))
        for row in rows:
            self._start(_Delivery.of(row))

    async def _poll_due(self) -> None:
        """Claim rows that are due and that nobody holds, and send them."""
        box, engine, now = self._box, self._store.engine, self._clocks.wall()
        assert box is not None
        try:
            rows = await self._store.transact(
                lambda db: table.claim_due(
                    db, engine, box, now=now, lease=self._lease, limit=self._poll_batch
                )
            )
        except CancelledError:
            raise
        except Exception:
            log.failure("Could not look for due webhooks; looking again later")
            return
        for row in rows:
            self._start(_Delivery.of(row, held=True))

    def _load_failed(self, failure: Failure) -> None:
        log.failure("Could not load the pending webhooks; they wait for a restart", failure)

    def stopService(self) -> Deferred[None]:
        """Cancel timers and attempts in flight; the rows stay for the next start."""
        super().stopService()
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        self._poll = None
        runs = list(self._runs.values())
        for delivery, run in runs:
            delivery.stopped = True
            run.cancel()
        # Each run ends once its cancellation has gone through; none fails.
        return gatherResults([run for _, run in runs]).addCallback(lambda _: None)

    # -- the API -------------------------------------------------------------------

    def deliver(self, job_id: str, url: str, body: bytes) -> Deferred[None]:
        """Store the event in a transaction of its own, then send it in the background.

        Fires once the row is stored; never fails. Outside a running service
        the row just waits for ``startService``.
        """
        now = self._clocks.wall()

        def not_stored(failure: Failure) -> None:
            # Delivery trouble never reaches the caller.
            self.dropped += 1
            log.failure(
                "Dropped a webhook for job {job_id}: it could not be stored",
                failure,
                job_id=job_id,
                url=for_log(url),
                outcome="dropped",
            )

        storing = self._store.transact(lambda db: store_event(db, job_id, url, body, now))
        return storing.addCallbacks(self.schedule, not_stored)

    def schedule(self, event: StoredEvent) -> None:
        """Send an event whose row is committed. A stopped outbox leaves it to
        ``startService``, which loads every pending row."""
        self._start(_Delivery(event.id, event.job_id, event.url, event.body, 0, event.next_at))

    # -- one delivery --------------------------------------------------------------

    def _start(self, delivery: _Delivery) -> None:
        # A row can be both loaded at start and just inserted: run it once.
        if not self.running or delivery.id in self._runs:
            return
        run = Deferred.fromCoroutine(self._run(delivery))
        self._runs[delivery.id] = (delivery, run)
        run.addBoth(self._ended, delivery)

    def _ended(self, result: Failure | None, delivery: _Delivery) -> None:
        entry = self._runs.get(delivery.id)
        if entry is not None and entry[0] is delivery:
            del self._runs[delivery.id]
        if isinstance(result, Failure) and not result.check(CancelledError):
            # A bug, not a receiver's trouble: the row stays for the next start.
            log.failure("Webhook {delivery_id} stopped", result, delivery_id=delivery.id)

    async def _run(self, delivery: _Delivery) -> None:
        # A stamp turned into a delay once, on arrival; from then on the
        # waits are the reactor's (``due``), whatever the wall clock does.
        wait = self._clocks.delay_until(delivery.next_at, at_most=self._longest_wait(delivery))
        due = self._clock.seconds() + wait
        while True:
            wait = due - self._clock.seconds()
            if wait > 0:
                await deferLater(self._clock, wait)
            if not await self._claim(delivery):
                return  # another box holds it, made an attempt, or sent it
            failure: Failure | None = None
            try:
                await self._attempt(delivery)
            except Exception:
                failure = Failure()
            if delivery.stopped:
                return
            delivery.attempt += 1
            if failure is None:
                self.delivered += 1
                await self._write(delivery, forget=True)
                self._log(delivery, "delivered", "Delivered webhook {delivery_id} for job {job_id}")
                return
            self.failed_attempts += 1
            delivery.last_error = describe(failure)
            if delivery.attempt > self._max_retries:
                self.dropped += 1
                await self._write(delivery, forget=True)
                message = "Dropped webhook {delivery_id} for job {job_id} after {attempt} attempts"
                self._log(delivery, "dropped", message, LogLevel.warn, error=delivery.last_error)
                return
            delay = self.backoff(delivery.attempt)
            due = self._clock.seconds() + delay
            delivery.next_at = self._clocks.wall() + delay
            kept = await self._write(delivery, forget=False)
            message = "Webhook {delivery_id} for job {job_id} failed; retrying in {delay:.1f} s"
            self._log(delivery, "retrying", message, error=delivery.last_error, delay=delay)
            if not kept:
                return  # another box took it over meanwhile

    def _log(
        self,
        delivery: _Delivery,
        outcome: str,
        message: str,
        level: LogLevel = LogLevel.info,
        **fields: object,
    ) -> None:
        # Every attempt ends in one event with an ``outcome``: what tests and
        # operators follow. The URL is trimmed of credentials, the secret never logged.
        if "error" in fields:
            message += ": {error}"
        log.emit(
            level,
            message + " ({url}, attempt {attempt})",
            delivery_id=delivery.id,
            job_id=delivery.job_id,
            url=for_log(delivery.url),
            attempt=delivery.attempt,
            outcome=outcome,
            **fields,
        )

    def _longest_wait(self, delivery: _Delivery) -> float:
        """The longest wait the rule that set ``delivery.next_at`` gives: none
        before a first attempt (an event is due when stored), else the backoff
        after its failed attempts at the top of its jitter."""
        if delivery.attempt == 0:
            return 0.0
        return self._nominal(delivery.attempt)

    def _nominal(self, attempts: int) -> float:
        return min(self._max_delay, self._base_delay * 2.0 ** (attempts - 1))

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after ``attempts`` failed attempts: exponential, capped,
        with "equal jitter" (half fixed, half random) so a receiver that comes back
        is not hit by every waiting event at once, yet no retry comes early."""
        return self._nominal(attempts) * (0.5 + self._jitter() / 2)

    def _attempt(self, delivery: _Delivery) -> Deferred[None]:
        """One POST; fires when a 2xx answer has been read, fails otherwise."""
        if is_openai_event(delivery.job_id):
            headers = standard_headers(
                delivery.job_id, delivery.body, self._openai_secret, self._clocks.wall()
            )
        else:
            headers = event_headers(
                delivery.id,
                delivery.body,
                delivery.timestamp,
                self._secret,
                event_type(delivery.job_id),
            )
        return post_event(
            self._agent, self._clock, delivery.url, headers, delivery.body, self._attempt_timeout
        )

    # -- the outbox table ------------------------------------------------------------

    async def _claim(self, delivery: _Delivery) -> bool:
        """On a box: claim the row for the attempt about to be made. Whether
        the attempt is this box's to make (always, for a foreman alone)."""
        box, engine = self._box, self._store.engine
        if box is None:
            return True
        if delivery.held:
            delivery.held = False
            return True
        try:
            return await self._store.transact(
                lambda db: table.claim(
                    db, engine, box, delivery.id, attempt=delivery.attempt, lease=self._lease
                )
            )
        except CancelledError:
            raise
        except Exception:
            # A poll takes it up again once the store answers.
            log.failure("Could not claim webhook {delivery_id}", delivery_id=delivery.id)
            return False

    async def _write(self, delivery: _Delivery, *, forget: bool) -> bool:
        """Delete a delivered or dropped row, or record a failed attempt (on a
        box, letting the row go). False when another box took the row over."""

        def write(db: Connection) -> bool:
            if forget:
                table.forget(db, delivery.id)
                return True
            return table.record_failure(
                db,
                delivery.id,
                self._box,
                attempt=delivery.attempt,
                next_at=delivery.next_at,
                last_error=delivery.last_error,
            )

        try:
            return await self._store.transact(write)
        except CancelledError:
            raise
        except Exception:
            # The schedule goes on in memory; a restart may repeat an attempt.
            log.failure("Could not record webhook {delivery_id}", delivery_id=delivery.id)
            return True

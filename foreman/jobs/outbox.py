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
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent

import foreman
from foreman.jobs.delivery import (
    DeliveryFailed,
    body_timestamp,
    describe,
    for_log,
    read_answer,
    url_bytes,
)
from foreman.queue.engines import Connection
from foreman.queue.store import JobStore
from foreman.relay.upstream import BytesBodyProducer
from foreman.wire.clocks import Clocks
from foreman.wire.signature import sign

log = Logger()

USER_AGENT = f"foreman-webhooks/{foreman.__version__}"
EVENT = "job.state"


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
    timestamp: str | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self.timestamp = body_timestamp(self.body)


@attrs.frozen
class StoredEvent:
    """A row :func:`store_event` wrote, for :meth:`WebhookOutbox.schedule`."""

    id: int
    job_id: str
    url: str
    body: bytes
    next_at: float


def store_event(db: Connection, job_id: str, url: str, body: bytes, now: float) -> StoredEvent:
    """Add an event to the outbox, due at ``now``, in the caller's transaction."""
    delivery_id = db.insert_returning_id(
        "INSERT INTO deliveries (job_id, url, body, attempt, next_at, created_at)"
        " VALUES (?, ?, ?, 0, ?, ?)",
        (job_id, url, body, now, now),
    )
    return StoredEvent(delivery_id, job_id, url, body, now)


class WebhookOutbox(Service):
    """POSTs state events, durably and at least once; counts what happened."""

    def __init__(
        self,
        store: JobStore,
        reactor: Any,
        *,
        secret: str | None,
        max_retries: int = 5,
        base_delay: float = 1.0,
        max_delay: float = 300.0,
        attempt_timeout: float = 10.0,
        jitter: Callable[[], float] = random.random,
        agent: IAgent | None = None,
        clock: IReactorTime | None = None,
        clocks: Clocks | None = None,
    ) -> None:
        self._store = store
        #: Timers: backoff waits and each attempt's timeout.
        self._clock: IReactorTime = reactor if clock is None else clock
        #: Stamps (``next_at``, ``created_at``) on ``clocks``' wall clock;
        #: without one, on ``clock`` (tests).
        self._clocks = Clocks(self._clock) if clocks is None else clocks
        self._secret = secret
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
        loading = self._store.transact(_pending)
        loading.addCallbacks(self._resume, self._load_failed)

    def _resume(self, deliveries: list[_Delivery]) -> None:
        if deliveries:
            log.info("Resuming {count} pending webhook(s)", count=len(deliveries))
        for delivery in deliveries:
            self._start(delivery)

    def _load_failed(self, failure: Failure) -> None:
        log.failure("Could not load the pending webhooks; they wait for a restart", failure)

    def stopService(self) -> Deferred[None]:
        """Cancel timers and attempts in flight; the rows stay for the next start."""
        super().stopService()
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
            await self._write(delivery, forget=False)
            message = "Webhook {delivery_id} for job {job_id} failed; retrying in {delay:.1f} s"
            self._log(delivery, "retrying", message, error=delivery.last_error, delay=delay)

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
        headers = Headers(
            {
                b"Content-Type": [b"application/json"],
                b"User-Agent": [USER_AGENT.encode("ascii")],
                b"X-Foreman-Delivery": [str(delivery.id).encode("ascii")],
                b"X-Foreman-Event": [EVENT.encode("ascii")],
            }
        )
        if delivery.timestamp is not None:
            headers.addRawHeader(b"X-Foreman-Timestamp", delivery.timestamp.encode("ascii"))
        if self._secret is not None:
            signature = sign(self._secret, delivery.body)
            headers.addRawHeader(b"X-Foreman-Signature", signature.encode("ascii"))
        url = url_bytes(delivery.url)
        requesting = self._agent.request(b"POST", url, headers, BytesBodyProducer(delivery.body))
        answered = requesting.addCallback(read_answer)
        # One budget for connecting, the headers and the body: a receiver that
        # trickles bytes cannot hold an attempt open either.
        return answered.addTimeout(self._attempt_timeout, self._clock, self._timed_out)

    def _timed_out(self, result: object, timeout: float) -> Failure:
        return Failure(DeliveryFailed(f"no complete answer within {timeout:g} s"))

    # -- the outbox table ------------------------------------------------------------

    async def _write(self, delivery: _Delivery, *, forget: bool) -> None:
        """Delete a delivered or dropped row, or record a failed attempt."""

        def write(db: Connection) -> None:
            if forget:
                db.execute("DELETE FROM deliveries WHERE id = ?", (delivery.id,))
            else:
                db.execute(
                    "UPDATE deliveries SET attempt = ?, next_at = ?, last_error = ? WHERE id = ?",
                    (delivery.attempt, delivery.next_at, delivery.last_error, delivery.id),
                )

        try:
            await self._store.transact(write)
        except CancelledError:
            raise
        except Exception:
            # The schedule goes on in memory; a restart may repeat an attempt.
            log.failure("Could not record webhook {delivery_id}", delivery_id=delivery.id)


def _pending(db: Connection) -> list[_Delivery]:
    rows = db.execute(
        "SELECT id, job_id, url, body, attempt, next_at, last_error FROM deliveries"
        " ORDER BY next_at, id"
    ).fetchall()
    return [
        _Delivery(row[0], row[1], row[2], bytes(row[3]), row[4], row[5], row[6]) for row in rows
    ]

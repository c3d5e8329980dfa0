"""The webhook outbox: real sockets to a receiver on 127.0.0.1, a real SQLite
store, and the retry schedule on a simulated clock.

Each attempt ends in exactly one log event with an ``outcome`` key
(``delivered``, ``retrying`` or ``dropped``): tests wait for the n-th one
instead of sleeping, then move the clock to the next retry.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer

import foreman
from foreman.jobs.outbox import StoredEvent, WebhookOutbox, store_event
from foreman.queue.engines import Engine
from foreman.queue.store import JobStore
from foreman.wire.clocks import Clocks
from foreman.wire.signature import sign, verify
from tests.webhook_receiver import OK, WAIT_LIMIT, Answer, Behaviour, Hang, Trickle, WebhookReceiver

NOW = 1_800_000_000.0
SECRET = "it is a secret"
TIMESTAMP = "2026-11-22T10:00:00.123456Z"
JOB = "01JD8X3Z4Q5R6S7T8V9W0XYZAB"


def event_body(job_id: str = JOB, state: str = "working") -> bytes:
    event = {
        "job_id": job_id,
        "state": state,
        "previous_state": "loading",
        "timestamp": TIMESTAMP,
        "model": "llama3.2",
        "attempt": 1,
        "error": None,
        "result": None,
        "artifacts": [],
        "metadata": None,
    }
    return json.dumps(event, separators=(",", ":")).encode()


@implementer(ILogObserver)
class Outcomes:
    """The outbox's log events; each attempt's outcome can be waited for."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self.all: list[LogEvent] = []
        self.outcomes: list[LogEvent] = []
        self._waiting: list[tuple[int, Deferred[LogEvent]]] = []

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_namespace") != "foreman.jobs.outbox":
            return
        self.all.append(event)
        if "outcome" in event:
            self.outcomes.append(event)
            self._wake()

    def nth(self, count: int) -> Deferred[LogEvent]:
        """Fires with the ``count``-th outcome, on the reactor turn after it."""
        waiting: Deferred[LogEvent] = Deferred()
        self._waiting.append((count, waiting))
        self._wake()
        return waiting.addTimeout(WAIT_LIMIT, self._reactor)

    def _wake(self) -> None:
        for entry in list(self._waiting):
            count, waiting = entry
            if len(self.outcomes) >= count:
                self._waiting.remove(entry)
                # Later: the outbox finishes scheduling its retry first.
                self._reactor.callLater(0, waiting.callback, self.outcomes[count - 1])


@implementer(IAgent)
class ResponseWatchingAgent:
    """A real Agent that also tells when a response's headers arrived."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        self.responded: Deferred[IResponse] = Deferred()

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Any = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        requesting = self._agent.request(method, uri, headers, bodyProducer)
        return requesting.addCallback(self._responded)

    def _responded(self, response: IResponse) -> IResponse:
        self._reactor.callLater(0, self.responded.callback, response)
        return response


# -- fixtures --------------------------------------------------------------------------

OpenStore = Callable[[], Awaitable[JobStore]]
MakeReceiver = Callable[..., WebhookReceiver]
StartOutbox = Callable[..., WebhookOutbox]


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(NOW)
    return clock


@pytest.fixture
def outcomes(reactor: Any) -> Iterator[Outcomes]:
    observer = Outcomes(reactor)
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


@pytest_twisted.async_yield_fixture
async def open_store(store_engine: Engine) -> AsyncIterator[OpenStore]:
    """Open the test's store (on each engine); again after a close, as a restarted
    foreman would."""
    stores: list[JobStore] = []

    async def open_store() -> JobStore:
        store = JobStore(store_engine)
        await store.open()
        stores.append(store)
        return store

    yield open_store
    for store in stores:
        await store.close()


@pytest_twisted.async_yield_fixture
async def store(open_store: OpenStore) -> AsyncIterator[JobStore]:
    yield await open_store()


@pytest_twisted.async_yield_fixture
async def receivers(reactor: Any) -> AsyncIterator[MakeReceiver]:
    made: list[WebhookReceiver] = []

    def make(*answers: Behaviour, default: Behaviour = OK, listen: bool = True) -> WebhookReceiver:
        receiver = WebhookReceiver(reactor, *answers, default=default)
        made.append(receiver)
        if listen:
            receiver.listen()
        return receiver

    yield make
    for receiver in made:
        await receiver.close()


@pytest_twisted.async_yield_fixture
async def start_outbox(
    reactor: Any, clock: Clock, receivers: MakeReceiver, open_store: OpenStore
) -> AsyncIterator[StartOutbox]:
    """Outboxes on the simulated clock, stopped before the receivers and stores close."""
    made: list[WebhookOutbox] = []

    def start(store: JobStore, *, start: bool = True, **kwargs: Any) -> WebhookOutbox:
        kwargs.setdefault("secret", SECRET)
        # The top of the jitter range: every delay is its nominal value.
        kwargs.setdefault("jitter", lambda: 1.0)
        outbox = WebhookOutbox(store, reactor, clock=clock, **kwargs)
        made.append(outbox)
        if start:
            outbox.startService()
        return outbox

    yield start
    for outbox in made:
        if outbox.running:
            await outbox.stopService()
    assert clock.getDelayedCalls() == []


async def rows(store: JobStore) -> list[dict[str, Any]]:
    def read(db: Any) -> list[dict[str, Any]]:
        return [dict(row) for row in db.execute("SELECT * FROM deliveries ORDER BY id")]

    return await store.transact(read)


def timers(clock: Clock) -> list[float]:
    """Seconds from now to each pending timer."""
    return sorted(call.getTime() - clock.seconds() for call in clock.getDelayedCalls())


def assert_no_secret(outcomes: Outcomes) -> None:
    for event in outcomes.all:
        assert SECRET not in formatEvent(event)
        assert SECRET not in repr(event)


# -- signatures ------------------------------------------------------------------------


def test_sign_is_hex_hmac_sha256_of_the_raw_body() -> None:
    # The value openssl gives: printf '%s' 'hello, receiver' | openssl dgst -sha256 -hmac ...
    expected = "7aa83dc97bd87d975def1ef533a525ac33b44f19dcd06d425bdfb3bedf33fd84"
    assert sign(SECRET, b"hello, receiver") == expected
    assert verify(SECRET, b"hello, receiver", expected)
    assert verify(SECRET, b"hello, receiver", expected.upper())
    assert not verify(SECRET, b"hello, receiver!", expected)
    assert not verify("another secret", b"hello, receiver", expected)
    assert not verify(SECRET, b"hello, receiver", "")
    assert not verify(SECRET, b"hello, receiver", "sha256=" + expected)
    assert not verify(SECRET, b"hello, receiver", "é" * 64)


# -- delivery --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_delivered_once_with_headers_and_a_signature_that_verifies(
    store: JobStore,
    receivers: MakeReceiver,
    start_outbox: StartOutbox,
    outcomes: Outcomes,
    clock: Clock,
) -> None:
    receiver = receivers()
    outbox = start_outbox(store)
    body = event_body()

    await outbox.deliver(JOB, receiver.url(), body)
    request = await receiver.arrived(1)
    outcome = await outcomes.nth(1)

    assert outcome["outcome"] == "delivered"
    assert (outcome["job_id"], outcome["attempt"]) == (JOB, 1)
    assert request.path == "/hook"
    assert request.body == body
    headers = request.headers
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == f"foreman-webhooks/{foreman.__version__}"
    assert headers["x-foreman-event"] == "job.state"
    assert headers["x-foreman-delivery"] == "1"
    # The body's own (signed) timestamp, unchanged.
    assert headers["x-foreman-timestamp"] == TIMESTAMP
    signature = headers["x-foreman-signature"]
    assert signature == hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert verify(SECRET, request.body, signature)
    assert not verify(SECRET, request.body.replace(b"working", b"done"), signature)
    assert not verify("not the secret", request.body, signature)

    assert (outbox.delivered, outbox.failed_attempts, outbox.dropped) == (1, 0, 0)
    assert await rows(store) == []
    assert clock.getDelayedCalls() == []
    assert len(receiver.received) == 1
    assert_no_secret(outcomes)


@pytest_twisted.ensureDeferred
async def test_unsigned_without_a_secret_and_no_timestamp_header_without_one_in_the_body(
    store: JobStore, receivers: MakeReceiver, start_outbox: StartOutbox, outcomes: Outcomes
) -> None:
    receiver = receivers()
    outbox = start_outbox(store, secret=None)

    await outbox.deliver(JOB, receiver.url(), b"not json at all")
    request = await receiver.arrived(1)
    assert (await outcomes.nth(1))["outcome"] == "delivered"

    assert request.body == b"not json at all"
    assert "x-foreman-signature" not in request.headers
    assert "x-foreman-timestamp" not in request.headers
    assert request.headers["x-foreman-event"] == "job.state"


@contextlib.contextmanager
def nothing_listening() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections. Bound but not listening, so
    no other socket takes it meanwhile, not even as one of our connections' source port."""
    reservation = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        reservation.bind(("127.0.0.1", 0))
        yield reservation.getsockname()[1]
    finally:
        reservation.close()


@pytest_twisted.ensureDeferred
async def test_receiver_down_then_up_is_delivered_after_retries(
    store: JobStore,
    receivers: MakeReceiver,
    start_outbox: StartOutbox,
    outcomes: Outcomes,
    clock: Clock,
) -> None:
    outbox = start_outbox(store)
    with nothing_listening() as port:
        url = f"http://127.0.0.1:{port}/hook"
        await outbox.deliver(JOB, url, event_body())
        first = await outcomes.nth(1)
        assert (first["outcome"], first["attempt"]) == ("retrying", 1)
        assert first["error"] == "connection refused"
        [row] = await rows(store)
        assert (row["attempt"], row["next_at"], row["last_error"]) == (1, NOW + 1.0, first["error"])
        assert timers(clock) == [1.0]

        clock.advance(1.0)
        second = await outcomes.nth(2)
        assert (second["outcome"], second["attempt"]) == ("retrying", 2)
        assert timers(clock) == [2.0]

    receiver = receivers(listen=False)
    receiver.listen(port)
    clock.advance(2.0)
    third = await outcomes.nth(3)
    assert (third["outcome"], third["attempt"]) == ("delivered", 3)
    assert len(receiver.received) == 1
    assert await rows(store) == []
    assert (outbox.delivered, outbox.failed_attempts, outbox.dropped) == (1, 2, 0)


@pytest_twisted.ensureDeferred
async def test_a_redirect_is_a_failure_and_is_not_followed(
    store: JobStore,
    receivers: MakeReceiver,
    start_outbox: StartOutbox,
    outcomes: Outcomes,
    clock: Clock,
) -> None:
    # /ok would answer 200, were the redirect followed.
    receiver = receivers(Answer(301, {"Location": "/ok"}, b""), default=Answer(200))
    outbox = start_outbox(store)

    await outbox.deliver(JOB, receiver.url("/hook"), event_body())
    first = await outcomes.nth(1)
    assert first["outcome"] == "retrying"
    assert first["error"] == "HTTP 301 Moved Permanently (redirects are not followed)"
    assert [request.path for request in receiver.received] == ["/hook"]

    clock.advance(1.0)
    assert (await outcomes.nth(2))["outcome"] == "delivered"
    assert [request.path for request in receiver.received] == ["/hook", "/hook"]


@pytest_twisted.ensureDeferred
async def test_500_then_200_resends_the_same_delivery(
    store: JobStore,
    receivers: MakeReceiver,
    start_outbox: StartOutbox,
    outcomes: Outcomes,
    clock: Clock,
) -> None:
    receiver = receivers(Answer(500, body=b"busy"))
    outbox = start_outbox(store)

    await outbox.deliver(JOB, receiver.url(), event_body())
    first = await outcomes.nth(1)
    assert first["error"] == "HTTP 500 Internal Server Error"
    clock.advance(1.0)
    assert (await outcomes.nth(2))["outcome"] == "delivered"

    before, after = receiver.received
    # A retry is the same event: same id, body, timestamp and signature.
    assert before == after
    assert (outbox.delivered, outbox.failed_attempts, outbox.dropped) == (1, 1, 0)
    assert await rows(store) == []


@pytest_twisted.ensureDeferred
async def test_retries_exhausted_drop_the_row_and_log_it(
    store: JobStore,
    receivers: MakeReceiver,
    start_outbox: StartOutbox,
    outcomes: Outcomes,
    clock: Clock,
) -> None:
    receiver = receivers(default=Answer(500, body=b"no"))
    url = receiver.url("/hook?token=query-credential")
    outbox = start_outbox(store)

    await outbox.deliver(JOB, url, event_body())
    delays = []
    for attempt in range(1, 6):
        outcome = await outcomes.nth(attempt)
        assert (outcome["outcome"], outcome["attempt"]) == ("retrying", attempt)
        [delay] = timers(clock)
        delays.append(delay)
        clock.advance(delay)
    dropped = await outcomes.nth(6)

    # Defaults: 1 + 5 attempts, 1 s doubling (jitter at the top of its range).
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert dropped["outcome"] == "dropped"
    assert dropped["log_level"] == LogLevel.warn
    assert (dropped["job_id"], dropped["attempt"]) == (JOB, 6)
    assert dropped["error"] == "HTTP 500 Internal Server Error"
    # Logged without the query string, where credentials tend to be.
    assert dropped["url"] == receiver.url("/hook?…")
    message = formatEvent(dropped)
    assert JOB in message
    assert "after 6 attempts" in message
    assert "query-credential" not in message
    assert len(receiver.received) == 6
    assert await rows(store) == []
    assert clock.getDelayedCalls() == []
    assert (outbox.delivered, outbox.failed_attempts, outbox.dropped) == (0, 6, 1)
    assert_no_secret(outcomes)


def test_backoff_is_exponential_capped_with_equal_jitter(
    store: JobStore, reactor: Any, clock: Clock
) -> None:
    draws = iter([0.0, 1.0, 0.5, 1.0])
    outbox = WebhookOutbox(
        store, reactor, secret=None, clock=clock, max_delay=10.0, jitter=lambda: next(draws)
    )
    assert outbox.backoff(1) == 0.5  # 1 s, jitter at the bottom: half of it
    assert outbox.backoff(3) == 4.0  # 4 s, at the top
    assert outbox.backoff(4) == 6.0  # 8 s, in the middle: three quarters
    assert outbox.backoff(5) == 10.0  # 16 s capped by max_delay


# -- timeouts --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_receiver_that_never_answers_times_out(
    store: JobStore,
    receivers: MakeReceiver,
    start_outbox: StartOutbox,
    outcomes: Outcomes,
    clock: Clock,
) -> None:
    receiver = receivers(Hang())
    outbox = start_outbox(store)

    await outbox.deliver(JOB, receiver.url(), event_body())
    await receiver.arrived(1)
    assert timers(clock) == [10.0]
    clock.advance(10.0)
    first = await outcomes.nth(1)
    assert (first["outcome"], first["error"]) == ("retrying", "no complete answer within 10 s")
    # The attempt's connection is gone, not left hanging.
    await receiver.idle()

    clock.advance(1.0)
    assert (await outcomes.nth(2))["outcome"] == "delivered"


@pytest_twisted.ensureDeferred
async def test_the_timeout_covers_reading_the_body(
    store: JobStore,
    receivers: MakeReceiver,
    start_outbox: StartOutbox,
    outcomes: Outcomes,
    clock: Clock,
    reactor: Any,
) -> None:
    receiver = receivers(Trickle(200))
    agent = ResponseWatchingAgent(reactor)
    outbox = start_outbox(store, agent=agent, attempt_timeout=5.0)

    await outbox.deliver(JOB, receiver.url(), event_body())
    response = await agent.responded
    assert response.code == 200
    clock.advance(5.0)
    first = await outcomes.nth(1)
    assert (first["outcome"], first["error"]) == ("retrying", "no complete answer within 5 s")
    await receiver.idle()
    assert outbox.delivered == 0


@pytest_twisted.ensureDeferred
async def test_a_big_answer_is_read_only_so_far(
    store: JobStore, receivers: MakeReceiver, start_outbox: StartOutbox, outcomes: Outcomes
) -> None:
    receiver = receivers(Answer(200, body=b"x" * 4_000_000))
    outbox = start_outbox(store)

    await outbox.deliver(JOB, receiver.url(), event_body())
    assert (await outcomes.nth(1))["outcome"] == "delivered"
    await receiver.idle()
    assert await rows(store) == []


# -- restarts and independence ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_restart_delivers_what_was_pending(
    open_store: OpenStore,
    receivers: MakeReceiver,
    start_outbox: StartOutbox,
    outcomes: Outcomes,
    clock: Clock,
) -> None:
    receiver = receivers(Answer(500))
    store = await open_store()
    outbox = start_outbox(store)
    await outbox.deliver(JOB, receiver.url(), event_body())
    assert (await outcomes.nth(1))["outcome"] == "retrying"

    await outbox.stopService()
    assert clock.getDelayedCalls() == []
    [row] = await rows(store)
    assert (row["attempt"], row["last_error"]) == (1, "HTTP 500 Internal Server Error")
    await store.close()

    reopened = await open_store()
    again = start_outbox(reopened)
    # Resumed at the retry's time, with the attempts already made counted.
    assert timers(clock) == [1.0]
    clock.advance(1.0)
    delivered = await outcomes.nth(2)
    assert (delivered["outcome"], delivered["attempt"]) == ("delivered", 2)
    assert [request.headers["x-foreman-delivery"] for request in receiver.received] == ["1", "1"]
    assert await rows(reopened) == []
    assert (again.delivered, again.failed_attempts) == (1, 0)


@pytest_twisted.ensureDeferred
async def test_stop_cancels_an_attempt_in_flight_and_keeps_the_row(
    store: JobStore,
    receivers: MakeReceiver,
    start_outbox: StartOutbox,
    outcomes: Outcomes,
    clock: Clock,
) -> None:
    receiver = receivers(Hang())
    outbox = start_outbox(store)
    await outbox.deliver(JOB, receiver.url(), event_body())
    await receiver.arrived(1)

    await outbox.stopService()
    assert clock.getDelayedCalls() == []
    await receiver.idle()
    [row] = await rows(store)
    assert (row["attempt"], row["last_error"]) == (0, None)
    assert outcomes.outcomes == []
    assert (outbox.delivered, outbox.failed_attempts, outbox.dropped) == (0, 0, 0)

    # Its time has come already: the next start sends it at once.
    start_outbox(store)
    assert (await outcomes.nth(1))["outcome"] == "delivered"
    assert len(receiver.received) == 2
    assert await rows(store) == []


@pytest_twisted.ensureDeferred
async def test_a_delivery_stored_before_start_waits_for_it(
    store: JobStore,
    receivers: MakeReceiver,
    start_outbox: StartOutbox,
    outcomes: Outcomes,
    clock: Clock,
) -> None:
    receiver = receivers()
    outbox = start_outbox(store, start=False)
    await outbox.deliver(JOB, receiver.url(), event_body())
    assert len(await rows(store)) == 1
    # No attempt under way: it would have a timeout pending.
    assert clock.getDelayedCalls() == []

    outbox.startService()
    assert (await outcomes.nth(1))["outcome"] == "delivered"
    assert len(receiver.received) == 1


@pytest_twisted.ensureDeferred
async def test_deliveries_of_different_jobs_are_independent(
    store: JobStore, receivers: MakeReceiver, start_outbox: StartOutbox, outcomes: Outcomes
) -> None:
    stuck = receivers(Hang())
    healthy = receivers()
    outbox = start_outbox(store)

    await outbox.deliver("job-a", stuck.url(), event_body("job-a"))
    await stuck.arrived(1)
    await outbox.deliver("job-b", healthy.url(), event_body("job-b"))
    delivered = await outcomes.nth(1)

    assert (delivered["outcome"], delivered["job_id"]) == ("delivered", "job-b")
    assert [row["job_id"] for row in await rows(store)] == ["job-a"]


@pytest_twisted.ensureDeferred
async def test_a_store_that_fails_never_reaches_the_caller(
    store: JobStore, start_outbox: StartOutbox, outcomes: Outcomes
) -> None:
    await store.close()
    outbox = start_outbox(store)

    # Fires, and does not fail.
    await outbox.deliver(JOB, "http://127.0.0.1:9/hook", event_body())
    [dropped] = outcomes.outcomes
    assert (dropped["outcome"], dropped["job_id"]) == ("dropped", JOB)
    assert dropped["log_failure"] is not None
    assert outbox.dropped == 1


# -- events stored in another module's transaction -------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_event_stored_in_a_job_s_transaction_is_sent_once_scheduled(
    store: JobStore, receivers: MakeReceiver, start_outbox: StartOutbox, outcomes: Outcomes
) -> None:
    receiver = receivers()
    outbox = start_outbox(store)
    url = receiver.url()
    # As the worker does: the event row written by the job's own transaction.
    stored = await store.transact(lambda db: store_event(db, JOB, url, event_body(), NOW))
    assert stored == StoredEvent(1, JOB, url, event_body(), NOW)
    [row] = await rows(store)
    assert (row["attempt"], row["next_at"], row["created_at"]) == (0, NOW, NOW)
    assert receiver.received == []  # nothing is sent until the outbox is told

    outbox.schedule(stored)
    outbox.schedule(stored)  # told twice: sent once
    assert (await outcomes.nth(1))["outcome"] == "delivered"
    assert [request.headers["x-foreman-delivery"] for request in receiver.received] == ["1"]
    assert request_bodies(receiver) == [event_body()]
    assert await rows(store) == []


@pytest_twisted.ensureDeferred
async def test_a_stored_event_never_scheduled_is_sent_by_the_next_start(
    open_store: OpenStore, receivers: MakeReceiver, start_outbox: StartOutbox, outcomes: Outcomes
) -> None:
    receiver = receivers()
    store = await open_store()
    stopped = start_outbox(store, start=False)
    stored = await store.transact(
        lambda db: store_event(db, JOB, receiver.url(), event_body(), NOW)
    )
    # The process dies right after the commit, before telling its outbox;
    # a stopped outbox ignores it the same way.
    stopped.schedule(stored)
    await store.close()

    reopened = await open_store()
    start_outbox(reopened)
    assert (await outcomes.nth(1))["outcome"] == "delivered"
    assert request_bodies(receiver) == [event_body()]
    assert await rows(reopened) == []


def request_bodies(receiver: WebhookReceiver) -> list[bytes]:
    return [request.body for request in receiver.received]


# -- a step of the wall clock (ADR-0023) -----------------------------------------------


class SteppedWall:
    """A wall clock that runs with the simulated reactor until it is stepped."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.offset = 0.0

    def __call__(self) -> float:
        return self._clock.seconds() + self.offset

    def step(self, seconds: float) -> None:
        self.offset += seconds


STEPS = pytest.mark.parametrize("step", [-3600.0, 86400.0], ids=["back-an-hour", "forward-a-day"])


@STEPS
@pytest_twisted.ensureDeferred
async def test_a_retry_keeps_its_backoff_when_the_wall_clock_steps(
    store: JobStore,
    receivers: MakeReceiver,
    start_outbox: StartOutbox,
    outcomes: Outcomes,
    clock: Clock,
    step: float,
) -> None:
    receiver = receivers(Answer(500), Answer(500))
    wall = SteppedWall(clock)
    outbox = start_outbox(store, clocks=Clocks(clock, wall))
    await outbox.deliver(JOB, receiver.url(), event_body())
    assert (await outcomes.nth(1))["outcome"] == "retrying"

    wall.step(step)
    # A new event is due at once, and stamped by the wall clock.
    await outbox.deliver("job-b", receiver.url(), event_body("job-b"))
    assert (await outcomes.nth(2))["outcome"] == "retrying"
    first, second = await rows(store)
    assert first["next_at"] == NOW + 1.0
    assert (second["created_at"], second["next_at"]) == (NOW + step, NOW + step + 1.0)
    # The retries wait their backoff on the reactor's clock, step or not.
    assert timers(clock) == [1.0, 1.0]
    clock.advance(0.9)
    assert len(receiver.received) == 2
    clock.advance(0.1)
    assert (await outcomes.nth(3))["outcome"] == "delivered"
    assert (await outcomes.nth(4))["outcome"] == "delivered"
    assert len(receiver.received) == 4
    assert await rows(store) == []


@STEPS
@pytest_twisted.ensureDeferred
async def test_a_row_loaded_after_a_step_waits_no_longer_than_its_backoff(
    open_store: OpenStore,
    receivers: MakeReceiver,
    start_outbox: StartOutbox,
    outcomes: Outcomes,
    clock: Clock,
    step: float,
) -> None:
    receiver = receivers(Answer(500))
    wall = SteppedWall(clock)
    store = await open_store()
    outbox = start_outbox(store, clocks=Clocks(clock, wall))
    await outbox.deliver(JOB, receiver.url(), event_body())
    assert (await outcomes.nth(1))["outcome"] == "retrying"
    await outbox.stopService()
    await store.close()

    # Stepped while foreman was stopped: the stored next_at is an hour
    # ahead of the wall clock, or a day behind it.
    wall.step(step)
    reopened = await open_store()
    start_outbox(reopened, clocks=Clocks(clock, wall))
    if step < 0:
        assert timers(clock) == [1.0]  # the backoff that set it, not an hour
        clock.advance(1.0)
    delivered = await outcomes.nth(2)
    assert (delivered["outcome"], delivered["attempt"]) == ("delivered", 2)
    assert await rows(reopened) == []

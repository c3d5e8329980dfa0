"""The webhook outbox of boxes sharing one store (issue 18), on each engine: an event
is claimed before each attempt, so one box at a time sends it, and it leaves
once whichever box wrote it and whichever box went away.

Two stores with box ids on one database play two boxes; their outboxes' timers
run on one simulated clock, their POSTs over real sockets to a receiver.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from foreman.jobs import outbox_table as table
from foreman.jobs.outbox import StoredEvent, WebhookOutbox, store_event
from foreman.queue.engines import Connection, Engine
from foreman.queue.store import JobStore
from tests.test_webhooks import NOW, Outcomes, event_body
from tests.webhook_receiver import Answer, WebhookReceiver

POLL = 5.0


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
async def receiver(reactor: Any) -> AsyncIterator[WebhookReceiver]:
    receiving = WebhookReceiver(reactor, Answer(500))
    receiving.listen()
    yield receiving
    await receiving.close()


@pytest_twisted.async_yield_fixture
async def fleet(
    store_engine: Engine, reactor: Any, clock: Clock
) -> AsyncIterator[dict[str, tuple[JobStore, WebhookOutbox]]]:
    """Boxes A and B: each a store and its outbox (not started)."""
    boxes: dict[str, tuple[JobStore, WebhookOutbox]] = {}
    for name in ("A", "B"):
        store = JobStore(store_engine, box=name)
        await store.open()
        outbox = WebhookOutbox(
            store,
            reactor,
            clock=clock,
            secret=None,
            jitter=lambda: 1.0,
            poll_interval=POLL,
            poll_batch=2,
        )
        boxes[name] = (store, outbox)
    yield boxes
    for store, outbox in boxes.values():
        if outbox.running:
            await outbox.stopService()
        await store.close()
    assert clock.getDelayedCalls() == []


async def write_events(store: JobStore, url: str, count: int) -> list[int]:
    """Events stored as a box that went away before sending them left them."""
    ids: list[int] = []
    for number in range(count):
        job_id = f"job-{number}"

        def write(db: Connection, job_id: str = job_id) -> StoredEvent:
            return store_event(db, job_id, url, event_body(job_id), NOW)

        ids.append((await store.transact(write)).id)
    return ids


async def held(store: JobStore) -> dict[int, str | None]:
    def read(db: Any) -> dict[int, str | None]:
        return {row[0]: row[1] for row in db.execute("SELECT id, box FROM deliveries")}

    return await store.transact(read)


def delivery_ids(receiver: WebhookReceiver) -> list[int]:
    return sorted(int(each.headers["x-foreman-delivery"]) for each in receiver.received)


@pytest_twisted.ensureDeferred
async def test_boxes_polling_one_outbox_send_each_event_once(
    fleet: dict[str, tuple[JobStore, WebhookOutbox]],
    receiver: WebhookReceiver,
    outcomes: Outcomes,
    clock: Clock,
) -> None:
    receiver.answers.clear()
    (a_store, a), (_, b) = fleet["A"], fleet["B"]
    a.startService()
    b.startService()
    ids = await write_events(a_store, receiver.url(), 6)
    clock.advance(POLL)  # each box claims two
    clock.advance(POLL)  # A the last two, B none
    await outcomes.nth(6)
    assert delivery_ids(receiver) == ids
    assert (a.delivered, b.delivered) == (4, 2)
    assert await held(a_store) == {}


@pytest_twisted.ensureDeferred
async def test_events_a_dead_box_held_are_sent_by_another_once_its_lease_ran_out(
    fleet: dict[str, tuple[JobStore, WebhookOutbox]],
    receiver: WebhookReceiver,
    outcomes: Outcomes,
    store_engine: Engine,
) -> None:
    receiver.answers.clear()
    b_store, b = fleet["B"]
    ids = await write_events(b_store, receiver.url(), 3)
    # "alive" holds the first, its lease fresh; "dead" claimed the others and died.
    engine = store_engine
    await b_store.transact(
        lambda db: table.claim_due(db, engine, "alive", now=NOW, lease=60.0, limit=1)
    )
    await b_store.transact(
        lambda db: table.claim_due(db, engine, "dead", now=NOW, lease=-1.0, limit=2)
    )
    b.startService()  # picks up the dead box's at once
    await outcomes.nth(2)
    assert delivery_ids(receiver) == ids[1:]
    assert await held(b_store) == {ids[0]: "alive"}
    assert b.delivered == 2


@pytest_twisted.ensureDeferred
async def test_a_failed_attempt_lets_the_event_go_for_any_box(
    fleet: dict[str, tuple[JobStore, WebhookOutbox]],
    receiver: WebhookReceiver,
    outcomes: Outcomes,
    clock: Clock,
) -> None:
    (a_store, a), (_, b) = fleet["A"], fleet["B"]
    a.startService()
    await a.deliver("job-0", receiver.url(), event_body("job-0"))  # answered 500
    assert (await outcomes.nth(1))["outcome"] == "retrying"
    (delivery_id,) = (await held(a_store)).keys()
    assert await held(a_store) == {delivery_id: None}
    await a.stopService()  # A goes away before its retry
    b.startService()
    clock.advance(1.0)  # due again: B claims it when it looks
    clock.advance(POLL)
    delivered = await outcomes.nth(2)
    assert (delivered["outcome"], delivered["attempt"]) == ("delivered", 2)
    assert delivery_ids(receiver) == [delivery_id, delivery_id]
    assert (a.delivered, b.delivered) == (0, 1)
    assert await held(a_store) == {}


@pytest_twisted.ensureDeferred
async def test_a_box_does_not_retry_an_event_another_box_took_meanwhile(
    fleet: dict[str, tuple[JobStore, WebhookOutbox]],
    receiver: WebhookReceiver,
    outcomes: Outcomes,
    clock: Clock,
    store_engine: Engine,
) -> None:
    a_store, a = fleet["A"]
    a.startService()
    await a.deliver("job-0", receiver.url(), event_body("job-0"))  # answered 500
    assert (await outcomes.nth(1))["outcome"] == "retrying"
    # Another box's poll takes it first (it is sending it now).
    engine = store_engine
    (row,) = await a_store.transact(
        lambda db: table.claim_due(db, engine, "B", now=NOW + 1, lease=60.0, limit=5)
    )
    assert row.attempt == 1
    clock.advance(1.0)  # A's retry cannot claim it: no attempt, nothing written
    assert [call.getTime() - clock.seconds() for call in clock.getDelayedCalls()] == [POLL - 1]
    assert (a.delivered, a.failed_attempts, len(receiver.received)) == (0, 1, 1)
    assert await held(a_store) == {row.id: "B"}

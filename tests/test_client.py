"""The jobs client against a stub ``/jobs`` server on a real socket.

Polling pauses and ``wait``'s timeout run on a :class:`WatchedClock`, so the
backoff is checked in simulated time; the HTTP, the webhooks and their
signatures travel over 127.0.0.1.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet.defer import CancelledError, Deferred

from foreman.client import ForemanError, ForemanUnreachable, JobsClient, JobView, WaitTimeout
from foreman.client.receiver import WebhookReceiver
from tests.conftest import StartForeman
from tests.jobs_stub import ForemanRig, JobsStub, WatchedClock, chat_completion

TOKEN = "t0ken"
SECRET = "s3cret"
CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "Why is the sky blue?"}]}


@pytest_twisted.async_yield_fixture
async def stub(reactor: Any) -> AsyncIterator[JobsStub]:
    server = JobsStub(reactor, token=TOKEN, webhook_secret=SECRET)
    server.listen()
    yield server
    await server.stop()


@pytest.fixture
def clock(reactor: Any) -> WatchedClock:
    return WatchedClock(reactor)


@pytest_twisted.async_yield_fixture
async def client(reactor: Any, stub: JobsStub, clock: WatchedClock) -> AsyncIterator[JobsClient]:
    jobs = JobsClient(stub.url, token=TOKEN, reactor=reactor, webhook_secret=SECRET, clock=clock)
    yield jobs
    await jobs.close()


def start_wait(client: JobsClient, job_id: str, timeout: float | None = None) -> Deferred[JobView]:
    return Deferred.fromCoroutine(client.wait(job_id, timeout=timeout))


@pytest_twisted.ensureDeferred
async def test_submit_get_list_and_artifact(client: JobsClient, stub: JobsStub) -> None:
    job_id = await client.submit(CHAT, metadata={"ticket": 7}, idempotency_key="k-1", notify=False)
    sent = await stub.submissions.get()
    assert sent.job_id == job_id
    assert sent.headers["authorization"] == f"Bearer {TOKEN}"
    assert sent.headers["idempotency-key"] == "k-1"
    assert sent.body == {**CHAT}
    assert stub.jobs[job_id].endpoint == "chat"
    assert stub.jobs[job_id].webhook_url is None
    # The same key finds the same job.
    assert await client.submit(CHAT, idempotency_key="k-1", notify=False) == job_id

    view = await client.get(job_id)
    assert (view["job_id"], view["state"], view["metadata"]) == (job_id, "queued", {"ticket": 7})

    other = await client.submit(
        {"model": "llama3.2", "prompt": "hi"}, endpoint="generate", notify=False
    )
    assert stub.jobs[other].endpoint == "generate"
    await stub.move(job_id, "done", completion=chat_completion("Rayleigh."))

    listing = await client.list()
    assert [job["job_id"] for job in listing["jobs"]] == [other, job_id]
    assert listing["next"] is None
    done = await client.list(state="done")
    assert [job["job_id"] for job in done["jobs"]] == [job_id]
    page = await client.list(limit=1)
    assert [job["job_id"] for job in page["jobs"]] == [other]
    assert page["next"] == other
    rest = await client.list(limit=1, before=page["next"], model="llama3.2")
    assert [job["job_id"] for job in rest["jobs"]] == [job_id]

    raw = await client.artifact(job_id)
    assert json.loads(raw)["message"]["content"] == "Rayleigh."


@pytest_twisted.ensureDeferred
async def test_notify_names_the_receiver_unless_the_caller_has_a_webhook(
    client: JobsClient, stub: JobsStub
) -> None:
    assert not client.receiver.running
    mine = await client.submit(CHAT)
    url = stub.jobs[mine].webhook_url
    assert url is not None and url.startswith("http://127.0.0.1:")
    assert url == client.receiver.url

    theirs = await client.submit(CHAT, webhook_url="http://example.invalid/hook")
    assert stub.jobs[theirs].webhook_url == "http://example.invalid/hook"
    in_body = await client.submit({**CHAT, "state_webhook_url": "http://example.invalid/b"})
    assert stub.jobs[in_body].webhook_url == "http://example.invalid/b"
    # A retry from another client must be the same request: no ephemeral URL.
    keyed = await client.submit(CHAT, idempotency_key="k-2")
    assert stub.jobs[keyed].webhook_url is None


@pytest_twisted.ensureDeferred
async def test_refusals_are_foreman_errors_with_status_and_message(
    reactor: Any, client: JobsClient, stub: JobsStub
) -> None:
    with pytest.raises(ForemanError) as unknown_model:
        await client.submit({"model": "nope", "messages": []}, notify=False)
    assert (unknown_model.value.status, unknown_model.value.message) == (
        404,
        "model 'nope' not found",
    )
    with pytest.raises(ForemanError) as bad_body:
        await client.submit({"messages": []}, notify=False)
    assert bad_body.value.status == 400

    with pytest.raises(ForemanError) as unknown_job:
        await client.get("01NOSUCHJOB")
    assert unknown_job.value.status == 404

    stub.queue_full = True
    with pytest.raises(ForemanError) as full:
        await client.submit(CHAT, notify=False)
    assert (full.value.status, full.value.retry_after) == (503, 5.0)
    assert "server busy" in str(full.value)
    stub.queue_full = False

    job_id = await client.submit(CHAT, notify=False)
    cancelled = await client.cancel(job_id)
    assert cancelled["state"] == "cancelled"
    with pytest.raises(ForemanError) as again:
        await client.cancel(job_id)
    assert again.value.status == 409

    stranger = JobsClient(stub.url, token="wrong", reactor=reactor)
    try:
        with pytest.raises(ForemanError) as unauthorized:
            await stranger.get(job_id)
        assert unauthorized.value.status == 401
        assert "Bearer" in unauthorized.value.message
    finally:
        await stranger.close()


@pytest_twisted.ensureDeferred
async def test_no_foreman_is_unreachable_not_an_http_error(reactor: Any, stub: JobsStub) -> None:
    url = stub.url
    await stub.disconnect()
    client = JobsClient(url, reactor=reactor)
    try:
        with pytest.raises(ForemanUnreachable) as caught:
            await client.get("01ANY")
        assert caught.value.url == url
        assert "refused" in str(caught.value).lower()
        with pytest.raises(ForemanUnreachable):
            await client.wait("01ANY")
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_wait_hears_the_webhook_then_reads_the_stored_view(
    client: JobsClient, stub: JobsStub, clock: WatchedClock
) -> None:
    job_id = await client.submit(CHAT)
    waiting = start_wait(client, job_id)
    # The first look found it queued; the first pause is under way.
    assert await stub.polls.get() == job_id
    assert await clock.scheduled.get() == 0.5
    assert await stub.move(job_id, "loading") == 204
    assert await stub.move(job_id, "working") == 204
    assert not waiting.called
    assert await stub.move(job_id, "done", completion=chat_completion("Blue.")) == 204

    view = await waiting
    assert view["state"] == "done"
    assert view["result"]["message"]["content"] == "Blue."
    # The answer came from GET /jobs/{id}, and the pending pause was cancelled.
    assert await stub.polls.get() == job_id
    assert clock.getDelayedCalls() == []
    assert client.receiver.accepted == 3


@pytest.mark.parametrize("sender_secret", ["wrong", None])
@pytest_twisted.ensureDeferred
async def test_a_badly_signed_webhook_is_refused_and_polling_finds_the_end(
    client: JobsClient, stub: JobsStub, clock: WatchedClock, sender_secret: str | None
) -> None:
    stub.webhook_secret = sender_secret
    job_id = await client.submit(CHAT)
    waiting = start_wait(client, job_id)
    assert await clock.scheduled.get() == 0.5
    assert await stub.move(job_id, "done", completion=chat_completion("Blue.")) == 401
    assert not waiting.called
    assert client.receiver.refused == 1

    clock.advance(0.5)
    view = await waiting
    assert view["state"] == "done"
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_without_a_webhook_wait_polls_with_doubling_pauses(
    client: JobsClient, stub: JobsStub, clock: WatchedClock
) -> None:
    job_id = await client.submit(CHAT, notify=False)
    waiting = start_wait(client, job_id)
    pauses = []
    for _ in range(7):
        assert await stub.polls.get() == job_id
        pause = await clock.scheduled.get()
        pauses.append(pause)
        clock.advance(pause)
    assert pauses == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert await stub.polls.get() == job_id
    await stub.move(job_id, "failed", error="model crashed")
    clock.advance(await clock.scheduled.get())

    view = await waiting
    assert (view["state"], view["error"]) == ("failed", "model crashed")
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_wait_returns_at_once_for_a_finished_job(
    client: JobsClient, stub: JobsStub, clock: WatchedClock
) -> None:
    job_id = await client.submit(CHAT, notify=False)
    await stub.move(job_id, "cancelled")
    view = await client.wait(job_id)
    assert view["state"] == "cancelled"
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_wait_times_out_on_the_clock_and_leaves_nothing_behind(
    client: JobsClient, stub: JobsStub, clock: WatchedClock
) -> None:
    job_id = await client.submit(CHAT)
    waiting = start_wait(client, job_id, timeout=30)
    assert await clock.scheduled.get() == 30
    assert await clock.scheduled.get() == 0.5
    clock.advance(30)
    with pytest.raises(WaitTimeout) as caught:
        await waiting
    assert (caught.value.job_id, caught.value.timeout) == (job_id, 30)
    assert isinstance(caught.value, TimeoutError)
    assert clock.getDelayedCalls() == []
    # The job is left alone.
    assert stub.jobs[job_id].state == "queued"


@pytest_twisted.ensureDeferred
async def test_wait_rides_out_a_few_missed_polls(
    client: JobsClient, stub: JobsStub, clock: WatchedClock
) -> None:
    job_id = await client.submit(CHAT, notify=False)
    waiting = start_wait(client, job_id)
    # The stub is changed only while the client sleeps, between polls.
    assert await clock.scheduled.get() == 0.5
    # foreman restarts: two polls find nobody answering.
    stub.hanging_up = True
    clock.advance(0.5)
    assert await clock.scheduled.get() == 1.0
    clock.advance(1.0)
    assert await clock.scheduled.get() == 2.0
    stub.hanging_up = False
    await stub.move(job_id, "done", completion=chat_completion("Back."))
    clock.advance(2.0)
    view = await waiting
    assert view["result"]["message"]["content"] == "Back."


@pytest_twisted.ensureDeferred
async def test_wait_gives_up_when_foreman_stays_away(
    client: JobsClient, stub: JobsStub, clock: WatchedClock
) -> None:
    job_id = await client.submit(CHAT, notify=False)
    waiting = start_wait(client, job_id)
    assert await clock.scheduled.get() == 0.5
    stub.hanging_up = True
    pauses = [0.5]
    clock.advance(0.5)
    for _ in range(5):
        pause = await clock.scheduled.get()
        pauses.append(pause)
        clock.advance(pause)
    with pytest.raises(ForemanUnreachable) as caught:
        await waiting
    assert pauses == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert "Connection" in caught.value.reason


@pytest_twisted.ensureDeferred
async def test_close_cancels_waits_and_stops_the_receiver(
    reactor: Any, client: JobsClient, stub: JobsStub, clock: WatchedClock
) -> None:
    job_id = await client.submit(CHAT)
    url = client.receiver.url
    assert url is not None
    waiting = start_wait(client, job_id)
    assert await clock.scheduled.get() == 0.5
    await client.close()
    with pytest.raises(CancelledError):
        await waiting
    assert not client.receiver.running
    assert clock.getDelayedCalls() == []
    probe = JobsClient(url, reactor=reactor)
    try:
        with pytest.raises(ForemanUnreachable):
            await probe.get("x")
    finally:
        await probe.close()


@pytest_twisted.ensureDeferred
async def test_the_receiver_refuses_what_is_not_a_state_event(
    client: JobsClient, stub: JobsStub, http: Any
) -> None:
    await client.submit(CHAT)
    url = client.receiver.url
    assert url is not None
    no_signature = await http.post(url, data=b'{"job_id": "x", "state": "done"}')
    assert no_signature.code == 401
    assert "X-Foreman-Signature" in (await treq.json_content(no_signature))["error"]

    from foreman.wire.signature import sign

    garbage = b"not json"
    signed = {b"X-Foreman-Signature": [sign(SECRET, garbage).encode()]}
    assert (await http.post(url, data=garbage, headers=signed)).code == 400
    assert (await http.post(url + "x", data=b"{}")).code == 404
    assert (await http.get(url)).code == 405
    assert client.receiver.accepted == 0


# -- against a real foreman in front of a simulated Ollama -------------------------


@pytest_twisted.async_yield_fixture
async def rig(reactor: Any, start_foreman: StartForeman) -> AsyncIterator[ForemanRig]:
    running = await ForemanRig.start(reactor, start_foreman, token=TOKEN, webhook_secret=SECRET)
    yield running
    await running.stop()


@pytest_twisted.ensureDeferred
async def test_with_foreman_wait_ends_by_webhook(reactor: Any, rig: ForemanRig) -> None:
    clock = WatchedClock(reactor)
    client = JobsClient(rig.url, token=TOKEN, webhook_secret=SECRET, reactor=reactor, clock=clock)
    try:
        job_id = await client.submit(CHAT, metadata={"run": 1})
        waiting = start_wait(client, job_id)
        # It looked once and is pausing on a clock that never moves: only
        # the webhook can end this wait.
        assert await clock.scheduled.get() == 0.5
        await rig.finish_the_load()
        view = await waiting
        assert (view["job_id"], view["state"], view["metadata"]) == (job_id, "done", {"run": 1})
        content = view["result"]["message"]["content"]
        assert content
        assert json.loads(await client.artifact(job_id))["message"]["content"] == content
        assert client.receiver.accepted >= 1
        assert client.receiver.refused == 0
        assert clock.getDelayedCalls() == []
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_with_foreman_wait_polls_when_the_webhook_is_not_its_own(
    reactor: Any, rig: ForemanRig
) -> None:
    clock = WatchedClock(reactor)
    client = JobsClient(rig.url, token=TOKEN, reactor=reactor, clock=clock)
    # The caller's own receiver: the test's way of knowing the job is done.
    theirs = WebhookReceiver(reactor, secret=SECRET)
    try:
        job_id = await client.submit(
            {"model": "llama3.2", "prompt": "Once upon a time"},
            endpoint="generate",
            webhook_url=theirs.start(),
        )
        done = theirs.watch(job_id).next_terminal()
        waiting = start_wait(client, job_id)
        assert await clock.scheduled.get() == 0.5
        await rig.finish_the_load()
        assert (await done)["state"] == "done"
        assert not waiting.called
        clock.advance(0.5)
        view = await waiting
        assert view["state"] == "done"
        assert view["result"]["response"]
        assert not client.receiver.running
    finally:
        await client.close()
        await theirs.stop()

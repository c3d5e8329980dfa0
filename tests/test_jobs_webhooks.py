"""``/jobs`` with a real webhook receiver on 127.0.0.1: the lifecycle as a
receiver sees it, signatures, inline and by-reference completions, and the
sync calls that must stay silent (ADR-0005, ADR-0006, ADR-0014)."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest_twisted
from treq.client import HTTPClient

from foreman.testing import DEFAULT_MODELS
from foreman.wire.signature import verify
from tests.conftest import StartForeman, StartSimulator
from tests.jobs_http import JobsClient, chat
from tests.webhook_receiver import Received, WebhookReceiver

SECRET = "webhook secret"
TOKEN = "caller token"


def event(received: Received) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(received.body)
    return value


async def events_for(receiver: WebhookReceiver, job_id: str, count: int) -> list[Received]:
    """Wait until ``count`` events for ``job_id`` arrived; them, in arrival order."""
    while True:
        mine = [each for each in receiver.received if event(each)["job_id"] == job_id]
        if len(mine) >= count:
            return mine
        await receiver.arrived(len(receiver.received) + 1)


async def final_event(receiver: WebhookReceiver, job_id: str, count: int) -> dict[str, Any]:
    """The terminal event among the job's first ``count``: delivery is
    unordered, so it need not be the last to arrive."""
    received = [event(each) for each in await events_for(receiver, job_id, count)]
    (final,) = [each for each in received if each["state"] in ("done", "failed", "cancelled")]
    return final


@pytest_twisted.ensureDeferred
async def test_a_job_s_life_as_its_receiver_sees_it(
    reactor: Any,
    start_simulator: StartSimulator,
    start_foreman: StartForeman,
    http: HTTPClient,
    receiver: WebhookReceiver,
) -> None:
    # Every step takes a good part of a second, so each event has long
    # arrived before the next is sent: arrival order is the job's order.
    slow = [attrs.evolve(model, load_seconds=0.3) for model in DEFAULT_MODELS]
    sim = await start_simulator(models=slow, tokens_per_second=20.0, reply_tokens=5)
    running = await start_foreman(sim.url, token=TOKEN, webhook_secret=SECRET)
    jobs = JobsClient(http, running.url, TOKEN)
    # The first job holds the worker while the second is queued.
    ahead = await jobs.submitted(chat("gemma3:12b", "ahead"))
    watched = await jobs.submitted(
        {
            **chat("llama3.2", "watched"),
            "state_webhook_url": receiver.url("/hooks/one?x=1"),
            "metadata": {"batch": 7, "tags": ["a", "<b>"]},
        }
    )
    received = await events_for(receiver, watched, 4)
    events = [event(each) for each in received]
    assert [(e["previous_state"], e["state"]) for e in events] == [
        (None, "queued"),
        ("queued", "loading"),
        ("loading", "working"),
        ("working", "done"),
    ]
    for each in received:
        assert each.path == "/hooks/one?x=1"
        assert verify(SECRET, each.body, each.headers["x-foreman-signature"])
        assert each.headers["content-type"] == "application/json"
    for e in events:
        assert e["job_id"] == watched
        assert e["model"] == "llama3.2"
        assert e["metadata"] == {"batch": 7, "tags": ["a", "<b>"]}
        assert e["error"] is None
        assert set(e) == {
            "job_id",
            "state",
            "previous_state",
            "timestamp",
            "model",
            "attempt",
            "error",
            "result",
            "artifacts",
            "metadata",
        }
    assert [e["attempt"] for e in events] == [0, 1, 1, 1]
    stamps = [e["timestamp"] for e in events]
    assert stamps == sorted(stamps)
    assert all(len(stamp) == len("2026-11-22T03:00:00.123Z") for stamp in stamps)
    assert [e["result"] for e in events[:3]] == [None, None, None]
    assert [e["artifacts"] for e in events[:3]] == [[], [], []]

    done = events[-1]
    view = await jobs.job(watched)
    assert view["state"] == "done"
    assert done["timestamp"] == view["finished_at"]
    assert done["result"] == view["result"]
    assert done["result"]["done"] is True
    assert "watched" in done["result"]["message"]["content"]
    (artifact,) = done["artifacts"]
    assert artifact == {
        "name": "completion",
        "content_type": "application/json",
        "size": artifact["size"],
        "url": f"/jobs/{watched}/artifacts/completion",
        "inline": True,
    }
    served = await jobs.call("GET", artifact["url"])
    assert served.code == 200
    assert served.header("Content-Type") == "application/json"
    assert len(served.body) == artifact["size"]
    assert json.loads(served.body) == done["result"]
    # The job ahead had no webhook: nothing arrived for it.
    assert all(event(each)["job_id"] == watched for each in receiver.received)
    assert (await jobs.job(ahead))["state"] == "done"


@pytest_twisted.ensureDeferred
async def test_a_completion_over_the_inline_limit_travels_by_url(
    simulator: Any,
    start_foreman: StartForeman,
    http: HTTPClient,
    receiver: WebhookReceiver,
) -> None:
    running = await start_foreman(simulator.url, token=TOKEN, artifact_inline_limit=64)
    jobs = JobsClient(http, running.url, TOKEN)
    job_id = await jobs.submitted({**chat("llama3.2", "big"), "state_webhook_url": receiver.url()})
    done = await final_event(receiver, job_id, 4)
    assert done["state"] == "done"
    assert "x-foreman-signature" not in receiver.received[-1].headers  # no secret set
    assert done["result"] is None
    (artifact,) = done["artifacts"]
    assert artifact["inline"] is False
    assert artifact["size"] > 64
    view = await jobs.job(job_id)
    assert view["result"] is None
    assert view["artifacts"] == done["artifacts"]
    served = await jobs.call("GET", artifact["url"])
    assert served.code == 200
    assert len(served.body) == artifact["size"]
    completion = json.loads(served.body)
    assert completion["done"] is True and "big" in completion["message"]["content"]
    # Behind the token like everything else.
    jobs.token = None
    assert (await jobs.call("GET", artifact["url"])).code == 401


@pytest_twisted.ensureDeferred
async def test_failed_and_cancelled_events_carry_the_error(
    start_simulator: StartSimulator,
    start_foreman: StartForeman,
    http: HTTPClient,
    receiver: WebhookReceiver,
) -> None:
    sim = await start_simulator(tokens_per_second=5.0, reply_tokens=10_000)
    running = await start_foreman(sim.url)
    jobs = JobsClient(http, running.url)
    # Ollama refuses the body at run time (foreman leaves `think` to it): the
    # job fails with Ollama's words.
    failing = await jobs.submitted({**chat(think="extreme"), "state_webhook_url": receiver.url()})
    failed = await final_event(receiver, failing, 4)
    assert failed["state"] == "failed"
    assert failed["previous_state"] == "working"
    assert failed["error"] == (
        'invalid think value: "extreme" (must be "high", "medium", "low", "max", true, or false)'
    )
    assert (await jobs.job(failing))["error_status"] == 400

    cancelled_id = await jobs.submitted({**chat(), "state_webhook_url": receiver.url()})
    await events_for(receiver, cancelled_id, 3)  # queued, loading, working
    assert (await jobs.cancel(cancelled_id)).code == 200
    cancelled = await final_event(receiver, cancelled_id, 4)
    assert cancelled["state"] == "cancelled"
    assert cancelled["previous_state"] == "working"
    assert cancelled["error"] == "cancelled while running"
    assert cancelled["result"] is None and cancelled["artifacts"] == []


@pytest_twisted.ensureDeferred
async def test_sync_calls_never_send_webhooks(
    simulator: Any,
    start_foreman: StartForeman,
    http: HTTPClient,
    receiver: WebhookReceiver,
) -> None:
    running = await start_foreman(simulator.url)
    jobs = JobsClient(http, running.url)
    body = {**chat("llama3.2", "sync"), "stream": False, "state_webhook_url": receiver.url()}
    answer = await jobs.call("POST", "/api/chat", json.dumps(body).encode())
    assert answer.code == 200
    assert "sync" in answer.json()["message"]["content"]
    # A job submitted afterwards is delivered; nothing came before its events.
    job_id = await jobs.submitted({**chat(), "state_webhook_url": receiver.url()})
    await events_for(receiver, job_id, 4)
    assert {event(each)["job_id"] for each in receiver.received} == {job_id}
    assert len(receiver.received) == 4

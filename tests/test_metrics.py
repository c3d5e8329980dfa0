"""``GET /metrics`` scraped from a running foreman: the figures move with real work.

A streamed chat, an embedding call, a ``/jobs`` job and its webhooks go
through foreman in front of the simulated Ollama; each scrape in between is
parsed with prometheus-client's own parser.
"""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families
from treq.client import HTTPClient
from twisted.web.http_headers import Headers

from tests.conftest import StartForeman, StartSimulator
from tests.http_helpers import eventually
from tests.jobs_http import JobsClient, chat
from tests.webhook_receiver import WebhookReceiver

TOKEN = "metrics token"
AUTH = Headers({b"Authorization": [b"Bearer " + TOKEN.encode()]})

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(http: HTTPClient, url: str) -> Samples:
    response = await http.get(url + "/metrics", headers=AUTH)
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
    text = (await response.content()).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest_twisted.ensureDeferred
async def test_the_figures_move_with_a_chat_an_embedding_a_job_and_its_webhooks(
    reactor: Any,
    start_simulator: StartSimulator,
    start_foreman: StartForeman,
    http: HTTPClient,
    receiver: WebhookReceiver,
) -> None:
    sim = await start_simulator(reply_tokens=6)
    running = await start_foreman(sim.url, token=TOKEN, embed_model="all-minilm")
    before = await scrape(http, running.url)
    assert value(before, "foreman_upstream_reachable") == 1
    assert value(before, "foreman_queue_depth") == 0
    assert value(before, "foreman_worker_busy") == 0

    # A streamed chat, read to its end.
    streamed = await http.post(
        running.url + "/api/chat",
        data=json.dumps(chat("llama3.2", "hello", stream=True)).encode(),
        headers=AUTH,
    )
    lines = (await streamed.content()).splitlines()
    assert json.loads(lines[-1])["done"] is True
    # An embedding call.
    embedded = await http.post(
        running.url + "/api/embed",
        data=json.dumps({"model": "all-minilm", "input": "sky"}).encode(),
        headers=AUTH,
    )
    assert embedded.code == 200
    await embedded.content()
    after_calls = await scrape(http, running.url)
    chat_ok = {"route": "/api/chat", "method": "POST", "status": "200"}
    assert value(after_calls, "foreman_http_requests_total", **chat_ok) == 1
    assert value(after_calls, "foreman_embedding_duration_seconds_count") == 1
    llama = {"model": "llama3.2"}
    assert value(after_calls, "foreman_generations_total", **llama) == 1
    assert value(after_calls, "foreman_generation_tokens_per_second_count", **llama) == 1
    assert value(after_calls, "foreman_generation_time_to_first_token_seconds_count", **llama) == 1
    assert value(after_calls, "foreman_model_loads_total") == 1  # llama3.2, for the queue
    assert value(after_calls, "foreman_resident_models", model="llama3.2:latest") in (0, 1)

    # A job with a webhook: its events are delivered and counted.
    jobs = JobsClient(http, running.url, TOKEN)
    job_id = await jobs.submitted(
        {**chat("llama3.2", "a job"), "state_webhook_url": receiver.url()}
    )
    await receiver.arrived(4)  # queued, loading, working, done
    # Deliveries are unordered (docs/webhooks.md): all four states, any order.
    states = sorted(json.loads(each.body)["state"] for each in receiver.received)
    assert states == ["done", "loading", "queued", "working"]
    outbox = running.foreman.queue.outbox if running.foreman.queue else None
    # The receiver has answered; foreman counts a delivery once it has read that answer.
    await eventually(lambda: getattr(outbox, "delivered", 0) == 4, reactor)
    after_job = await scrape(http, running.url)
    assert value(after_job, "foreman_jobs_finished_total", state="done") == 2  # chat + job
    assert value(after_job, "foreman_generations_total", **llama) == 2
    assert value(after_job, "foreman_webhook_deliveries_total", outcome="delivered") == 4
    assert value(after_job, "foreman_webhook_deliveries_total", outcome="dropped") == 0
    submitted = {"route": "/jobs", "method": "POST", "status": "202"}
    assert value(after_job, "foreman_http_requests_total", **submitted) == 1
    assert job_id
    # Each waited in the queue once, in its own class: the chat is a
    # person's call, the job a batch job.
    for priority in ("interactive", "batch"):
        assert value(after_job, "foreman_queue_wait_seconds_count", priority=priority) == 1
        assert value(after_job, "foreman_queued_jobs", priority=priority) == 0


@pytest_twisted.ensureDeferred
async def test_metrics_need_the_token_unless_public(
    simulator: Any, start_foreman: StartForeman, http: HTTPClient
) -> None:
    guarded = await start_foreman(simulator.url, token=TOKEN)
    assert (await http.get(guarded.url + "/metrics")).code == 401
    public = await start_foreman(simulator.url, token=TOKEN, metrics_public=True)
    response = await http.get(public.url + "/metrics")
    assert response.code == 200
    assert b"foreman_queue_depth" in await response.content()
    # Only /metrics is opened.
    assert (await http.get(public.url + "/api/foreman/queue")).code == 401
    await treq.content(await http.get(public.url + "/api/tags", headers=AUTH))


@pytest_twisted.ensureDeferred
async def test_a_body_refused_as_too_large_is_counted(
    reactor: Any, simulator: Any, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running = await start_foreman(simulator.url, token=TOKEN, max_body_size=100)
    refused = await http.post(
        running.url + "/api/chat", data=json.dumps(chat("llama3.2", "x" * 500)).encode()
    )
    assert refused.code == 413
    await refused.content()
    too_large = {"route": "/api/chat", "method": "POST", "status": "413"}
    metrics = running.foreman.metrics
    # Counted when foreman closes the connection, after the 413 was sent.
    await eventually(
        lambda: metrics.registry.get_sample_value("foreman_http_requests_total", too_large) == 1,
        reactor,
    )
    samples = await scrape(http, running.url)
    assert value(samples, "foreman_http_requests_total", **too_large) == 1


@pytest_twisted.ensureDeferred
async def test_an_observer_that_fails_does_not_spoil_the_reply(
    simulator: Any, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running = await start_foreman(simulator.url)

    def broken(path: bytes, final: bytes) -> None:
        raise RuntimeError("observer bug")

    running.foreman.relay.observe(broken)
    answered = await http.post(
        running.url + "/api/chat", data=json.dumps(chat("llama3.2", "hi", stream=False)).encode()
    )
    assert answered.code == 200
    assert (await answered.json())["done"] is True
    # The metrics observer, registered before the broken one, still counted it.
    samples = await scrape(http, running.url)
    assert value(samples, "foreman_generations_total", model="llama3.2") == 1

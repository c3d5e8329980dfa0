"""Classes of work over real sockets: who may ask for which, how refusals
read in each dialect, and the order callers are shown (ADR-0021)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.web.http_headers import Headers

from tests.conftest import RunningForeman, StartForeman, StartSimulator
from tests.http_helpers import StreamingClient, eventually, within
from tests.jobs_http import JobsClient, chat

TOKEN = "priority token"
BEARER = {b"Authorization": b"Bearer " + TOKEN.encode()}

#: A generation body per dialect, and how each dialect's error names its message.
DIALECTS: dict[str, tuple[dict[str, Any], Any]] = {
    "/api/chat": (chat("llama3.2"), lambda body: body["error"]),
    "/api/generate": ({"model": "llama3.2", "prompt": "hi"}, lambda body: body["error"]),
    "/v1/chat/completions": (
        {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]},
        lambda body: body["error"]["message"],
    ),
    "/v1/messages": (
        {"model": "llama3.2", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
        lambda body: body["error"]["message"],
    ),
}


@pytest.mark.parametrize("path", sorted(DIALECTS))
@pytest_twisted.ensureDeferred
async def test_an_unknown_class_is_refused_in_the_callers_dialect(
    path: str, simulator: Any, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running = await start_foreman(simulator.url, token=TOKEN)
    body, message_of = DIALECTS[path]
    for value in (b"urgent", b"", b"interactive,batch"):
        headers = Headers({**{k: [v] for k, v in BEARER.items()}, b"X-Foreman-Priority": [value]})
        response = await http.post(
            running.url + path, data=json.dumps(body).encode(), headers=headers
        )
        assert response.code == 400, value
        message = message_of(await response.json())
        assert message == 'X-Foreman-Priority: priority must be "interactive" or "batch"'
    assert await _job_count(running) == 0  # nothing was queued
    # Either class, in any case, is accepted.
    for value in (b"batch", b" Interactive "):
        headers = Headers({**{k: [v] for k, v in BEARER.items()}, b"X-Foreman-Priority": [value]})
        response = await http.post(
            running.url + path, data=json.dumps(body).encode(), headers=headers
        )
        assert response.code == 200, value
        await response.content()


@pytest_twisted.ensureDeferred
async def test_a_job_names_its_class_or_is_refused(
    reactor: Any, simulator: Any, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running = await start_foreman(simulator.url, token=TOKEN)
    jobs = JobsClient(http, running.url, TOKEN)
    for priority in ("urgent", 1, True, ["batch"], {"class": "batch"}):
        answer = await jobs.submit({**chat(), "priority": priority})
        assert answer.code == 400, priority
        assert answer.json() == {"error": 'priority must be "interactive" or "batch"'}
    assert await _job_count(running) == 0
    by_default = await jobs.submitted(chat())
    asked = await jobs.submitted({**chat(), "priority": "interactive"})
    null = await jobs.submitted({**chat(), "priority": None})
    assert (await jobs.job(by_default))["priority"] == "batch"
    assert (await jobs.job(asked))["priority"] == "interactive"
    assert (await jobs.job(null))["priority"] == "batch"
    # The field is foreman's: Ollama never sees it.
    for job_id in (by_default, asked, null):
        await jobs.until(job_id, "done", reactor=reactor)
    sent = [json.loads(r.body) for r in simulator.sim.requests if r.path == "/api/chat"]
    assert sent and all("priority" not in body for body in sent)


@pytest_twisted.ensureDeferred
async def test_a_person_goes_ahead_of_queued_batch_work_and_is_shown_there(
    reactor: Any, start_simulator: StartSimulator, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running_sim = await start_simulator(tokens_per_second=50.0, reply_tokens=10_000)
    running = await start_foreman(running_sim.url, token=TOKEN)
    client = StreamingClient(reactor)
    # A person's long stream keeps the worker busy on llama3.2.
    first = await within(
        client.request(
            b"POST",
            running.url + "/api/chat",
            json.dumps(chat("llama3.2", "long", stream=True)).encode(),
            BEARER,
        ),
        5,
        reactor,
    )
    first_lines = client.read_lines(first)
    await within(first_lines.lines.get(), 5, reactor)
    # Three batch jobs for the same model queue up behind it ...
    jobs = JobsClient(http, running.url, TOKEN)
    batch = [
        await jobs.submitted(chat("llama3.2", f"b{n}", options={"num_predict": 2}))
        for n in range(3)
    ]
    # ... then a person asks for another model, and a caller asks for batch treatment.
    person = client.request(
        b"POST",
        running.url + "/api/chat",
        json.dumps(chat("gemma3:12b", "me", stream=True)).encode(),
        BEARER,
    )
    patient = client.request(
        b"POST",
        running.url + "/api/chat",
        json.dumps(chat("llama3.2", "later", stream=True)).encode(),
        {**BEARER, b"X-Foreman-Priority": b"batch"},
    )
    queue = running.foreman.queue
    assert queue is not None
    await eventually(lambda: queue.worker.scheduler.depth == 5, reactor)
    listing = await (
        await http.get(
            running.url + "/api/foreman/queue", headers=Headers({k: [v] for k, v in BEARER.items()})
        )
    ).json()
    shown = [
        (job["position"], job["model"], job["priority"], job["sync"]) for job in listing["jobs"]
    ]
    assert shown == [
        (0, "llama3.2", "interactive", True),
        (2, "gemma3:12b", "interactive", True),
        # After gemma3 the batch class drains by model: llama3.2's jobs, oldest first.
        (3, "llama3.2", "batch", False),
        (4, "llama3.2", "batch", False),
        (5, "llama3.2", "batch", False),
        (6, "llama3.2", "batch", True),
    ]
    assert [job["id"] for job in listing["jobs"][2:5]] == batch
    assert all(job["waited_seconds"] >= 0 and job["overdue"] is False for job in listing["jobs"])
    assert listing["max_wait_seconds"] == 60 and listing["batch_max_wait_seconds"] == 1800

    first_lines.abort()
    person_response = await within(person, 10, reactor)
    assert person_response.headers.getRawHeaders(b"x-foreman-queue-position") == [b"2"]
    person_lines = client.read_lines(person_response)
    await within(person_lines.lines.get(), 5, reactor)
    person_lines.abort()
    patient.cancel()
    patient.addErrback(lambda _: None)
    for job_id in batch:
        await jobs.cancel(job_id)
    running_sim.sim.shutdown()


async def _job_count(running: RunningForeman) -> int:
    queue = running.foreman.queue
    assert queue is not None
    counts = await queue.store.count_by_state()
    return sum(counts.values())

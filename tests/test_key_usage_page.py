"""Usage per key on the status page (issue 21): its data (``/ui/status.json``'s
``usage``, the queue's ``caller``), and what a person sees in Chromium."""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
from treq.client import HTTPClient

from foreman.queue.job import Job
from foreman.queue.ulid import new_ulid
from foreman.queue.usage import NO_KEY
from foreman.service.queue import Queue
from tests.conftest import StartForeman, StartSimulator
from tests.http_helpers import eventually
from tests.test_status_page_browser import Page, visible
from tests.test_status_page_browser import page as page  # the fixture


def chat_body(model: str = "llama3.2") -> bytes:
    message = {"role": "user", "content": "Why is the sky blue?"}
    return json.dumps({"model": model, "messages": [message], "stream": False}).encode()


async def document(http: HTTPClient, url: str) -> dict[str, Any]:
    response = await http.get(url + "/ui/status.json")
    assert response.code == 200
    found: dict[str, Any] = json.loads(await response.content())
    return found


def submit_as(queue: Queue, caller: str, model: str = "llama3.2") -> Job:
    """A ``/jobs`` job sent with ``caller``'s key (as the front will make it)."""
    now = queue.worker.clocks.wall()
    job = Job(
        id=new_ulid(now),
        model=model,
        endpoint="chat",
        body=chat_body(model),
        sync=False,
        created_at=now,
        updated_at=now,
        caller=caller,
    )
    queue.worker.submit(job)
    return job


@pytest_twisted.ensureDeferred
async def test_the_status_document_has_each_keys_usage_and_whose_each_job_is(
    reactor: Any, start_simulator: StartSimulator, start_foreman: StartForeman, http: HTTPClient
) -> None:
    sim = await start_simulator(tokens_per_second=20.0, reply_tokens=40)
    running = await start_foreman(sim.url)
    queue = running.foreman.queue
    assert queue is not None and queue.usage is not None
    answered = await http.post(running.url + "/api/chat", data=chat_body())
    assert answered.code == 200
    await answered.content()
    running_job = submit_as(queue, "alice")
    waiting_job = submit_as(queue, "bob", "qwen3:8b")
    await eventually(lambda: queue.worker.current is not None, reactor)

    shown = await document(http, running.url)
    callers = {job["id"]: job["caller"] for job in shown["queue"]["jobs"]}
    assert callers == {running_job.id: "alice", waiting_job.id: "bob"}
    usage = {row["key"]: row for row in shown["usage"]}
    assert list(usage) == sorted(usage) == [NO_KEY, "alice", "bob"]
    assert usage[NO_KEY]["calls"] == 1 and usage[NO_KEY]["output_tokens"] == 40
    assert usage[NO_KEY]["worker_seconds"] > 0
    assert {usage["alice"]["calls"], usage["bob"]["calls"]} == {1}
    assert set(usage["alice"]) == {
        "key",
        *("calls", "prompt_tokens", "output_tokens", "worker_seconds", "loads", "refusals"),
    }


@pytest_twisted.ensureDeferred
async def test_without_the_queue_there_is_no_usage(
    simulator: Any, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running = await start_foreman(simulator.url, queue=False)
    assert (await document(http, running.url))["usage"] is None


@pytest_twisted.ensureDeferred
async def test_a_person_sees_each_keys_usage_and_whose_each_job_is(
    reactor: Any,
    start_simulator: StartSimulator,
    start_foreman: StartForeman,
    http: HTTPClient,
    page: Page,
) -> None:
    sim = await start_simulator(tokens_per_second=5.0, reply_tokens=50)
    running = await start_foreman(sim.url)
    queue = running.foreman.queue
    assert queue is not None
    job = submit_as(queue, "alice")
    await eventually(lambda: queue.worker.current is not None, reactor)

    await page.goto(running.url + "/ui")
    await page.wait_for(visible("#queue tbody tr", job.id, "alice", "running"), "alice's job")
    await page.wait_for(visible("#usage tbody tr", "alice"), "alice's usage")
    row = await page.evaluate(
        "[...document.querySelectorAll('#usage tbody tr')].map("
        "(tr) => [...tr.cells].map((td) => td.textContent))"
    )
    # Key, calls, prompt and output tokens (none yet: the reply runs), worker
    # time, loads (counted as the run ends), refusals.
    assert row[0][:4] == ["alice", "1", "0", "0"]
    assert row[0][5:] == ["0", "0"]
    caption = await page.evaluate("document.querySelector('#usage-caption').textContent")
    assert NO_KEY in caption
    assert await page.evaluate("window.__violations") == []

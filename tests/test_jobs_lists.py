"""Many jobs in one ``POST /jobs`` (issue 20): stored together or not at all, one id each."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from treq.client import HTTPClient

from tests.conftest import RunningForeman, StartForeman
from tests.jobs_http import JobsClient, chat


def queue_of(running: RunningForeman) -> Any:
    queue = running.foreman.queue
    assert queue is not None
    return queue


async def stored_jobs(running: RunningForeman) -> int:
    counts = await queue_of(running).store.count_by_state()
    return int(sum(counts.values()))


@pytest_twisted.ensureDeferred
async def test_a_list_of_jobs_is_accepted_whole_with_an_id_each_in_order(
    reactor: Any, simulator: Any, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running = await start_foreman(simulator.url)
    jobs = JobsClient(http, running.url)
    documents = [chat("llama3.2", "one"), chat("qwen3:8b", "two"), chat("llama3.2", "three")]
    answer = await jobs.submit(documents)
    assert answer.code == 202
    accepted = answer.json()
    ids = [entry["job_id"] for entry in accepted["jobs"]]
    assert len(ids) == 3 and ids == sorted(ids) and accepted["batch_id"].startswith("batch_")
    for job_id, document in zip(ids, documents, strict=True):
        view = await jobs.until(job_id, "done", reactor=reactor)
        assert view["model"] == document["model"]
    # A retry with the same key finds the same jobs, and stores nothing more.
    key = {"Idempotency-Key": "list-1"}
    first = (await jobs.submit(documents, key)).json()
    again = (await jobs.submit(documents, key)).json()
    assert again == first and len(first["jobs"]) == 3
    assert await stored_jobs(running) == 6


@pytest_twisted.ensureDeferred
async def test_one_bad_job_refuses_the_whole_list_and_stores_nothing(
    simulator: Any, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running = await start_foreman(simulator.url)
    jobs = JobsClient(http, running.url)
    refused = await jobs.submit([chat("llama3.2", "fine"), {"messages": []}])
    assert refused.code == 400
    assert refused.json()["error"].startswith("job 1: ")
    missing = await jobs.submit([chat("llama3.2", "fine"), chat("no-such-model", "x")])
    assert missing.code == 404 and missing.json() == {"error": "model 'no-such-model' not found"}
    empty = await jobs.submit([])
    assert empty.code == 400
    assert await stored_jobs(running) == 0


@pytest_twisted.ensureDeferred
async def test_a_list_longer_than_the_batch_queue_takes_is_refused_whole(
    simulator: Any, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running = await start_foreman(simulator.url, max_batch_queue=3)
    jobs = JobsClient(http, running.url)
    refused = await jobs.submit([chat("llama3.2", f"n{n}") for n in range(4)])
    assert refused.code == 503 and int(refused.header("Retry-After") or 0) >= 1
    assert await stored_jobs(running) == 0
    assert (await jobs.submit([chat("llama3.2", f"n{n}") for n in range(3)])).code == 202


@pytest_twisted.ensureDeferred
async def test_the_queue_report_pages_and_sums_up_by_model_and_batch(
    reactor: Any, start_simulator: Any, start_foreman: StartForeman, http: HTTPClient
) -> None:
    sim = await start_simulator(tokens_per_second=5.0, reply_tokens=10_000)
    running = await start_foreman(sim.url)
    jobs = JobsClient(http, running.url)
    endless = await jobs.submitted(chat("llama3.2", "endless"))
    await jobs.until(endless, "working", reactor=reactor)
    listed = (await jobs.submit([chat("qwen3:8b", f"q{n}") for n in range(150)])).json()
    single = await jobs.submitted(chat("llama3.2", "single"))

    async def page(query: str) -> Any:
        answer = await jobs.call("GET", f"/api/foreman/queue{query}")
        return answer

    first = (await page("")).json()
    assert first["total"] == 152 and first["depth"] == 151 and len(first["jobs"]) == 100
    assert first["jobs"][0]["id"] == endless and first["jobs"][0]["position"] == 0
    assert first["next_offset"] == 100
    assert first["waiting_by_model"] == {"llama3.2:latest": 1, "qwen3:8b": 150}
    assert first["waiting_by_batch"] == {listed["batch_id"]: 150}
    middle = (await page("?limit=10&offset=5")).json()
    # Positions count the running job as ahead: the next one is 2.
    assert [job["position"] for job in first["jobs"][:3]] == [0, 2, 3]
    assert [job["position"] for job in middle["jobs"]] == list(range(6, 16))
    assert [job["id"] for job in middle["jobs"]] == [job["id"] for job in first["jobs"][5:15]]
    last = (await page("?limit=1000&offset=150")).json()
    assert len(last["jobs"]) == 2 and last["next_offset"] is None
    # The resident model's job drains first: it is next, ahead of the batch,
    # whose lines then run in their order.
    assert first["jobs"][1]["id"] == single
    ordered = [job["id"] for job in first["jobs"][2:]]
    assert ordered == [job["job_id"] for job in listed["jobs"]][:98]
    for query in ("?limit=0", "?limit=1001", "?offset=-1", "?limit=ten"):
        refused = await page(query)
        assert refused.code == 400, query
    await jobs.cancel(endless)

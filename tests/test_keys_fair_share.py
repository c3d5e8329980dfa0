"""Keys served in turn, over real sockets (ADR-0030, docs/keys.md).

A key with a few jobs is not held behind another key's thousands: ten jobs
sent with one key after 2,000 sent with another are done before the
other's twentieth job starts.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
from treq.client import HTTPClient

from foreman.queue.job import JobState
from tests.conftest import StartForeman, StartSimulator
from tests.jobs_http import JobsClient, chat
from tests.keys_helpers import KEYS, TOKEN, call, make_key


@pytest_twisted.ensureDeferred
async def test_ten_jobs_of_one_key_after_two_thousand_of_another_are_done_before_its_twentieth(
    reactor: Any, start_simulator: StartSimulator, start_foreman: StartForeman, http: HTTPClient
) -> None:
    # Each reply takes 0.2 s: the first key's jobs are still queued when
    # the second key's arrive.
    sim = await start_simulator(tokens_per_second=25.0, reply_tokens=5)
    running = await start_foreman(sim.url, token=TOKEN)
    ann = await make_key(http, running.url, "ann", "jobs")
    bob = await make_key(http, running.url, "bob", "jobs")
    many = await JobsClient(http, running.url, ann).submit(
        [chat("llama3.2", f"ann {n}") for n in range(2000)]
    )
    assert many.code == 202, many.body
    ann_ids = [entry["job_id"] for entry in many.json()["jobs"]]
    bobs = JobsClient(http, running.url, bob)
    few = await bobs.submit([chat("qwen3:8b", f"bob {n}") for n in range(10)])
    assert few.code == 202, few.body
    for entry in few.json()["jobs"]:
        await bobs.until(entry["job_id"], "done", reactor=reactor)
    queue = running.foreman.queue
    assert queue is not None
    started = 0
    for job_id in ann_ids[:40]:
        job = await queue.store.get(job_id)
        assert job is not None
        started += job.state is not JobState.QUEUED
    assert started < 20, started


@pytest_twisted.ensureDeferred
async def test_a_key_over_its_own_limit_gets_429_in_its_dialect_and_others_go_on(
    start_simulator: StartSimulator, start_foreman: StartForeman, http: HTTPClient
) -> None:
    # The first job to start holds the worker for good: the rest wait.
    sim = await start_simulator(tokens_per_second=1.0, reply_tokens=10_000)
    running = await start_foreman(sim.url, token=TOKEN)
    capped = await make_key(http, running.url, "capped", "jobs", "generate", max_waiting=2)
    free = await make_key(http, running.url, "free", "jobs")
    jobs = JobsClient(http, running.url, capped)
    # A list is taken whole or not at all.
    whole = await jobs.submit([chat("llama3.2", f"n{n}") for n in range(3)])
    assert whole.code == 429 and int(whole.header("Retry-After") or 0) >= 1
    assert "limit is 2" in whole.json()["error"]
    assert (await jobs.submit([chat("llama3.2", f"n{n}") for n in range(2)])).code == 202
    # One of the two may be running by now: the limit counts what waits.
    refused = None
    for n in range(3):
        answer = await jobs.submit(chat("llama3.2", f"more {n}"))
        if answer.code != 202:
            refused = answer
            break
    assert refused is not None and refused.code == 429
    # A sync call of the same key, in OpenAI's dialect: its 429, and its error object.
    openai = await call(
        http,
        running.url,
        "POST",
        "/v1/chat/completions",
        capped,
        {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert openai.code == 429 and openai.json()["error"]["message"].endswith("limit is 2")
    # Another key is not held back by it.
    assert (await JobsClient(http, running.url, free).submit(chat("llama3.2"))).code == 202
    listed = await call(http, running.url, "GET", KEYS, TOKEN)
    usage = {key["name"]: key["usage"] for key in listed.json()["keys"]}
    assert usage["capped"]["refusals"] == 3 and usage["free"]["refusals"] == 0

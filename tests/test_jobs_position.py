"""``GET /jobs/{id}`` shows a queued job's live position, over real sockets."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from treq.client import HTTPClient

from tests.conftest import StartForeman, StartSimulator
from tests.jobs_http import JobsClient, chat
from tests.test_jobs_api import hold_the_worker, queue_of


@pytest_twisted.ensureDeferred
async def test_a_queued_job_shows_its_position_by_the_worker_s_plan(
    reactor: Any, start_simulator: StartSimulator, start_foreman: StartForeman, http: HTTPClient
) -> None:
    # Every reply takes long: a job holds the worker until it is cancelled.
    sim = await start_simulator(tokens_per_second=5.0, reply_tokens=10_000)
    running = await start_foreman(sim.url)
    jobs = JobsClient(http, running.url)
    endless = await hold_the_worker(jobs, reactor)
    batch = await jobs.submitted(chat("llama3.2", "batch"))
    interactive = await jobs.submitted({**chat("llama3.2", "person"), "priority": "interactive"})

    # The running job counts as ahead: the next to run is at 2.
    shown = {job_id: await jobs.job(job_id) for job_id in (endless, batch, interactive)}
    assert {job_id: view["position"] for job_id, view in shown.items()} == {
        endless: None,
        interactive: 2,
        batch: 3,
    }
    assert (shown[interactive]["priority"], shown[batch]["priority"]) == ("interactive", "batch")
    assert (shown[endless]["state"], shown[batch]["state"]) == ("working", "queued")
    # As in /api/foreman/queue.
    report = (await jobs.call("GET", "/api/foreman/queue")).json()
    assert [(job["id"], job["position"]) for job in report["jobs"]] == [
        (endless, 0),
        (interactive, 2),
        (batch, 3),
    ]
    # Listings leave it out.
    listed = (await jobs.call("GET", "/jobs")).json()["jobs"]
    assert all("position" not in job for job in listed)

    # The interactive job runs next; the batch job moves up.
    assert (await jobs.cancel(endless)).code == 200
    await jobs.until(interactive, "working", reactor=reactor)
    assert (await jobs.job(interactive))["position"] is None
    assert (await jobs.job(batch))["position"] == 2

    # Stored as queued, but not in the worker's queue (as a job is for a
    # moment once picked): no position rather than an error.
    assert queue_of(running).worker.scheduler.remove(batch) is not None
    view = await jobs.job(batch)
    assert (view["state"], view["position"]) == ("queued", None)

    cancelled = await jobs.cancel(interactive)
    assert cancelled.code == 200
    assert cancelled.json()["position"] is None
    sim.sim.shutdown()

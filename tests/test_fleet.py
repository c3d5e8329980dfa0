"""A fleet over real processes (issue 18): several twistd foremans, each in front
of its own simulated Ollama, sharing one queue on a real PostgreSQL."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from treq.client import HTTPClient

from tests.daemons import Daemon, wait_until_up
from tests.fault_helpers import sleep, until
from tests.fleet_rig import Box, Fleet
from tests.jobs_http import chat
from tests.postgres_server import PostgresServer

pytestmark = pytest.mark.postgres

MODELS = ("llama3.2", "qwen3:8b", "gemma3:12b")
#: Every box's Ollama: loads that cost something, answers of a few tenths of a second.
OLLAMA = ("--load-seconds", "0.4", "--tokens-per-second", "40", "--reply-tokens", "8")


@pytest_twisted.async_yield_fixture
async def fleet(
    tmp_path: Path, postgres_url: str, http: HTTPClient, reactor: Any, daemons: list[Daemon]
) -> AsyncIterator[Fleet]:
    made = Fleet(tmp_path, postgres_url, http, reactor, daemons)
    yield made
    for daemon in daemons:
        if daemon.process.poll() is None:
            daemon.process.send_signal(signal.SIGKILL)
            daemon.process.wait(timeout=20)
    made.stop_all()


async def all_done(
    fleet: Fleet, ids: dict[str, str], seconds: float = 60.0, via: Box | None = None
) -> None:
    jobs = (via or fleet.boxes[0]).jobs

    async def done() -> bool:
        for job_id in ids.values():
            view = await jobs.job(job_id)
            if view["state"] != "done":
                assert view["state"] in ("queued", "loading", "working"), view
                return False
        return True

    await until(fleet.reactor, done, "every job to be done", seconds)


@pytest_twisted.ensureDeferred
async def test_two_boxes_drain_one_queue_by_model_across_the_fleet(fleet: Fleet) -> None:
    a = await fleet.start_box("a", *OLLAMA)
    b = await fleet.start_box("b", *OLLAMA)
    # Twelve jobs over three models, interleaved, all sent to box a.
    ids = {}
    for index in range(12):
        marker = f"job-{index}"
        ids[marker] = await a.jobs.submitted(chat(MODELS[index % 3], marker))
    await all_done(fleet, ids)
    # Each job generated exactly once, in the whole fleet; both boxes worked.
    for marker in ids:
        assert a.generations(marker) + b.generations(marker) == 1, marker
    ran = {box.name: sum(box.generations(m) for m in ids) for box in (a, b)}
    assert ran["a"] > 0 and ran["b"] > 0, ran
    # Drained by model across the fleet: three models, at most one load more per box.
    loads = await a.loads(fleet.http) + await b.loads(fleet.http)
    assert loads <= len(MODELS) + 2, (loads, fleet.logs())


@pytest_twisted.ensureDeferred
async def test_a_model_only_one_box_has_runs_there(fleet: Fleet) -> None:
    a = await fleet.start_box("a", *OLLAMA, "--models", "llama3.2")
    b = await fleet.start_box("b", *OLLAMA, "--models", "qwen3:8b")
    # Sent to a, whose Ollama lacks it: b's heartbeat says b has it.
    await until(fleet.reactor, lambda: _has(fleet, a.url, "b", "qwen3:8b"), "a to know b", 10)
    ids = {"only-b": await a.jobs.submitted(chat("qwen3:8b", "only-b"))}
    ids["only-a"] = await b.jobs.submitted(chat("llama3.2", "only-a"))
    await all_done(fleet, ids)
    assert (a.generations("only-b"), b.generations("only-b")) == (0, 1)
    assert (a.generations("only-a"), b.generations("only-a")) == (1, 0)
    # A model no live box has is Ollama's 404, as for one box.
    refused = await a.jobs.submit(chat("mistral", "nowhere"))
    assert refused.code == 404, refused.json()


@pytest_twisted.ensureDeferred
async def test_a_job_sent_to_an_idle_box_runs_on_the_box_its_model_is_resident_on(
    fleet: Fleet,
) -> None:
    # gemma3:12b: a load (estimated from its size, 5.9 s, by a box that has
    # loaded nothing) costs more than one job can save, so its jobs do not
    # spread to a second box one at a time.
    a = await fleet.start_box("a", *OLLAMA)
    b = await fleet.start_box("b", *OLLAMA)
    # Both idle, nothing resident: whichever claims it first runs it.
    first = {"first": await a.jobs.submitted(chat("gemma3:12b", "first"))}
    await all_done(fleet, first)
    holder, other = (a, b) if a.generations("first") else (b, a)
    # The other box hears of the resident model from the holder's heartbeat,
    # and uses it from its next look at the fleet's queue (every second at least).
    await until(
        fleet.reactor,
        lambda: _holds(fleet, other.url, holder.name, "gemma3:12b"),
        "the other box to know the resident model",
        10,
    )
    await sleep(fleet.reactor, 1.5)
    # A job for that model sent to the other box, idle: the holder runs it,
    # and nobody loads the model again.
    second = {"second": await other.jobs.submitted(chat("gemma3:12b", "second"))}
    await all_done(fleet, second)
    assert (holder.generations("second"), other.generations("second")) == (1, 0)
    assert await other.loads(fleet.http) == 0


async def _holds(fleet: Fleet, url: str, name: str, model: str) -> bool:
    """Whether the queue report at ``url`` says box ``name`` holds ``model`` resident."""
    response = await fleet.http.get(url + "/api/foreman/queue")
    report = await response.json()
    return any(
        box["name"] == name and (box["resident"] or "").startswith(model)
        for box in report.get("boxes", [])
    )


async def _has(fleet: Fleet, url: str, name: str, model: str) -> bool:
    """Whether the queue report at ``url`` says box ``name`` is alive and has ``model``."""
    response = await fleet.http.get(url + "/api/foreman/queue")
    report = await response.json()
    return any(
        box["name"] == name and box["alive"] and any(m.startswith(model) for m in box["models"])
        for box in report.get("boxes", [])
    )


async def _lists(fleet: Fleet, url: str, names: set[str]) -> bool:
    """Whether the queue report at ``url`` lists exactly ``names`` as live boxes."""
    response = await fleet.http.get(url + "/api/foreman/queue")
    report = await response.json()
    return {box["name"] for box in report.get("boxes", []) if box["alive"]} == names


@pytest_twisted.ensureDeferred
async def test_a_box_killed_mid_job_has_its_job_done_once_elsewhere_after_its_lease(
    fleet: Fleet, receiver: Any
) -> None:
    slow = ("--load-seconds", "0.2", "--tokens-per-second", "10", "--reply-tokens", "40")
    a = await fleet.start_box("a", *slow)
    body = chat("llama3.2", "long-job", state_webhook_url=receiver.url())
    ids = {"long-job": await a.jobs.submitted(body)}
    await until(fleet.reactor, lambda: a.generations("long-job") == 1, "a to start it", 15)
    b = await fleet.start_box("b", *slow)
    a.daemon.process.send_signal(signal.SIGKILL)  # kill -9: no drain, no goodbye
    a.daemon.process.wait(timeout=10)
    killed = time.monotonic()
    await all_done(fleet, ids, seconds=30, via=b)
    took = time.monotonic() - killed
    assert took >= 1.5, took  # not before a's lease (2 s) ran out
    assert b.generations("long-job") == 1
    view = await b.jobs.job(ids["long-job"])
    assert view["state"] == "done" and view["attempt"] == 2, view
    # One done webhook, whichever box wrote it.
    await sleep(fleet.reactor, 1.0)
    events = [json.loads(each.body) for each in receiver.received]
    done = [event for event in events if event.get("state") == "done"]
    assert len(done) == 1, events


@pytest_twisted.ensureDeferred
async def test_the_database_restarted_mid_run_loses_nothing_and_runs_nothing_twice(
    fleet: Fleet, postgres_server: PostgresServer
) -> None:
    a = await fleet.start_box("a", *OLLAMA)
    b = await fleet.start_box("b", *OLLAMA)
    ids = {}
    for index in range(10):
        marker = f"job-{index}"
        ids[marker] = await (a if index % 2 else b).jobs.submitted(chat(MODELS[index % 2], marker))
    await until(
        fleet.reactor,
        lambda: sum(a.generations(m) + b.generations(m) for m in ids) >= 2,
        "the first jobs to run",
        20,
    )
    postgres_server.restart()
    await all_done(fleet, ids, seconds=60)
    for marker in ids:
        assert a.generations(marker) + b.generations(marker) == 1, (marker, fleet.logs())


@pytest_twisted.ensureDeferred
async def test_two_boxes_starting_at_once_on_an_empty_database(fleet: Fleet) -> None:
    first = fleet.start_box("a", *OLLAMA, wait=False)
    second = fleet.start_box("b", *OLLAMA, wait=False)
    a, b = await first, await second
    for box in (a, b):
        await wait_until_up(box.daemon, fleet.http, fleet.reactor)
    ids = {"after": await b.jobs.submitted(chat("llama3.2", "after"))}
    await all_done(fleet, ids)

    await until(fleet.reactor, lambda: _lists(fleet, a.url, {"a", "b"}), "both boxes", 10)

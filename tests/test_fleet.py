"""A fleet over real processes (issue 18): several twistd foremans, each in front
of its own simulated Ollama, sharing one queue on a real PostgreSQL."""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import pytest
import pytest_twisted

from tests.cli_helpers import foreman
from tests.daemons import wait_until_up
from tests.fault_helpers import sleep, until
from tests.fleet_rig import Box, Fleet
from tests.jobs_http import chat
from tests.postgres_server import PostgresServer

pytestmark = pytest.mark.postgres

MODELS = ("llama3.2", "qwen3:8b", "gemma3:12b")
#: Every box's Ollama: loads that cost something, answers of a few tenths of a second.
OLLAMA = ("--load-seconds", "0.4", "--tokens-per-second", "40", "--reply-tokens", "8")


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

    # foreman ps and /metrics at a show both boxes, each with its resident model
    # (b's as its next heartbeat publishes it).
    async def ps_rows() -> dict[str, list[str]]:
        shown = await foreman(fleet.reactor, "ps", "--url", a.url)
        assert shown.code == 0, shown.err
        lines = shown.out.splitlines()
        assert "fleet: 2 of 2 boxes alive" in lines, shown.out
        table = lines[lines.index("fleet: 2 of 2 boxes alive") + 2 :]
        return {line.split()[0]: line.split() for line in table}

    async def both_resident() -> bool:
        rows = await ps_rows()
        return rows["a"][1:4] == ["*", "alive", "llama3.2:latest"] and rows["b"][1:3] == [
            "alive",
            "qwen3:8b",
        ]

    await until(fleet.reactor, both_resident, "foreman ps to show both boxes' models", 10)
    metrics = (await (await fleet.http.get(a.url + "/metrics")).content()).decode()
    assert 'foreman_fleet_boxes{state="alive"} 2.0' in metrics


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


@pytest_twisted.ensureDeferred
async def test_without_its_database_a_box_says_so_serves_embeddings_and_comes_back(
    fleet: Fleet, postgres_server: PostgresServer
) -> None:
    a = await fleet.start_box("a", *OLLAMA)
    ids = {"before": await a.jobs.submitted(chat("llama3.2", "before"))}
    await all_done(fleet, ids)
    postgres_server.stop()
    try:
        refused = await a.jobs.submit(chat("llama3.2", "during"))
        assert refused.code == 503 and refused.header("Retry-After"), refused
        assert "error" in refused.json()
        health = await (await fleet.http.get(a.url + "/healthz")).json()
        assert health["status"] == "degraded", health
        # Embeddings never touch the queue.
        embedded = await fleet.http.post(
            a.url + "/api/embed", json={"model": "all-minilm", "input": "still here"}
        )
        assert embedded.code == 200
        await embedded.content()
    finally:
        postgres_server.start()

    async def healthy() -> bool:
        report = await (await fleet.http.get(a.url + "/healthz")).json()
        return bool(report["status"] == "ok")

    await until(fleet.reactor, healthy, "the box to be healthy again", 20)
    ids["after"] = await a.jobs.submitted(chat("llama3.2", "after"))
    await all_done(fleet, ids)
    assert a.generations("before") == a.generations("after") == 1


@pytest_twisted.ensureDeferred
async def test_a_job_running_on_one_box_is_cancelled_at_another(fleet: Fleet) -> None:
    slow = ("--load-seconds", "0.2", "--tokens-per-second", "5", "--reply-tokens", "100")
    a = await fleet.start_box("a", *slow)
    b = await fleet.start_box("b", *slow, "--models", "qwen3:8b")  # cannot run it
    job_id = await a.jobs.submitted(chat("llama3.2", "cancel-me"))
    await until(fleet.reactor, lambda: a.generations("cancel-me") == 1, "a to start it", 15)
    answer = await b.jobs.cancel(job_id)
    assert answer.code == 200 and answer.json()["state"] == "cancelled", answer
    # a stops generating within about a second (its next look), and the job stays cancelled.
    await until(
        fleet.reactor,
        lambda: [call.ended for call in a.ollama.generations("cancel-me")] == ["cut"],
        "a to stop generating",
        5,
    )
    await sleep(fleet.reactor, 1.0)
    view = await a.jobs.job(job_id)
    assert view["state"] == "cancelled" and view["result"] is None, view

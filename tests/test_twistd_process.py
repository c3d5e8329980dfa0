"""foreman as people run it: a real ``twistd`` process, started and stopped."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet.task import deferLater
from twisted.web.http_headers import Headers

from tests.daemons import TWISTD, Daemon, clean_environment, spawn, stop, wait_until_up
from tests.webhook_receiver import WebhookReceiver


@pytest_twisted.async_yield_fixture
async def simulated_daemon(
    tmp_path: Path, daemons: list[Daemon], http: HTTPClient, reactor: Any
) -> AsyncIterator[Daemon]:
    daemon = spawn(tmp_path, "--upstream", "sim")
    daemons.append(daemon)
    await wait_until_up(daemon, http, reactor)
    yield daemon


@pytest_twisted.ensureDeferred
async def test_twistd_serves_a_streamed_chat_and_stops_cleanly(
    simulated_daemon: Daemon, http: HTTPClient
) -> None:
    response = await http.post(
        simulated_daemon.url + "/api/chat",
        json={"model": "llama3.2", "messages": [{"role": "user", "content": "hello there"}]},
    )
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"application/x-ndjson"]
    lines = [json.loads(line) for line in (await response.text()).splitlines()]
    assert len(lines) > 1
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "stop"
    health = await (await http.get(simulated_daemon.url + "/healthz")).json()
    assert health["upstream"]["simulated"] is True

    assert stop(simulated_daemon) in (0, -signal.SIGTERM)
    log = simulated_daemon.log.read_text()
    assert "SIMULATED Ollama" in log
    assert "POST /api/chat 200 model=llama3.2" in log
    assert "Traceback" not in log


def test_plugin_is_listed_from_any_folder(tmp_path: Path) -> None:
    listing = subprocess.run(
        [TWISTD, "--help"], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert "foreman" in listing.stdout
    options = subprocess.run(
        [TWISTD, "foreman", "--help"], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    for flag in ["--listen", "--ollama-url", "--token-file", "--upstream", "--max-body-size"]:
        assert flag in options.stdout


def test_refuses_to_listen_beyond_loopback_without_a_token(tmp_path: Path) -> None:
    result = subprocess.run(
        [TWISTD, "--nodaemon", "--pidfile=", "foreman", "--listen", "tcp:0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=clean_environment(),
        timeout=30,
    )
    assert result.returncode != 0
    message = [line for line in result.stderr.splitlines() if "refusing" in line]
    assert len(message) == 1, result.stderr
    assert "FOREMAN_TOKEN" in message[0]


@pytest_twisted.ensureDeferred
async def test_json_log_format_and_token(
    tmp_path: Path, daemons: list[Daemon], http: HTTPClient, reactor: Any
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("tok-123\n")
    daemon = spawn(
        tmp_path, "--upstream", "sim", "--log-format", "json", "--token-file", str(token_file)
    )
    daemons.append(daemon)
    await wait_until_up(daemon, http, reactor)
    refused = await http.get(daemon.url + "/api/tags")
    assert refused.code == 401
    bearer = Headers({b"Authorization": [b"Bearer tok-123"]})
    allowed = await http.get(daemon.url + "/api/tags", headers=bearer)
    assert allowed.code == 200
    stop(daemon)
    records = [json.loads(line) for line in daemon.log.read_text().splitlines() if line.strip()]
    access = [r for r in records if r.get("namespace") == "foreman.access"]
    assert {r["status"] for r in access} >= {401, 200}
    assert "tok-123" not in daemon.log.read_text()


@pytest_twisted.ensureDeferred
async def test_json_lines_go_to_twistds_logfile(
    tmp_path: Path, daemons: list[Daemon], http: HTTPClient, reactor: Any
) -> None:
    log_file = tmp_path / "logs" / "foreman.log"
    log_file.parent.mkdir()
    daemon = spawn(
        tmp_path,
        "--upstream",
        "sim",
        "--log-format",
        "json",
        twistd_args=(f"--logfile={log_file}",),
    )
    daemons.append(daemon)
    await wait_until_up(daemon, http, reactor)
    assert (await http.get(daemon.url + "/api/version")).code == 200
    stop(daemon)
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert any(r.get("path") == "/api/version" and r.get("status") == 200 for r in records)
    assert "foreman.access" not in daemon.log.read_text()  # nothing on standard output


def near_now(stamp: str) -> bool:
    """Whether an RFC 3339 stamp in UTC is within two minutes of now."""
    moment = datetime.fromisoformat(stamp[:19]).replace(tzinfo=UTC)
    return abs(moment.timestamp() - time.time()) < 120


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_timers_run_on_the_monotonic_clock_and_stamps_on_the_wall(
    tmp_path: Path,
    daemons: list[Daemon],
    http: HTTPClient,
    reactor: Any,
    receiver: WebhookReceiver,
) -> None:
    # The reactor's seconds() now count from an arbitrary start (boot): any
    # stamp still read from it would say 1970.
    daemon = spawn(tmp_path, "--upstream", "sim", "--log-format", "json")
    daemons.append(daemon)
    await wait_until_up(daemon, http, reactor)

    # The first poll of the target runs beside the start: /healthz may answer
    # before it has (last_poll_at null), so it is read until the poll is in.
    health: dict[str, Any] = {}
    for _ in range(100):
        health = await (await http.get(daemon.url + "/healthz")).json()
        if health["upstream"]["last_poll_at"] is not None:
            break
        await deferLater(reactor, 0.05, lambda: None)
    assert near_now(health["upstream"]["last_poll_at"]), health
    submitted = await http.post(
        daemon.url + "/jobs",
        json={
            "model": "llama3.2",
            "messages": [{"role": "user", "content": "what day is it"}],
            "state_webhook_url": receiver.url(),
        },
    )
    assert submitted.code == 202
    job_id = (await submitted.json())["job_id"]
    view: dict[str, Any] = {}
    for _ in range(100):
        view = await (await http.get(f"{daemon.url}/jobs/{job_id}")).json()
        if view["state"] == "done":
            break
        await deferLater(reactor, 0.1, lambda: None)
    assert view["state"] == "done", view
    for name in ("created_at", "started_at", "finished_at"):
        assert near_now(view[name]), view
    # The simulated Ollama's own stamps, relayed as they are.
    assert near_now(view["result"]["created_at"]), view["result"]
    await receiver.arrived(4)
    events = [json.loads(each.body) for each in receiver.received]
    assert sorted(event["state"] for event in events) == ["done", "loading", "queued", "working"]
    assert all(near_now(event["timestamp"]) for event in events), events

    assert stop(daemon) in (0, -signal.SIGTERM)
    records = [json.loads(line) for line in daemon.log.read_text().splitlines() if line.strip()]
    said = [r for r in records if "monotonic clock" in r.get("message", "")]
    assert len(said) == 1, records
    assert near_now(said[0]["time"])
    assert "Traceback" not in daemon.log.read_text()

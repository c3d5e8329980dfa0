"""SIGTERM to a real ``twistd foreman`` in the middle of a stream: what launchd sends on
``launchctl kickstart -k``, an upgrade, a log-out.

foreman drains (ADR-0023, tests/test_drain.py in-process): the doors close at
once (a new connection is refused), sync callers still waiting in the queue
hear ``503`` with ``Retry-After`` in their dialect, a stream that ends within
``--drain-timeout`` ends whole, one that does not is cut with its dialect's
broken-stream error, and ``/jobs`` jobs wait in the store for the next start.
The callers are the official ``ollama`` and ``openai`` Python clients, each in
a thread, in front of a simulated Ollama in a process of its own
(:mod:`tests.ollama_process`). A cut stream must make the client *raise*:
a client that returns normally with half an answer has been lied to.

The queue runs one generation at a time, so with it only one stream can be
in progress at the SIGTERM (the other client waits in the queue); with
``--no-queue`` both stream at once, and both are cut.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import ollama
import openai
import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet.error import ConnectionRefusedError

from foreman.queue.schema import DATABASE_NAME
from tests.conftest import StartOllama
from tests.daemons import Daemon, spawn, wait_until_up
from tests.fault_helpers import Stream, chat, queue_report, until
from tests.http_helpers import StreamingClient, within
from tests.jobs_http import JobsClient
from tests.ollama_process import OllamaProcess

pytestmark = pytest.mark.slow

TOKENS_PER_SECOND = 20
#: A reply the drain must cut: 20 s.
LONG_REPLY = 400
#: A reply that ends within the drain: 1.5 s.
SHORT_REPLY = 30
STOPPING = "foreman is stopping; try again shortly"
#: After the drain, how long twistd may take to stop its parts and exit.
EXIT_GRACE = 4.0


def other(client: str) -> str:
    return "openai" if client == "ollama" else "ollama"


def start_foreman(tmp_path: Path, target: OllamaProcess, *options: str) -> Daemon:
    return spawn(tmp_path, "--upstream", "ollama", "--ollama-url", target.url, *options)


async def sigterm(daemon: Daemon, reactor: Any) -> float:
    """Send SIGTERM; when it went, once foreman has closed its doors."""
    daemon.process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    await until(reactor, lambda: "Stopping: " in daemon.log.read_text(), "the drain to begin")
    return sent


async def assert_doors_closed(daemon: Daemon, reactor: Any) -> None:
    """A new connection after the signal is refused, or answered 503 + Retry-After."""
    client = StreamingClient(reactor)  # not pooled: a new connection
    body = b'{"model": "llama3.2", "messages": [{"role": "user", "content": "late"}]}'
    try:
        late = await within(client.request(b"POST", daemon.url + "/api/chat", body), 5, reactor)
    except ConnectionRefusedError:
        return
    assert late.code == 503
    assert late.headers.getRawHeaders(b"retry-after") == [b"5"]


async def exited(daemon: Daemon, reactor: Any, seconds: float) -> float:
    """Wait for twistd to exit; when it did."""
    await until(reactor, lambda: daemon.process.poll() is not None, "twistd to exit", seconds)
    at = time.monotonic()
    # Twisted ends a process stopped by a signal with that signal, as it should.
    assert daemon.process.returncode in (0, -signal.SIGTERM), daemon.log.read_text()
    assert "Traceback" not in daemon.log.read_text()
    return at


def stored_jobs(data_dir: Path) -> list[tuple[str, str, int, int | None]]:
    """Every job in the store file: what it asked, its state, attempt and error status."""
    uri = f"file:{data_dir / DATABASE_NAME}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as connection:
        rows = connection.execute("SELECT body, state, attempt, error_status FROM jobs").fetchall()
    return sorted(
        (str(json.loads(body)["messages"][-1]["content"]), state, attempt, status)
        for body, state, attempt, status in rows
    )


def assert_raised_on_the_cut(stream: Stream, outcome: Any) -> None:
    """The client raised the stream's error; nothing it got looks complete."""
    assert stream.chunks, f"the {stream.client} stream was cut before it began"
    if stream.client == "ollama":
        # The stream's {"error": …} line; -1 is the client's mark for one mid-stream.
        assert isinstance(outcome, ollama.ResponseError), outcome
        assert (outcome.status_code, outcome.error) == (-1, STOPPING)
        assert not any(part.done for part in stream.chunks)
    else:
        # The SSE error event, with foreman's words.
        assert type(outcome) is openai.APIError, repr(outcome)
        assert outcome.message == STOPPING
        assert not any(c.choices and c.choices[0].finish_reason for c in stream.chunks)


def assert_refused_while_waiting(client: str, outcome: Any) -> None:
    """A sync caller waiting in the queue at the signal hears 503 in its dialect."""
    if client == "ollama":
        assert isinstance(outcome, ollama.ResponseError), outcome
        assert (outcome.status_code, outcome.error) == (503, STOPPING)
    else:
        assert isinstance(outcome, openai.InternalServerError), repr(outcome)
        assert outcome.status_code == 503
        assert outcome.response.headers["retry-after"] == "5"
        assert outcome.type == "api_error"
        assert STOPPING in outcome.message


async def waiting_in_queue(http: HTTPClient, daemon: Daemon, reactor: Any, count: int) -> None:
    async def queued() -> bool:
        report = await queue_report(http, daemon.url)
        return sum(1 for job in report["jobs"] if job["state"] == "queued") == count

    await until(reactor, queued, f"{count} job(s) waiting in the queue", 10, daemon)


@pytest.mark.parametrize("client", ["ollama", "openai"])
@pytest_twisted.ensureDeferred
async def test_sigterm_cuts_a_stream_that_outlasts_the_drain_and_the_client_raises(
    client: str,
    tmp_path: Path,
    daemons: list[Daemon],
    start_ollama: StartOllama,
    http: HTTPClient,
    reactor: Any,
) -> None:
    target = start_ollama(
        "--tokens-per-second", str(TOKENS_PER_SECOND), "--reply-tokens", str(LONG_REPLY)
    )
    await target.wait_until_up(http, reactor)
    daemon = start_foreman(tmp_path, target, "--drain-timeout", "1s")
    daemons.append(daemon)
    await wait_until_up(daemon, http, reactor)

    running = Stream(client, daemon.url)
    await running.started(reactor)
    waiting = Stream(other(client), daemon.url)
    await waiting_in_queue(http, daemon, reactor, 1)
    await JobsClient(http, daemon.url).submitted(chat("queued-job", 4))
    await waiting_in_queue(http, daemon, reactor, 2)

    sent = await sigterm(daemon, reactor)
    await assert_doors_closed(daemon, reactor)
    # The caller waiting in the queue hears at once that foreman is stopping.
    refused = await within(waiting.outcome, 5, reactor)
    assert_refused_while_waiting(waiting.client, refused)
    assert waiting.ended_at is not None and waiting.ended_at - sent < 1.0
    # The stream in progress gets the drain's second, then is cut: the client raises.
    cut = await within(running.outcome, 10, reactor)
    assert_raised_on_the_cut(running, cut)
    assert running.ended_at is not None and 1.0 <= running.ended_at - sent <= 1.0 + EXIT_GRACE
    stopped_at = await exited(daemon, reactor, 1.0 + EXIT_GRACE + 5)
    assert stopped_at - sent <= 1.0 + EXIT_GRACE

    # Ollama was told to stop generating; the /jobs job waits for the next start.
    assert [call.ended for call in target.generations("stream")] == ["cut"]
    assert target.generations("queued-job") == []
    # The sync calls failed as "foreman stopped" (503); the job never started.
    assert stored_jobs(tmp_path / "d") == [
        ("queued-job", "queued", 0, None),
        ("stream", "failed", 0, 503),
        ("stream", "failed", 1, 503),
    ]


@pytest.mark.parametrize("client", ["ollama", "openai"])
@pytest_twisted.ensureDeferred
async def test_sigterm_lets_a_stream_that_ends_within_the_drain_end_whole(
    client: str,
    tmp_path: Path,
    daemons: list[Daemon],
    start_ollama: StartOllama,
    http: HTTPClient,
    reactor: Any,
) -> None:
    target = start_ollama(
        "--tokens-per-second", str(TOKENS_PER_SECOND), "--reply-tokens", str(SHORT_REPLY)
    )
    await target.wait_until_up(http, reactor)
    daemon = start_foreman(tmp_path, target, "--drain-timeout", "10s")
    daemons.append(daemon)
    await wait_until_up(daemon, http, reactor)

    running = Stream(client, daemon.url)
    await running.started(reactor)
    await JobsClient(http, daemon.url).submitted(chat("queued-job", 4))
    await waiting_in_queue(http, daemon, reactor, 1)

    sent = await sigterm(daemon, reactor)
    await assert_doors_closed(daemon, reactor)
    whole = await within(running.outcome, 10, reactor)
    assert not isinstance(whole, Exception), repr(whole)
    assert running.text() == " ".join(["stream"] * SHORT_REPLY)
    if client == "ollama":
        assert whole[-1].done is True and whole[-1].done_reason == "stop"
    else:
        finished = [c.choices[0].finish_reason for c in whole if c.choices]
        assert finished[-1] == "stop" and not any(finished[:-1])
    # Gone soon after the stream ended, long before the drain's 10 s.
    stopped_at = await exited(daemon, reactor, 15)
    assert running.ended_at is not None and running.ended_at > sent  # mid-stream at the signal
    assert stopped_at - running.ended_at < 3.0
    assert stopped_at - sent < 6.0

    assert [call.ended for call in target.generations("stream")] == ["finished"]
    assert target.generations("queued-job") == []
    assert stored_jobs(tmp_path / "d") == [
        ("queued-job", "queued", 0, None),
        ("stream", "done", 1, None),
    ]


@pytest_twisted.ensureDeferred
async def test_sigterm_without_the_queue_cuts_both_streams_in_flight(
    tmp_path: Path,
    daemons: list[Daemon],
    start_ollama: StartOllama,
    http: HTTPClient,
    reactor: Any,
) -> None:
    target = start_ollama(
        "--tokens-per-second",
        str(TOKENS_PER_SECOND),
        "--reply-tokens",
        str(LONG_REPLY),
        "--num-parallel",
        "2",  # as OLLAMA_NUM_PARALLEL: both generate at once
    )
    await target.wait_until_up(http, reactor)
    daemon = start_foreman(tmp_path, target, "--drain-timeout", "1s", "--no-queue")
    daemons.append(daemon)
    await wait_until_up(daemon, http, reactor)

    streams = [Stream("ollama", daemon.url), Stream("openai", daemon.url)]
    for stream in streams:
        await stream.started(reactor)

    sent = await sigterm(daemon, reactor)
    await assert_doors_closed(daemon, reactor)
    for stream in streams:
        assert_raised_on_the_cut(stream, await within(stream.outcome, 10, reactor))
    stopped_at = await exited(daemon, reactor, 1.0 + EXIT_GRACE + 5)
    assert stopped_at - sent <= 1.0 + EXIT_GRACE
    assert [call.ended for call in target.generations("stream")] == ["cut", "cut"]


@pytest_twisted.ensureDeferred
async def test_a_job_cut_by_sigterm_and_one_queued_each_run_once_after_the_next_start(
    tmp_path: Path,
    daemons: list[Daemon],
    start_ollama: StartOllama,
    http: HTTPClient,
    reactor: Any,
) -> None:
    target = start_ollama("--tokens-per-second", str(TOKENS_PER_SECOND))
    await target.wait_until_up(http, reactor)
    daemon = start_foreman(tmp_path, target, "--drain-timeout", "1s")
    daemons.append(daemon)
    await wait_until_up(daemon, http, reactor)
    jobs = JobsClient(http, daemon.url)
    # 3 s: still running when the drain's second is over.
    ids = {"running": await jobs.submitted(chat("running", 60))}
    ids["queued"] = await jobs.submitted(chat("queued", 4))
    await until(reactor, lambda: bool(target.generations("running")), "the job to run", 10)

    sent = await sigterm(daemon, reactor)
    stopped_at = await exited(daemon, reactor, 1.0 + EXIT_GRACE + 5)
    assert stopped_at - sent <= 1.0 + EXIT_GRACE
    # Both wait in the store; the cut one has its attempt given back.
    assert stored_jobs(tmp_path / "d") == [
        ("queued", "queued", 0, None),
        ("running", "queued", 0, None),
    ]
    assert [call.ended for call in target.generations("running")] == ["cut"]

    again = spawn(
        tmp_path,
        "--upstream",
        "ollama",
        "--ollama-url",
        target.url,
        log_name="foreman-2.log",
    )
    daemons.append(again)
    await wait_until_up(again, http, reactor)
    jobs = JobsClient(http, again.url)
    for marker, job_id in ids.items():
        view = await jobs.until(job_id, "done", "failed", reactor=reactor)
        assert (view["state"], view["attempt"]) == ("done", 1), (marker, view)
    assert [call.ended for call in target.generations("running")] == ["cut", "finished"]
    assert [call.ended for call in target.generations("queued")] == ["finished"]

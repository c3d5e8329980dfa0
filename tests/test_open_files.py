"""Open-file limits: a real ``twistd foreman`` started under a launchd-like
limit, then 300 idle connections, then a normal call (issue: one leaky client
or a crowd of agents used to lock every other caller out)."""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from treq.client import HTTPClient

from foreman.ops.open_files import OpenFiles
from tests.daemons import Daemon, spawn, stop, wait_until_up
from tests.http_helpers import within
from tests.raw_clients import RawConnection, connect, parse_answer

IDLE_CONNECTIONS = 300


@pytest.fixture
def enough_files_here() -> Iterator[None]:
    """This test process holds the 300 connections' other ends."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1024 if hard == resource.RLIM_INFINITY else min(hard, 1024)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize(
    ("soft", "hard", "expected_limit"),
    [
        (256, 4096, 4096),  # as launchd starts an agent: foreman raises its soft limit
        (256, 256, 256),  # nothing to raise: the connection cap keeps the headroom
    ],
    ids=["soft 256 under a higher hard limit", "hard limit 256"],
)
@pytest_twisted.ensureDeferred
async def test_300_idle_connections_do_not_lock_a_caller_out(
    reactor: Any,
    tmp_path: Path,
    http: HTTPClient,
    daemons: list[Daemon],
    enough_files_here: None,
    soft: int,
    hard: int,
    expected_limit: int,
) -> None:
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < hard:
        pytest.skip(f"this machine's hard limit on open files is below {hard}")

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    daemon = spawn(tmp_path, "--upstream", "sim", before_exec=limit_files)
    daemons.append(daemon)
    await wait_until_up(daemon, http, reactor)
    log = daemon.log.read_text()
    assert f"Open files: limit {expected_limit} (was {soft}, hard limit {hard})" in log
    cap = OpenFiles(expected_limit, hard, soft, expected_limit).connection_cap()
    assert f"Accepting up to {cap} client connections" in log

    idle: list[RawConnection] = [
        await connect(reactor, daemon.url) for _ in range(IDLE_CONNECTIONS)
    ]
    started = time.monotonic()
    caller = await connect(reactor, daemon.url)
    caller.send(b"GET /api/tags HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answer = parse_answer(await within(caller.closed, 5, reactor))
    assert answer.status == 200, answer
    assert time.monotonic() - started < 2.0
    assert b'"models"' in answer.body
    # Only idle connections were closed to make room, never more than needed.
    still_open = sum(1 for each in idle if each.open)
    assert still_open >= min(IDLE_CONNECTIONS, cap - 1) - 1
    for each in idle:
        each.close()
    stop(daemon)
    assert "Traceback" not in daemon.log.read_text()

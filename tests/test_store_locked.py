"""The store cannot be written: a real ``twistd foreman`` whose SQLite file another
program holds locked.

The fault of issue 16 is a full disk: every write the store tries fails,
reads still work. A full disk needs a filesystem the test can fill (a
loop-mounted image or a tmpfs with a size: privileges this suite does not
assume); another program holding the file's write lock is the same fault
to foreman (SQLite refuses the write, ``database is locked`` instead of
``database or disk is full``) and needs nothing but ``sqlite3``. So the test
opens ``foreman.sqlite3`` in the data directory and holds ``BEGIN IMMEDIATE``
(in WAL mode readers go on; writers wait). foreman waits ``busy_timeout``
(5 s) for each write, then is refused.

One store thread runs foreman's writes one after another, so each refused
write costs 5 s: the lock is held for the three this test needs (a result,
a submit, a cancel), about 15 s. What must hold while it is: ``/healthz``
says degraded and why; a new job is refused with ``503``, not accepted and
lost; a cancel that cannot be recorded says so; a result Ollama already
gave is kept, not thrown away, and the worker starts nothing else. Once the
lock is gone every accepted job ends ``done``, each generated once.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet.defer import ensureDeferred

from foreman.queue.schema import DATABASE_NAME
from tests.conftest import StartOllama
from tests.daemons import Daemon, spawn, wait_until_up
from tests.fault_helpers import chat, health, reply_text, sleep, until
from tests.http_helpers import within
from tests.jobs_http import JobsClient

pytestmark = pytest.mark.slow

TOKENS_PER_SECOND = 20
#: foreman's PRAGMA busy_timeout: how long each of its writes waits for the lock.
BUSY_TIMEOUT = 5.0
LOCKED = "database is locked"
#: What each job asks for: job-a is still running when the lock is taken.
TOKENS = {"job-a": 40, "job-b": 10, "job-c": 10}


@contextlib.contextmanager
def write_lock(database: Path) -> Iterator[sqlite3.Connection]:
    """Hold the store file's write lock, as another program would."""
    connection = sqlite3.connect(database, timeout=5, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        yield connection
    finally:
        with contextlib.suppress(sqlite3.Error):
            connection.execute("ROLLBACK")
        connection.close()


@pytest_twisted.ensureDeferred
async def test_a_store_that_refuses_writes_loses_nothing_and_runs_nothing_twice(
    tmp_path: Path,
    daemons: list[Daemon],
    start_ollama: StartOllama,
    http: HTTPClient,
    reactor: Any,
) -> None:
    target = start_ollama("--tokens-per-second", str(TOKENS_PER_SECOND))
    await target.wait_until_up(http, reactor)
    data_dir = tmp_path / "d"
    daemon = spawn(tmp_path, "--upstream", "ollama", "--ollama-url", target.url, data_dir=data_dir)
    daemons.append(daemon)
    await wait_until_up(daemon, http, reactor)
    jobs = JobsClient(http, daemon.url)

    # job-a runs (two seconds), job-b and job-c wait behind it.
    ids = {marker: await jobs.submitted(chat(marker, TOKENS[marker])) for marker in TOKENS}
    await until(reactor, lambda: bool(target.generations("job-a")), "job-a to run", 10, daemon)

    with write_lock(data_dir / DATABASE_NAME):
        locked_at = time.monotonic()
        # In the store's thread, one after another: the new job's row, the
        # cancel's read, job-a's result (in a second or two), the cancel.
        submitting = ensureDeferred(jobs.submit(chat("job-x", 10)))
        await sleep(reactor, 0.1)
        cancelling = ensureDeferred(jobs.cancel(ids["job-c"]))

        # A new job: its row waits for the lock, then is refused. 503, never 202.
        refused = await within(submitting, BUSY_TIMEOUT + 10, reactor)
        assert refused.code == 503, refused
        assert refused.header("Retry-After") is not None
        assert refused.json()["error"] == "foreman: could not record the job; see its log"
        # /healthz says so at once, and why.
        report = await health(http, daemon.url)
        assert report["status"] == "degraded", report
        assert report["store"]["writable"] is False
        assert LOCKED in report["store"]["error"]

        # job-a's result came while the lock was held: kept, not thrown away,
        # and nothing else starts while it cannot be recorded.
        async def result_kept() -> bool:
            return bool((await health(http, daemon.url))["store"]["unrecorded_states"] == 1)

        await until(reactor, result_kept, "job-a's result to be kept", 2 * BUSY_TIMEOUT, daemon)
        assert [call.ended for call in target.generations("job-a")] == ["finished"]

        # A cancel that cannot be recorded says so; the job stays queued.
        cancel = await within(cancelling, 2 * BUSY_TIMEOUT + 10, reactor)
        assert cancel.code == 503, cancel
        assert cancel.header("Retry-After") is not None
        assert cancel.json()["error"] == (
            f"could not record the cancel ({LOCKED}); job {ids['job-c']} is still queued"
        )

        report = await health(http, daemon.url)
        assert report["status"] == "degraded"
        assert report["store"]["writable"] is False and LOCKED in report["store"]["error"]
        assert report["store"]["unrecorded_states"] == 1
        assert "the store cannot be written" in report["queue"]["paused"]
        assert target.generations("job-b") == target.generations("job-c") == []
        held = time.monotonic() - locked_at

    # -- the lock is gone: every accepted job ends done, each generated once -------
    released_at = time.monotonic()
    views = {}
    for marker, job_id in ids.items():
        views[marker] = await jobs.until(job_id, "done", "failed", "cancelled", reactor=reactor)
    assert time.monotonic() - released_at < 10

    async def healthy() -> bool:
        return bool((await health(http, daemon.url))["status"] == "ok")

    await until(reactor, healthy, "/healthz to say ok again", 10, daemon)
    report = await health(http, daemon.url)
    assert report["store"] == {"writable": True, "error": None, "unrecorded_states": 0}
    for marker, view in views.items():
        assert (view["state"], view["attempt"]) == ("done", 1), (marker, view)
        assert reply_text(view) == " ".join([marker] * TOKENS[marker])
        assert [call.ended for call in target.generations(marker)] == ["finished"], marker
    # The refused job was never stored, never run.
    listing = json.loads((await jobs.call("GET", "/jobs")).body)["jobs"]
    assert sorted(job["job_id"] for job in listing) == sorted(ids.values())
    assert target.generations("job-x") == []
    assert held < 3 * BUSY_TIMEOUT + 5, held

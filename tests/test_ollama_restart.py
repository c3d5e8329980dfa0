"""Ollama restarts under a running foreman: no job is lost, none is done twice.

On a Mac Ollama goes away every day: an app update, ``brew services
restart``, a laptop waking. Here a real ``twistd foreman`` stands in front of
a simulated Ollama in a process of its own (:mod:`tests.ollama_process`),
which is killed with SIGKILL in the middle of a ``/jobs`` job and started
again on the same port. While it is away the worker waits for it: the jobs
stay ``queued`` with no attempt spent, a job submitted meanwhile is accepted,
a sync caller waits up to ``--outage-wait`` and then hears ``503`` in words;
once it is back every job is done, each generated once (the one that died
with Ollama excepted, which is run again: its first attempt was given back).
A stream in progress when Ollama dies cannot be given again: the official
``ollama`` and ``openai`` clients reading it must raise, never return half
an answer that looks whole.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import ollama
import openai
import pytest
import pytest_twisted
from treq.client import HTTPClient

from tests.conftest import StartOllama
from tests.daemons import Daemon, spawn, wait_until_up
from tests.fault_helpers import (
    MODEL,
    Stream,
    chat,
    health,
    in_thread,
    ollama_client,
    queue_report,
    reply_text,
    sleep,
    until,
)
from tests.http_helpers import within
from tests.jobs_http import JobsClient

pytestmark = pytest.mark.slow

OUTAGE_WAIT = 3.0
TOKENS_PER_SECOND = 20
#: The job Ollama dies in: 1.5 s, so the kill lands well inside it.
LONG = 30
#: The others: 0.3 s each.
SHORT = 6


async def views(jobs: JobsClient, ids: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {marker: await jobs.job(job_id) for marker, job_id in ids.items()}


def ask(url: str, marker: str) -> Any:
    """A sync native chat with the official ``ollama`` client; what it returned or raised."""
    client = ollama_client(url)
    try:
        return client.chat(
            model=MODEL,
            messages=[{"role": "user", "content": marker}],
            options={"num_predict": SHORT},
        )
    except Exception as e:
        return e
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_ollama_killed_and_restarted_on_its_port_loses_no_job_and_runs_none_twice(
    tmp_path: Path,
    daemons: list[Daemon],
    start_ollama: StartOllama,
    http: HTTPClient,
    reactor: Any,
) -> None:
    target = start_ollama(
        "--tokens-per-second", str(TOKENS_PER_SECOND), "--reply-tokens", str(SHORT)
    )
    await target.wait_until_up(http, reactor)
    daemon = spawn(
        tmp_path,
        "--upstream",
        "ollama",
        "--ollama-url",
        target.url,
        "--outage-wait",
        f"{OUTAGE_WAIT:g}s",
        "--drain-timeout",
        "1s",
    )
    daemons.append(daemon)
    await wait_until_up(daemon, http, reactor)
    jobs = JobsClient(http, daemon.url)

    # -- one job runs, three wait; Ollama dies in the middle of the first --------
    ids = {"job-0": await jobs.submitted(chat("job-0", LONG))}
    for index in range(1, 4):
        ids[f"job-{index}"] = await jobs.submitted(chat(f"job-{index}", SHORT))
    await until(reactor, lambda: bool(target.generations("job-0")), "job-0 to start", 15, daemon)
    target.kill()
    killed_at = time.monotonic()
    assert [call.ended for call in target.generations("job-0")] == [None], "killed mid-run"

    # -- while it is away: degraded, every job queued, no attempt spent ----------
    async def degraded() -> bool:
        return bool((await health(http, daemon.url))["status"] == "degraded")

    await until(reactor, degraded, "/healthz to say degraded", 10, daemon)

    async def all_waiting() -> bool:
        seen = await views(jobs, ids)
        return all(view["state"] == "queued" for view in seen.values())

    await until(reactor, all_waiting, "the cut job to go back to the queue", 10, daemon)
    # A job submitted while Ollama is away is accepted, and waits for it.
    ids["job-4"] = await jobs.submitted(chat("job-4", SHORT))

    # -- a sync caller waits --outage-wait, then hears 503 in words --------------
    asked_at = time.monotonic()
    refusing = in_thread(lambda: ask(daemon.url, "sync-refused"))
    # Meanwhile the jobs wait, and spend no attempt.
    while not refusing.called:
        seen = await views(jobs, ids)
        assert {m: (v["state"], v["attempt"]) for m, v in seen.items()} == {
            marker: ("queued", 0) for marker in ids
        }, "no attempt is spent on an Ollama that does not answer"
        report = await health(http, daemon.url)
        assert report["status"] == "degraded"
        assert report["upstream"]["reachable"] is False
        assert "Ollama does not answer" in report["queue"]["paused"]
        assert time.monotonic() - asked_at < 30
        await sleep(reactor, 0.25)
    refused = await refusing
    waited = time.monotonic() - asked_at
    assert isinstance(refused, ollama.ResponseError), refused
    assert refused.status_code == 503
    assert refused.error.startswith(f"foreman: cannot reach Ollama at {target.url} ("), refused
    assert refused.error.endswith(f"the call waited {OUTAGE_WAIT:g} s for it. Try again shortly"), (
        refused
    )
    assert OUTAGE_WAIT - 0.5 <= waited <= OUTAGE_WAIT + 3, waited
    # The job Ollama died in says why it waits, in words.
    assert "Ollama" in seen["job-0"]["error"] and "Failure" not in seen["job-0"]["error"]

    # -- a sync caller whose Ollama comes back within the wait is answered -------
    # The worker looks at a silent Ollama after gaps that double up to 5 s:
    # at 0.5, 1.5, 3.5, 7.5, 12.5 s … into the outage. Asked 3.7 s in, this
    # caller's wait ends before the next look; Ollama is back a second into
    # it, and the caller must not be told that Ollama does not answer.
    await sleep(reactor, max(0.0, killed_at + 3.7 - time.monotonic()))
    answered = in_thread(lambda: ask(daemon.url, "sync-ok"))

    async def sync_waiting() -> bool:
        report = await queue_report(http, daemon.url)
        return any(job["sync"] for job in report["jobs"])

    await until(reactor, sync_waiting, "the sync call to wait in the queue", 5, daemon)
    target.start()
    restarted_at = time.monotonic()
    await target.wait_until_up(http, reactor)
    reply = await within(answered, 30, reactor)
    assert not isinstance(reply, Exception), reply
    assert reply.done is True and reply.done_reason == "length"
    assert reply.message.content == " ".join(["sync-ok"] * SHORT)

    # -- back: every job done, each generated once -------------------------------
    async def all_done() -> bool:
        seen = await views(jobs, ids)
        assert not any(view["state"] == "failed" for view in seen.values()), seen
        return all(view["state"] == "done" for view in seen.values())

    await until(reactor, all_done, "every job to be done", 20, daemon)
    assert time.monotonic() - restarted_at < 15
    for marker, view in (await views(jobs, ids)).items():
        assert view["attempt"] == 1, (marker, view)
        tokens = LONG if marker == "job-0" else SHORT
        assert reply_text(view) == " ".join([marker] * tokens)
        # The first run of Ollama generated only job-0, and died in it; the
        # second generated each job once, to its end.
        runs = [(call.run, call.ended) for call in target.generations(marker)]
        assert runs == ([(1, None)] if marker == "job-0" else []) + [(2, "finished")], marker
    assert target.generations("sync-refused") == []
    assert [(call.run, call.ended) for call in target.generations("sync-ok")] == [(2, "finished")]
    # The queue resumed in its order.
    second_run = [call.asked for call in target.calls() if call.run == 2 and call.asked in ids]
    assert second_run == sorted(ids)

    assert (await health(http, daemon.url))["status"] == "ok"


@pytest_twisted.ensureDeferred
async def test_a_stream_ollama_dies_in_makes_each_client_raise_and_the_next_call_is_served(
    tmp_path: Path,
    daemons: list[Daemon],
    start_ollama: StartOllama,
    http: HTTPClient,
    reactor: Any,
) -> None:
    # Half an answer cannot be taken back, nor given again: the caller must
    # learn that the stream broke, in its dialect, never see a clean end.
    target = start_ollama("--tokens-per-second", str(TOKENS_PER_SECOND), "--reply-tokens", "400")
    await target.wait_until_up(http, reactor)
    daemon = spawn(tmp_path, "--upstream", "ollama", "--ollama-url", target.url)
    daemons.append(daemon)
    await wait_until_up(daemon, http, reactor)

    for client in ("ollama", "openai"):
        stream = Stream(client, daemon.url)
        await stream.started(reactor)
        target.kill()
        broken = await within(stream.outcome, 10, reactor)
        assert stream.chunks
        if client == "ollama":
            # The stream's {"error": …} line; -1 is the client's mark for one mid-stream.
            assert isinstance(broken, ollama.ResponseError), broken
            assert broken.status_code == -1
            assert broken.error == (
                f"foreman: cannot reach Ollama at {target.url}: the stream broke before it was done"
            )
            assert not any(part.done for part in stream.chunks)
        else:
            assert type(broken) is openai.APIError, repr(broken)
            assert "the stream broke before it was done" in broken.message
            assert not any(c.choices and c.choices[0].finish_reason for c in stream.chunks)
        target.start()
        await target.wait_until_up(http, reactor)

    # Ollama is back: the next call is answered whole.
    reply = await within(in_thread(lambda: ask(daemon.url, "after")), 30, reactor)
    assert not isinstance(reply, Exception), reply
    assert reply.done is True and reply.message.content == " ".join(["after"] * SHORT)
    # Each broken stream was asked of Ollama once: nothing was generated again.
    assert [(call.run, call.ended) for call in target.generations("stream")] == [
        (1, None),
        (2, None),
    ]

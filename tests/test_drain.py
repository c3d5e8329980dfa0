"""A stop drains (ADR-0023): what runs may finish within ``--drain-timeout``;
what must be cut ends with its dialect's error, never looking whole.

foreman runs in-process in front of a scripted upstream, so each test decides
when Ollama sends what; the stop is ``ForemanService.stopService``, what
twistd calls on SIGTERM (tests/test_sigterm.py sends the real signal).
"""

from __future__ import annotations

import json
from typing import Any, cast

import pytest_twisted
import treq
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from foreman.queue.job import Job, JobState
from foreman.queue.store import JobStore
from tests.conftest import ScriptedRig, StartScripted
from tests.http_helpers import StreamingClient, eventually, within
from tests.worker_rig import fired

CHAT = json.dumps({"model": "scripted", "messages": [{"role": "user", "content": "hi"}]}).encode()
OPENAI_STREAM = json.dumps(
    {"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "stream": True}
).encode()


def line(text: str, done: bool = False) -> bytes:
    chunk: dict[str, Any] = {"model": "scripted", "message": {"role": "assistant", "content": text}}
    chunk["done"] = done
    if done:
        chunk["done_reason"] = "stop"
    return json.dumps(chunk).encode() + b"\n"


def stop(rig: ScriptedRig) -> Deferred[None]:
    stopping: Deferred[None] = rig.foreman.foreman.root.stopService()
    return stopping


def stored(rig: ScriptedRig, job_id: str) -> Job:
    """The job as the store file has it (the store itself is closed by the stop)."""
    queue = queue_of(rig)
    store = JobStore(queue.store.path)
    fired(store.open())
    job = fired(store.get(job_id))
    fired(store.close())
    assert job is not None
    return cast(Job, job)


def queue_of(rig: ScriptedRig) -> Any:
    queue = rig.foreman.foreman.queue
    assert queue is not None
    return queue


@pytest_twisted.ensureDeferred
async def test_a_stream_that_ends_within_the_drain_ends_whole(
    start_scripted: StartScripted, reactor: Any
) -> None:
    rig = await start_scripted(drain_timeout=10.0)
    response_d = rig.client.request(b"POST", rig.url("/api/chat"), CHAT)
    held = await within(rig.upstream.next_request(), 5, reactor)
    held.start()
    held.send(line("Hel"))
    reader = StreamingClient.read_lines(await within(response_d, 5, reactor))
    assert json.loads(await within(reader.lines.get(), 5, reactor))["message"]["content"] == "Hel"
    job = queue_of(rig).worker.current

    stopping = stop(rig)
    # A call arriving now is refused in its dialect, and told when to come back.
    late = await within(
        rig.client.request(b"POST", rig.url("/v1/chat/completions"), OPENAI_STREAM), 5, reactor
    )
    assert late.code == 503
    assert late.headers.getRawHeaders(b"retry-after") == [b"5"]
    error = json.loads(await treq.content(late))["error"]
    assert error["type"] == "api_error" and "stopping" in error["message"]
    assert not stopping.called  # the stream still runs

    held.send(line("lo"))
    held.send(line("", done=True))
    held.finish()
    await within(reader.ended, 5, reactor)
    await within(stopping, 5, reactor)
    lines = reader.json_lines()
    assert [chunk["message"]["content"] for chunk in lines] == ["Hel", "lo", ""]
    assert lines[-1]["done"] is True and "error" not in lines[-1]
    assert stored(rig, job.id).state is JobState.DONE


@pytest_twisted.ensureDeferred
async def test_a_stream_the_drain_must_cut_ends_with_an_error_line(
    start_scripted: StartScripted, reactor: Any
) -> None:
    rig = await start_scripted(drain_timeout=0.3)
    response_d = rig.client.request(b"POST", rig.url("/api/chat"), CHAT)
    held = await within(rig.upstream.next_request(), 5, reactor)
    held.start()
    held.send(line("Once upon"))
    reader = StreamingClient.read_lines(await within(response_d, 5, reactor))
    await within(reader.lines.get(), 5, reactor)
    job = queue_of(rig).worker.current
    assert job is not None

    await within(stop(rig), 5, reactor)
    await within(held.disconnected, 5, reactor)  # Ollama was told to stop
    await within(reader.ended, 5, reactor)
    *_, last = reader.json_lines()
    assert last == {"error": "foreman is stopping; try again shortly"}
    assert all(not chunk.get("done") for chunk in reader.json_lines())
    ended = stored(rig, job.id)
    assert ended.state is JobState.FAILED
    assert (ended.error_status, ended.last_error) == (503, "foreman stopped")


@pytest_twisted.ensureDeferred
async def test_an_openai_stream_cut_by_the_drain_ends_with_an_error_event(
    start_scripted: StartScripted, reactor: Any
) -> None:
    rig = await start_scripted(drain_timeout=0.3)
    response_d = rig.client.request(b"POST", rig.url("/v1/chat/completions"), OPENAI_STREAM)
    held = await within(rig.upstream.next_request(), 5, reactor)
    held.start(content_type=b"text/event-stream")
    held.send(b'data: {"choices":[{"delta":{"content":"Once"}}]}\n\n')
    held.send(b'data: {"choices":[{"delta"')  # half an event
    reader = StreamingClient.read_lines(await within(response_d, 5, reactor))
    await within(stop(rig), 5, reactor)
    await within(reader.ended, 5, reactor)
    text = b"\n".join(reader.received)
    assert b"[DONE]" not in text
    events = [event for event in text.split(b"\n\n") if event.strip()]
    assert events[0] == b'data: {"choices":[{"delta":{"content":"Once"}}]}'
    error = json.loads(events[-1].removeprefix(b"data: "))
    assert error["error"]["message"] == "foreman is stopping; try again shortly"


@pytest_twisted.ensureDeferred
async def test_waiting_callers_hear_503_and_asynchronous_jobs_wait_for_the_next_start(
    start_scripted: StartScripted, start_foreman: Any, reactor: Any
) -> None:
    rig = await start_scripted(drain_timeout=0.3)
    queue = queue_of(rig)
    running_d = rig.client.request(b"POST", rig.url("/api/chat"), CHAT)
    held = await within(rig.upstream.next_request(), 5, reactor)
    waiting_d = rig.client.request(b"POST", rig.url("/api/chat"), CHAT)
    submitted = await treq.post(rig.url("/jobs"), json=json.loads(CHAT))
    assert submitted.code == 202
    job_id = json.loads(await treq.content(submitted))["job_id"]
    await eventually(lambda: queue.worker.scheduler.depth == 2, reactor)

    stopping = stop(rig)
    waiting = await within(waiting_d, 5, reactor)  # answered at once
    assert waiting.code == 503
    assert waiting.headers.getRawHeaders(b"retry-after") == [b"5"]
    assert "stopping" in json.loads(await treq.content(waiting))["error"]
    await within(stopping, 5, reactor)
    running = await within(running_d, 5, reactor)
    assert running.code == 503  # still loading when the drain ended: nothing was sent
    await within(held.disconnected, 5, reactor)

    job = stored(rig, job_id)
    assert (job.state, job.attempt) == (JobState.QUEUED, 0)


@pytest_twisted.ensureDeferred
async def test_a_running_asynchronous_job_cut_by_the_drain_runs_again_after_a_restart(
    start_scripted: StartScripted, reactor: Any
) -> None:
    rig = await start_scripted(drain_timeout=0.3)
    queue = queue_of(rig)
    submitted = await treq.post(rig.url("/jobs"), json=json.loads(CHAT))
    job_id = json.loads(await treq.content(submitted))["job_id"]
    held = await within(rig.upstream.next_request(), 5, reactor)
    await eventually(lambda: queue.worker.current is not None, reactor)
    await within(stop(rig), 5, reactor)
    await within(held.disconnected, 5, reactor)
    job = stored(rig, job_id)
    # Back in the queue, its attempt given back: the stop was not its fault.
    assert (job.state, job.attempt) == (JobState.QUEUED, 0)

    again = await start_scripted()  # the same data directory
    held = await within(again.upstream.next_request(), 5, reactor)
    reply = {"model": "scripted", "message": {"role": "assistant", "content": "hi"}}
    body = json.dumps({**reply, "done": True, "done_reason": "stop"}).encode()
    held.start(content_type=b"application/json; charset=utf-8", length=len(body))
    held.send(body)
    held.finish()
    view: dict[str, Any] = {}

    async def done() -> bool:
        view.update(json.loads(await treq.content(await treq.get(again.url(f"/jobs/{job_id}")))))
        return bool(view["state"] == "done")

    for _ in range(500):
        if await done():
            break
        await deferLater(reactor, 0.01, lambda: None)
    assert (view["state"], view["attempt"]) == ("done", 1)

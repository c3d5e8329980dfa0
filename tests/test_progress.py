"""Scheduling classes and live progress on the client side.

``JobsClient.submit(priority=…)``, ``wait(progress=…)``, the
:class:`~foreman.client.progress.Progress` display on its own, and
``foreman submit --wait`` showing it: plain lines when stderr is not a
terminal, one status line rewritten in place when it is. Time is a
:class:`~twisted.internet.task.Clock` that the stub stamps its jobs with too,
so every time shown is known exactly.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from foreman.client import JobsClient, JobView
from foreman.client.progress import CLEAR_TO_END, Progress, describe, ticking
from foreman.wire.priority import Priority
from tests.cli_helpers import SECRET, TOKEN, environment, foreman, make_stub
from tests.jobs_stub import JobsStub, WatchedClock, chat_completion, rfc3339

#: When the tests' clocks start: a time the stub's timestamps can carry.
T0 = 1_800_000_000.0
C = TypeVar("C", bound=Clock)
CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "Sky?"}]}


@pytest_twisted.async_yield_fixture
async def stub(reactor: Any) -> AsyncIterator[JobsStub]:
    server = make_stub(reactor)
    yield server
    await server.stop()


def started(clock: C, stub: JobsStub) -> C:
    """``clock`` at T0, and the stub's jobs stamped by it."""
    clock.advance(T0)
    stub.now = clock.seconds
    return clock


class FakeTerminal(io.StringIO):
    """stderr as a terminal: ``isatty``, each write kept, and a way to wait for one."""

    def __init__(self, reactor: Any = None) -> None:
        super().__init__()
        self._reactor = reactor
        self.writes: list[str] = []
        self._waiting: list[tuple[str, Deferred[None]]] = []

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.writes.append(text)
        written = super().write(text)
        for entry in [entry for entry in self._waiting if entry[0] in text]:
            self._waiting.remove(entry)
            # On the reactor's next turn: the writer finishes what it was doing first.
            self._reactor.callLater(0, entry[1].callback, None)
        return written

    def shows(self, text: str) -> Deferred[None]:
        """Fires once a write has contained ``text`` (soon if one has)."""
        if any(text in written for written in self.writes):
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiting.append((text, waiter))
        return waiter


# -- the display on its own -----------------------------------------------------------------


def view(state: str, **fields: Any) -> dict[str, Any]:
    return {"state": state, "model": "llama3.2", "created_at": rfc3339(T0), **fields}


def test_describe_a_job_in_each_state() -> None:
    assert describe(view("queued", position=3), T0 + 12.4) == "queued · position 3 · waited 12s"
    assert describe(view("queued", position=None), T0 + 75) == "queued · waited 1m15s"
    loading = view("loading", updated_at=rfc3339(T0 + 10))
    assert describe(loading, T0 + 13) == "loading llama3.2 · 3s"
    assert describe(view("working", updated_at=rfc3339(T0)), T0 + 3700) == "working · 1h01m"
    # Whatever a newer foreman says, or leaves out, still makes a line.
    assert describe({"state": "thinking"}, T0) == "thinking"
    assert describe({}, T0) == "?"
    # Clocks a little apart never show a negative time.
    assert describe(view("queued"), T0 - 5) == "queued · waited 0s"


def test_ticking_durations() -> None:
    shown = [ticking(s) for s in (0, 59.9, 60, 61, 3599, 3600, 90061)]
    assert shown == ["0s", "59s", "1m00s", "1m01s", "59m59s", "1h00m", "25h01m"]


def test_plain_lines_only_when_state_or_position_changes() -> None:
    stream, clock = io.StringIO(), Clock()
    clock.advance(T0 + 1)
    progress = Progress(stream, clock, tty=False)
    progress.show(view("queued", position=2))
    progress.show(view("queued", position=2))
    clock.advance(30)
    progress.show(view("queued", position=1))
    progress.show(view("loading", updated_at=rfc3339(T0 + 31)))
    progress.close()
    assert stream.getvalue() == (
        "queued · position 2 · waited 1s\nqueued · position 1 · waited 31s\nloading llama3.2 · 0s\n"
    )
    assert clock.getDelayedCalls() == []


def test_the_status_line_fits_the_terminal_and_ticks() -> None:
    terminal, clock = FakeTerminal(), Clock()
    clock.advance(T0)
    progress = Progress(terminal, clock, tty=True, columns=20)
    progress.show(view("queued", position=12))
    clock.advance(1)
    # Cut short with an ellipsis: a line that wrapped could not be rewritten.
    assert terminal.writes == ["\rqueued · position…" + CLEAR_TO_END] * 2
    progress.close()
    assert terminal.writes[-1] == "\r" + CLEAR_TO_END
    assert clock.getDelayedCalls() == []


def test_which_display_a_stream_gets() -> None:
    clock = Clock()
    assert Progress.on(FakeTerminal(), clock, {}).tty
    assert not Progress.on(FakeTerminal(), clock, {"TERM": "dumb"}).tty
    assert not Progress.on(io.StringIO(), clock, {}).tty


def test_a_stream_that_fails_ends_the_progress_not_the_wait() -> None:
    class Broken(io.StringIO):
        writes = 0

        def write(self, text: str) -> int:
            self.writes += 1
            raise BrokenPipeError()

    stream = Broken()
    progress = Progress(stream, Clock(), tty=False)
    progress.show(view("queued"))
    progress.show(view("loading"))
    assert stream.writes == 1


# -- the client -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_submit_sends_the_priority(reactor: Any, stub: JobsStub) -> None:
    async with JobsClient(stub.url, token=TOKEN, reactor=reactor) as client:
        spelled = await client.submit(CHAT, priority=" Interactive", notify=False)
        assert stub.jobs[spelled].priority == "interactive"
        # The keyword wins over the body's own field, as the others do.
        named = await client.submit({**CHAT, "priority": "interactive"}, priority=Priority.BATCH)
        assert stub.jobs[named].priority == "batch"
        in_body = await client.submit({**CHAT, "priority": "interactive"}, notify=False)
        assert stub.jobs[in_body].priority == "interactive"
        with pytest.raises(ValueError, match='priority must be "interactive" or "batch"'):
            await client.submit(CHAT, priority="urgent")
        assert len(stub.jobs) == 3


@pytest_twisted.ensureDeferred
async def test_wait_reports_progress_and_hears_every_state(reactor: Any, stub: JobsStub) -> None:
    clock = started(WatchedClock(reactor), stub)
    client = JobsClient(stub.url, token=TOKEN, webhook_secret=SECRET, reactor=reactor, clock=clock)
    try:
        job_id = await client.submit(CHAT)
        seen: list[JobView] = []
        waiting = Deferred.fromCoroutine(client.wait(job_id, progress=seen.append))
        assert await clock.scheduled.get() == 0.5
        # The event cuts the pause short: the new state is read at once.
        await stub.move(job_id, "loading")
        assert await clock.scheduled.get() == 1.0
        await stub.move(job_id, "done", completion=chat_completion("Blue."))
        assert (await waiting)["state"] == "done"
        assert [each["state"] for each in seen] == ["queued", "loading"]
        assert clock.getDelayedCalls() == []
    finally:
        await client.close()


# -- the command ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_submit_wait_prints_a_line_per_change_when_not_on_a_terminal(
    reactor: Any, stub: JobsStub
) -> None:
    clock = started(WatchedClock(reactor), stub)
    argv = ["submit", "-m", "llama3.2", "-p", "Sky?", "--priority", "interactive", "--wait"]
    running = foreman(reactor, *argv, env=environment(stub), clock=clock)
    sent = await stub.submissions.get()
    assert sent.job_id is not None
    job = stub.jobs[sent.job_id]
    assert job.priority == "interactive"
    assert await clock.scheduled.get() == 0.5  # the first look was made
    job.position = 3
    clock.advance(12)
    assert await clock.scheduled.get() == 1.0
    clock.advance(1)  # nothing changed: nothing printed
    assert await clock.scheduled.get() == 2.0
    await stub.move(job.id, "loading")
    assert await clock.scheduled.get() == 4.0
    clock.advance(3)
    await stub.move(job.id, "working")
    assert await clock.scheduled.get() == 8.0
    await stub.move(job.id, "done", completion=chat_completion("Blue."))
    result = await running
    assert (result.code, result.out) == (0, "Blue.\n")
    assert result.err == (
        "queued · waited 0s\n"
        "queued · position 3 · waited 12s\n"
        "loading llama3.2 · 0s\n"
        "working · 0s\n"
    )


@pytest_twisted.ensureDeferred
async def test_submit_wait_rewrites_one_status_line_on_a_terminal(
    reactor: Any, stub: JobsStub
) -> None:
    clock, terminal = started(Clock(), stub), FakeTerminal(reactor)
    running = foreman(
        reactor,
        *["submit", "-m", "llama3.2", "-p", "Sky?", "--wait"],
        env=environment(stub),
        clock=clock,
        stderr=terminal,
    )
    job_id = (await stub.submissions.get()).job_id
    assert job_id is not None
    await terminal.shows("queued · waited 0s")
    # Redrawn every second, though nothing else changed.
    clock.advance(1)
    assert terminal.writes[-1] == "\rqueued · waited 1s" + CLEAR_TO_END
    clock.advance(1)
    assert terminal.writes[-1] == "\rqueued · waited 2s" + CLEAR_TO_END
    stub.jobs[job_id].position = 2
    await stub.move(job_id, "queued")
    await terminal.shows("\rqueued · position 2 · waited 2s" + CLEAR_TO_END)
    await stub.move(job_id, "loading")
    await terminal.shows("\rloading llama3.2 · 0s" + CLEAR_TO_END)
    clock.advance(5)
    assert terminal.writes[-1] == "\rloading llama3.2 · 5s" + CLEAR_TO_END
    # A poll those 5 s started may see the end first; the command then exits
    # and may cut the webhook off, so the delivery's outcome is not the point.
    delivery = Deferred.fromCoroutine(
        stub.move(job_id, "done", completion=chat_completion("Blue."))
    )
    delivery.addErrback(lambda _: None)
    result = await running
    # The answer is as it always was; the status line is gone before it.
    assert (result.code, result.out) == (0, "Blue.\n")
    assert terminal.writes[-1] == "\r" + CLEAR_TO_END
    assert "\n" not in result.err
    assert all(w.startswith("\r") and w.endswith(CLEAR_TO_END) for w in terminal.writes)
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_wait_clears_the_status_line_before_the_timeout_message(
    reactor: Any, stub: JobsStub
) -> None:
    env = environment(stub)
    job_id = (await foreman(reactor, "submit", "-m", "llama3.2", "-p", "x", env=env)).out.strip()
    clock, terminal = Clock(), FakeTerminal(reactor)
    running = foreman(
        reactor, "wait", job_id, "--timeout", "5", env=env, clock=clock, stderr=terminal
    )
    await terminal.shows("queued")
    clock.advance(5)
    result = await running
    assert result.code == 4
    said = f"foreman: job {job_id} did not finish within 5 s; it goes on (foreman wait {job_id})"
    assert result.err.endswith(f"\r{CLEAR_TO_END}{said}\n")
    # --no-progress: stderr as before.
    watched = WatchedClock(reactor)
    argv = ["wait", job_id, "--timeout", "5", "--no-progress"]
    quietly = foreman(reactor, *argv, env=env, clock=watched, stderr=FakeTerminal())
    assert await watched.scheduled.get() == 5
    watched.advance(5)
    quiet = await quietly
    assert (quiet.code, quiet.err) == (4, said + "\n")

"""A kill can land anywhere: a job's state and that state's webhook event are stored
together or not at all, and after a restart every event is delivered at least once.

The first "process" runs ``/jobs`` jobs in simulated time on a real SQLite file with
its outbox never started: the receiver is as good as down, so every event it stores
stays in the table. After every transaction that commits, the file is copied with
SQLite's backup API, which copies exactly what is committed. A kill -9 (or a power
loss) at any instant leaves the file as it was after the last commit, so these copies
are every file a crash of that run can leave behind. Each one is checked (every job's
state has its event, every event its job), then restarted: a new store, worker and
outbox on a copy, recovery run as at start-up, and a real receiver on 127.0.0.1. Every
job ends done once, and its receiver hears every state it went through, ``done``
included. With the state and its event in two transactions, as they once were, the
copy taken between the two loses the event for good.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import attrs
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from foreman.jobs.events import JobEvents
from foreman.jobs.outbox import WebhookOutbox
from foreman.queue.engines import Connection
from foreman.queue.engines.sqlite import SQLiteConnection
from foreman.queue.job import Job, JobState
from foreman.queue.runners import inline_runner
from foreman.queue.store import JobStore
from foreman.queue.transitions import Record
from foreman.wire.signature import verify
from tests.test_job_worker import job_for
from tests.test_webhooks import Outcomes
from tests.webhook_receiver import WebhookReceiver
from tests.worker_rig import WorkerRig, fired, make_worker_rig

SECRET = "atomic secret"
#: The restarted outbox's clock: every stored event is due, no attempt times out.
OUTBOX_TIME = 1_000_000.0
#: The restart's own clock starts later than the first run's ended.
RESTART_AT = 10_000.0
RUNNING = (JobState.LOADING, JobState.WORKING)


# -- the first run, copied after every commit -------------------------------------------


class Snapshots:
    """A runner (inline, as in every rig) that copies the file after each commit."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        directory.mkdir()
        self.store: JobStore | None = None
        self.files: list[Path] = []
        #: Copy after the next call even if nothing changed (a rolled-back write).
        self.force = False
        self._seen = -1

    def run(self, work: Callable[[], Any]) -> Deferred[Any]:
        done = inline_runner(work)
        self.take(always=self.force)
        self.force = False
        return done

    def take(self, *, always: bool = False) -> None:
        assert self.store is not None
        wrapped = self.store._connection
        connection = None if wrapped is None else cast(SQLiteConnection, wrapped).raw
        if connection is None or connection.in_transaction:
            return
        if connection.total_changes == self._seen and not always:
            return  # a read: nothing new to copy
        self._seen = connection.total_changes
        path = self._directory / f"{len(self.files):03d}.sqlite3"
        with contextlib.closing(sqlite3.connect(path)) as copy:
            connection.backup(copy)
        self.files.append(path)


@attrs.frozen
class FirstRun:
    snapshots: list[Path]
    #: Each hooked job's URL path, and the marker in its prompt, by id.
    hooked: dict[str, str]
    silent: str


def first_run(tmp_path: Path, base_url: str, *, dying_on: JobState | None = None) -> FirstRun:
    """Three jobs, two with a webhook (to ``base_url``), one retried after the target
    was down. ``dying_on``: the first transition into that state fails in its
    transaction; the copy taken just after is the last (the process dies there)."""
    snapshots = Snapshots(tmp_path / "snapshots")
    dying = Dying(dying_on, snapshots)

    def prepare(rig: WorkerRig) -> None:
        snapshots.store = rig.store
        rig.worker.record_transitions(JobEvents(Unstarted(), inline_limit=1 << 20))
        rig.worker.record_transitions(dying)

    rig = make_worker_rig(tmp_path, runner=snapshots.run, prepare=prepare)
    snapshots.take(always=True)  # the empty queue

    def submit(marker: str, hooked: bool = True) -> str:
        url = f"{base_url}/{marker}" if hooked else None
        job: Job = fired(rig.worker.submit(job_for(rig, marker, webhook_url=url)))
        return job.id

    retried = submit("retried")
    rig.agent.down = True
    rig.worker.startService()  # its first attempt fails: back to the queue
    rig.agent.down = False
    plain, silent = submit("plain"), submit("silent", hooked=False)
    rig.run_until(lambda: rig.all_finished() or dying.died_at is not None)
    if dying.died_at is not None:
        del snapshots.files[dying.died_at + 1 :]
    rig.stop()
    fired(rig.store.close())
    return FirstRun(snapshots.files, {retried: "retried", plain: "plain"}, silent)


class Unstarted:
    """The first run's outbox: never started, so every event stays stored."""

    def schedule(self, event: object) -> None:
        pass


@attrs.define
class Dying:
    """A recorder whose write fails, after the job's row and its event row were
    written in the same transaction: as if the process died before the commit."""

    state: JobState | None
    snapshots: Snapshots
    #: The index of the copy taken right after the failed transaction.
    died_at: int | None = None

    def __call__(self, job: Job, previous: JobState | None) -> Record | None:
        if job.state is not self.state or self.died_at is not None:
            return None
        return _DyingRecord(self)


@attrs.define
class _DyingRecord:
    dying: Dying

    def write(self, db: Connection) -> None:
        self.dying.died_at = len(self.dying.snapshots.files)
        self.dying.snapshots.force = True
        raise sqlite3.OperationalError("disk I/O error")

    def committed(self) -> None:
        raise AssertionError("a failed transaction never commits")


# -- what a copy holds ------------------------------------------------------------------


@attrs.frozen
class Stored:
    states: dict[str, JobState]
    attempts: dict[str, int]
    hooks: dict[str, str | None]
    #: Each job's event rows, oldest first.
    events: dict[str, list[dict[str, Any]]]


def read(path: Path) -> Stored:
    uri = f"file:{path}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        jobs = db.execute("SELECT id, state, attempt, webhook_url FROM jobs").fetchall()
        rows = db.execute("SELECT job_id, body FROM deliveries ORDER BY id").fetchall()
    events: dict[str, list[dict[str, Any]]] = {job_id: [] for job_id, *_ in jobs}
    for job_id, body in rows:
        assert job_id in events, "an event without its job"
        events[job_id].append(json.loads(body))
    return Stored(
        states={job_id: JobState(state) for job_id, state, *_ in jobs},
        attempts={job_id: attempt for job_id, _, attempt, _ in jobs},
        hooks={job_id: url for job_id, *_, url in jobs},
        events=events,
    )


def assert_consistent(stored: Stored) -> None:
    """Every job's stored state has its event, and the events chain up to it."""
    for job_id, state in stored.states.items():
        events = stored.events[job_id]
        if stored.hooks[job_id] is None:
            assert events == []
            continue
        assert events, f"job {job_id} is stored without its queued event"
        last = events[-1]
        assert (last["state"], last["attempt"]) == (state.value, stored.attempts[job_id])
        previous = [None] + [each["state"] for each in events[:-1]]
        assert [each["previous_state"] for each in events] == previous


def path_of(events: list[dict[str, Any]]) -> list[str]:
    return [each["state"] for each in events]


# -- the restart --------------------------------------------------------------------------


@attrs.frozen
class Restarted:
    store: Stored
    #: Each job's events as received, in the order foreman stored them.
    received: dict[str, list[dict[str, Any]]]
    generated: list[str]


async def restart(
    reactor: Any, tmp_path: Path, snapshot: Path, receiver: WebhookReceiver
) -> Restarted:
    """foreman started again on a copy of ``snapshot``, run until the queue is
    finished and the outbox empty."""
    directory = tmp_path / f"restart-{snapshot.stem}"
    directory.mkdir()
    database = directory / "foreman.sqlite3"
    shutil.copyfile(snapshot, database)
    clock = Clock()
    clock.advance(OUTBOX_TIME)
    outboxes: list[WebhookOutbox] = []

    def prepare(rig: WorkerRig) -> None:
        outbox = WebhookOutbox(rig.store, reactor, secret=SECRET, clock=clock)
        rig.worker.record_transitions(JobEvents(outbox, inline_limit=1 << 20))
        outboxes.append(outbox)

    arrived_before = len(receiver.received)
    with observing(Outcomes(reactor)) as outcomes:
        rig = make_worker_rig(directory, database=database, start_at=RESTART_AT, prepare=prepare)
        (outbox,) = outboxes
        # As foreman starts them: the outbox (what is pending) before the worker.
        outbox.startService()
        rig.worker.startService()
        rig.run_until(rig.all_finished)
        # Nothing has been sent yet (that takes the reactor): every row is still here.
        with contextlib.closing(sqlite3.connect(database)) as db:
            pending = db.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0]
        await outcomes.nth(pending)
        assert {each["outcome"] for each in outcomes.outcomes} == {"delivered"}
    await outbox.stopService()
    rig.stop()
    fired(rig.store.close())
    received: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for each in receiver.received[arrived_before:]:
        assert verify(SECRET, each.body, each.headers["x-foreman-signature"])
        event = json.loads(each.body)
        delivery = int(each.headers["x-foreman-delivery"])
        received.setdefault(event["job_id"], []).append((delivery, event))
    return Restarted(
        store=read(database),
        received={job_id: [e for _, e in sorted(events)] for job_id, events in received.items()},
        generated=rig.generation_markers(),
    )


@contextlib.contextmanager
def observing(outcomes: Outcomes) -> Iterator[Outcomes]:
    globalLogPublisher.addObserver(outcomes)
    try:
        yield outcomes
    finally:
        globalLogPublisher.removeObserver(outcomes)


def continuation(state: JobState) -> list[str]:
    """The states a job stored in ``state`` goes through after a restart."""
    if state is JobState.DONE:
        return []
    back = ["queued"] if state in RUNNING else []
    return [*back, "loading", "working", "done"]


def assert_every_event_delivered(first: FirstRun, at_kill: Stored, after: Restarted) -> None:
    # Only jobs stored at the kill exist: the others' submits were never accepted.
    assert set(after.store.states) == set(at_kill.states)
    for job_id, marker in first.hooked.items():
        if job_id not in at_kill.states:
            assert job_id not in after.received
            continue
        assert after.store.states[job_id] is JobState.DONE
        events = after.received[job_id]
        # Everything stored before the kill, then what the restart added.
        before = path_of(at_kill.events[job_id])
        assert path_of(events) == before + continuation(at_kill.states[job_id])
        assert events[: len(before)] == at_kill.events[job_id]
        assert [each["previous_state"] for each in events] == [None, *path_of(events)[:-1]]
        (done,) = [each for each in events if each["state"] == "done"]
        assert marker in done["result"]["message"]["content"]
        assert done["attempt"] == after.store.attempts[job_id]
    assert first.silent not in after.received
    assert after.store.states.get(first.silent, JobState.DONE) is JobState.DONE
    # Done exactly once: a job done at the kill is never run again.
    done_at_kill = {
        marker
        for job_id, marker in [*first.hooked.items(), (first.silent, "silent")]
        if at_kill.states.get(job_id) is JobState.DONE
    }
    assert not done_at_kill & set(after.generated)
    assert len(after.generated) == len(set(after.generated))


# -- the tests ---------------------------------------------------------------------------


def test_after_every_commit_each_state_has_its_event(tmp_path: Path) -> None:
    first = first_run(tmp_path, "http://127.0.0.1:9")
    stored = [read(path) for path in first.snapshots]
    for each in stored:
        assert_consistent(each)
    # Every transition was a commit of its own, each seen by a copy.
    final = stored[-1]
    retried, plain = first.hooked
    assert path_of(final.events[retried]) == [
        "queued",
        "loading",
        "queued",
        "loading",
        "working",
        "done",
    ]
    assert path_of(final.events[plain]) == ["queued", "loading", "working", "done"]
    assert final.events[first.silent] == []
    # The empty queue, three submits, and then eleven state changes: one copy
    # each, every one of the ten transitions of a hooked job one more event.
    assert len(stored) == 1 + 3 + 11
    counts = [sum(len(events) for events in each.events.values()) for each in stored]
    assert counts == sorted(counts) and counts[-1] == 10 and len(set(counts)) == 11


@pytest_twisted.ensureDeferred
async def test_a_kill_after_any_commit_loses_no_event(
    reactor: Any, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    first = first_run(tmp_path, receiver.url("").rstrip("/"))
    for snapshot in first.snapshots[1:]:  # after the first submit, each in turn
        at_kill = read(snapshot)
        after = await restart(reactor, tmp_path, snapshot, receiver)
        try:
            assert_every_event_delivered(first, at_kill, after)
        except AssertionError as e:
            raise AssertionError(f"after a kill at {snapshot.name}: {e}") from e


@pytest_twisted.ensureDeferred
async def test_a_transaction_that_fails_after_writing_the_job_keeps_neither(
    reactor: Any, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    first = first_run(tmp_path, receiver.url("").rstrip("/"), dying_on=JobState.DONE)
    *_, before, at_failure = (read(path) for path in first.snapshots)
    # The job's done row and its done event were written, then rolled back together.
    assert at_failure == before
    assert_consistent(at_failure)
    (working,) = [job_id for job_id, state in at_failure.states.items() if state in RUNNING]
    assert at_failure.states[working] is JobState.WORKING
    assert path_of(at_failure.events[working])[-1] == "working"
    assert "done" not in path_of(at_failure.events[working])

    # The process dies there; the next one finishes the job and sends every event.
    after = await restart(reactor, tmp_path, first.snapshots[-1], receiver)
    assert_every_event_delivered(first, at_failure, after)
    assert path_of(after.received[working])[-4:] == ["queued", "loading", "working", "done"]

"""Queue jobs, ``kill -9`` twistd mid-run, start it again: every job completes exactly once.

The jobs are written straight into the data directory's SQLite file before
twistd starts (asynchronous jobs have no HTTP surface yet). The simulated
Ollama runs in this process, on a real port, paced so that twenty jobs take
about four seconds. Because it runs on this process's reactor, nothing moves
in it while a check here runs: the kill is sent right after a generation was
seen to start, so the process dies mid-generation, never between the upstream
finishing a reply and foreman writing it down.

The ``/jobs`` tests submit over HTTP with webhooks: one kills foreman while a long
job holds the queue; the other kills it three times while short jobs finish back
to back, at no chosen point of a job's life, with the receiver down. There, every
state stored at a kill must have its event stored too (nothing was delivered, so
the table holds every event ever written), and after a last restart every event,
``done`` included, reaches the receiver. That a kill between two commits can
lose nothing is shown exhaustively, in simulated time, by test_event_atomicity.
"""

from __future__ import annotations

import collections
import contextlib
import json
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from foreman.queue.job import Job, JobState
from foreman.queue.schema import DATABASE_NAME
from foreman.queue.store import JobStore
from foreman.queue.ulid import new_ulid
from foreman.testing import SimulatedOllama
from foreman.wire.signature import verify
from tests.daemons import Daemon, spawn, wait_until_up
from tests.test_event_atomicity import Stored, assert_consistent
from tests.test_event_atomicity import read as read_stored
from tests.test_webhooks import nothing_listening
from tests.webhook_receiver import OK, Hang, WebhookReceiver

pytestmark = pytest.mark.slow

T = TypeVar("T")

JOBS = 20
REPLY_TOKENS = 10
TOKENS_PER_SECOND = 50.0  # 0.2 s a job, about 4 s for all of them
#: Kill once at least this many are done (and before all are).
DONE_BEFORE_KILL = 4
#: The whole test fails rather than hangs after this long.
DEADLINE_SECONDS = 60.0
POLL_SECONDS = 0.01
#: The kill goes out at most this long after a generation started, well
#: within the generation's 0.2 s.
FRESH_GENERATION_SECONDS = 0.06


def fired(deferred: Deferred[T]) -> T:
    """The result of a store call made with the (synchronous) inline runner."""
    outcome: list[T | Failure] = []
    deferred.addBoth(outcome.append)
    assert outcome, "the inline runner should have answered at once"
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


def marker(index: int) -> str:
    return f"job-{index:02d}"


def chat_body(index: int) -> bytes:
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": marker(index)}]}
    return json.dumps(body).encode()


def body_marker(body: bytes) -> str | None:
    """The job marker in a chat body; ``None`` for foreman's own (load) calls."""
    messages = json.loads(body).get("messages") or []
    return str(messages[-1]["content"]) if messages else None


@attrs.frozen
class Snapshot:
    """The jobs as the SQLite file shows them, read by a connection of our own."""

    states: dict[str, JobState]
    attempts: dict[str, int]
    markers: dict[str, str]

    def count(self, *states: JobState) -> int:
        return sum(1 for state in self.states.values() if state in states)

    def running(self) -> list[str]:
        return [job_id for job_id, state in self.states.items() if state.running]


def read_jobs(database: Path) -> Snapshot:
    # Read-only: after the kill, closing a writable connection would
    # checkpoint the WAL, doing part of the restarted foreman's work for it.
    uri = f"file:{database}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=1.0)) as connection:
        rows = connection.execute("SELECT id, state, attempt, body FROM jobs").fetchall()
    return Snapshot(
        states={job_id: JobState(state) for job_id, state, _, _ in rows},
        attempts={job_id: attempt for job_id, _, attempt, _ in rows},
        markers={job_id: body_marker(body) or "" for job_id, _, _, body in rows},
    )


def queue_jobs(database: Path) -> dict[str, str]:
    """Write ``JOBS`` queued asynchronous chat jobs; their markers by id."""
    store = JobStore(database)
    store.startup(time.time())
    now = time.time()
    markers: dict[str, str] = {}
    try:
        for index in range(JOBS):
            created = now + index / 1000
            job = Job(
                id=new_ulid(created),
                model="llama3.2",
                endpoint="chat",
                body=chat_body(index),
                sync=False,
                created_at=created,
                updated_at=created,
            )
            fired(store.insert(job))
            markers[job.id] = marker(index)
    finally:
        fired(store.close())
    return markers


def spawn_foreman(tmp_path: Path, data_dir: Path, ollama_url: str, run: int) -> Daemon:
    return spawn(
        tmp_path,
        "--upstream",
        "ollama",
        "--ollama-url",
        ollama_url,
        data_dir=data_dir,
        log_name=f"foreman-{run}.log",
    )


@pytest_twisted.async_yield_fixture
async def paced_simulator(reactor: Any) -> AsyncIterator[tuple[SimulatedOllama, str]]:
    sim = SimulatedOllama(reactor, tokens_per_second=TOKENS_PER_SECOND, reply_tokens=REPLY_TOKENS)
    port = reactor.listenTCP(0, sim.site(reactor), interface="127.0.0.1")
    yield sim, f"http://127.0.0.1:{port.getHost().port}"
    sim.shutdown()
    await port.stopListening()


class Deadline:
    def __init__(self, reactor: Any, seconds: float) -> None:
        self._reactor = reactor
        self._at = reactor.seconds() + seconds

    async def tick(self, daemon: Daemon | None, waiting_for: str) -> None:
        """Let the reactor (and so the simulator) run a little; fail past the deadline."""
        if daemon is not None and daemon.process.poll() is not None:
            raise AssertionError(
                f"twistd exited while waiting for {waiting_for}: {daemon.log.read_text()}"
            )
        if self._reactor.seconds() > self._at:
            log = daemon.log.read_text() if daemon is not None else ""
            raise AssertionError(f"timed out waiting for {waiting_for}\n{log}")
        await deferLater(self._reactor, POLL_SECONDS, lambda: None)


def chat_markers(sim: SimulatedOllama) -> list[str]:
    """The marker of every job call the simulator received, in arrival order."""
    found = (body_marker(r.body) for r in sim.requests if r.path == "/api/chat")
    return [each for each in found if each is not None]


@pytest_twisted.ensureDeferred
async def test_kill_9_mid_run_and_every_queued_job_completes_exactly_once(
    reactor: Any,
    tmp_path: Path,
    http: HTTPClient,
    daemons: list[Daemon],
    paced_simulator: tuple[SimulatedOllama, str],
) -> None:
    sim, sim_url = paced_simulator
    deadline = Deadline(reactor, DEADLINE_SECONDS)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    database = data_dir / DATABASE_NAME
    markers = queue_jobs(database)
    assert read_jobs(database).count(JobState.QUEUED) == JOBS

    # -- first run: let a few jobs finish, then kill -9 in the middle of one --
    first = spawn_foreman(tmp_path, data_dir, sim_url, run=1)
    daemons.append(first)
    await wait_until_up(first, http, reactor)

    # Generations started so far (nothing has been cancelled yet).
    started_before = sim.completed_generations + sim.active_generations
    seen_at = reactor.seconds()
    while True:
        await deadline.tick(first, f"{DONE_BEFORE_KILL} jobs done and another running")
        started = sim.completed_generations + sim.active_generations
        fresh = started > started_before and reactor.seconds() - seen_at < FRESH_GENERATION_SECONDS
        started_before, seen_at = started, reactor.seconds()
        before_kill = read_jobs(database)
        done = before_kill.count(JobState.DONE)
        assert done < JOBS - 1, "the queue ran dry before the kill could be sent"
        if fresh and sim.active_generations == 1 and done >= DONE_BEFORE_KILL:
            break
    first.process.send_signal(signal.SIGKILL)
    assert first.process.wait(timeout=10) == -signal.SIGKILL
    completed_at_kill = sim.completed_generations

    at_kill = read_jobs(database)
    assert at_kill == before_kill
    done_at_kill = at_kill.count(JobState.DONE)
    assert DONE_BEFORE_KILL <= done_at_kill < JOBS
    assert at_kill.count(JobState.QUEUED) == JOBS - done_at_kill - 1
    (interrupted,) = at_kill.running()
    assert at_kill.states[interrupted] is JobState.WORKING
    assert at_kill.attempts[interrupted] == 1
    # The generation foreman died in is the one the simulator is running.
    assert chat_markers(sim)[-1] == markers[interrupted]
    assert completed_at_kill == done_at_kill

    # The simulator sees the connection close: the generation is cancelled.
    while sim.cancelled_requests == 0 or sim.active_generations:
        await deadline.tick(None, "the simulator to see foreman's connection close")
    assert sim.cancelled_requests == 1
    assert sim.completed_generations == completed_at_kill

    # -- second run on the same data directory: the queue is finished ----------
    second = spawn_foreman(tmp_path, data_dir, sim_url, run=2)
    daemons.append(second)
    await wait_until_up(second, http, reactor)
    while (now := read_jobs(database)).count(JobState.DONE) < JOBS:
        failed = now.count(JobState.FAILED, JobState.CANCELLED)
        assert failed == 0, second.log.read_text()
        await deadline.tick(second, "every job to be done after the restart")
    second.process.send_signal(signal.SIGTERM)
    assert second.process.wait(timeout=20) in (0, -signal.SIGTERM)

    second_log = second.log.read_text()
    assert "1 job(s) back in the queue" in second_log
    assert "Traceback" not in first.log.read_text() + second_log

    # -- every job done once, with its own reply --------------------------------
    store = JobStore(database)
    fired(store.open())
    try:
        jobs = {job_id: fired(store.get(job_id)) for job_id in markers}
        assert fired(store.count_by_state())[JobState.DONE] == JOBS
    finally:
        fired(store.close())
    for job_id, job in jobs.items():
        assert job is not None
        assert job.state is JobState.DONE, job
        assert job.last_error is None and job.error_status is None
        assert job.attempt == (2 if job_id == interrupted else 1), job
        assert job.result
        reply = json.loads(job.result)
        assert reply["done"] is True
        assert reply["model"] == "llama3.2"
        assert reply["message"]["role"] == "assistant"
        assert markers[job_id] in reply["message"]["content"]

    # The simulator generated each reply once: every job's call arrived once,
    # the interrupted one twice, and that first call is the one cancelled.
    calls = collections.Counter(chat_markers(sim))
    assert calls == {each: (2 if each == markers[interrupted] else 1) for each in markers.values()}
    assert sim.cancelled_requests == 1
    assert sim.completed_generations == JOBS
    assert sim.active_generations == 0
    for request in sim.requests:
        if request.path == "/api/chat" and body_marker(request.body) is not None:
            assert json.loads(request.body)["stream"] is False


# -- /jobs across a kill -9: every job done once, every done event delivered --------------

ASYNC_JOBS = 50
#: The job foreman is killed in: long enough that the kill lands mid-generation.
LONG_JOB = 4
LONG_TOKENS = 20_000
SECRET = "crash secret"


def long_or_short(index: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": marker(index)}],
        "metadata": {"index": index},
    }
    if index == LONG_JOB:
        body["options"] = {"num_predict": LONG_TOKENS}
    return body


@pytest_twisted.async_yield_fixture
async def hanging_receiver(reactor: Any) -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver(reactor, default=Hang())
    receiver.listen()
    yield receiver
    await receiver.close()


def pending_deliveries(database: Path) -> int:
    uri = f"file:{database}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=1.0)) as connection:
        count: int = connection.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0]
        return count


@pytest_twisted.ensureDeferred
async def test_kill_9_with_fifty_jobs_queued_then_every_job_done_once_and_its_done_event_sent(
    reactor: Any,
    tmp_path: Path,
    http: HTTPClient,
    daemons: list[Daemon],
    hanging_receiver: WebhookReceiver,
) -> None:
    receiver = hanging_receiver
    sim = SimulatedOllama(reactor, tokens_per_second=200.0, reply_tokens=2)
    port = reactor.listenTCP(0, sim.site(reactor), interface="127.0.0.1")
    sim_url = f"http://127.0.0.1:{port.getHost().port}"
    deadline = Deadline(reactor, DEADLINE_SECONDS)
    data_dir = tmp_path / "data"
    database = data_dir / DATABASE_NAME
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_text(SECRET + "\n")

    def start(run: int) -> Daemon:
        daemon = spawn(
            tmp_path,
            "--upstream",
            "ollama",
            "--ollama-url",
            sim_url,
            "--webhook-secret-file",
            str(secret_file),
            data_dir=data_dir,
            log_name=f"foreman-jobs-{run}.log",
        )
        daemons.append(daemon)
        return daemon

    try:
        # -- first run: submit fifty jobs; the fifth holds the worker ---------------
        first = start(1)
        await wait_until_up(first, http, reactor)
        ids: dict[str, int] = {}
        for index in range(ASYNC_JOBS):
            body = {**long_or_short(index), "state_webhook_url": receiver.url(f"/job/{index}")}
            response = await http.post(first.url + "/jobs", json=body)
            assert response.code == 202, await response.text()
            ids[(await response.json())["job_id"]] = index
        while not (sim.active_generations == 1 and chat_markers(sim)[-1] == marker(LONG_JOB)):
            await deadline.tick(first, "the long job to be generating")
        # Nothing was acknowledged: every event so far waits in the outbox.
        assert pending_deliveries(database) > ASYNC_JOBS
        first.process.send_signal(signal.SIGKILL)
        assert first.process.wait(timeout=10) == -signal.SIGKILL
        at_kill = read_jobs(database)
        assert at_kill.count(JobState.DONE) == LONG_JOB
        assert at_kill.count(JobState.QUEUED) == ASYNC_JOBS - LONG_JOB - 1
        (interrupted,) = at_kill.running()
        assert ids[interrupted] == LONG_JOB
        while sim.active_generations:
            await deadline.tick(None, "the simulator to see foreman's connection close")
        assert sim.cancelled_requests == 1

        # -- second run: the receiver answers now; the long job is quick now too ------
        receiver.default = OK
        answered_from = len(receiver.received)
        sim.tokens_per_second = 0.0
        second = start(2)
        await wait_until_up(second, http, reactor)

        def done_events() -> dict[str, list[dict[str, Any]]]:
            events: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
            for each in receiver.received[answered_from:]:
                event = json.loads(each.body)
                if event["state"] == "done":
                    events[event["job_id"]].append(event)
            return events

        while read_jobs(database).count(JobState.DONE) < ASYNC_JOBS or len(done_events()) < len(
            ids
        ):
            now = read_jobs(database)
            assert now.count(JobState.FAILED, JobState.CANCELLED) == 0, second.log.read_text()
            await deadline.tick(second, "every job done and its done event delivered")
        while pending_deliveries(database):
            await deadline.tick(second, "the outbox to empty")
        second.process.send_signal(signal.SIGTERM)
        assert second.process.wait(timeout=20) in (0, -signal.SIGTERM)
    finally:
        sim.shutdown()
        await port.stopListening()

    assert "Traceback" not in second.log.read_text()
    # Every job generated once (the interrupted one a second time, its first call cut).
    calls = collections.Counter(chat_markers(sim))
    assert calls == {marker(index): (2 if index == LONG_JOB else 1) for index in range(ASYNC_JOBS)}
    assert sim.completed_generations == ASYNC_JOBS
    assert sim.cancelled_requests == 1
    # Every job's done event arrived, signed, with its own completion.
    events = done_events()
    assert set(events) == set(ids)
    for each in receiver.received[answered_from:]:
        assert verify(SECRET, each.body, each.headers["x-foreman-signature"])
        event = json.loads(each.body)
        assert each.path == f"/job/{ids[event['job_id']]}"
    for job_id, index in ids.items():
        done = events[job_id][0]
        assert done["metadata"] == {"index": index}
        assert done["attempt"] == (2 if index == LONG_JOB else 1)
        (artifact,) = done["artifacts"]
        if done["result"] is not None:
            assert marker(index) in done["result"]["message"]["content"]
        else:
            # The long reply is over the inline limit: by reference only.
            assert index == LONG_JOB and artifact["inline"] is False
    # The interrupted job's return to the queue was an event of its own.
    back = [
        json.loads(each.body)
        for each in receiver.received[answered_from:]
        if json.loads(each.body)["job_id"] == interrupted
        and json.loads(each.body)["previous_state"] == "working"
        and json.loads(each.body)["state"] == "queued"
    ]
    assert back and back[0]["attempt"] == 1
    # Events pending at the kill were delivered by the second run.
    early = [job_id for job_id, index in ids.items() if index < LONG_JOB]
    assert all(events[job_id] for job_id in early)
    states_seen = collections.Counter(
        json.loads(each.body)["state"] for each in receiver.received[answered_from:]
    )
    assert states_seen["queued"] >= ASYNC_JOBS


# -- kill -9 while jobs finish, the receiver down: no state without its event ------------

FINISHING_JOBS = 80
#: Runs killed one after the other, each once it has finished a job or more.
KILLS = 3


@pytest_twisted.ensureDeferred
async def test_kill_9_while_jobs_finish_with_the_receiver_down_loses_no_event(
    reactor: Any,
    tmp_path: Path,
    http: HTTPClient,
    daemons: list[Daemon],
) -> None:
    # Jobs of a few milliseconds each, back to back: states change all the time.
    sim = SimulatedOllama(reactor, tokens_per_second=400.0, reply_tokens=2)
    sim_port = reactor.listenTCP(0, sim.site(reactor), interface="127.0.0.1")
    sim_url = f"http://127.0.0.1:{sim_port.getHost().port}"
    receiver = WebhookReceiver(reactor)
    deadline = Deadline(reactor, DEADLINE_SECONDS)
    data_dir = tmp_path / "data"
    database = data_dir / DATABASE_NAME
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_text(SECRET + "\n")

    def start(run: int) -> Daemon:
        daemon = spawn(
            tmp_path,
            *("--upstream", "ollama", "--ollama-url", sim_url),
            *("--webhook-secret-file", str(secret_file)),
            data_dir=data_dir,
            log_name=f"foreman-finishing-{run}.log",
        )
        daemons.append(daemon)
        return daemon

    ids: dict[str, int] = {}
    #: After each kill: the jobs done then, and the calls the simulator had had.
    kills: list[tuple[set[str], collections.Counter[str]]] = [(set(), collections.Counter())]
    stored_at_kills: list[Stored] = []
    try:
        with nothing_listening() as hook_port:
            # -- runs killed while jobs finish; the receiver down (refusing) throughout --
            for run in range(1, KILLS + 1):
                daemon = start(run)
                await wait_until_up(daemon, http, reactor)
                for index in range(FINISHING_JOBS if run == 1 else 0):
                    body = {
                        "model": "llama3.2",
                        "messages": [{"role": "user", "content": marker(index)}],
                        "state_webhook_url": f"http://127.0.0.1:{hook_port}/job/{index}",
                    }
                    response = await http.post(daemon.url + "/jobs", json=body)
                    assert response.code == 202, await response.text()
                    ids[(await response.json())["job_id"]] = index
                done_before = len(kills[-1][0])
                while done_before == read_jobs(database).count(JobState.DONE) < FINISHING_JOBS:
                    await deadline.tick(daemon, f"a job done in run {run}")
                # That look froze the simulator (it runs on this reactor), and foreman
                # finished its transitions meanwhile, then waited for it. Let both run
                # on, and kill without looking: wherever foreman is in a job's life.
                await deadline.tick(daemon, "more jobs to run")
                daemon.process.send_signal(signal.SIGKILL)
                assert daemon.process.wait(timeout=10) == -signal.SIGKILL
                # Nothing was delivered, so every event ever stored is still in the
                # table: each job's events chain from creation to the state it is in.
                at_kill = read_stored(database)
                stored_at_kills.append(at_kill)
                assert_consistent(at_kill)
                assert set(at_kill.states) == set(ids)
                done = {i for i, state in at_kill.states.items() if state is JobState.DONE}
                # The first kill lands amid the queue; on a slow machine a later one
                # may find it finished, and is a kill all the same.
                assert run > 1 or len(done) < FINISHING_JOBS, "the queue ran dry"
                while sim.active_generations:
                    await deadline.tick(None, "the simulator to see foreman's connection close")
                kills.append((done, collections.Counter(chat_markers(sim))))
        receiver.listen(hook_port)

        # -- the last run: the receiver is up ----------------------------------------
        last = start(KILLS + 1)
        await wait_until_up(last, http, reactor)

        def received() -> dict[str, list[tuple[int, dict[str, Any]]]]:
            events: dict[str, list[tuple[int, dict[str, Any]]]] = collections.defaultdict(list)
            for each in receiver.received:
                event = json.loads(each.body)
                events[event["job_id"]].append((int(each.headers["x-foreman-delivery"]), event))
            return events

        def all_done_sent() -> bool:
            events = received()
            return all(any(e["state"] == "done" for _, e in events[i]) for i in ids)

        while read_jobs(database).count(JobState.DONE) < FINISHING_JOBS or not all_done_sent():
            now = read_jobs(database)
            assert now.count(JobState.FAILED, JobState.CANCELLED) == 0, last.log.read_text()
            await deadline.tick(last, "every job done and its done event delivered")
        while pending_deliveries(database):
            await deadline.tick(last, "the outbox to empty")
        last.process.send_signal(signal.SIGTERM)
        assert last.process.wait(timeout=20) in (0, -signal.SIGTERM)
    finally:
        sim.shutdown()
        await sim_port.stopListening()
        await receiver.close()

    logs = "".join(daemon.log.read_text() for daemon in daemons)
    assert "Traceback" not in logs
    # Done once: a job done at a kill never ran again.
    calls = collections.Counter(chat_markers(sim))
    for done, calls_then in kills:
        assert all(calls[marker(ids[i])] == calls_then[marker(ids[i])] for i in done)
    assert set(calls) == {marker(index) for index in ids.values()}
    for each in receiver.received:
        assert verify(SECRET, each.body, each.headers["x-foreman-signature"])
    events = received()
    for job_id, index in ids.items():
        # Every event stored before the kills arrived, then the last run's own:
        # the whole chain, each event at least once.
        distinct = [event for _, event in sorted(dict(events[job_id]).items())]
        stored = stored_at_kills[-1].events[job_id]
        assert distinct[: len(stored)] == stored
        path = [event["state"] for event in distinct]
        assert [event["previous_state"] for event in distinct] == [None, *path[:-1]]
        assert path[0] == "queued" and path[-1] == "done"
        dones = [event for event in distinct if event["state"] == "done"]
        assert len(dones) == 1, dones  # one done, delivered at least once
        assert marker(index) in dones[0]["result"]["message"]["content"]

"""Timers that survive a step of the wall clock (issue 16, ADR-0023).

In the field, with the wall clock stepped back an hour, a job in its retry
backoff sat queued while newer jobs ran past it, and inventory polling
stopped, until the clock caught up. Here the reactor is a ``Clock`` (the
daemon's is monotonic) and the wall clock a separate one that runs with it
until the test steps it, back an hour or forward a day: the timers keep
their pace on the reactor, and every stamp people read follows the wall.

The webhook outbox's own tests of a step are in ``test_webhooks.py``, with
its receiver; the reactor's clock in ``test_reactor_clock.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.task import Clock

from foreman.jobs.api import JobsAPI
from foreman.jobs.events import JobEvents
from foreman.jobs.outbox import StoredEvent
from foreman.ops.health import health_report
from foreman.queue.job import Job, JobState
from foreman.queue.lifecycle import SWEEP_INTERVAL, ttl_sweeper
from foreman.queue.ulid import new_ulid
from foreman.wire.timestamps import timestamp as shown_as
from tests.worker_rig import WorkerRig, fired, make_worker_rig

#: The wall clock when each test starts: 2027-01-15T08:00:00Z.
START = 1_800_000_000.0
HOUR = 3600.0
DAY = 24 * HOUR
STEPS = pytest.mark.parametrize("step", [-HOUR, DAY], ids=["back-an-hour", "forward-a-day"])
HOOK = "http://receiver.test/hook"


def stamp(seconds: float) -> str:
    """A moment as ``/jobs`` and the webhooks show it."""
    shown = shown_as(seconds)
    assert shown is not None
    return shown


class SteppedWall:
    """A wall clock that runs with the reactor's ``Clock`` until it is stepped."""

    def __init__(self, start: float) -> None:
        self.clock: Clock | None = None
        self.offset = start

    def __call__(self) -> float:
        return self.offset + (0.0 if self.clock is None else self.clock.seconds())

    def step(self, seconds: float) -> None:
        self.offset += seconds


class Scheduled:
    """Stands in for the webhook outbox: the events the worker stored."""

    def __init__(self) -> None:
        self.events: list[StoredEvent] = []

    def schedule(self, event: StoredEvent) -> None:
        self.events.append(event)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(event.body) for event in self.events]


def rig_on(tmp_path: Path, wall: SteppedWall, **options: Any) -> tuple[WorkerRig, Scheduled]:
    scheduled = Scheduled()

    def prepare(rig: WorkerRig) -> None:
        wall.clock = rig.clock
        rig.worker.record_transitions(JobEvents(scheduled, inline_limit=4096))

    return make_worker_rig(tmp_path, wall=wall, prepare=prepare, **options), scheduled


def submit(rig: WorkerRig, marker: str) -> Job:
    """An async job with a webhook, stamped as ``/jobs`` stamps it."""
    now = rig.worker.clocks.wall()
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": marker}]}
    job = Job(
        id=new_ulid(now),
        model="llama3.2",
        endpoint="chat",
        body=json.dumps(body).encode(),
        sync=False,
        created_at=now,
        updated_at=now,
        webhook_url=HOOK,
    )
    stored: Job = fired(rig.worker.submit(job))
    return stored


def job(rig: WorkerRig, job_id: str) -> Job:
    found: Job = fired(rig.store.get(job_id))
    return found


class Moments:
    """Each transition of one job: its state, and when, on the reactor's clock."""

    def __init__(self, rig: WorkerRig, job_id: str) -> None:
        self.seen: list[tuple[str, float]] = []
        self._rig = rig
        self._job_id = job_id
        rig.worker.on_transition(self)

    def __call__(self, job: Job, previous: JobState | None) -> None:
        if job.id == self._job_id:
            self.seen.append((job.state.value, self._rig.clock.seconds()))

    def when(self, state: str, nth: int = 1) -> float:
        return [at for seen, at in self.seen if seen == state][nth - 1]


# -- the queue ---------------------------------------------------------------------------


@STEPS
def test_a_job_in_backoff_is_tried_again_after_its_delay(tmp_path: Path, step: float) -> None:
    wall = SteppedWall(START)
    rig, scheduled = rig_on(tmp_path, wall, max_attempts=3)
    rig.agent.refuse_generations = True  # the target answers; the job's calls fail
    patient = submit(rig, "patience")
    moments = Moments(rig, patient.id)
    rig.worker.startService()
    rig.flush()
    failed = job(rig, patient.id)
    assert (failed.state, failed.attempt) == (JobState.QUEUED, 1)
    failed_at = rig.clock.seconds()
    # Stored as a wall-clock stamp: a second after the failure.
    assert failed.not_before == pytest.approx(START + failed_at + 1.0)

    wall.step(step)
    rig.agent.refuse_generations = False
    rig.clock.advance(0.95)
    rig.flush()
    assert job(rig, patient.id).state is JobState.QUEUED  # still backing off
    rig.clock.advance(0.1)
    rig.flush()

    done = job(rig, patient.id)
    assert (done.state, done.attempt) == (JobState.DONE, 2)
    assert done.finished_at is not None
    assert moments.when("loading", 2) == pytest.approx(failed_at + 1.0, abs=0.1)
    # Stamps follow the wall clock, step and all; the job's own creation does not move.
    assert done.created_at == START
    assert done.finished_at == pytest.approx(START + step + rig.clock.seconds())
    events = scheduled.bodies()
    assert [(e["previous_state"], e["state"]) for e in events] == [
        (None, "queued"),
        ("queued", "loading"),
        ("loading", "queued"),
        ("queued", "loading"),
        ("loading", "working"),
        ("working", "done"),
    ]
    before, after = events[:3], events[3:]
    assert {e["timestamp"] for e in before} == {stamp(START)}
    assert {e["timestamp"] for e in after} == {stamp(done.finished_at)}
    assert after[-1]["timestamp"].startswith(stamp(START + step)[:10])
    # Each event row is due when it was stored, by the wall clock.
    assert [event.next_at for event in scheduled.events[3:]] == [done.finished_at] * 3
    rig.stop()


@STEPS
def test_a_job_in_backoff_runs_before_newer_jobs(tmp_path: Path, step: float) -> None:
    wall = SteppedWall(START)
    # Each reply takes 3 s: longer than the backoff.
    rig, _ = rig_on(tmp_path, wall, max_attempts=3, tokens_per_second=4.0, reply_tokens=12)
    rig.agent.refuse_generations = True
    patient = submit(rig, "patience")
    rig.worker.startService()
    rig.flush()
    assert job(rig, patient.id).attempt == 1

    wall.step(step)
    rig.agent.refuse_generations = False
    first = submit(rig, "newer, ready at once")
    rig.clock.advance(0.5)
    rig.flush()
    second = submit(rig, "newer still")
    rig.run_until(rig.all_finished)

    # The first newer job runs during the backoff; once it is over, the
    # job that arrived first goes first, whatever the wall clock did.
    assert rig.generation_markers() == ["newer, ready at once", "patience", "newer still"]
    assert job(rig, first.id).created_at == pytest.approx(START + step)
    assert job(rig, second.id).created_at == pytest.approx(START + step + 0.5)
    rig.stop()


@STEPS
def test_jobs_created_at_follows_the_wall_clock(tmp_path: Path, step: float) -> None:
    wall = SteppedWall(START)
    rig, _ = rig_on(tmp_path, wall)
    api = JobsAPI(rig.inventory, rig.clock, worker=rig.worker, store=rig.store, inline_limit=0)
    stub = StubTreq(api.app.resource())
    rig.clock.advance(10.0)
    wall.step(step)

    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
    answered = stub.post("http://foreman.test/", json=body)  # type: ignore[attr-defined]
    stub.flush()
    answer = fired(answered)
    assert answer.code == 202
    job_id = fired(answer.json())["job_id"]
    shown = stub.get(f"http://foreman.test/{job_id}")  # type: ignore[attr-defined]
    stub.flush()
    view = fired(fired(shown).json())

    assert view["created_at"] == stamp(START + 10.0 + step)
    rig.stop()


def test_the_ttl_sweep_keeps_its_pace_and_ages_jobs_by_the_wall_clock(tmp_path: Path) -> None:
    wall = SteppedWall(START)
    rig, _ = rig_on(tmp_path, wall)
    rig.worker.startService()
    submit(rig, "old")
    rig.run_until(rig.all_finished)
    sweeper = ttl_sweeper(rig.store, rig.clock, ttl=DAY, wall=rig.worker.clocks.wall)
    sweeper.startService()

    wall.step(-HOUR)
    rig.clock.advance(SWEEP_INTERVAL)
    assert len(rig.jobs()) == 1  # an hour younger by the wall clock, not swept
    wall.step(HOUR + DAY)
    rig.clock.advance(SWEEP_INTERVAL)
    # The next sweep, on the reactor's clock, finds it a day old.
    assert rig.jobs() == []
    sweeper.stopService()
    rig.stop()


# -- the inventory ---------------------------------------------------------------------------


@STEPS
def test_inventory_polling_goes_on_and_last_poll_at_follows_the_wall(
    tmp_path: Path, step: float
) -> None:
    wall = SteppedWall(START)
    rig, _ = rig_on(tmp_path, wall)
    poller = rig.inventory.poller(5.0)
    poller.startService()
    rig.flush()

    def polls() -> int:
        return sum(1 for request in rig.sim.requests if request.path == "/api/tags")

    before = polls()
    wall.step(step)
    for n in range(1, 4):
        rig.clock.advance(5.0)
        rig.flush()
        assert polls() == before + n
        assert rig.inventory.last_poll_at == wall()
    shown = health_report(rig.inventory, rig.inventory.target, simulated=True)
    when = START + step + rig.clock.seconds()
    assert shown["upstream"]["last_poll_at"].startswith(stamp(when)[:19])
    poller.stopService()
    rig.stop()


# -- the simulated Ollama ------------------------------------------------------------------


def test_the_simulated_ollama_stamps_with_its_wall_clock() -> None:
    # As under ``twistd foreman --upstream sim``: timers on a clock that is
    # no calendar, stamps on the wall clock.
    from foreman.testing import SimulatedOllama
    from foreman.wire.gojson import rfc3339

    clock = Clock()
    clock.advance(100.0)
    sim = SimulatedOllama(clock, check_host=False, default_keep_alive=300.0, wall=lambda: START)
    stub = StubTreq(sim.resource())

    def call(method: str, path: str, body: Any = None) -> Any:
        answered = stub.request(method, "http://ollama.test" + path, json=body)  # type: ignore[attr-defined]
        stub.flush()
        return fired(fired(answered).json())

    chat = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
    assert call("POST", "/api/chat", {**chat, "stream": False})["created_at"] == rfc3339(START)
    assert call("POST", "/v1/chat/completions", chat)["created"] == int(START)
    (loaded,) = call("GET", "/api/ps")["models"]
    assert loaded["expires_at"] == rfc3339(START + 300.0)
    sim.shutdown()

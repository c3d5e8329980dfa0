"""The status page's timeline in simulated time: runs, loads and swaps, what waits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from foreman.ops.timeline import REQUEUED, UNKNOWN, Timeline
from foreman.queue.job import Job, JobState
from foreman.queue.ulid import new_ulid
from foreman.wire.priority import Priority
from tests.worker_rig import WorkerRig, make_worker_rig

SLOW: dict[str, Any] = {"load_seconds": 5.0, "tokens_per_second": 20.0, "reply_tokens": 10}
START = 1_800_000_000.0  # the timeline's times are timestamps: a plausible one


def submit(rig: WorkerRig, model: str, priority: Priority = Priority.INTERACTIVE) -> Job:
    now = rig.clock.seconds()
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    job = Job(
        id=new_ulid(now),
        model=model,
        endpoint="chat",
        body=json.dumps(body).encode(),
        sync=False,
        created_at=now,
        updated_at=now,
        priority=priority,
    )
    submitted: Deferred[Job] = rig.worker.submit(job)
    rig.flush()
    assert submitted.called
    return job


def working(rig: WorkerRig) -> bool:
    return rig.worker.current is not None and rig.worker.current.state is JobState.WORKING


@pytest.fixture
def rig(tmp_path: Path) -> Any:
    rig = make_worker_rig(tmp_path, start_at=START, **SLOW)
    yield rig
    rig.stop()


@pytest.fixture
def busy_rig(tmp_path: Path) -> Any:
    """Each job generates for 100 s: long enough to look while it runs."""
    rig = make_worker_rig(
        tmp_path, start_at=START, load_seconds=5.0, tokens_per_second=0.1, reply_tokens=10
    )
    yield rig
    rig.stop()


def test_each_run_says_when_it_waited_loaded_worked_and_ended(rig: WorkerRig) -> None:
    timeline = Timeline(rig.worker, rig.clock)
    first = submit(rig, "llama3.2")
    rig.clock.advance(1.0)
    other = submit(rig, "gemma3:12b")
    second = submit(rig, "llama3.2")
    rig.worker.startService()
    rig.run_until(rig.all_finished)

    runs = timeline.runs()
    # Drained by model: both llama3.2 jobs, then the swap to gemma3.
    assert [run.job_id for run in runs] == [first.id, second.id, other.id]
    assert [run.model for run in runs] == ["llama3.2:latest", "llama3.2:latest", "gemma3:12b"]
    assert [run.load for run in runs] == ["load", None, "swap"]
    assert [run.outcome for run in runs] == ["done", "done", "done"]
    for run in runs:
        assert run.working_at is not None and run.ended_at is not None
        assert run.queued_at <= run.started_at <= run.working_at <= run.ended_at
    # A load costs the simulator's five seconds; a drained job none.
    loading = [run.working_at - run.started_at for run in runs if run.working_at]
    assert loading[0] >= 5.0 and loading[2] >= 5.0
    assert loading[1] < 1.0
    # Each run begins where the one before it ended (one worker).
    assert runs[1].started_at >= runs[0].ended_at  # type: ignore[operator]


def test_the_report_shows_runs_and_the_waiting_in_the_workers_order(
    busy_rig: WorkerRig,
) -> None:
    rig = busy_rig
    timeline = Timeline(rig.worker, rig.clock)
    # The worker is busy with one job; three more wait.
    running = submit(rig, "llama3.2")
    rig.worker.startService()
    rig.run_until(lambda: working(rig))
    batch = submit(rig, "qwen3:8b", Priority.BATCH)
    rig.clock.advance(30.0)
    late = submit(rig, "gemma3:12b")
    same = submit(rig, "llama3.2")
    report = timeline.report()

    assert report["now"].endswith("Z")
    assert report["window_seconds"] == 600.0
    assert (report["max_wait_seconds"], report["batch_max_wait_seconds"]) == (60.0, 1800.0)
    (run,) = report["runs"]
    assert set(run) == {
        "job_id", "model", "priority", "endpoint", "sync", "attempt", "queued_at",
        "started_at", "working_at", "ended_at", "waited_seconds", "overdue", "outcome",
        "error", "load",
    }  # fmt: skip
    assert (run["job_id"], run["model"], run["priority"]) == (
        running.id,
        "llama3.2:latest",
        "interactive",
    )
    assert (run["load"], run["outcome"], run["ended_at"]) == ("load", None, None)
    assert run["working_at"] is not None

    waiting = report["waiting"]
    assert [entry["job_id"] for entry in waiting] == [same.id, late.id, batch.id]
    assert [entry["position"] for entry in waiting] == [2, 3, 4]
    batch_entry = waiting[2]
    assert batch_entry["priority"] == "batch"
    assert batch_entry["model"] == "qwen3:8b"
    assert batch_entry["bound_seconds"] == 1800.0
    assert batch_entry["waited_seconds"] == pytest.approx(30.0)
    assert batch_entry["overdue"] is False
    assert waiting[0]["priority"] == "interactive"
    assert waiting[0]["bound_seconds"] == 60.0
    assert waiting[0]["overdue"] is False
    assert all(entry["ready"] for entry in waiting)
    assert report["more_waiting"] == 0

    rig.clock.advance(60.0)
    overdue = {entry["job_id"]: entry["overdue"] for entry in timeline.report()["waiting"]}
    assert overdue == {same.id: True, late.id: True, batch.id: False}


def test_a_run_that_waited_its_bound_says_so(rig: WorkerRig) -> None:
    timeline = Timeline(rig.worker, rig.clock)
    job = submit(rig, "llama3.2")
    rig.clock.advance(90.0)
    rig.worker.startService()
    rig.run_until(rig.all_finished)
    (run,) = timeline.report()["runs"]
    assert run["job_id"] == job.id
    assert run["overdue"] is True
    assert run["waited_seconds"] == pytest.approx(90.0)


def test_an_unreachable_target_requeues_and_a_cancel_ends_the_run(rig: WorkerRig) -> None:
    timeline = Timeline(rig.worker, rig.clock)
    job = submit(rig, "llama3.2")
    rig.agent.refuse_generations = True
    rig.worker.startService()
    rig.run_until(lambda: len(timeline.runs()) == 1 and timeline.runs()[0].outcome is not None)
    (tried,) = timeline.runs()
    assert (tried.outcome, tried.load, tried.working_at) == (REQUEUED, None, None)
    assert tried.error is not None and "cannot reach Ollama" in tried.error

    rig.agent.refuse_generations = False
    rig.run_until(lambda: len(timeline.runs()) == 2 and timeline.runs()[1].working_at is not None)
    cancelled = rig.worker.cancel(job.id)
    rig.run_until(lambda: cancelled.called)
    again = timeline.runs()[1]
    assert (again.job_id, again.attempt, again.outcome) == (job.id, 2, "cancelled")
    assert again.load == "load"


def test_history_is_bounded_by_count_and_by_time(rig: WorkerRig) -> None:
    timeline = Timeline(rig.worker, rig.clock, max_runs=3, window=120.0)
    jobs = [submit(rig, "llama3.2") for _ in range(5)]
    rig.worker.startService()
    rig.run_until(rig.all_finished)
    assert [run.job_id for run in timeline.runs()] == [job.id for job in jobs[2:]]
    rig.clock.advance(60.0)
    assert len(timeline.runs()) == 3
    rig.clock.advance(120.0)
    assert timeline.runs() == []


def test_a_running_job_stays_however_long_it_runs(busy_rig: WorkerRig) -> None:
    rig = busy_rig
    timeline = Timeline(rig.worker, rig.clock, window=10.0)
    submit(rig, "llama3.2")
    rig.worker.startService()
    rig.run_until(lambda: working(rig))
    rig.clock.advance(60.0)
    assert rig.worker.current is not None
    (run,) = timeline.runs()
    assert run.outcome is None


def test_a_run_never_closed_ends_when_the_next_starts(rig: WorkerRig) -> None:
    timeline = Timeline(rig.worker, rig.clock)
    now = rig.clock.seconds()
    first = Job("01A", "llama3.2", "chat", b"{}", sync=True, created_at=now, updated_at=now)
    second = Job("01B", "llama3.2", "chat", b"{}", sync=True, created_at=now, updated_at=now)
    timeline.transition(first.moved(JobState.LOADING, now + 1, attempt=1), JobState.QUEUED)
    timeline.transition(second.moved(JobState.LOADING, now + 3, attempt=1), JobState.QUEUED)
    earlier, later = timeline.runs()
    assert (earlier.outcome, earlier.ended_at) == (UNKNOWN, now + 3)
    assert later.outcome is None
    # Transitions of jobs it never saw start are not runs.
    timeline.transition(first.moved(JobState.DONE, now + 4), JobState.WORKING)
    timeline.transition(Job("01C", "x", "chat", b"{}", sync=True), None)
    assert [run.job_id for run in timeline.runs()] == ["01A", "01B"]
    assert timeline.runs()[0].outcome == UNKNOWN

"""A store that refuses writes (a full disk, a file locked by another program)
pauses the worker; it never strands, loses or repeats a job (ADR-0023).

In simulated time, over a real SQLite file whose writes the test switches
off and on. The property at the end drives submits, cancels, callers hanging
up and outages of the store in any order, and checks after every step that
the store and the worker agree: a job the store has unfinished is queued in
memory, running, or a state the worker is still to write, never nowhere;
once the store is back, every job ends and each one ran at most once.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail

from foreman.ops.health import health_report
from foreman.queue.job import Job, JobState
from foreman.queue.journal import StoreUnavailable
from foreman.queue.leases import Recorder
from foreman.queue.store import Also, JobStore
from foreman.relay.upstream import Target
from tests.store_engines import on_each_engine
from tests.worker_rig import WorkerRig, fired, make_worker_rig, sync_call

FULL = "database or disk is full"


class RefusingStore(JobStore):
    """A store whose writes fail, as on a full disk, while ``refusing``; reads work."""

    refusing = False
    refused = 0

    def _refuse(self) -> Deferred[Any] | None:
        if not self.refusing:
            return None
        self.refused += 1
        return fail(sqlite3.OperationalError(FULL))

    def insert(self, job: Job, also: Also | None = None) -> Deferred[Job]:
        return self._refuse() or super().insert(job, also)

    def update(
        self, job: Job, also: Also | None = None, *, attempt: int | None = None
    ) -> Deferred[Job]:
        return self._refuse() or super().update(job, also, attempt=attempt)

    def insert_unless_known(self, job: Job, also: Also | None = None) -> Deferred[Job]:
        return self._refuse() or super().insert_unless_known(job, also)

    def check_writable(self) -> Deferred[None]:
        return self._refuse() or super().check_writable()

    def claim(
        self,
        candidates: Sequence[str],
        *,
        lease: float,
        now: float,
        recorder: Recorder | None = None,
    ) -> Deferred[Job | None]:
        return self._refuse() or super().claim(candidates, lease=lease, now=now, recorder=recorder)

    def cancel(
        self, job_id: str, *, now: float, also: Recorder | None = None
    ) -> Deferred[Job | None]:
        return self._refuse() or super().cancel(job_id, now=now, also=also)


def make_rig(tmp_path: Path, **options: Any) -> tuple[WorkerRig, RefusingStore]:
    rig = make_worker_rig(tmp_path, store_class=RefusingStore, **options)
    return rig, cast(RefusingStore, rig.store)


def stored(rig: WorkerRig) -> dict[str, Job]:
    return {job.id: job for job in rig.jobs()}


def assert_nothing_stranded(rig: WorkerRig) -> None:
    """Every job the store has unfinished is somewhere in the worker."""
    worker = rig.worker
    for job in rig.jobs():
        if job.state.terminal:
            continue
        running = worker.current is not None and worker.current.id == job.id
        held = worker.journal.holds(job.id) is not None
        assert job.id in worker.scheduler or running or held, f"{job.id} ({job.state}) is nowhere"


@on_each_engine
def test_a_refused_start_leaves_the_job_queued_and_the_worker_paused(tmp_path: Path) -> None:
    rig, store = make_rig(tmp_path)
    job = fired(rig.submit("llama3.2", "patience"))
    store.refusing = True
    rig.worker.startService()
    rig.clock.pump([0.5] * 120)  # a minute of a full disk
    rig.flush()
    assert stored(rig)[job.id].state is JobState.QUEUED
    assert job.id in rig.worker.scheduler
    assert rig.generation_markers() == []  # nothing run that could not be recorded
    assert rig.worker.paused is not None and FULL in rig.worker.paused
    # Tried again with backoff, at most every 5 s.
    assert store.refused <= 1 + 60 / 5 + 4
    report = health_report(
        rig.inventory, Target("http://ollama.test"), simulated=True, worker=rig.worker
    )
    assert report["status"] == "degraded"
    assert report["store"] == {"writable": False, "error": FULL, "unrecorded_states": 0}
    assert report["queue"]["paused"] == f"the store cannot be written: {FULL}"

    store.refusing = False
    rig.run_until(rig.all_finished, limit=10)
    assert stored(rig)[job.id].state is JobState.DONE
    assert rig.generation_markers() == ["patience"]
    assert rig.worker.paused is None
    rig.stop()


@on_each_engine
def test_a_new_job_the_store_refuses_is_503_and_healthz_says_why_until_it_takes_writes(
    tmp_path: Path,
) -> None:
    # The worker has nothing to write, so only the new jobs' rows meet the
    # full disk: /healthz must not say ok while every submit is refused.
    rig, store = make_rig(tmp_path)
    rig.worker.startService()
    store.refusing = True
    submitting = rig.submit("llama3.2", "refused")
    failure: Any = submitting.result
    assert failure.check(sqlite3.OperationalError)
    submitting.addErrback(lambda _: None)
    _, request = sync_call(rig, "refused too")
    assert request.responseCode == 503
    assert rig.worker.scheduler.depth == 0
    report = health_report(
        rig.inventory, Target("http://ollama.test"), simulated=True, worker=rig.worker
    )
    assert report["status"] == "degraded"
    assert report["store"] == {"writable": False, "error": FULL, "unrecorded_states": 0}

    store.refusing = False
    rig.clock.pump([0.5] * 20)  # the worker tries the store again, with backoff
    rig.flush()
    assert rig.worker.paused is None
    report = health_report(
        rig.inventory, Target("http://ollama.test"), simulated=True, worker=rig.worker
    )
    assert report["status"] == "ok"
    assert rig.jobs() == [] and rig.generation_markers() == []
    rig.stop()


@on_each_engine
def test_a_result_the_store_refuses_is_kept_and_written_later(tmp_path: Path) -> None:
    rig, store = make_rig(tmp_path, load_seconds=1.0, tokens_per_second=10.0, reply_tokens=10)
    first = fired(rig.submit("llama3.2", "first"))
    second = fired(rig.submit("llama3.2", "second"))
    rig.worker.startService()
    rig.run_until(lambda: stored(rig)[first.id].state is JobState.WORKING)
    store.refusing = True  # the disk fills up while the first job generates
    rig.clock.pump([0.1] * 300)
    rig.flush()
    # The first job ran; its result waits in memory. The second never started.
    assert rig.generation_markers() == ["first"]
    assert stored(rig)[first.id].state is JobState.WORKING
    kept = rig.worker.journal.holds(first.id)
    assert kept is not None and kept.state is JobState.DONE and kept.result is not None
    assert stored(rig)[second.id].state is JobState.QUEUED
    assert_nothing_stranded(rig)
    # Cancelling it now says what is true: it is done, not cancelled.
    assert fired(rig.worker.cancel(first.id)).state is JobState.DONE

    store.refusing = False
    rig.run_until(rig.all_finished, limit=10)
    assert stored(rig)[first.id].state is JobState.DONE
    assert stored(rig)[first.id].result == kept.result
    assert rig.generation_markers() == ["first", "second"]
    rig.stop()


@on_each_engine
def test_a_cancel_the_store_refuses_leaves_the_job_queued_and_says_so(tmp_path: Path) -> None:
    rig, store = make_rig(tmp_path)
    job = fired(rig.submit("llama3.2", "keep me"))
    store.refusing = True
    cancelling = rig.worker.cancel(job.id)
    failure: Any = cancelling.result
    assert failure.check(StoreUnavailable)
    cancelling.addErrback(lambda _: None)
    assert job.id in rig.worker.scheduler
    assert stored(rig)[job.id].state is JobState.QUEUED
    store.refusing = False
    assert fired(rig.worker.cancel(job.id)).state is JobState.CANCELLED
    rig.stop()


@on_each_engine
def test_a_caller_leaving_while_the_store_refuses_is_recorded_later(tmp_path: Path) -> None:
    rig, store = make_rig(tmp_path)
    waiting, _ = sync_call(rig, "bye")
    (job,) = rig.worker.scheduler.jobs()
    store.refusing = True
    waiting.addErrback(lambda _: None)
    waiting.cancel()  # the caller hangs up
    rig.flush()
    assert stored(rig)[job.id].state is JobState.QUEUED
    assert rig.worker.journal.holds(job.id) is not None
    assert_nothing_stranded(rig)
    store.refusing = False
    rig.worker.startService()
    rig.run_until(lambda: stored(rig)[job.id].state is JobState.CANCELLED, limit=10)
    assert rig.generation_markers() == []
    rig.stop()


def test_a_zero_byte_store_is_a_fresh_store(tmp_path: Path) -> None:
    database = tmp_path / "jobs.sqlite3"
    database.write_bytes(b"")
    rig = make_worker_rig(tmp_path, database=database)
    fired(rig.submit("llama3.2", "fresh"))
    rig.worker.startService()
    rig.run_until(rig.all_finished)
    assert [job.state for job in rig.jobs()] == [JobState.DONE]
    rig.stop()


# -- the property --------------------------------------------------------------------

MODELS = ("llama3.2", "gemma3:12b")

step = st.one_of(
    st.tuples(st.just("submit"), st.sampled_from(MODELS)),
    st.tuples(st.just("call"), st.just("")),
    st.tuples(st.just("cancel"), st.integers(0, 20)),
    st.tuples(st.just("leave"), st.integers(0, 20)),
    st.tuples(st.just("refuse"), st.booleans()),
    st.tuples(st.just("wait"), st.sampled_from([0.05, 0.3, 1.0, 4.0])),
    st.tuples(st.just("start"), st.just("")),
)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(step, min_size=1, max_size=30))
def test_store_and_worker_never_disagree(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, Any]]
) -> None:
    tmp_path = tmp_path_factory.mktemp("faults")
    rig, store = make_rig(tmp_path, load_seconds=0.5, tokens_per_second=20.0, reply_tokens=8)
    async_ids: list[str] = []
    callers: list[Deferred[None]] = []
    count = 0
    for action, argument in steps:
        if action == "submit":
            count += 1
            submitted = rig.submit(argument, f"job-{count}")
            submitted.addErrback(lambda f: f.trap(sqlite3.OperationalError))
            if isinstance(submitted.result, Job):
                async_ids.append(submitted.result.id)
        elif action == "call":
            count += 1
            waiting, _ = sync_call(rig, f"job-{count}")
            callers.append(waiting)
        elif action == "cancel" and async_ids:
            cancelled = rig.worker.cancel(async_ids[argument % len(async_ids)])
            cancelled.addErrback(lambda f: f.trap(StoreUnavailable))
        elif action == "leave" and callers:
            leaving = callers[argument % len(callers)]
            if not leaving.called:
                leaving.cancel()
        elif action == "refuse":
            store.refusing = argument
        elif action == "wait":
            rig.clock.advance(argument)
        elif action == "start" and not rig.worker.running:
            rig.worker.startService()
        rig.flush()
        assert_nothing_stranded(rig)
    store.refusing = False
    if not rig.worker.running:
        rig.worker.startService()
    rig.run_until(rig.all_finished, limit=600)
    assert rig.worker.journal.kept == 0
    ran = Counter(rig.generation_markers())
    assert all(times == 1 for times in ran.values()), ran  # nothing ran twice
    for job in rig.jobs():
        marker = json.loads(job.body)["messages"][-1]["content"]
        if job.state is JobState.DONE:
            assert ran[marker] == 1
    for waiting in callers:
        assert waiting.called
        waiting.addErrback(lambda _: None)
    rig.stop()


@on_each_engine
def test_metrics_show_the_pause_and_the_refused_writes(tmp_path: Path) -> None:
    from foreman.ops.metrics import ForemanMetrics

    rig, store = make_rig(tmp_path)
    fired(rig.submit("llama3.2", "count me"))
    store.refusing = True
    rig.worker.startService()
    rig.flush()
    metrics = ForemanMetrics()
    metrics.watch(inventory=rig.inventory, worker=rig.worker)
    text = metrics.render().decode()
    assert 'foreman_worker_paused{reason="store_unwritable"} 1.0' in text
    assert 'foreman_worker_paused{reason="ollama_unreachable"} 0.0' in text
    assert "foreman_store_write_failures_total 1.0" in text
    store.refusing = False
    rig.run_until(rig.all_finished)
    assert 'foreman_worker_paused{reason="store_unwritable"} 0.0' in metrics.render().decode()
    rig.stop()


@on_each_engine
def test_a_write_refused_after_the_claim_leaves_the_job_to_run_again(tmp_path: Path) -> None:
    # Found by the property above: the claim stored the job ``loading``, the
    # store then refused its ``working``; the job went back to the worker's
    # queue while the store still said ``loading``, and the next claim must
    # take it again (not leave the caller a 503 and the job loading for ever).
    rig, store = make_rig(tmp_path, load_seconds=0.5, tokens_per_second=20.0, reply_tokens=8)
    waiting, request = sync_call(rig, "refused-then-run")
    rig.worker.startService()
    rig.flush()
    store.refusing = True
    rig.clock.advance(1.0)
    rig.flush()
    store.refusing = False
    rig.run_until(rig.all_finished, limit=60)
    assert waiting.called and request.responseCode in (None, 200)
    assert rig.generation_markers() == ["refused-then-run"]
    (job,) = rig.jobs()
    assert job.state is JobState.DONE and job.attempt == 1

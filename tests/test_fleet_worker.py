"""Two boxes' workers on one PostgreSQL, in simulated time (ADR-0026): a job
claimed by one is let go by the other; a run cancelled from another box, or
taken back by the fleet, stops and writes nothing over the fleet's record."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import ensureDeferred

from foreman.queue.engines import Engine, engine_for
from foreman.queue.fleet.identity import BoxIdentity
from foreman.queue.fleet.member import FleetMember
from foreman.queue.job import JobState
from tests.worker_rig import WorkerRig, fired, make_worker_rig

pytestmark = pytest.mark.postgres

SLOW: dict[str, Any] = {"load_seconds": 1.0, "tokens_per_second": 10.0, "reply_tokens": 30}


@pytest.fixture
def database(postgres_url: str, tmp_path: Path) -> Iterator[Engine]:
    yield engine_for(postgres_url, tmp_path / "unused.sqlite3")


def box(tmp_path: Path, database: Engine, name: str) -> tuple[WorkerRig, FleetMember]:
    rig = make_worker_rig(tmp_path / name, database=database, box=name.upper(), **SLOW)
    member = FleetMember(
        rig.store, rig.worker, BoxIdentity(name.upper(), name, None), rig.clock, lease=15.0
    )
    rig.worker.startService()
    member.startService()
    rig.flush()
    return rig, member


def stop(*rigs: tuple[WorkerRig, FleetMember]) -> None:
    for rig, member in rigs:
        member.stopService()
        rig.worker.stopService()
        rig.clock.advance(5)
        rig.flush()
        if rig.store._connection is not None:
            rig.store._connection.close()
            rig.store._connection = None


def test_a_job_runs_on_one_box_only_and_the_other_lets_it_go(
    tmp_path: Path, database: Engine
) -> None:
    a, b = box(tmp_path, database, "a"), box(tmp_path, database, "b")
    try:
        first = fired(a[0].submit("llama3.2", "first"))
        a[0].run_until(lambda: a[0].worker.current is not None)
        # a is busy: the next job, for another model, is b's to take.
        second = fired(a[0].submit("qwen3:8b", "second"))
        assert second.id in a[0].worker.scheduler
        fired(ensureDeferred(b[1].share.refresh()))
        b[0].flush()
        running = b[0].worker.current
        assert running is not None and running.id == second.id  # claimed at once
        b[0].run_until(lambda: fired(b[0].store.get(second.id)).state is JobState.DONE)
        # a, done with the first, finds the second taken and lets it go.
        a[0].run_until(lambda: fired(a[0].store.get(first.id)).state is JobState.DONE)
        a[0].run_until(lambda: second.id not in a[0].worker.scheduler, limit=5)
        assert a[0].worker.current is None
        assert (a[0].sim.completed_generations, b[0].sim.completed_generations) == (1, 1)
        boxes = {fired(a[0].store.get(job.id)).box for job in (first, second)}
        assert boxes == {"A", "B"}
    finally:
        stop(a, b)


def test_a_run_cancelled_from_another_box_stops_and_writes_nothing_over_it(
    tmp_path: Path, database: Engine
) -> None:
    a, b = box(tmp_path, database, "a"), box(tmp_path, database, "b")
    try:
        submitted = fired(a[0].submit("llama3.2", "cancel-me"))
        a[0].run_until(
            lambda: fired(a[0].store.get(submitted.id)).state is JobState.WORKING, limit=10
        )
        cancelled = fired(b[0].worker.cancel(submitted.id))
        assert cancelled is not None and cancelled.state is JobState.CANCELLED
        # a hears at its next look (a notification, or its poll) and stops the run.
        a[0].run_until(lambda: a[0].worker.current is None, limit=5)
        a[0].run_until(lambda: not a[0].sim.active_generations, limit=5)
        stored = fired(a[0].store.get(submitted.id))
        assert stored.state is JobState.CANCELLED and stored.result is None
        assert a[0].sim.completed_generations == 0
    finally:
        stop(a, b)

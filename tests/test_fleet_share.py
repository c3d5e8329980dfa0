"""Which of the fleet's queued jobs a box takes (foreman/queue/fleet/share.py):
the fleet's drain by model, letting go of what other boxes took, stopping a
run the fleet took back. With stand-ins for the store and the worker."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import cast

import attrs
from twisted.internet.defer import Deferred, ensureDeferred, succeed

from foreman.queue.boxes import BoxRecord
from foreman.queue.fleet.share import Share
from foreman.queue.job import Job, JobState
from foreman.queue.store import JobStore
from foreman.queue.worker import Worker
from tests.worker_rig import fired

ME, OTHER = "BOX-A", "BOX-B"


def job(job_id: str, model: str, state: JobState = JobState.QUEUED, box: str | None = None) -> Job:
    return Job(
        id=job_id, model=model, endpoint="chat", body=b"{}", sync=False, state=state, box=box
    )


@attrs.define
class FakeStore:
    rows: dict[str, Job] = attrs.field(factory=dict)

    def fleet_queue(
        self, models: Collection[str] | None = None, *, bodies: bool = True
    ) -> Deferred[list[Job]]:
        # As the store answers: without bodies when asked (adopted jobs get
        # theirs from their claim).
        waiting = [j for j in self.rows.values() if j.state is JobState.QUEUED and j.box is None]
        return succeed(waiting if bodies else [attrs.evolve(j, body=b"") for j in waiting])

    def running(self) -> Deferred[list[tuple[str | None, str]]]:
        return succeed([(j.box, j.model) for j in self.rows.values() if j.state.running])

    def states(self, ids: Collection[str]) -> Deferred[dict[str, tuple[JobState, str | None]]]:
        return succeed({i: (self.rows[i].state, self.rows[i].box) for i in ids if i in self.rows})


@attrs.define
class FakeInventory:
    model_names: frozenset[str] = frozenset({"llama3.2:latest", "qwen3:8b", "gemma3:12b"})


@attrs.define
class FakeResidency:
    inventory: FakeInventory = attrs.field(factory=FakeInventory)
    worker_model: str | None = None


@attrs.define
class FakeCosts:
    seconds: float = 5.0

    def load_seconds(self, model: str) -> float:
        return self.seconds


@attrs.define
class FakeScheduler:
    queued: dict[str, Job] = attrs.field(factory=dict)

    def get(self, job_id: str) -> Job | None:
        return self.queued.get(job_id)


@attrs.define
class FakeWorker:
    residency: FakeResidency = attrs.field(factory=FakeResidency)
    costs: FakeCosts = attrs.field(factory=FakeCosts)
    scheduler: FakeScheduler = attrs.field(factory=FakeScheduler)
    average_job_seconds: float = 2.0
    current: Job | None = None
    fenced: list[str] = attrs.field(factory=list)

    def adopt(self, jobs: Sequence[Job]) -> int:
        for each in jobs:
            self.scheduler.queued[each.id] = each
        return len(jobs)

    def let_go(self, ids: Sequence[str]) -> int:
        for each in ids:
            self.scheduler.queued.pop(each, None)
        return len(ids)

    def queued_here(self) -> list[str]:
        return list(self.scheduler.queued)

    def fence_current(self, job_id: str) -> bool:
        self.fenced.append(job_id)
        return True


def share_of(store: FakeStore, worker: FakeWorker, *boxes: BoxRecord) -> Share:
    share = Share(cast(JobStore, store), cast(Worker, worker), ME, lease=15.0)
    share.boxes = list(boxes)
    return share


def refreshed(share: Share) -> None:
    fired(ensureDeferred(share.refresh()))


def box(box_id: str, resident: str | None, *, alive: bool = True) -> BoxRecord:
    return BoxRecord(box_id, box_id, None, ("llama3.2",), resident, True, None, 0.0, alive=alive)


def queued_models(worker: FakeWorker) -> list[str]:
    return sorted(each.id for each in worker.scheduler.queued.values())


def test_a_model_another_box_runs_is_left_to_it_until_its_queue_pays_for_a_load() -> None:
    store = FakeStore({f"q{n}": job(f"q{n}", "qwen3:8b") for n in range(2)})
    store.rows["l0"] = job("l0", "llama3.2")
    store.rows["busy"] = job("busy", "qwen3:8b", JobState.WORKING, OTHER)
    worker = FakeWorker()
    refreshed(share_of(store, worker))
    # qwen3 runs on the other box; 2 jobs x 2 s is less than two 5 s loads.
    assert queued_models(worker) == ["l0"]
    # A longer queue for it pays for loading it here too: 6 x 2 s > 2 x 5 s.
    for n in range(2, 6):
        store.rows[f"q{n}"] = job(f"q{n}", "qwen3:8b")
    refreshed(share_of(store, worker))
    assert len(queued_models(worker)) == 7


def test_the_resident_model_of_another_live_box_counts_as_busy_and_a_dead_one_does_not() -> None:
    store = FakeStore({"g": job("g", "gemma3:12b")})
    worker = FakeWorker()
    refreshed(share_of(store, worker, box(OTHER, "gemma3:12b")))
    assert queued_models(worker) == []
    refreshed(share_of(store, worker, box(OTHER, "gemma3:12b", alive=False)))
    assert queued_models(worker) == ["g"]
    # A box's own resident model is its own to drain, whoever else holds it.
    worker = FakeWorker(residency=FakeResidency(worker_model="gemma3:12b"))
    refreshed(share_of(store, worker, box(OTHER, "gemma3:12b")))
    assert queued_models(worker) == ["g"]


def test_jobs_another_box_took_or_cancelled_are_let_go() -> None:
    store = FakeStore({"a": job("a", "llama3.2"), "b": job("b", "llama3.2")})
    worker = FakeWorker()
    refreshed(share_of(store, worker))
    assert queued_models(worker) == ["a", "b"]
    store.rows["a"] = job("a", "llama3.2", JobState.LOADING, OTHER)
    store.rows["b"] = job("b", "llama3.2", JobState.CANCELLED)
    refreshed(share_of(store, worker))
    assert queued_models(worker) == []


def test_a_run_the_fleet_took_back_or_cancelled_is_stopped() -> None:
    running = job("r", "llama3.2", JobState.WORKING, ME)
    store = FakeStore({"r": running})
    worker = FakeWorker(current=running)
    refreshed(share_of(store, worker))
    assert worker.fenced == []
    store.rows["r"] = job("r", "llama3.2", JobState.QUEUED)  # reaped while it ran here
    refreshed(share_of(store, worker))
    assert worker.fenced == ["r"]
    store.rows["r"] = job("r", "llama3.2", JobState.CANCELLED, ME)
    refreshed(share_of(store, worker))
    assert worker.fenced == ["r", "r"]

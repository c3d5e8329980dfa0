"""The swap rule's parts (ADR-0024): what loads cost, what callers' gaps are,
when a hold pays, the quantum in the order, and what foreman shows of them."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from foreman.ops.health import queue_report
from foreman.ops.metrics import ForemanMetrics
from foreman.queue.costs import DEFAULT_LOAD_SECONDS, ModelCosts
from foreman.queue.hold import SwapHold
from foreman.queue.job import Job
from foreman.queue.order import Policy
from foreman.queue.scheduler import Scheduler
from foreman.queue.store import JobStore
from foreman.wire.priority import Priority
from tests.worker_rig import fired, make_worker_rig

LLAMA = "llama3.2:latest"
GEMMA = "gemma3:12b"


def job(job_id: str, model: str, at: float, priority: Priority = Priority.INTERACTIVE) -> Job:
    return Job(
        id=job_id,
        model=model,
        endpoint="chat",
        body=b"{}",
        sync=True,
        created_at=at,
        updated_at=at,
        priority=priority,
    )


# -- what a load costs ------------------------------------------------------------------


def test_a_load_is_estimated_from_the_size_until_measured_then_smoothed() -> None:
    costs = ModelCosts(lambda: {LLAMA: 3_000_000_000})
    assert costs.load_seconds("llama3.2") == pytest.approx(2.5)  # 0.5 s + 3 GB at 1.5 GB/s
    assert costs.load_seconds("unknown") == DEFAULT_LOAD_SECONDS
    costs.loaded("llama3.2", 4.0)
    assert costs.load_cost("llama3.2").samples == 1
    assert costs.load_seconds("llama3.2") == pytest.approx(4.0)
    costs.loaded("llama3.2:latest", 2.0)
    assert costs.load_seconds("llama3.2") == pytest.approx(0.7 * 4.0 + 0.3 * 2.0)
    costs.loaded("llama3.2", float("nan"))  # nonsense is ignored
    assert costs.load_cost("llama3.2").samples == 2


def test_load_times_are_remembered_across_restarts(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    store.startup(0.0)
    costs = ModelCosts(remember=lambda m, s, n: store.remember_load_cost(m, s, n, 1.0))
    costs.loaded("llama3.2", 6.0)
    costs.loaded("llama3.2", 3.0)
    fired(store.close())

    again = JobStore(tmp_path / "jobs.sqlite3")
    again.startup(0.0)
    later = ModelCosts()
    later.remembered(again.known_load_costs())
    assert later.load_cost("llama3.2").samples == 2
    assert later.load_seconds("llama3.2") == pytest.approx(0.7 * 6.0 + 0.3 * 3.0)
    fired(again.close())


def test_a_store_of_an_older_schema_gains_the_costs_table(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    store = JobStore(path)
    store.startup(0.0)
    fired(store.close())
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == store.schema_version
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert "model_costs" in tables


# -- how soon callers come back ----------------------------------------------------------


def test_only_closed_loops_make_gaps() -> None:
    costs = ModelCosts()
    assert costs.expected_gap("llama3.2") is None
    costs.job_ended("llama3.2", 10.0)
    costs.arrived("llama3.2", 10.8, others_pending=False)
    costs.job_ended("llama3.2", 12.0)
    # Another call was already waiting: a queue, not a loop.
    costs.arrived("llama3.2", 12.1, others_pending=True)
    costs.arrived("llama3.2", 20.0, others_pending=False)  # no job ended since
    assert costs.expected_gap("llama3.2") == pytest.approx(0.8)


def test_the_expected_gap_is_an_upper_quartile_of_the_last_eight() -> None:
    costs = ModelCosts()
    for index, gap in enumerate([9.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 30.0]):
        costs.job_ended("m", 100.0 * index)
        costs.arrived("m", 100.0 * index + gap, others_pending=False)
    # The first (9 s) has left the eight; of 0.2 … 0.8 and 30, the 6th of 8.
    assert costs.expected_gap("m") == pytest.approx(0.7)


def test_a_missed_hold_stands_in_until_the_late_call_says_how_late() -> None:
    costs = ModelCosts()
    costs.job_ended("m", 0.0)
    costs.missed("m", 0.25)
    assert costs.expected_gap("m") == pytest.approx(0.5)
    costs.arrived("m", 3.0, others_pending=False)
    assert costs.expected_gap("m") == pytest.approx(3.0)  # replaced, not added


# -- rent or buy ---------------------------------------------------------------------------


def hold_after(
    costs: ModelCosts, *, unknown: float | None = 0.25, learned: bool = True
) -> SwapHold:
    hold = SwapHold(costs, unknown=unknown, learned=learned)
    hold.finished(job("done", LLAMA, 0.0), 100.0)
    return hold


def known(gap: float, load: float) -> ModelCosts:
    costs = ModelCosts(known={LLAMA: (load, 3)})
    costs.job_ended(LLAMA, 0.0)
    costs.arrived(LLAMA, gap, others_pending=False)
    return costs


@pytest.mark.parametrize(
    ("gap", "load", "held"),
    [
        (0.4, 3.0, 0.5),  # back sooner than a load: hold the gap and a margin
        (2.8, 3.0, 3.0),  # never longer than the load it may save
        (5.0, 3.0, 0.0),  # slower than a load back: swap at once
    ],
)
def test_a_hold_pays_only_when_the_call_comes_sooner_than_a_load(
    gap: float, load: float, held: float
) -> None:
    hold = hold_after(known(gap, load))
    until = hold.until(job("b", GEMMA, 50.0), LLAMA, overdue=False, quantum_left=60.0)
    assert (until - 100.0 if until else 0.0) == pytest.approx(held)


def test_unknown_callers_get_the_grace_and_a_fixed_rule_always_does() -> None:
    assert hold_after(ModelCosts(known={LLAMA: (3.0, 1)})).limit(LLAMA) == 0.25
    assert hold_after(ModelCosts(known={LLAMA: (0.1, 1)})).limit(LLAMA) == 0.1  # the load's cap
    fixed = hold_after(known(9.0, 3.0), unknown=2.0, learned=False)
    assert fixed.until(job("b", GEMMA, 1.0), LLAMA, overdue=False, quantum_left=0.0) == 102.0
    assert hold_after(known(9.0, 3.0), unknown=None, learned=False).limit(LLAMA) == 0.25


def test_without_a_grace_unknown_callers_are_held_up_to_a_load() -> None:
    # Rent or buy, knowing nothing: wait up to what a swap back would cost.
    hold = hold_after(ModelCosts(known={LLAMA: (3.0, 1)}), unknown=None)
    assert hold.limit(LLAMA) == 3.0
    until = hold.until(job("b", GEMMA, 1.0), LLAMA, overdue=False, quantum_left=1.5)
    assert until == pytest.approx(101.5)  # and never past the quantum


def test_an_estimate_is_never_longer_than_a_load_measured_here() -> None:
    costs = ModelCosts(lambda: {LLAMA: 3_000_000_000, GEMMA: 8_100_000_000})
    assert costs.load_seconds(GEMMA) == pytest.approx(5.9)
    costs.loaded(LLAMA, 3.0)
    assert costs.load_seconds(GEMMA) == pytest.approx(3.0)  # the box loads faster than guessed
    assert costs.load_cost(GEMMA).samples == 0
    costs.loaded(GEMMA, 7.0)
    assert costs.load_seconds(GEMMA) == 7.0  # measured: the cap is for guesses only
    assert costs.load_seconds("unknown") == DEFAULT_LOAD_SECONDS  # under the longest, 7 s
    quick = ModelCosts(lambda: {GEMMA: 8_100_000_000})
    quick.loaded(LLAMA, 0.01)  # Ollama held it already: says little of a real load
    assert quick.load_seconds(GEMMA) == pytest.approx(0.5)


def test_no_hold_for_what_nothing_may_overtake_nor_past_the_quantum() -> None:
    hold = hold_after(known(0.4, 3.0))
    waiting = job("b", GEMMA, 50.0)
    assert hold.until(waiting, LLAMA, overdue=True, quantum_left=60.0) == 0.0
    assert hold.until(waiting, LLAMA, overdue=False, quantum_left=0.2) == pytest.approx(100.2)
    assert hold.until(waiting, LLAMA, overdue=False, quantum_left=-1.0) == 0.0
    assert hold.until(job("a", LLAMA, 50.0), LLAMA, overdue=False, quantum_left=60.0) == 0.0
    after_batch = SwapHold(known(0.4, 3.0))
    after_batch.finished(job("done", LLAMA, 0.0, Priority.BATCH), 100.0)
    assert after_batch.until(waiting, LLAMA, overdue=False, quantum_left=60.0) == 0.0


# -- the quantum in the order ---------------------------------------------------------------


def scheduler_with(*jobs: Job, quantum: float = 4.0, load: float = 2.0) -> Scheduler:
    costs = ModelCosts(known={LLAMA: (load, 1), GEMMA: (load, 1)})
    scheduler = Scheduler(100, Policy(swap_quantum=quantum, costs=costs))
    for each in jobs:
        scheduler.add(each, reserved=False)
    return scheduler


def test_later_calls_of_the_resident_model_overtake_only_within_its_quantum() -> None:
    scheduler = scheduler_with(job("b1", GEMMA, 5.0), job("a2", LLAMA, 9.0))
    scheduler.turns.started(job("a1", LLAMA, 0.0), 0.0)
    scheduler.turns.loaded(LLAMA, 2.0)  # its run: from its load's end
    # 4 loads of gemma (8 s) from max(2, 5): llama's later call goes first until 13.
    assert scheduler.pick(LLAMA, 12.9) is not None
    assert scheduler.pick(LLAMA, 12.9).id == "a2"  # type: ignore[union-attr]
    assert scheduler.pick(LLAMA, 13.0).id == "b1"  # type: ignore[union-attr]


def test_calls_queued_before_the_waiting_call_still_drain() -> None:
    scheduler = scheduler_with(job("a0", LLAMA, 1.0), job("b1", GEMMA, 5.0))
    scheduler.turns.started(job("a", LLAMA, 0.0), 0.0)
    assert scheduler.pick(LLAMA, 100.0).id == "a0"  # type: ignore[union-attr]


def test_batch_work_drains_by_model_whatever_the_quantum() -> None:
    scheduler = scheduler_with(
        job("b1", GEMMA, 5.0, Priority.BATCH), job("a2", LLAMA, 9.0, Priority.BATCH)
    )
    scheduler.turns.started(job("a1", LLAMA, 0.0, Priority.BATCH), 0.0)
    assert scheduler.pick(LLAMA, 100.0).id == "a2"  # type: ignore[union-attr]


def test_no_quantum_is_drain_by_model() -> None:
    scheduler = scheduler_with(job("b1", GEMMA, 5.0), job("a2", LLAMA, 9.0), quantum=0)
    scheduler.turns.started(job("a1", LLAMA, 0.0), 0.0)
    assert scheduler.pick(LLAMA, 50.0).id == "a2"  # type: ignore[union-attr]


# -- what foreman shows ---------------------------------------------------------------------


def test_the_queue_report_and_metrics_show_holds_quanta_and_load_costs(tmp_path: Path) -> None:
    rig = make_worker_rig(
        tmp_path, load_seconds=2.0, tokens_per_second=10.0, reply_tokens=5, swap_grace=1.0
    )
    rig.worker.startService()
    fired(rig.submit("llama3.2", "first"))
    rig.run_until(rig.all_finished)
    rig.submit("gemma3:12b", "other")
    rig.clock.advance(0.4)
    rig.flush()
    report: dict[str, Any] = queue_report(rig.worker, rig.inventory, rig.clock.seconds())
    assert report["activity"] == "holding"
    assert report["doing"].startswith("holding llama3.2:latest for its next call, 0.4 s of at most")
    assert report["quantum"]["model"] == LLAMA and report["quantum"]["waiting_model"] == GEMMA
    llama = next(each for each in report["models"] if each["model"] == LLAMA)
    assert llama["loads_measured"] == 1 and llama["load_seconds"] >= 2.0
    rig.run_until(rig.all_finished)
    metrics = ForemanMetrics()
    metrics.watch(inventory=rig.inventory, worker=rig.worker)
    text = metrics.render().decode()
    assert f'foreman_model_load_seconds{{measured="true",model="{GEMMA}"}}' in text
    assert 'foreman_worker_seconds_total{activity="loading"} 4.0' in text
    assert 'foreman_worker_seconds_total{activity="holding"} 1.0' in text
    assert 'foreman_swap_holds_total{outcome="other"} 1.0' in text
    rig.stop()

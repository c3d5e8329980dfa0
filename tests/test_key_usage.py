"""Usage per key (issue 21): the recorder on a real store and a ``Clock``,
on each engine; a refused write kept and written later; the worker feeding it
(worker seconds, loads, tokens, calls); and where it shows: ``/metrics``, the
queue report, ``foreman ps``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.python.failure import Failure

from foreman.client import output
from foreman.ops.health import queue_report
from foreman.ops.metrics import ForemanMetrics
from foreman.queue.engines import Connection, Engine
from foreman.queue.job import Job, JobState
from foreman.queue.order import Policy
from foreman.queue.scheduler import CallerQueueFull
from foreman.queue.shares import EqualShares
from foreman.queue.store import JobStore
from foreman.queue.ulid import new_ulid
from foreman.queue.usage import FLUSH_SECONDS, LOCAL_BOX, NO_KEY, KeyUsage, UsageTotals
from tests.worker_rig import WorkerRig, fired, make_worker_rig

T = TypeVar("T")


class FlakyStore(JobStore):
    """A store whose transactions and reads the test can make fail (a full disk)."""

    refusing = False

    def transact(self, work: Callable[[Connection], T]) -> Deferred[T]:
        if self.refusing:
            return fail(OSError("disk I/O error"))
        return super().transact(work)

    def read(self, work: Callable[[Connection], T]) -> Deferred[T]:
        if self.refusing:
            return fail(OSError("disk I/O error"))
        return super().read(work)


@pytest.fixture
def capture_logs() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


@pytest.fixture
def store(store_engine: Engine) -> Iterator[FlakyStore]:
    opened = FlakyStore(store_engine)
    fired(opened.open())
    yield opened
    fired(opened.close())


def stored_rows(store: JobStore) -> dict[tuple[str, str], tuple[Any, ...]]:
    rows = fired(
        store.transact(
            lambda db: db.execute(
                "SELECT name, box, calls, prompt_tokens, output_tokens, worker_seconds,"
                " loads, refusals FROM key_usage"
            ).fetchall()
        )
    )
    return {(row[0], row[1]): tuple(row[2:]) for row in rows}


def started(store: JobStore, clock: Clock, **options: Any) -> KeyUsage:
    usage = KeyUsage(store, clock, **options)
    usage.startService()
    return usage


# -- the recorder --------------------------------------------------------------------


def test_counts_are_written_a_few_seconds_after_they_come_and_added_up(
    store: FlakyStore,
) -> None:
    clock = Clock()
    usage = started(store, clock)
    assert usage.box == LOCAL_BOX  # a foreman alone
    usage.called("alice")
    usage.tokens("alice", 12, 30)
    usage.worked("alice", 1.5)
    usage.loaded("alice")
    usage.refused("bob")
    usage.called(None)
    assert stored_rows(store) == {}
    clock.advance(FLUSH_SECONDS)
    assert stored_rows(store) == {
        ("alice", LOCAL_BOX): (1, 12, 30, 1.5, 1, 0),
        ("bob", LOCAL_BOX): (0, 0, 0, 0.0, 0, 1),
        (NO_KEY, LOCAL_BOX): (1, 0, 0, 0.0, 0, 0),
    }
    # Nothing new, nothing written, no timer left behind.
    assert clock.getDelayedCalls() == []
    usage.called("alice")
    usage.tokens("alice", 3, 4)
    clock.advance(FLUSH_SECONDS)
    assert stored_rows(store)[("alice", LOCAL_BOX)] == (2, 15, 34, 1.5, 1, 0)
    assert usage.since_start()["alice"] == UsageTotals(2, 15, 34, 1.5, 1, 0)


def test_totals_sum_every_box_and_what_this_box_has_not_written(store: FlakyStore) -> None:
    clock = Clock()
    # A box of a fleet writes its rows as its id.
    assert KeyUsage(JobStore(store.engine, box="01BOXA"), clock).box == "01BOXA"
    here = started(store, clock, box="01BOXA")
    there = started(store, clock, box="01BOXB")
    here.called("alice")
    here.worked("alice", 2.0)
    there.called("alice")
    there.tokens("alice", 5, 6)
    clock.advance(FLUSH_SECONDS)
    assert set(stored_rows(store)) == {("alice", "01BOXA"), ("alice", "01BOXB")}
    here.called("alice")  # not written yet
    here.called("carol")
    totals = fired(Deferred.fromCoroutine(here.totals()))
    assert totals == {
        "alice": UsageTotals(calls=3, prompt_tokens=5, output_tokens=6, worker_seconds=2.0),
        "carol": UsageTotals(calls=1),
    }
    # The other box sees what is stored, and its own unwritten counts (none).
    assert fired(Deferred.fromCoroutine(there.totals())) == {
        "alice": UsageTotals(calls=2, prompt_tokens=5, output_tokens=6, worker_seconds=2.0)
    }


def test_a_refused_write_is_kept_and_written_later_with_what_came_since(
    store: FlakyStore,
) -> None:
    clock = Clock()
    usage = started(store, clock)
    usage.called("alice")
    store.refusing = True
    clock.advance(FLUSH_SECONDS)
    assert (usage.error, usage.refused_writes) == ("disk I/O error", 1)
    assert usage.unwritten == {"alice": UsageTotals(calls=1)}
    # Counts keep coming while the store refuses; the next try backs off.
    usage.tokens("alice", 7, 8)
    clock.advance(FLUSH_SECONDS)
    assert usage.refused_writes == 2
    assert fired(usage.flush()) is False
    assert usage.unwritten == {"alice": UsageTotals(calls=1, prompt_tokens=7, output_tokens=8)}
    store.refusing = False
    clock.advance(max(call.getTime() for call in clock.getDelayedCalls()) - clock.seconds())
    assert stored_rows(store) == {("alice", LOCAL_BOX): (1, 7, 8, 0.0, 0, 0)}
    assert (usage.error, usage.unwritten) == (None, {})
    # Totals while the store refused reads fail as the read fails; the
    # counts are not lost meanwhile.
    store.refusing = True
    with pytest.raises(OSError):
        fired(Deferred.fromCoroutine(usage.totals()))


def test_no_timed_write_while_the_jobs_own_writes_are_refused(store: FlakyStore) -> None:
    # A write to a locked store holds the store's one thread for its busy
    # timeout, ahead of the jobs' own writes: while the worker's journal says
    # the store refuses, the counts wait, and go once it takes writes again.
    clock = Clock()
    usage = started(store, clock)
    troubled = [True]
    usage.paused = lambda: troubled[0]
    usage.called("alice")
    for _ in range(3):
        clock.advance(FLUSH_SECONDS)
    assert usage.refused_writes == 0 and stored_rows(store) == {}
    troubled[0] = False
    clock.advance(FLUSH_SECONDS)
    assert stored_rows(store) == {("alice", LOCAL_BOX): (1, 0, 0, 0.0, 0, 0)}


def test_a_stop_writes_what_is_left(store: FlakyStore) -> None:
    clock = Clock()
    usage = started(store, clock)
    usage.called("alice")
    usage.worked("alice", 0.25)
    fired(usage.stopService())
    assert stored_rows(store) == {("alice", LOCAL_BOX): (1, 0, 0, 0.25, 0, 0)}
    assert clock.getDelayedCalls() == []


def test_a_stop_the_store_refuses_says_so(store: FlakyStore, capture_logs: list[LogEvent]) -> None:
    clock = Clock()
    usage = started(store, clock)
    usage.called("alice")
    store.refusing = True
    fired(usage.stopService())
    assert clock.getDelayedCalls() == []
    assert any("could not be written before stopping" in e["log_format"] for e in capture_logs)


def test_a_write_waits_for_the_one_under_way(tmp_path: Path) -> None:
    # The daemon's store answers later, from its thread: a flush asked while
    # a write is under way waits for it, and totals count nothing twice.
    pending: list[tuple[Callable[[], Any], Deferred[Any]]] = []

    def later(work: Callable[[], Any]) -> Deferred[Any]:
        answer: Deferred[Any] = Deferred()
        pending.append((work, answer))
        return answer

    def answer_one() -> None:
        work, answer = pending.pop(0)
        answer.callback(work())

    store = JobStore(tmp_path / "jobs.sqlite3", later)
    opened = store.open()
    answer_one()
    fired(opened)
    clock = Clock()
    usage = started(store, clock)
    usage.called("alice")
    first = usage.flush()
    usage.called("alice")
    second = usage.flush()
    reading = Deferred.fromCoroutine(usage.totals())
    assert len(pending) == 2  # the first write, the read; the second write waits
    answer_one()
    assert fired(first) is True
    assert len(pending) == 2  # the read, then the second write
    answer_one()
    assert fired(reading) == {"alice": UsageTotals(calls=2)}
    answer_one()
    assert fired(second) is True
    assert usage.unwritten == {}


# -- the worker feeding it -----------------------------------------------------------


def counting(rig: WorkerRig) -> KeyUsage:
    """The rig's worker counting usage, as ``build_queue`` wires it."""
    usage = KeyUsage(rig.store, rig.clock)
    rig.worker.usage = usage
    rig.worker.on_transition(usage.job_moved)
    usage.startService()
    return usage


def submit(rig: WorkerRig, model: str, caller: str | None, tokens: int = 5) -> Job:
    submitted: Job = fired(rig.worker.submit(submit_job(rig, model, caller, tokens)))
    return submitted


def submit_job(rig: WorkerRig, model: str, caller: str | None, tokens: int = 5) -> Job:
    now = rig.worker.clocks.wall()
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hello"}],
        "options": {"num_predict": tokens},
    }
    job = Job(
        id=new_ulid(now),
        model=model,
        endpoint="chat",
        body=json.dumps(body).encode(),
        sync=False,
        created_at=now,
        updated_at=now,
        caller=caller,
    )
    return job


def test_the_worker_counts_each_keys_calls_time_loads_and_tokens(tmp_path: Path) -> None:
    rig = make_worker_rig(tmp_path, load_seconds=2.0, tokens_per_second=10.0)
    usage = counting(rig)
    rig.worker.startService()
    jobs = [
        submit(rig, "llama3.2", "alice", tokens=10),
        submit(rig, "llama3.2", "bob", tokens=20),  # the model is resident: no load
        submit(rig, "qwen3:8b", "bob", tokens=5),  # a swap: bob's load
        submit(rig, "qwen3:8b", None, tokens=1),
    ]
    rig.run_until(rig.all_finished)
    done = {job.id: job for job in rig.jobs()}
    assert [done[job.id].state for job in jobs] == [JobState.DONE] * 4
    results = {job.id: json.loads(done[job.id].result or b"") for job in jobs}

    def ran(job: Job) -> float:
        stored = done[job.id]
        assert stored.started_at is not None and stored.finished_at is not None
        return stored.finished_at - stored.started_at

    counted = usage.since_start()
    assert set(counted) == {"alice", "bob", NO_KEY}
    for name, own in (("alice", jobs[:1]), ("bob", jobs[1:3]), (NO_KEY, jobs[3:])):
        each = counted[name]
        assert each.calls == len(own)
        assert each.output_tokens == sum(results[job.id]["eval_count"] for job in own)
        assert each.prompt_tokens == sum(results[job.id]["prompt_eval_count"] for job in own)
        assert each.worker_seconds == pytest.approx(sum(ran(job) for job in own))
    assert counted["alice"].output_tokens >= 10  # the ten asked for
    # A job loads its model when the one before it was for another (the
    # order is the scheduler's): the first of each model's run of jobs.
    in_order = sorted(jobs, key=lambda job: done[job.id].started_at or 0.0)
    loaded = [
        job.caller or NO_KEY
        for before, job in zip([None, *in_order], in_order, strict=False)
        if before is None or before.model != job.model
    ]
    assert len(loaded) == rig.sim.loads == 2
    assert {name: each.loads for name, each in counted.items()} == {
        name: loaded.count(name) for name in counted
    }
    loading = next(job for job in in_order if (job.caller or NO_KEY) in loaded)
    assert ran(loading) > 2.0  # its load, then its reply
    # Written within a few seconds, as counted.
    rig.clock.advance(FLUSH_SECONDS)
    totals = fired(Deferred.fromCoroutine(usage.totals()))
    assert totals == counted and usage.unwritten == {}
    rig.stop()


def test_a_job_that_fails_counts_its_time_and_no_tokens(tmp_path: Path) -> None:
    rig = make_worker_rig(tmp_path, max_attempts=1)
    usage = counting(rig)
    rig.worker.startService()
    job = submit(rig, "no-such-model", "alice")
    rig.run_until(rig.all_finished)
    assert fired(rig.store.get(job.id)).state is JobState.FAILED
    counted = usage.since_start()["alice"]
    assert (counted.calls, counted.prompt_tokens, counted.output_tokens) == (1, 0, 0)
    rig.stop()


# -- where it shows ------------------------------------------------------------------


def test_metrics_count_each_keys_usage_by_name(tmp_path: Path) -> None:
    rig = make_worker_rig(tmp_path)
    usage = counting(rig)
    usage.called("alice")
    usage.called("alice")
    usage.tokens("alice", 11, 22)
    usage.worked("alice", 0.5)
    usage.loaded("alice")
    usage.refused("bob")
    metrics = ForemanMetrics()
    metrics.watch(worker=rig.worker, inventory=rig.inventory)

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert sample("foreman_key_calls_total", key="alice") == 2
    assert sample("foreman_key_tokens_total", key="alice", kind="prompt") == 11
    assert sample("foreman_key_tokens_total", key="alice", kind="output") == 22
    assert sample("foreman_key_worker_seconds_total", key="alice") == 0.5
    assert sample("foreman_key_loads_total", key="alice") == 1
    assert sample("foreman_key_refusals_total", key="bob") == 1
    assert sample("foreman_key_calls_total", key="bob") == 0
    text = metrics.render().decode()
    assert "# TYPE foreman_key_calls_total counter" in text
    # Without a queue there is nothing to count, and nothing is shown.
    alone = ForemanMetrics()
    assert "foreman_key_" not in alone.render().decode()
    rig.stop()


def test_the_queue_report_and_ps_show_whose_each_job_is(tmp_path: Path) -> None:
    rig = make_worker_rig(tmp_path)
    submit(rig, "llama3.2", "alice")
    submit(rig, "qwen3:8b", None)
    report = queue_report(rig.worker, rig.inventory, rig.clock.seconds())
    assert [job["caller"] for job in report["jobs"]] == ["alice", None]
    lines = output.ps_report({"models": []}, report, rig.clock.seconds()).splitlines()
    header = lines.index(next(line for line in lines if line.startswith("ID")))
    assert lines[header].split()[:3] == ["ID", "KEY", "MODEL"]
    assert [line.split()[1:3] for line in lines[header + 1 :]] == [
        ["alice", "llama3.2"],
        ["-", "qwen3:8b"],
    ]
    # No job sent with a key (no keys, or an older foreman): no KEY column.
    for job in report["jobs"]:
        job["caller"] = None
    plain = output.ps_report({"models": []}, report, rig.clock.seconds())
    assert "KEY" not in plain
    rig.stop()


class _OneWaiting(EqualShares):
    def max_waiting(self, caller: str | None) -> int | None:
        return 1 if caller == "alice" else None


def test_a_key_refused_for_its_limit_counts_a_refusal_and_others_go_on(tmp_path: Path) -> None:
    rig = make_worker_rig(tmp_path, policy=Policy(shares=_OneWaiting()))
    usage = counting(rig)
    submit(rig, "llama3.2", "alice")
    refused = rig.worker.submit(submit_job(rig, "llama3.2", "alice"))
    failures: list[Failure] = []

    def caught(failure: Failure) -> None:
        failures.append(failure)

    refused.addErrback(caught)
    assert failures and failures[0].check(CallerQueueFull)
    submit(rig, "llama3.2", "bob")  # bob has no limit of his own
    counted = usage.since_start()
    assert counted["alice"].refusals == 1 and counted["alice"].calls == 1
    assert counted["bob"].refusals == 0
    rig.stop()

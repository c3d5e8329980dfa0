"""The worker's side of ``/jobs`` in simulated time: transitions announced
after each save, cancelling an asynchronous job in every state, idempotent
submits, and the webhook events the transitions become."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import attrs
import pytest
from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest
from twisted.web.test.requesthelper import DummyRequest

from foreman.jobs.events import JobEvents
from foreman.jobs.outbox import StoredEvent
from foreman.queue.engines.sqlite import SQLiteConnection
from foreman.queue.job import Job, JobState
from foreman.queue.scheduler import QueueFull
from foreman.queue.ulid import new_ulid
from foreman.relay.generation import GenerationCall
from tests.store_engines import on_each_engine
from tests.worker_rig import WorkerRig, fired, make_worker_rig

SLOW: dict[str, Any] = {"load_seconds": 5.0, "tokens_per_second": 20.0, "reply_tokens": 10}


def job_for(rig: WorkerRig, text: str, **fields: Any) -> Job:
    now = rig.clock.seconds()
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": text}]}
    return Job(
        id=new_ulid(now),
        model="llama3.2",
        endpoint="chat",
        body=json.dumps(body).encode(),
        sync=False,
        created_at=now,
        updated_at=now,
        **fields,
    )


@attrs.define
class Heard:
    """What a transition listener was told, and what the store held then."""

    rig: WorkerRig
    told: list[tuple[str, str | None, str, int]] = attrs.Factory(list)

    def __call__(self, job: Job, previous: JobState | None) -> None:
        stored = fired(self.rig.store.get(job.id))
        # Announced only once stored: the store already says so.
        assert stored.state is job.state
        assert stored.result == job.result
        self.told.append(
            (job.id, None if previous is None else previous.value, job.state.value, job.attempt)
        )

    def of(self, job_id: str) -> list[tuple[str | None, str]]:
        return [(previous, state) for each, previous, state, _ in self.told if each == job_id]


@on_each_engine
def test_every_transition_is_announced_once_stored(tmp_path: Path) -> None:
    rig = make_worker_rig(tmp_path, **SLOW)
    heard = Heard(rig)
    rig.worker.on_transition(heard)
    job = fired(rig.submit("llama3.2", "one"))
    rig.worker.startService()
    rig.run_until(rig.all_finished)
    assert heard.of(job.id) == [
        (None, "queued"),
        ("queued", "loading"),
        ("loading", "working"),
        ("working", "done"),
    ]
    assert [attempt for *_, attempt in heard.told] == [0, 1, 1, 1]
    rig.stop()


@on_each_engine
def test_a_retry_goes_back_to_queued_and_says_so(tmp_path: Path) -> None:
    rig = make_worker_rig(tmp_path, max_attempts=3)
    heard = Heard(rig)
    rig.worker.on_transition(heard)
    rig.agent.refuse_generations = True  # the target answers; the job's call fails
    job = fired(rig.submit("llama3.2", "patience"))
    rig.worker.startService()
    rig.flush()
    rig.agent.refuse_generations = False
    rig.run_until(rig.all_finished)
    assert heard.of(job.id) == [
        (None, "queued"),
        ("queued", "loading"),
        ("loading", "queued"),
        ("queued", "loading"),
        ("loading", "working"),
        ("working", "done"),
    ]
    assert [attempt for *_, attempt in heard.told] == [0, 1, 1, 2, 2, 2]
    rig.stop()


@on_each_engine
def test_a_listener_that_fails_changes_nothing(tmp_path: Path) -> None:
    rig = make_worker_rig(tmp_path)
    failures: list[str] = []

    def broken(job: Job, previous: JobState | None) -> None:
        failures.append(job.state.value)
        raise RuntimeError("a broken listener")

    heard = Heard(rig)
    rig.worker.on_transition(broken)
    rig.worker.on_transition(heard)
    fired(rig.submit("llama3.2", "regardless"))
    rig.worker.startService()
    rig.run_until(rig.all_finished)
    assert failures == ["queued", "loading", "working", "done"]
    assert [state for _, _, state, _ in heard.told] == failures
    assert rig.jobs()[0].state is JobState.DONE
    rig.stop()


# -- cancel -------------------------------------------------------------------------------


@on_each_engine
def test_cancelling_a_queued_job(tmp_path: Path) -> None:
    rig = make_worker_rig(tmp_path, **SLOW)
    heard = Heard(rig)
    rig.worker.on_transition(heard)
    job = fired(rig.submit("llama3.2", "never"))
    cancelled = fired(rig.worker.cancel(job.id))
    assert cancelled.state is JobState.CANCELLED
    assert cancelled.last_error == "cancelled while queued"
    assert rig.worker.scheduler.depth == 0
    assert heard.of(job.id) == [(None, "queued"), ("queued", "cancelled")]
    rig.worker.startService()
    rig.clock.advance(60)
    rig.flush()
    assert rig.sim.load_history == []
    assert fired(rig.worker.cancel(job.id)) is None  # no longer the worker's
    rig.stop()


@on_each_engine
@pytest.mark.parametrize("state", [JobState.LOADING, JobState.WORKING])
def test_cancelling_a_running_job(tmp_path: Path, state: JobState) -> None:
    rig = make_worker_rig(tmp_path, **SLOW)
    heard = Heard(rig)
    rig.worker.on_transition(heard)
    job = fired(rig.submit("llama3.2", "stopped"))
    after = fired(rig.submit("llama3.2", "after"))
    rig.worker.startService()
    rig.run_until(lambda: rig.jobs()[0].state is state)
    cancelling = rig.worker.cancel(job.id)
    rig.flush()
    cancelled = fired(cancelling)
    assert cancelled.state is JobState.CANCELLED
    assert cancelled.last_error == "cancelled while running"
    assert cancelled.attempt == 1
    assert heard.of(job.id)[-1] == (state.value, "cancelled")
    rig.run_until(rig.all_finished)
    # The worker went on with the next job. (That the target sees the call
    # closed is for a real socket to show: tests/test_jobs_api.py.)
    assert fired(rig.store.get(after.id)).state is JobState.DONE
    assert fired(rig.store.get(job.id)).state is JobState.CANCELLED
    assert rig.generation_markers()[-1] == "after"
    rig.stop()


@on_each_engine
def test_cancelling_between_two_steps(tmp_path: Path) -> None:
    rig = make_worker_rig(tmp_path, **SLOW)
    job = fired(rig.submit("llama3.2", "between"))
    cancelling: list[Deferred[Job | None]] = []

    def cancel_on_loading(changed: Job, previous: JobState | None) -> None:
        # Called right after ``loading`` is stored, before the load starts.
        if changed.state is JobState.LOADING:
            cancelling.append(rig.worker.cancel(changed.id))

    rig.worker.on_transition(cancel_on_loading)
    rig.worker.startService()
    rig.flush()
    (cancelled,) = [fired(each) for each in cancelling]
    assert cancelled.id == job.id and cancelled.state is JobState.CANCELLED
    assert rig.sim.load_history == []
    rig.stop()


@on_each_engine
def test_a_finished_or_unknown_job_is_not_the_worker_s_to_cancel(tmp_path: Path) -> None:
    rig = make_worker_rig(tmp_path)
    job = fired(rig.submit("llama3.2", "quick"))
    rig.worker.startService()
    rig.run_until(rig.all_finished)
    assert fired(rig.worker.cancel(job.id)) is None
    assert fired(rig.worker.cancel("01JD8X3Z4Q5R6S7T8V9W0XYZAB")) is None
    assert fired(rig.store.get(job.id)).state is JobState.DONE
    rig.stop()


@on_each_engine
def test_a_sync_job_is_its_caller_s_to_cancel(tmp_path: Path) -> None:
    rig = make_worker_rig(tmp_path)
    body = json.dumps({"model": "llama3.2", "messages": [], "stream": False}).encode()
    request = cast(IRequest, DummyRequest([b"api", b"chat"]))
    rig.worker.run(GenerationCall("chat", "llama3.2", body, False), request)
    (queued,) = rig.worker.scheduler.jobs()
    assert fired(rig.worker.cancel(queued.id)) is None
    assert rig.worker.scheduler.depth == 1
    rig.worker.startService()
    rig.run_until(rig.all_finished)
    assert rig.jobs()[0].state is JobState.DONE
    rig.stop()


# -- idempotent submits ---------------------------------------------------------------------


@on_each_engine
def test_the_same_idempotency_key_makes_one_job(tmp_path: Path) -> None:
    rig = make_worker_rig(tmp_path, max_queue=2)
    first = fired(rig.worker.submit(job_for(rig, "a", idempotency_key="k")))
    again = fired(rig.worker.submit(job_for(rig, "a", idempotency_key="k")))
    assert again == first
    assert rig.worker.scheduler.depth == 1
    # The place the retry reserved was given back: one more fits, then none.
    fired(rig.worker.submit(job_for(rig, "b")))
    with pytest.raises(QueueFull):
        fired(rig.worker.submit(job_for(rig, "c")))
    assert len(rig.jobs()) == 2
    rig.stop()


# -- the webhook events ------------------------------------------------------------------------


@attrs.define
class Outbox:
    """Told of each event row once the transaction that wrote it committed."""

    scheduled: list[StoredEvent] = attrs.Factory(list)

    def schedule(self, event: StoredEvent) -> None:
        self.scheduled.append(event)


def deliveries(rig: WorkerRig) -> list[tuple[int, str, str, dict[str, Any]]]:
    """The outbox's rows in the store: id, job, URL and the event."""
    rows = rig.store._db.execute("SELECT id, job_id, url, body FROM deliveries ORDER BY id")
    return [(row[0], row[1], row[2], json.loads(row[3])) for row in rows]


def sync_call(rig: WorkerRig, **extra: Any) -> None:
    body = {"model": "llama3.2", "messages": [], "stream": False, **extra}
    request = cast(IRequest, DummyRequest([b"api", b"chat"]))
    rig.worker.run(GenerationCall("chat", "llama3.2", json.dumps(body).encode(), False), request)


def with_events(outbox: Outbox) -> Callable[[WorkerRig], None]:
    return lambda rig: rig.worker.record_transitions(JobEvents(outbox, inline_limit=1 << 20))


@on_each_engine
def test_transitions_of_webhook_jobs_become_events(tmp_path: Path) -> None:
    outbox = Outbox()
    rig = make_worker_rig(tmp_path, prepare=with_events(outbox))
    hooked = fired(rig.worker.submit(job_for(rig, "hooked", webhook_url="http://r.test/h")))
    fired(rig.worker.submit(job_for(rig, "silent")))
    sync_call(rig, state_webhook_url="http://r.test/h")
    rig.worker.startService()
    rig.run_until(rig.all_finished)
    rows = deliveries(rig)
    assert [(job_id, url, body["state"]) for _, job_id, url, body in rows] == [
        (hooked.id, "http://r.test/h", "queued"),
        (hooked.id, "http://r.test/h", "loading"),
        (hooked.id, "http://r.test/h", "working"),
        (hooked.id, "http://r.test/h", "done"),
    ]
    # Each row handed to the outbox once its transaction committed, as stored.
    assert [(e.id, e.job_id, e.url, json.loads(e.body)) for e in outbox.scheduled] == rows
    done = fired(rig.store.get(hooked.id))
    assert rows[-1][3]["result"] == json.loads(done.result)
    # Due from the moment of the transition.
    assert outbox.scheduled[-1].next_at == done.updated_at
    rig.stop()


def test_an_event_is_written_in_its_state_s_transaction_and_only_there(tmp_path: Path) -> None:
    rig = make_worker_rig(tmp_path, prepare=with_events(Outbox()))
    statements: list[str] = []
    cast(SQLiteConnection, rig.store._db).raw.set_trace_callback(statements.append)
    hooked = fired(rig.worker.submit(job_for(rig, "hooked", webhook_url="http://r.test/h")))
    inserted, statements[:] = list(statements), []
    assert [s.split(" (")[0] for s in inserted if not s.startswith("SELECT")] == [
        "BEGIN IMMEDIATE",
        "INSERT INTO jobs",
        "INSERT INTO deliveries",
        "COMMIT",
    ]
    rig.worker.startService()
    rig.run_until(rig.all_finished)
    saves = [s.split(" SET")[0].split(" (")[0] for s in statements if not s.startswith("SELECT")]
    assert saves == ["BEGIN IMMEDIATE", "UPDATE jobs", "INSERT INTO deliveries", "COMMIT"] * 3
    assert fired(rig.store.get(hooked.id)).state is JobState.DONE

    # The hot path: a sync call, and a job without a URL, save in one
    # statement each, with no transaction or query of their own.
    statements[:] = []
    silent = fired(rig.worker.submit(job_for(rig, "silent")))
    sync_call(rig, state_webhook_url="http://r.test/h")
    rig.run_until(rig.all_finished)
    assert not [s for s in statements if "deliveries" in s]
    updates = [s for s in statements if s.startswith("UPDATE")]
    assert len(updates) == 6  # loading, working, done for each
    assert [s for s in statements if s.startswith("BEGIN")] == ["BEGIN IMMEDIATE"]  # the submit
    assert len(deliveries(rig)) == 4
    assert fired(rig.store.get(silent.id)).state is JobState.DONE
    rig.stop()


@on_each_engine
def test_an_outbox_that_fails_to_schedule_is_only_logged(tmp_path: Path) -> None:
    failing: list[str] = []

    class Refusing:
        def schedule(self, event: StoredEvent) -> None:
            failing.append(json.loads(event.body)["state"])
            raise RuntimeError("the outbox broke")

    rig = make_worker_rig(tmp_path)
    rig.worker.record_transitions(JobEvents(Refusing(), inline_limit=0))
    fired(rig.worker.submit(job_for(rig, "x", webhook_url="http://r.test/h")))
    rig.worker.startService()
    rig.run_until(rig.all_finished)
    assert failing == ["queued", "loading", "working", "done"]
    assert rig.jobs()[0].state is JobState.DONE
    # Stored all the same: the next start sends them.
    assert [body["state"] for *_, body in deliveries(rig)] == failing
    rig.stop()


@on_each_engine
def test_a_submit_stores_the_job_and_its_first_event_or_neither(tmp_path: Path) -> None:
    outbox = Outbox()
    rig = make_worker_rig(tmp_path, max_queue=2, prepare=with_events(outbox))
    rig.store._db.execute("ALTER TABLE deliveries RENAME TO elsewhere")
    with pytest.raises(rig.store.engine.Error):
        fired(rig.worker.submit(job_for(rig, "x", webhook_url="http://r.test/h")))
    assert rig.jobs() == [] and outbox.scheduled == []
    assert rig.worker.scheduler.depth == 0  # its place given back
    rig.store._db.execute("ALTER TABLE elsewhere RENAME TO deliveries")

    first = job_for(rig, "x", webhook_url="http://r.test/h", idempotency_key="k")
    assert fired(rig.worker.submit(first)) == first
    again = fired(rig.worker.submit(job_for(rig, "x", idempotency_key="k")))
    assert again == first
    # Accepted means both stored; the retry found the job and wrote nothing.
    assert [(job_id, body["state"]) for _, job_id, _, body in deliveries(rig)] == [
        (first.id, "queued")
    ]
    assert [event.job_id for event in outbox.scheduled] == [first.id]
    rig.stop()


@on_each_engine
def test_recovery_writes_the_queued_event_of_a_job_it_puts_back(tmp_path: Path) -> None:
    rig = make_worker_rig(tmp_path, prepare=with_events(Outbox()), **SLOW)
    job = fired(rig.worker.submit(job_for(rig, "again", webhook_url="http://r.test/h")))
    rig.worker.startService()
    rig.run_until(lambda: rig.jobs()[0].state is JobState.WORKING)
    # A crash: the process is gone, the job still ``working`` in the store.
    fired(rig.store.close())

    outbox = Outbox()
    heard: list[tuple[str | None, str]] = []

    def prepare(again: WorkerRig) -> None:
        with_events(outbox)(again)
        again.worker.on_transition(lambda j, p: heard.append((p and p.value, j.state.value)))

    again = make_worker_rig(tmp_path / "again", database=rig.store.engine, prepare=prepare, **SLOW)
    *_, (row_id, job_id, _, back) = deliveries(again)
    assert (job_id, back["previous_state"], back["state"], back["attempt"]) == (
        job.id,
        "working",
        "queued",
        1,
    )
    # Handed over once the worker has the job (a real outbox, not started yet,
    # leaves it to its start, which loads every pending row).
    assert [event.id for event in outbox.scheduled] == [row_id]
    assert heard == [("working", "queued")]
    again.worker.startService()
    again.run_until(again.all_finished)
    assert [state for _, state in heard] == ["queued", "loading", "working", "done"]
    again.stop()


@on_each_engine
def test_a_recorder_that_fails_to_render_is_only_logged(tmp_path: Path) -> None:
    rig = make_worker_rig(tmp_path, prepare=with_events(Outbox()))

    def broken(job: Job, previous: JobState | None) -> None:
        raise RuntimeError("a broken recorder")

    rig.worker.transitions.add_recorder(broken)
    fired(rig.worker.submit(job_for(rig, "x", webhook_url="http://r.test/h")))
    rig.worker.startService()
    rig.run_until(rig.all_finished)
    assert rig.jobs()[0].state is JobState.DONE
    assert len(deliveries(rig)) == 4  # the others' writes are untouched
    rig.stop()

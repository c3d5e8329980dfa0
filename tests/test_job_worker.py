"""The worker's side of ``/jobs`` in simulated time: transitions announced
after each save, cancelling an asynchronous job in every state, idempotent
submits, and the webhook events the transitions become."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import attrs
import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.test.requesthelper import DummyRequest

from foreman.generation import GenerationCall
from foreman.job_events import JobEvents
from foreman.jobs import Job, JobState
from foreman.scheduler import QueueFull
from foreman.ulid import new_ulid
from tests.worker_rig import WorkerRig, make_worker_rig

SLOW: dict[str, Any] = {"load_seconds": 5.0, "tokens_per_second": 20.0, "reply_tokens": 10}


def fired(deferred: Deferred[Any]) -> Any:
    outcome: list[Any] = []
    deferred.addBoth(outcome.append)
    assert outcome, "not fired yet"
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


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


def test_a_retry_goes_back_to_queued_and_says_so(tmp_path: Path) -> None:
    rig = make_worker_rig(tmp_path, max_attempts=3)
    heard = Heard(rig)
    rig.worker.on_transition(heard)
    rig.agent.down = True
    job = fired(rig.submit("llama3.2", "patience"))
    rig.worker.startService()
    rig.flush()
    rig.agent.down = False
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


def test_a_finished_or_unknown_job_is_not_the_worker_s_to_cancel(tmp_path: Path) -> None:
    rig = make_worker_rig(tmp_path)
    job = fired(rig.submit("llama3.2", "quick"))
    rig.worker.startService()
    rig.run_until(rig.all_finished)
    assert fired(rig.worker.cancel(job.id)) is None
    assert fired(rig.worker.cancel("01JD8X3Z4Q5R6S7T8V9W0XYZAB")) is None
    assert fired(rig.store.get(job.id)).state is JobState.DONE
    rig.stop()


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
    handed: list[tuple[str, str, dict[str, Any]]] = attrs.Factory(list)

    def deliver(self, job_id: str, url: str, body: bytes) -> Deferred[None]:
        self.handed.append((job_id, url, json.loads(body)))
        return succeed(None)


def test_transitions_of_webhook_jobs_become_events(tmp_path: Path) -> None:
    rig = make_worker_rig(tmp_path)
    outbox = Outbox()
    rig.worker.on_transition(JobEvents(outbox, inline_limit=1 << 20))
    hooked = fired(rig.worker.submit(job_for(rig, "hooked", webhook_url="http://r.test/h")))
    fired(rig.worker.submit(job_for(rig, "silent")))
    sync_body = {
        "model": "llama3.2",
        "messages": [],
        "stream": False,
        "state_webhook_url": "http://r.test/h",
    }
    request = cast(IRequest, DummyRequest([b"api", b"chat"]))
    call = GenerationCall("chat", "llama3.2", json.dumps(sync_body).encode(), False)
    rig.worker.run(call, request)
    rig.worker.startService()
    rig.run_until(rig.all_finished)
    assert [(job_id, url, body["state"]) for job_id, url, body in outbox.handed] == [
        (hooked.id, "http://r.test/h", "queued"),
        (hooked.id, "http://r.test/h", "loading"),
        (hooked.id, "http://r.test/h", "working"),
        (hooked.id, "http://r.test/h", "done"),
    ]
    done = outbox.handed[-1][2]
    assert done["result"] == json.loads(fired(rig.store.get(hooked.id)).result)
    rig.stop()


def test_an_outbox_that_fails_is_only_logged(tmp_path: Path) -> None:
    rig = make_worker_rig(tmp_path)

    failing: list[str] = []

    class Refusing:
        def deliver(self, job_id: str, url: str, body: bytes) -> Deferred[None]:
            failing.append(json.loads(body)["state"])
            return Deferred.fromCoroutine(_raise())

    async def _raise() -> None:
        raise RuntimeError("the outbox broke")

    rig.worker.on_transition(JobEvents(Refusing(), inline_limit=0))
    fired(rig.worker.submit(job_for(rig, "x", webhook_url="http://r.test/h")))
    rig.worker.startService()
    rig.run_until(rig.all_finished)
    assert failing == ["queued", "loading", "working", "done"]
    assert rig.jobs()[0].state is JobState.DONE
    rig.stop()


def test_a_submit_is_accepted_once_its_first_event_is_stored(tmp_path: Path) -> None:
    rig = make_worker_rig(tmp_path)
    storing: list[Deferred[None]] = []

    class SlowOutbox:
        def deliver(self, job_id: str, url: str, body: bytes) -> Deferred[None]:
            storing.append(Deferred())
            return storing[-1]

    rig.worker.on_transition(JobEvents(SlowOutbox(), inline_limit=0))
    submitting = rig.worker.submit(job_for(rig, "x", webhook_url="http://r.test/h"))
    assert len(storing) == 1 and not submitting.called
    storing[0].callback(None)
    assert fired(submitting).state is JobState.QUEUED
    rig.stop()

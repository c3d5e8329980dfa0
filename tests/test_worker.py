"""The worker in simulated time: order, swaps, residency, gating, retries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher

from foreman.ops.metrics import ForemanMetrics
from foreman.queue.alarm import Alarm
from foreman.queue.job import JobState
from foreman.queue.scheduler import QueueFull
from foreman.testing import SimModel
from foreman.wire.priority import Priority
from tests.store_engines import on_each_engine
from tests.worker_rig import fired, make_worker_rig, sync_call

SLOW: dict[str, Any] = {"load_seconds": 5.0, "tokens_per_second": 20.0, "reply_tokens": 10}


@on_each_engine
def test_drains_the_resident_model_before_swapping(tmp_path: Path) -> None:
    rig = make_worker_rig(tmp_path, **SLOW)
    for model, marker in [
        ("llama3.2", "a1"),
        ("gemma3:12b", "b1"),
        ("llama3.2", "a2"),
        ("gemma3:12b", "b2"),
        ("llama3.2", "a3"),
    ]:
        rig.submit(model, marker)
    rig.worker.startService()
    rig.run_until(rig.all_finished)
    assert rig.generation_markers() == ["a1", "a2", "a3", "b1", "b2"]
    assert all(job.state is JobState.DONE for job in rig.jobs())
    rig.stop()


@on_each_engine
def test_an_interleaved_burst_of_twenty_costs_one_swap(tmp_path: Path) -> None:
    rig = make_worker_rig(tmp_path, **SLOW)
    for index in range(20):
        rig.submit("llama3.2" if index % 2 == 0 else "gemma3:12b", f"job-{index}")
    rig.worker.startService()
    rig.run_until(rig.all_finished)
    assert rig.sim.load_history == ["llama3.2:latest", "gemma3:12b"]
    assert rig.sim.unloads == 1
    assert rig.worker.residency.loads == 2
    rig.stop()


@on_each_engine
def test_never_two_generations_at_once(tmp_path: Path) -> None:
    # The simulator would run four at a time for one model if asked to.
    rig = make_worker_rig(tmp_path, num_parallel=4, **SLOW)
    for index in range(50):
        rig.submit(["llama3.2", "gemma3:12b"][index % 2], f"job-{index}")
    rig.worker.startService()
    rig.run_until(rig.all_finished)
    assert rig.sim.completed_generations == 50
    assert rig.sim.max_active_generations == 1
    rig.stop()


@on_each_engine
def test_never_more_than_the_embedder_and_one_worker_model(tmp_path: Path) -> None:
    rig = make_worker_rig(tmp_path, embed_model="all-minilm", max_loaded_models=3, **SLOW)
    ensureDeferred(rig.worker.residency.warm_embedder())
    rig.run_until(lambda: "all-minilm:latest" in rig.sim.loaded_models())
    models = ["llama3.2", "gemma3:12b", "qwen3:8b", "llama3.2", "qwen3:8b"]
    for index, model in enumerate(models):
        rig.submit(model, f"job-{index}")
    most = 0

    def finished_while_watching() -> bool:
        nonlocal most
        most = max(most, len(rig.sim.loaded_models()))
        return rig.all_finished()

    rig.worker.startService()
    rig.run_until(finished_while_watching)
    assert most <= 2
    assert "all-minilm:latest" in rig.sim.loaded_models()
    rig.stop()


@on_each_engine
def test_someone_elses_models_are_unloaded_before_a_swap(tmp_path: Path) -> None:
    rig = make_worker_rig(tmp_path, **SLOW)
    rig.worker.startService()
    rig.submit("llama3.2", "mine")
    rig.run_until(rig.all_finished)
    rig.load_behind_foremans_back("gemma3:12b")
    rig.submit("qwen3:8b", "next")
    rig.run_until(rig.all_finished)
    assert rig.sim.loaded_models() == ["qwen3:8b"]
    assert rig.sim.max_active_generations == 1
    rig.stop()


@on_each_engine
def test_failing_calls_to_a_target_that_answers_are_retried_with_backoff(
    tmp_path: Path,
) -> None:
    # The target answers its polls, but the job's own calls fail: each
    # failure is an attempt, tried again after 1 s, then 2 s.
    rig = make_worker_rig(tmp_path, max_attempts=3)
    rig.agent.refuse_generations = True
    rig.submit("llama3.2", "patience")
    rig.worker.startService()
    rig.flush()
    (job,) = rig.jobs()
    assert job.state is JobState.QUEUED and job.attempt == 1
    assert job.not_before == pytest.approx(1.0)
    assert "cannot reach Ollama" in (job.last_error or "")
    assert not rig.worker.outage.active
    rig.clock.advance(1.0)
    rig.flush()
    (job,) = rig.jobs()
    assert job.attempt == 2 and job.not_before == pytest.approx(3.0)
    rig.agent.refuse_generations = False
    rig.clock.advance(1.9)
    rig.flush()
    assert rig.jobs()[0].attempt == 2  # still backing off
    rig.run_until(rig.all_finished)
    (job,) = rig.jobs()
    assert job.state is JobState.DONE and job.attempt == 3
    assert job.result is not None and b'"done":true' in job.result
    rig.stop()


@on_each_engine
def test_retries_run_out_with_the_last_error(tmp_path: Path) -> None:
    rig = make_worker_rig(tmp_path, max_attempts=3)
    rig.agent.refuse_generations = True
    rig.submit("llama3.2", "doomed")
    rig.worker.startService()
    rig.run_until(rig.all_finished)
    (job,) = rig.jobs()
    assert job.state is JobState.FAILED
    assert job.attempt == 3
    assert job.error_status == 502
    assert "cannot reach Ollama" in (job.last_error or "")
    assert rig.clock.seconds() == pytest.approx(3.0, abs=0.05)  # backoff 1 s, then 2 s
    rig.stop()


@on_each_engine
def test_an_outage_of_any_length_spends_no_attempt(tmp_path: Path) -> None:
    # Ollama restarting, a laptop asleep: nothing answers, not even the polls.
    rig = make_worker_rig(tmp_path, max_attempts=3)
    rig.agent.down = True
    first = fired(rig.submit("llama3.2", "before"))
    rig.worker.startService()
    rig.flush()
    assert rig.worker.outage.active
    rig.submit("gemma3:12b", "during")  # accepted while the target is away
    refused_before = rig.agent.refused
    rig.clock.pump([1.0] * 3600)  # an hour
    rig.flush()
    jobs = rig.jobs()
    assert [job.state for job in jobs] == [JobState.QUEUED, JobState.QUEUED]
    assert [job.attempt for job in jobs] == [0, 0]
    assert "cannot reach Ollama" in (jobs[0].last_error or "")
    assert rig.worker.paused is not None and "does not answer" in rig.worker.paused
    metrics = ForemanMetrics()
    metrics.watch(inventory=rig.inventory, worker=rig.worker)
    text = metrics.render().decode()
    assert 'foreman_worker_paused{reason="ollama_unreachable"} 1.0' in text
    assert "foreman_ollama_outages_total 1.0" in text
    # Asked again with backoff, at most every 5 s: three GETs a probe.
    assert rig.agent.refused - refused_before <= 3 * (3600 / 5 + 1)
    rig.agent.down = False
    taken = rig.run_until(rig.all_finished)
    assert taken <= 5.0 + 2 * 30  # the next probe, then two jobs
    jobs = rig.jobs()
    assert [job.state for job in jobs] == [JobState.DONE, JobState.DONE]
    assert [job.attempt for job in jobs] == [1, 1]
    assert rig.generation_markers() == ["before", "during"]  # in order, once each
    assert not rig.worker.outage.active and rig.worker.paused is None
    assert first.id == jobs[0].id
    rig.stop()


@on_each_engine
def test_a_caller_waits_out_a_short_outage_and_hears_503_after_a_long_one(
    tmp_path: Path,
) -> None:
    rig = make_worker_rig(tmp_path, caller_wait=30.0)
    rig.agent.down = True
    rig.worker.startService()
    patient, patient_request = sync_call(rig, "back soon")
    rig.clock.pump([1.0] * 20)
    rig.flush()
    assert not patient.called  # still waiting, 20 s in
    rig.agent.down = False
    rig.run_until(lambda: patient.called, limit=10)
    assert patient_request.responseCode in (None, 200)
    assert b'"done":true' in b"".join(patient_request.written)

    rig.agent.down = True
    rig.clock.advance(31)  # the next poll finds it gone
    rig.inventory.refresh()
    rig.flush()
    late, late_request = sync_call(rig, "too long")
    taken = rig.run_until(lambda: late.called, limit=60)
    assert 29 <= taken <= 31
    assert late_request.responseCode == 503
    assert late_request.responseHeaders.getRawHeaders(b"retry-after") == [b"5"]
    error = json.loads(b"".join(late_request.written))["error"]
    assert error.startswith("foreman: cannot reach Ollama at http://ollama.test")
    assert "waited 30 s" in error
    (job,) = [job for job in rig.jobs() if job.state is JobState.FAILED]
    assert (job.error_status, job.attempt) == (503, 0)
    assert rig.worker.outage.callers_refused == 1
    rig.stop()


@on_each_engine
def test_a_sync_caller_is_refused_only_after_one_more_look_at_the_target(
    tmp_path: Path,
) -> None:
    # The worker looks at a silent target at 0.5, 1.5, 3.5, 7.5, 12.5 s … A
    # caller arriving at 8 s waits until 11 s; Ollama is back at 9 s. Refused
    # at 11 s without a look, it would hear that Ollama does not answer.
    rig = make_worker_rig(tmp_path, caller_wait=3.0)
    rig.agent.down = True
    fired(rig.inventory.refresh())
    rig.worker.startService()
    rig.flush()
    assert rig.worker.outage.active
    rig.clock.pump([0.5] * 16)  # 8 s
    answered, request = sync_call(rig, "back in time")
    rig.clock.pump([0.5] * 2)  # 9 s
    rig.agent.down = False
    rig.run_until(lambda: answered.called, limit=10)
    assert request.responseCode in (None, 200), request.written
    assert b"back in time" in b"".join(request.written)
    assert not rig.worker.outage.active
    rig.stop()


@on_each_engine
def test_ollamas_refusal_fails_the_job_at_once(tmp_path: Path) -> None:
    rig = make_worker_rig(tmp_path)
    rig.sim.add_model(SimModel(name="embedonly:latest", size=1, embedding_only=True))
    rig.submit("embedonly", "no chat here")
    rig.worker.startService()
    rig.run_until(rig.all_finished)
    (job,) = rig.jobs()
    assert job.state is JobState.FAILED and job.attempt == 1
    assert job.error_status == 400
    assert job.last_error == '"embedonly" does not support chat'
    rig.stop()


@on_each_engine
def test_a_full_queue_refuses_more(tmp_path: Path) -> None:
    rig = make_worker_rig(tmp_path, max_queue=2)
    rig.submit("llama3.2", "one")
    rig.submit("llama3.2", "two")
    refused = rig.submit("llama3.2", "three")
    assert refused.called
    failure: Any = refused.result
    assert failure.check(QueueFull)
    refused.addErrback(lambda _: None)
    rig.stop()


@on_each_engine
def test_keep_alive_of_a_job_cannot_unpin_the_worker_model(tmp_path: Path) -> None:
    rig = make_worker_rig(tmp_path, **SLOW)
    rig.worker.startService()
    rig.submit("llama3.2", "first")
    rig.run_until(rig.all_finished)
    from foreman.queue.job import Job
    from foreman.queue.ulid import new_ulid

    now = rig.clock.seconds()
    body = b'{"model":"llama3.2","keep_alive":0,"messages":[{"role":"user","content":"x"}]}'
    rig.worker.submit(
        Job(
            id=new_ulid(now),
            model="llama3.2",
            endpoint="chat",
            body=body,
            sync=False,
            created_at=now,
            updated_at=now,
        )
    )
    rig.run_until(rig.all_finished)
    rig.clock.advance(3600)
    assert rig.sim.loaded_models() == ["llama3.2:latest"]
    assert rig.sim.load_history == ["llama3.2:latest"]
    rig.stop()


@on_each_engine
def test_finished_jobs_are_swept_after_their_ttl(tmp_path: Path) -> None:
    from foreman.queue.lifecycle import SWEEP_INTERVAL, ttl_sweeper

    rig = make_worker_rig(tmp_path)
    rig.worker.startService()
    rig.submit("llama3.2", "old")
    rig.run_until(rig.all_finished)
    cutoffs: list[float] = []

    def also(cutoff: float) -> Deferred[int]:  # what ends with finished jobs (batches)
        cutoffs.append(cutoff)
        return succeed(0)

    sweeper = ttl_sweeper(rig.store, rig.clock, ttl=3600.0, also=also)
    sweeper.startService()
    start = rig.clock.seconds()
    rig.clock.advance(3000.0)
    rig.submit("llama3.2", "young")
    rig.run_until(rig.all_finished)
    # The sweep an hour after the first job finished finds it just in time.
    rig.clock.advance(start + 3600.0 - rig.clock.seconds())
    assert len(rig.jobs()) == 2
    rig.clock.advance(SWEEP_INTERVAL)
    (survivor,) = rig.jobs()
    assert b"young" in survivor.body
    # Every sweep swept the rest with the same cutoff: an hour ago.
    assert cutoffs and cutoffs[-1] == rig.clock.seconds() - 3600.0
    sweeper.stopService()
    rig.stop()


@on_each_engine
def test_a_call_for_the_loaded_model_arriving_within_the_hold_saves_a_swap(
    tmp_path: Path,
) -> None:
    rig = make_worker_rig(tmp_path, **SLOW)
    rig.worker.hold.unknown = 0.25
    rig.worker.startService()
    rig.submit("llama3.2", "first")
    rig.run_until(rig.all_finished)
    rig.submit("gemma3:12b", "other model, waiting")
    rig.clock.advance(0.1)
    rig.flush()
    assert rig.generation_markers() == ["first"]  # held, not swapping yet
    rig.submit("llama3.2", "same model again")
    rig.run_until(rig.all_finished)
    assert rig.generation_markers() == ["first", "same model again", "other model, waiting"]
    assert rig.sim.load_history == ["llama3.2:latest", "gemma3:12b"]
    rig.stop()


@on_each_engine
def test_with_nothing_learned_the_swap_waits_only_the_grace(tmp_path: Path) -> None:
    rig = make_worker_rig(tmp_path, **SLOW)
    rig.worker.hold.unknown = 0.25
    rig.worker.startService()
    rig.submit("llama3.2", "first")
    rig.run_until(rig.all_finished)
    finished = rig.clock.seconds()
    rig.submit("gemma3:12b", "next")
    rig.run_until(lambda: any(job.state is JobState.LOADING for job in rig.jobs()), step=0.01)
    assert rig.clock.seconds() - finished == pytest.approx(0.25, abs=0.02)
    rig.run_until(rig.all_finished)
    rig.stop()


@on_each_engine
def test_a_person_waiting_after_batch_work_is_not_held_for_the_grace(tmp_path: Path) -> None:
    # The grace waits for the caller just served to ask again; a batch
    # job's follow-up could never go before a person, so nothing is gained.
    rig = make_worker_rig(tmp_path, **SLOW)
    rig.worker.hold.unknown = 0.25
    rig.worker.startService()
    rig.submit("llama3.2", "batch", priority=Priority.BATCH)
    rig.run_until(rig.all_finished)
    finished = rig.clock.seconds()
    rig.submit("gemma3:12b", "a person")
    rig.run_until(lambda: any(job.state is JobState.LOADING for job in rig.jobs()), step=0.01)
    assert rig.clock.seconds() - finished < 0.02
    rig.run_until(rig.all_finished)
    rig.stop()


@on_each_engine
def test_an_alarm_set_for_a_moment_just_past_rings_at_once(reactor: Any) -> None:
    # The worker reads the clock, then sleeps until a moment (the swap
    # grace's end) that may have passed by the time the alarm is set. The
    # real reactor refuses a negative delay (a Clock does not).
    alarm = Alarm(reactor)
    slept = ensureDeferred(alarm.sleep(until=reactor.seconds() - 0.001))
    assert not slept.called  # neither failed nor over: set to ring at once
    alarm.wake()
    assert slept.called and slept.result is None


@on_each_engine
def test_the_worker_survives_a_failing_turn_and_goes_on(tmp_path: Path) -> None:
    rig = make_worker_rig(tmp_path, **SLOW)
    real_pick = rig.worker.scheduler.pick
    failures = [RuntimeError("a bug in choosing")]

    def pick(resident: str | None, now: float) -> Any:
        if failures:
            raise failures.pop()
        return real_pick(resident, now)

    rig.worker.scheduler.pick = pick  # type: ignore[method-assign]
    events: list[LogEvent] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    rig.worker.startService()
    rig.submit("llama3.2", "after the failure")
    rig.run_until(rig.all_finished)
    assert rig.generation_markers() == ["after the failure"]
    rig.stop()
    globalLogPublisher.removeObserver(observer)
    logged = [e["log_failure"].value for e in events if "log_failure" in e]
    assert [str(error) for error in logged] == ["a bug in choosing"]

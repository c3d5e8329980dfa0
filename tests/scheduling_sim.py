"""Arrivals played against the real worker in simulated time, and what happened.

The worker, its scheduler, store (a real SQLite file) and residency run as
in production, in front of the simulated Ollama on a :class:`Clock`; a
job's length is set by its ``num_predict`` (tokens at the simulator's
rate) and every load takes the models' ``load_seconds``. Time jumps from
one pending event to the next, so an hour of queueing takes milliseconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

from foreman.queue.job import Job, JobState
from foreman.queue.order import Policy
from foreman.queue.ulid import new_ulid
from foreman.wire.model_names import canonical_model_name
from foreman.wire.priority import Priority
from tests.worker_rig import WorkerRig, make_worker_rig

TOKENS_PER_SECOND = 10.0
LOAD_SECONDS = 2.0
SWAP_GRACE = 0.25
MODELS = ("llama3.2", "gemma3:12b", "qwen3:8b")


@attrs.frozen
class Arrival:
    at: float
    model: str
    priority: Priority
    #: The reply's length: ``tokens / TOKENS_PER_SECOND`` seconds of generation.
    tokens: int
    #: The key it is sent with (ADR-0030).
    caller: str | None = None


@attrs.define
class Run:
    """One job's life as the worker lived it."""

    id: str
    model: str
    priority: Priority
    created_at: float
    tokens: int
    started_at: float | None = None
    finished_at: float | None = None
    #: Whether starting it cost a model load.
    loaded: bool = False
    caller: str | None = None

    @property
    def waited(self) -> float:
        assert self.started_at is not None
        return self.started_at - self.created_at


@attrs.define
class Played:
    runs: dict[str, Run]
    #: Model loads the simulated Ollama made.
    loads: int
    rig: WorkerRig

    def started(self) -> list[Run]:
        """Every run that started, in the order they started."""
        runs = [run for run in self.runs.values() if run.started_at is not None]
        return sorted(runs, key=lambda run: (run.started_at, run.id))

    def of(self, priority: Priority) -> list[Run]:
        return [run for run in self.started() if run.priority is priority]


def job_for(arrival: Arrival, now: float) -> Job:
    body = {
        "model": arrival.model,
        "messages": [{"role": "user", "content": "hi"}],
        "options": {"num_predict": arrival.tokens},
    }
    return Job(
        id=new_ulid(now),
        model=arrival.model,
        endpoint="chat",
        body=json.dumps(body).encode(),
        sync=False,
        created_at=now,
        updated_at=now,
        priority=arrival.priority,
        caller=arrival.caller,
    )


def play(
    tmp_path: Path,
    arrivals: Sequence[Arrival],
    policy: Policy,
    *,
    until: Callable[[Played], bool] | None = None,
    on_done: Callable[[Played, Run], Sequence[Arrival]] | None = None,
    horizon: float = 24 * 3600.0,
    load_seconds: float = LOAD_SECONDS,
    swap_grace: float | None = SWAP_GRACE,
    learned_holds: bool = True,
    for_seconds: float | None = None,
    fresh: bool = False,
) -> Played:
    """Submit each arrival at its time and run until every job is finished
    (or ``until`` holds, or ``for_seconds`` have passed); ``on_done`` may
    answer a finished run with more arrivals (a caller in a loop). ``fresh``:
    foreman has measured no load yet (it estimates them from the models' sizes)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    rig = make_worker_rig(
        tmp_path,
        policy=policy,
        swap_grace=swap_grace,
        load_seconds=load_seconds,
        tokens_per_second=TOKENS_PER_SECOND,
        max_queue=10_000,
        # As a foreman that has run a while knows them (ADR-0024).
        known_loads=None if fresh else dict.fromkeys(MODELS, load_seconds),
        learned_holds=learned_holds,
    )
    played = Played({}, 0, rig)
    clock = rig.clock

    def submit(arrival: Arrival) -> None:
        job = job_for(arrival, clock.seconds())
        played.runs[job.id] = Run(
            job.id,
            job.model,
            job.priority,
            job.created_at,
            arrival.tokens,
            caller=arrival.caller,
        )
        rig.worker.submit(job)

    def schedule(arrival: Arrival) -> None:
        clock.callLater(max(0.0, arrival.at - clock.seconds()), submit, arrival)

    last_model: list[str | None] = [None]

    def heard(job: Job, previous: JobState | None) -> None:
        run = played.runs.get(job.id)
        if run is None:
            return
        now = clock.seconds()
        if job.state is JobState.LOADING:
            run.started_at = now
            model = canonical_model_name(job.model)
            run.loaded = model != last_model[0]
            last_model[0] = model
        elif job.state.terminal:
            run.finished_at = now
            for more in on_done(played, run) if on_done else ():
                schedule(more)

    rig.worker.on_transition(heard)
    for arrival in arrivals:
        schedule(arrival)
    if for_seconds is not None:
        # Time goes on to the end, even when nothing else happens meanwhile.
        end = clock.callLater(for_seconds, lambda: None)
        until = lambda played: not end.active()  # noqa: E731
    rig.worker.startService()
    try:
        _run(rig, played, until, horizon)
    finally:
        played.loads = rig.sim.loads
        rig.stop()
    return played


def _run(
    rig: WorkerRig, played: Played, until: Callable[[Played], bool] | None, horizon: float
) -> None:
    clock = rig.clock
    while True:
        rig.flush()
        if until is not None and until(played):
            return
        pending = [call.getTime() for call in clock.getDelayedCalls()]
        if until is None and not pending and _all_finished(played):
            return
        if not pending:
            raise AssertionError("nothing left to happen, yet not every job finished")
        if clock.seconds() > horizon:
            raise AssertionError(f"still running after {horizon} simulated seconds")
        clock.advance(max(0.0, min(pending) - clock.seconds()))


def _all_finished(played: Played) -> bool:
    return all(run.finished_at is not None for run in played.runs.values())

"""The callers of ``bench/scheduler_classes.py``: loops, a batch, people at random.

Each sends the same calls whichever way it is pointed (straight at the
simulated Ollama, or at foreman); the plans are seeded. A wait is always a
time to answer: request sent (or due) → whole reply received; for a
``/jobs`` job, submit → its ``finished_at``.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from twisted.internet import defer

from bench._workload import ChatSample, Client, chat_body, one_chat, sleep
from foreman.testing import SimulatedOllama

#: Three callers loop on one model; one more asks a second model once.
LOOPERS = 3
LOOP_MODEL = "qwen3:14b"
OTHER_MODEL = "gemma3:27b"
#: The other caller asks once the loops are going: their model loaded (1 s)
#: and each looper answered at least once.
OTHER_AFTER = 2.5

#: Straight at the simulator, the batch's calls leave this far apart (all
#: still in flight at once), so that they arrive in the plan's order.
SEND_INTERVAL = 0.01
#: How often the state of the batch's jobs is read (``GET /jobs``).
POLL_SECONDS = 0.25
FINAL_STATES = frozenset({"done", "failed", "cancelled"})


# -- loops ---------------------------------------------------------------------------


@dataclass
class LoopsOutcome:
    loops: list[ChatSample]
    other: ChatSample
    #: ``perf_counter`` when the loops started.
    started: float


async def loops(reactor: Any, client: Client, url: str, seconds: float) -> LoopsOutcome:
    """``LOOPERS`` callers on ``LOOP_MODEL``, back to back, each starting calls
    for ``seconds``; after ``OTHER_AFTER``, one call for ``OTHER_MODEL``."""
    chat_url = url + "/api/chat"
    started = time.perf_counter()
    samples: list[ChatSample] = []

    async def looper(number: int) -> None:
        turn = 0
        while time.perf_counter() < started + seconds:
            sample = await one_chat(client, chat_url, number, turn, LOOP_MODEL, time.perf_counter())
            samples.append(sample)
            if sample.error is not None:
                return
            turn += 1

    running = [defer.ensureDeferred(looper(number)) for number in range(LOOPERS)]
    await sleep(reactor, OTHER_AFTER)
    other = await one_chat(client, chat_url, LOOPERS, 0, OTHER_MODEL, time.perf_counter())
    await defer.gatherResults(running, consumeErrors=True)
    return LoopsOutcome(samples, other, started)


# -- a batch, and people --------------------------------------------------------------


def batch_plan(count: int, seed: int, models: Sequence[str]) -> list[str]:
    """The batch's models, in submission order: seeded, the same every way."""
    rng = random.Random(seed + 10)
    return [rng.choice(models) for _ in range(count)]


def people_schedule(
    count: int, seed: int, models: Sequence[str], interval: float
) -> list[tuple[float, str]]:
    """People's calls: (seconds after the batch was sent, model), seeded Poisson
    with mean ``interval``. The random numbers do not depend on ``interval``:
    for the same seed, a longer interval gives the same people, for the same
    models in the same order, with every gap stretched in proportion."""
    rng = random.Random(seed + 11)
    schedule, at = [], 0.0
    for _ in range(count):
        at += rng.expovariate(1.0 / interval)
        schedule.append((at, rng.choice(models)))
    return schedule


@dataclass
class BatchOutcome:
    #: Each finished job's time to answer, in seconds.
    answers: list[float] = field(default_factory=list)
    #: First job sent → last job finished.
    makespan: float = float("nan")
    errors: list[str] = field(default_factory=list)


def _batch_text(index: int) -> str:
    return f"batch job {index}: summarise why the sky is blue"


async def batch_direct(reactor: Any, client: Client, url: str, plan: list[str]) -> BatchOutcome:
    """Every job as a plain ``/api/chat`` call, all in flight at once as a batch
    client would send them; ``SEND_INTERVAL`` apart, so that they reach the
    simulator in the plan's order."""
    started = time.perf_counter()
    calls = []
    for index, model in enumerate(plan):
        calls.append(
            defer.ensureDeferred(one_chat(client, url + "/api/chat", -1, index, model, started))
        )
        await sleep(reactor, SEND_INTERVAL)
    samples: list[ChatSample] = await defer.gatherResults(calls, consumeErrors=True)
    return BatchOutcome(
        [s.ended - s.started for s in samples if s.error is None],
        max(s.ended for s in samples) - started,
        [f"batch job {s.turn}: {s.error}" for s in samples if s.error is not None],
    )


def served_order(sim: SimulatedOllama) -> str:
    """The chats in the order they reached the simulator (through foreman: the
    order they ran), run-length encoded: ``qwen3 batch x5, gemma3 person, …``."""
    runs: list[list[Any]] = []
    for request in sim.requests:
        document = json.loads(request.body) if request.path == "/api/chat" else {}
        if not document.get("messages"):
            continue  # not a chat, or a load call
        kind = "batch" if document["messages"][-1]["content"].startswith("batch") else "person"
        what = f"{document['model'].split(':')[0]} {kind}"
        if runs and runs[-1][0] == what:
            runs[-1][1] += 1
        else:
            runs.append([what, 1])
    return ", ".join(what if count == 1 else f"{what} x{count}" for what, count in runs)


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def batch_jobs(
    reactor: Any, client: Client, url: str, plan: list[str], priority: str | None
) -> BatchOutcome:
    """Every job submitted to ``POST /jobs`` (with ``priority`` if given), one
    after the other in the plan's order, then read back with ``GET /jobs``
    until all have finished."""
    outcome = BatchOutcome()
    started = time.time()

    async def submit(index: int, model: str) -> tuple[str | None, float]:
        body = chat_body(model, _batch_text(index))
        if priority is not None:
            body["priority"] = priority
        sent = time.time()
        reply = await client.post(url + "/jobs", body)
        if reply.status != 202:
            outcome.errors.append(f"submit {index}: {reply.status} {reply.body[:200]!r}")
            return None, sent
        job_id: str = json.loads(reply.body)["job_id"]
        return job_id, sent

    submitted = [await submit(index, model) for index, model in enumerate(plan)]
    sent_at = {job_id: sent for job_id, sent in submitted if job_id is not None}
    views = await _finished(reactor, client, url, set(sent_at))
    ends = []
    for job_id, view in views.items():
        ended = _epoch(view["finished_at"] or view["updated_at"])
        ends.append(ended)
        if view["state"] == "done":
            outcome.answers.append(ended - sent_at[job_id])
        else:
            outcome.errors.append(f"job {job_id}: {view['state']}: {view['error']}")
    outcome.makespan = max(ends, default=float("nan")) - started
    return outcome


async def _finished(
    reactor: Any, client: Client, url: str, job_ids: set[str]
) -> dict[str, dict[str, Any]]:
    """The views of ``job_ids`` once every one of them has finished."""
    while True:
        reply = await client.get(url + "/jobs?limit=500")
        if reply.status != 200:
            raise RuntimeError(f"GET /jobs answered {reply.status}: {reply.body[:200]!r}")
        views = {
            view["job_id"]: view
            for view in json.loads(reply.body)["jobs"]
            if view["job_id"] in job_ids
        }
        if len(views) == len(job_ids) and all(
            view["state"] in FINAL_STATES for view in views.values()
        ):
            return views
        await sleep(reactor, POLL_SECONDS)

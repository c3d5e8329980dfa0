"""Scheduling classes: three scenarios, each three ways, side by side.

Part of ``bench/scheduler.py`` (``--only classes`` runs just this part; the
tables are printed by ``bench/_classes_report.py``). Each scenario runs
against a fresh simulated Ollama set up as the design's Mac (one big model
fits at a time; loads 1 s, replies 20 tokens at 100/s, so a job's reply
takes 0.2 s), three ways:

- **direct FIFO Ollama**: the calls straight at the simulator, which follows
  Ollama's own scheduling (a request for a loaded model attaches at once,
  the others wait in one FIFO for a load);
- **today's rule**: foreman with one class, drain by model and no bound, as
  before scheduling classes: every job interactive (``/jobs`` with
  ``"priority": "interactive"``, sync calls by default) and
  ``--max-wait`` / ``--batch-max-wait`` of 1000 h, which nothing reaches;
- **new policy**: foreman's defaults for the classes (sync calls
  interactive, ``/jobs`` batch), with the bounds **scaled down** with the
  loads: ``--max-wait 5s`` (default 60 s) and ``--batch-max-wait 60s``
  (default 30 min).

foreman's swap grace is 40 ms both ways (see ``bench/_simulator.py``).

**loops.** Three callers loop on ``qwen3:14b`` (sync ``/api/chat``, one call
at a time each, back to back) for 30 s (10 s with ``--quick``); 2.5 s in, one
more caller asks ``gemma3:27b`` once. Target (new policy): the other caller
is answered within max-wait + one job + one load, plus its own reply:
5 + 0.2 + 1 + 0.2 = 6.4 s.

**batch + people**, two variants (``PEOPLE``). 60 small jobs (12 with
``--quick``) over the three big models, in a seeded order: through foreman
submitted to ``POST /jobs`` one after the other; straight at the simulator as
60 ``/api/chat`` calls all in flight at once, as a batch client would send
them (10 ms apart, so that they arrive in the same order). Meanwhile people's
sync calls arrive on a seeded Poisson schedule for any of the three models:

- **busy**: 12 people (4 with ``--quick``), mean interval 2 s;
- **calm**: 5 people (1 with ``--quick``), mean interval 8 s. The draw is the
  busy one's (same seed, same random numbers), so its people are the busy
  variant's first ones, for the same models in the same order, each interval
  4x longer. Five: those that come by about the batch's end (its work alone
  is 15 s; with the default seed they come at 2.3-17.7 s, the sixth would
  come at 30.2 s). With ``--quick`` the batch lasts about 6 s, and only the
  first person comes within it.

Targets (new policy), for both: people's p95 wait ≤ one job + one load, plus
their own reply (1.4 s; 2.4 s if the job running when a call arrives is
counted with its own load); total loads ≤ 1.5x today's rule; batch makespan
≤ 1.2x today's rule.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
from twisted.internet import defer

from bench._classes_workload import (
    LOOP_MODEL,
    LOOPERS,
    OTHER_AFTER,
    OTHER_MODEL,
    SEND_INTERVAL,
    BatchOutcome,
    batch_direct,
    batch_jobs,
    batch_plan,
    loops,
    people_schedule,
    served_order,
)
from bench._simulator import (
    BIG_MODELS,
    JOB_SECONDS,
    LOAD_SECONDS,
    SWAP_GRACE,
    foreman_in_front,
    listening,
    the_mac,
)
from bench._workload import Client, open_loop, summary_ms
from foreman.testing import SimulatedOllama

#: foreman's bounds, scaled down with the loads (1 s here, 5-10 s on a laptop).
MAX_WAIT_SECONDS = 5.0
MAX_WAIT = "5s"  # foreman's default: 60s
BATCH_MAX_WAIT = "60s"  # foreman's default: 30m
#: Today's rule: bounds that nothing reaches.
NO_BOUND = "1000h"

OTHER_TARGET = MAX_WAIT_SECONDS + JOB_SECONDS + LOAD_SECONDS + JOB_SECONDS
PEOPLE_TARGET = JOB_SECONDS + LOAD_SECONDS + JOB_SECONDS
#: The same when the job running as a call arrives is counted with its own
#: load (the worker does not interrupt a job, and a job begins with its load).
PEOPLE_TARGET_RUNNING_LOAD = LOAD_SECONDS + PEOPLE_TARGET
LOADS_TARGET = 1.5
MAKESPAN_TARGET = 1.2

CHAT_MODELS = tuple(model.name for model in BIG_MODELS)


@attrs.frozen
class Way:
    key: str
    title: str
    #: foreman's options; ``None``: straight at the simulator.
    foreman_arguments: tuple[str, ...] | None
    #: The ``priority`` field of a ``/jobs`` submission (``None``: the default, batch).
    jobs_priority: str | None = None


WAYS = (
    Way("direct", "direct FIFO Ollama", None),
    Way(
        "today",
        "today's rule",
        ("--swap-grace", SWAP_GRACE, "--max-wait", NO_BOUND, "--batch-max-wait", NO_BOUND),
        "interactive",
    ),
    Way(
        "classes",
        "new policy",
        ("--swap-grace", SWAP_GRACE, "--max-wait", MAX_WAIT, "--batch-max-wait", BATCH_MAX_WAIT),
    ),
)


@attrs.frozen
class People:
    """A variant of the batch + people scenario: how often people come."""

    key: str
    #: People's calls: a seeded Poisson process with this mean interval, in seconds.
    interval: float
    count: int


@attrs.frozen
class ClassSettings:
    #: How long the loops go on starting calls.
    loop_seconds: float
    batch_jobs: int
    #: The batch + people variants, in the report's order.
    people: tuple[People, ...]


BUSY_INTERVAL = 2.0
CALM_INTERVAL = 8.0
FULL_CLASSES = ClassSettings(
    loop_seconds=30.0,
    batch_jobs=60,
    people=(People("busy", BUSY_INTERVAL, 12), People("calm", CALM_INTERVAL, 5)),
)
QUICK_CLASSES = ClassSettings(
    loop_seconds=10.0,
    batch_jobs=12,
    people=(People("busy", BUSY_INTERVAL, 4), People("calm", CALM_INTERVAL, 1)),
)


@asynccontextmanager
async def _target(reactor: Any, way: Way) -> AsyncIterator[tuple[SimulatedOllama, str]]:
    """A fresh simulator, and the URL to send calls to (foreman's, or its own)."""
    sim = the_mac(reactor)
    async with listening(reactor, sim) as sim_url:
        if way.foreman_arguments is None:
            yield sim, sim_url
        else:
            async with foreman_in_front(sim_url, *way.foreman_arguments) as url:
                yield sim, url


def _loads(sim: SimulatedOllama) -> dict[str, Any]:
    return {"loads": sim.loads, "load_history": list(sim.load_history)}


async def loops_run(reactor: Any, way: Way, settings: ClassSettings) -> dict[str, Any]:
    client = Client(reactor)
    async with _target(reactor, way) as (sim, url):
        try:
            outcome = await loops(reactor, client, url, settings.loop_seconds)
        finally:
            await client.close()
        figures = _loads(sim)
    samples = [*outcome.loops, outcome.other]
    ok_loops = [s for s in outcome.loops if s.error is None]
    other = outcome.other
    figures["other_wait_s"] = other.ended - other.started
    figures["other_answered_while_looping"] = other.ended < outcome.started + settings.loop_seconds
    figures["loop_calls"] = len(ok_loops)
    loop_seconds = max((s.ended for s in ok_loops), default=outcome.started) - outcome.started
    figures["loop_seconds"] = loop_seconds
    figures["loop_calls_per_second"] = len(ok_loops) / loop_seconds if loop_seconds else 0.0
    figures["loop_waits"] = summary_ms([s.ended - s.started for s in ok_loops])
    waits = [s.ended - s.started for s in samples if s.error is None]
    figures["interactive"] = summary_ms(waits)
    figures["longest_wait_s"] = max(s.ended - s.started for s in samples)
    figures["errors"] = [f"caller {s.caller}: {s.error}" for s in samples if s.error is not None]
    return figures


async def batch_people_run(
    reactor: Any, way: Way, plan: list[str], schedule: list[tuple[float, str]]
) -> dict[str, Any]:
    client = Client(reactor)
    async with _target(reactor, way) as (sim, url):
        try:
            people = defer.ensureDeferred(open_loop(client, url + "/api/chat", schedule, reactor))
            batch: BatchOutcome
            if way.foreman_arguments is None:
                batch = await batch_direct(reactor, client, url, plan)
            else:
                batch = await batch_jobs(reactor, client, url, plan, way.jobs_priority)
            samples = await people
        finally:
            await client.close()
        figures = _loads(sim)
        figures["served_order"] = served_order(sim)
    waits = [s.ended - s.started for s in samples if s.error is None]
    figures["people_waits_s"] = waits
    figures["interactive"] = summary_ms(waits)
    figures["batch_answers"] = summary_ms(batch.answers)
    figures["batch_makespan_s"] = batch.makespan
    figures["longest_wait_s"] = max([*waits, *batch.answers], default=float("nan"))
    replies = len(samples) + len(plan)
    figures["busy_s"] = replies * JOB_SECONDS + sim.loads * LOAD_SECONDS
    figures["errors"] = batch.errors + [
        f"person {s.caller}: {s.error}" for s in samples if s.error is not None
    ]
    return figures


async def run(reactor: Any, settings: ClassSettings, seed: int) -> dict[str, Any]:
    started = time.monotonic()
    plan = batch_plan(settings.batch_jobs, seed, CHAT_MODELS)
    results: dict[str, Any] = {
        "settings": {
            **attrs.asdict(settings),
            "max_wait": MAX_WAIT,
            "batch_max_wait": BATCH_MAX_WAIT,
            "today_bounds": NO_BOUND,
            "swap_grace": SWAP_GRACE,
            "loopers": LOOPERS,
            "loop_model": LOOP_MODEL,
            "other_model": OTHER_MODEL,
            "other_after_s": OTHER_AFTER,
            "send_interval_s": SEND_INTERVAL,
            "models": list(CHAT_MODELS),
            "targets": {
                "other_wait_s": OTHER_TARGET,
                "people_p95_s": PEOPLE_TARGET,
                "people_p95_with_running_load_s": PEOPLE_TARGET_RUNNING_LOAD,
                "loads_over_today": LOADS_TARGET,
                "makespan_over_today": MAKESPAN_TARGET,
            },
        },
        "loops": {},
        #: One scenario per variant of ``settings.people``, by its key.
        "batch_people": {},
    }
    for way in WAYS:
        results["loops"][way.key] = await loops_run(reactor, way, settings)
    for people in settings.people:
        schedule = people_schedule(people.count, seed, CHAT_MODELS, people.interval)
        scenario: dict[str, Any] = {
            "people": attrs.asdict(people),
            "batch_plan": plan,
            "people_schedule": schedule,
        }
        for way in WAYS:
            scenario[way.key] = await batch_people_run(reactor, way, plan, schedule)
        results["batch_people"][people.key] = scenario
    results["wall_seconds"] = time.monotonic() - started
    return results

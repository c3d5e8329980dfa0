"""Scheduling classes: two scenarios, each three ways, side by side.

Part of ``bench/scheduler.py`` (``--only classes`` runs just this part). Each
scenario runs against a fresh simulated Ollama set up as the design's Mac
(one big model fits at a time; loads 1 s, replies 20 tokens at 100/s, so a
job's reply takes 0.2 s), three ways:

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

**batch + people.** 60 small jobs (12 with ``--quick``) over the three big
models, in a seeded order: through foreman submitted to ``POST /jobs`` one
after the other; straight at the simulator as 60 ``/api/chat`` calls all in
flight at once, as a batch client would send them (10 ms apart, so that they
arrive in the same order).
Meanwhile people's sync calls (12; 4 with ``--quick``) arrive on a seeded
Poisson schedule (mean interval 2 s) for any of the three models. Targets
(new policy): people's p95 wait ≤ one job + one load, plus their own reply
(1.4 s; 2.4 s if the job running when a call arrives is counted with its own
load); total loads ≤ 1.5x today's rule; batch makespan ≤ 1.2x today's rule.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
from twisted.internet import defer

from bench._classes_workload import (
    LOOP_MODEL,
    LOOPERS,
    OTHER_AFTER,
    OTHER_MODEL,
    PEOPLE_INTERVAL,
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
class ClassSettings:
    #: How long the loops go on starting calls.
    loop_seconds: float
    batch_jobs: int
    people: int


FULL_CLASSES = ClassSettings(loop_seconds=30.0, batch_jobs=60, people=12)
QUICK_CLASSES = ClassSettings(loop_seconds=10.0, batch_jobs=12, people=4)


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
    schedule = people_schedule(settings.people, seed, CHAT_MODELS)
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
            "people_interval_s": PEOPLE_INTERVAL,
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
        "batch_people": {"batch_plan": plan, "people_schedule": schedule},
    }
    for way in WAYS:
        results["loops"][way.key] = await loops_run(reactor, way, settings)
    for way in WAYS:
        results["batch_people"][way.key] = await batch_people_run(reactor, way, plan, schedule)
    results["wall_seconds"] = time.monotonic() - started
    return results


# -- the report ------------------------------------------------------------------------


def _s(seconds: float) -> str:
    return f"{seconds:.2f} s"


def _p(figure: dict[str, float], *keys: str) -> str:
    return " / ".join(_s(figure[key] / 1e3) for key in keys)


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


Row = tuple[str, ...]


def _loops_rows(loops: dict[str, Any]) -> Iterator[Row]:
    d, t, c = (loops[way.key] for way in WAYS)
    yield (
        "the other caller's wait (time to answer)",
        *(_s(f["other_wait_s"]) for f in (d, t, c)),
        f"≤ {OTHER_TARGET:.1f} s: {_met(c['other_wait_s'] <= OTHER_TARGET)}",
    )
    yield (
        "… answered while the loops still ran",
        *("yes" if f["other_answered_while_looping"] else "no" for f in (d, t, c)),
        "",
    )
    yield "longest wait, any call", *(_s(f["longest_wait_s"]) for f in (d, t, c)), ""
    yield (
        f"interactive wait p50 / p95, all calls (n = {d['interactive']['count']:.0f} "
        f"/ {t['interactive']['count']:.0f} / {c['interactive']['count']:.0f})",
        *(_p(f["interactive"], "p50_ms", "p95_ms") for f in (d, t, c)),
        "",
    )
    yield (
        "loop calls answered, per second",
        *(
            f"{f['loop_calls']} in {f['loop_seconds']:.1f} s ({f['loop_calls_per_second']:.2f}/s)"
            for f in (d, t, c)
        ),
        "",
    )
    yield "batch makespan", "—", "—", "—", ""
    yield "model loads", *(str(f["loads"]) for f in (d, t, c)), ""
    yield "failed calls", *(str(len(f["errors"])) for f in (d, t, c)), "0"


def _batch_rows(scenario: dict[str, Any]) -> Iterator[Row]:
    d, t, c = (scenario[way.key] for way in WAYS)
    p95 = c["interactive"]["p95_ms"] / 1e3
    yield (
        f"interactive wait p50 / p95 / max (n = {c['interactive']['count']:.0f})",
        *(_p(f["interactive"], "p50_ms", "p95_ms", "max_ms") for f in (d, t, c)),
        f"p95 ≤ {PEOPLE_TARGET:.1f} s: {_met(p95 <= PEOPLE_TARGET)} (≤ "
        f"{PEOPLE_TARGET_RUNNING_LOAD:.1f} s with the running job's own load: "
        f"{_met(p95 <= PEOPLE_TARGET_RUNNING_LOAD)})",
    )
    yield (
        "longest wait, any call (batch jobs included)",
        *(_s(f["longest_wait_s"]) for f in (d, t, c)),
        "",
    )
    yield (
        "batch jobs' time to answer p50 / max",
        *(_p(f["batch_answers"], "p50_ms", "max_ms") for f in (d, t, c)),
        "",
    )
    makespan = c["batch_makespan_s"] / t["batch_makespan_s"]
    yield (
        "batch makespan",
        *(_s(f["batch_makespan_s"]) for f in (d, t, c)),
        f"≤ {MAKESPAN_TARGET}x today's: {makespan:.2f}x, {_met(makespan <= MAKESPAN_TARGET)}",
    )
    loads = c["loads"] / max(1, t["loads"])
    yield (
        "model loads",
        *(str(f["loads"]) for f in (d, t, c)),
        f"≤ {LOADS_TARGET}x today's: {loads:.2f}x, {_met(loads <= LOADS_TARGET)}",
    )
    yield (
        "work one thing at a time (replies + loads)",
        *(_s(f["busy_s"]) for f in (d, t, c)),
        "",
    )
    yield "failed calls", *(str(len(f["errors"])) for f in (d, t, c)), "0"


def _table(rows: Iterator[Row]) -> list[str]:
    titles = " | ".join(way.title for way in WAYS)
    out = [f"| measure | {titles} | target (new policy) |", "|---|---:|---:|---:|---|"]
    return out + [f"| {' | '.join(row)} |" for row in rows]


def _load_orders(scenario: dict[str, Any]) -> list[str]:
    out = []
    for way in WAYS:
        figures = scenario[way.key]
        out.append(f"Load order, {way.title}: {' '.join(figures['load_history'])}")
        out += [f"{way.title} error: {error}" for error in figures["errors"][:5]]
    for way in WAYS:
        if way.foreman_arguments is not None and "served_order" in scenario[way.key]:
            out.append(f"Order run, {way.title}: {scenario[way.key]['served_order']}")
    return out


def report(results: dict[str, Any]) -> str:
    settings = results["settings"]
    batch = results["batch_people"]
    return "\n".join(
        [
            "Scheduling classes, on the design's Mac (one big model at a time; loads "
            f"{LOAD_SECONDS:g} s, replies {JOB_SECONDS:g} s). Time is scaled down, and "
            f"foreman's bounds with it: new policy --max-wait {settings['max_wait']} "
            f"(default 60s), --batch-max-wait {settings['batch_max_wait']} (default 30m); "
            f"today's rule: both {settings['today_bounds']}, every job interactive; "
            f"--swap-grace {settings['swap_grace']} both ways.",
            "",
            f"Loops: {settings['loopers']} callers loop on {settings['loop_model']} for "
            f"{settings['loop_seconds']:g} s; {settings['other_after_s']:g} s in, one call "
            f"for {settings['other_model']}.",
            "",
            *_table(_loops_rows(results["loops"])),
            "",
            *_load_orders(results["loops"]),
            "",
            f"Batch + people: {settings['batch_jobs']} batch jobs over "
            f"{', '.join(settings['models'])} (through foreman submitted to /jobs one after "
            "the other; direct as concurrent /api/chat calls, sent "
            f"{settings['send_interval_s'] * 1e3:g} ms apart); "
            f"{settings['people']} people's sync calls, "
            f"Poisson, mean interval {settings['people_interval_s']:g} s, at "
            + ", ".join(f"{at:.1f} s ({model})" for at, model in batch["people_schedule"])
            + ".",
            "",
            *_table(_batch_rows(batch)),
            "",
            *_load_orders(batch),
            "",
            f"Wall time of this part {results['wall_seconds']:.0f} s.",
        ]
    )

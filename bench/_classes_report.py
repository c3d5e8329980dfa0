"""The tables of ``bench/scheduler_classes.py``: each scenario three ways, side by side."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from bench._simulator import JOB_SECONDS, LOAD_SECONDS
from bench.scheduler_classes import (
    LOADS_TARGET,
    MAKESPAN_TARGET,
    OTHER_TARGET,
    PEOPLE_TARGET,
    PEOPLE_TARGET_RUNNING_LOAD,
    WAYS,
)


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


def _people_waits(scenario: dict[str, Any]) -> list[str]:
    """Each person's wait, in arrival order, the three ways."""
    titles = " | ".join(way.title for way in WAYS)
    out = [f"| person: arrival (model) | {titles} |", "|---|---:|---:|---:|"]
    for number, (at, model) in enumerate(scenario["people_schedule"]):
        waits = []
        for way in WAYS:
            all_waits = scenario[way.key]["people_waits_s"]
            # Only answered calls have a wait; with a failure the columns would shift.
            ok = len(all_waits) == len(scenario["people_schedule"])
            waits.append(_s(all_waits[number]) if ok else "—")
        out.append(f"| {at:.1f} s ({model.split(':')[0]}) | {' | '.join(waits)} |")
    return out


def _loads_for_people(order: str) -> int:
    """In a served order (``qwen3 batch x5, gemma3 person, …``), the runs of
    people's calls that came right after another model's: one load each, as
    one big model fits at a time (the very first run too: nothing was loaded)."""
    loads, previous = 0, None
    for run in order.split(", ") if order else ():
        model, kind = run.split(" ")[:2]
        if kind == "person" and model != previous:
            loads += 1
        previous = model
    return loads


def _people_loads(scenario: dict[str, Any]) -> str:
    counts = [
        f"{way.title} {_loads_for_people(scenario[way.key]['served_order'])} "
        f"of {scenario[way.key]['loads']}"
        for way in WAYS
        if way.foreman_arguments is not None
    ]
    return "Loads made for a person's call (its model was not the one loaded): " + (
        ", ".join(counts) + "."
    )


def _batch_people(settings: dict[str, Any], key: str, scenario: dict[str, Any]) -> list[str]:
    people = scenario["people"]
    return [
        f"Batch + people, {key}: {settings['batch_jobs']} batch jobs over "
        f"{', '.join(settings['models'])} (through foreman submitted to /jobs one after "
        "the other; direct as concurrent /api/chat calls, sent "
        f"{settings['send_interval_s'] * 1e3:g} ms apart); "
        + (
            "1 person's sync call"
            if people["count"] == 1
            else f"{people['count']} people's sync calls"
        )
        + f", Poisson, mean interval {people['interval']:g} s, at "
        + ", ".join(f"{at:.1f} s ({model})" for at, model in scenario["people_schedule"])
        + ".",
        "",
        *_table(_batch_rows(scenario)),
        "",
        *_people_waits(scenario),
        "",
        _people_loads(scenario),
        *_load_orders(scenario),
        "",
    ]


def report(results: dict[str, Any]) -> str:
    settings = results["settings"]
    out = [
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
    ]
    for key, scenario in results["batch_people"].items():
        out += _batch_people(settings, key, scenario)
    out.append(f"Wall time of this part {results['wall_seconds']:.0f} s.")
    return "\n".join(out)

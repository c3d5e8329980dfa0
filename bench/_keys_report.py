"""The tables of ``bench/_keys.py``: each scenario three ways, side by side."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from bench._keys import WAYS

Row = tuple[str, ...]
#: How many runs of the served order are printed (the JSON has them all).
ORDER_RUNS = 24


def _s(seconds: float) -> str:
    return f"{seconds:.1f} s"


def _short(model: str) -> str:
    return model.split(":")[0]


def _cells(ways: list[dict[str, Any]], measure: Any) -> list[str]:
    return [measure(w) for w in ways]


def _key(figures: dict[str, Any], name: str, measure: str) -> str:
    return _s(figures["keys"][name][measure])


def _rows(scenario: dict[str, Any]) -> Iterator[Row]:
    ways = [scenario[way.key] for way in WAYS]
    for k in scenario["key_loads"]:
        name = k["name"]
        what = (
            f"key {name} ({k['jobs']} jobs, {' + '.join(map(_short, k['models']))}, "
            f"at {k['after']:g} s)"
        )
        completion = [_key(w, name, "completion_s") for w in ways]
        yield what + ": completion", *completion
        yield f"key {name}: median job wait", *[_key(w, name, "median_wait_s") for w in ways]
    yield (
        "first job done, each key (after its submission)",
        *_cells(
            ways,
            lambda w: (
                " / ".join(f"{n} {k['first_done_s']:.1f}" for n, k in w["keys"].items()) + " s"
            ),
        ),
    )
    yield (
        "person (sync qwen3 chat): wait p50 / p95 (n)",
        *_cells(
            ways,
            lambda w: (
                f"{w['person']['p50_ms'] / 1e3:.2f} / {w['person']['p95_ms'] / 1e3:.2f} s "
                f"({w['person']['count']:.0f})"
            ),
        ),
    )
    yield "model loads", *_cells(ways, lambda w: str(w["loads"]))
    yield (
        "makespan (first submission → last batch job)",
        *_cells(ways, lambda w: _s(w["makespan_s"])),
    )
    yield (
        "worker utilisation (generating s / makespan)",
        *_cells(ways, lambda w: f"{w['utilisation'] * 100:.0f} % ({w['generating_s']:.0f} s)"),
    )
    yield "foreman's worker: s loading / holding / idle", *_cells(ways, _worker)
    yield "failures", *_cells(ways, lambda w: str(len(w["errors"])))


def _worker(figures: dict[str, Any]) -> str:
    spent = figures.get("worker_seconds")
    if not spent:
        return "—"
    return " / ".join(f"{spent.get(kind, 0.0):.1f}" for kind in ("loading", "holding", "idle"))


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if b else "—"


def what_it_says(scenario: dict[str, Any]) -> str:
    """The scenario in a sentence: the smallest key's completion, and what keys cost."""
    fifo, today, keys = (scenario[way.key] for way in WAYS)
    smallest = min(scenario["key_loads"], key=lambda k: k["jobs"])["name"]
    biggest = max(scenario["key_loads"], key=lambda k: k["jobs"])["name"]

    def done(w: dict[str, Any], name: str) -> float:
        figure: float = w["keys"][name]["completion_s"]
        return figure

    return (
        f"What it says: key {smallest}'s batch is done in {_s(done(keys, smallest))} with keys, "
        f"against {_s(done(fifo, smallest))} FIFO and {_s(done(today, smallest))} under "
        f"today's rule ({_ratio(done(today, smallest), done(keys, smallest))} sooner); "
        f"key {biggest}'s in {_s(done(keys, biggest))} against {_s(done(today, biggest))}. "
        f"The rounds cost {keys['loads'] - today['loads']:+d} loads against today's rule "
        f"({today['loads']} → {keys['loads']}) and the makespan goes "
        f"{_s(today['makespan_s'])} → {_s(keys['makespan_s'])} "
        f"({(keys['makespan_s'] / today['makespan_s'] - 1) * 100:+.0f} %). FIFO: "
        f"{fifo['loads']} loads, {_s(fifo['makespan_s'])}."
    )


def _order(runs: list[list[Any]]) -> str:
    shown = ", ".join(what if n == 1 else f"{what} x{n}" for what, n in runs[:ORDER_RUNS])
    return shown + (f", … ({len(runs) - ORDER_RUNS} runs more)" if len(runs) > ORDER_RUNS else "")


def _usage(figures: dict[str, Any]) -> str | None:
    usage = figures.get("usage")
    if not usage:
        return None
    parts = [
        f"{name} {each.get('calls', 0)} calls, {each.get('worker_seconds', 0):.1f} s, "
        f"{each.get('loads', 0)} loads"
        for name, each in usage.items()
        if each
    ]
    return "Usage per key (GET /api/foreman/keys): " + "; ".join(parts) + "." if parts else None


def scenario_report(scenario: dict[str, Any]) -> list[str]:
    sizes = " / ".join(f"{k['name']} {k['jobs']}" for k in scenario["key_loads"])
    titles = " | ".join(way.title for way in WAYS)
    out = [
        f"Keys ({scenario['name']}: {sizes} jobs):",
        "",
        f"| measure | {titles} |",
        "|---|" + "---:|" * len(WAYS),
        *(f"| {' | '.join(row)} |" for row in _rows(scenario)),
        "",
        what_it_says(scenario),
    ]
    for way in WAYS:
        out.append(f"Order served, {way.title}: {_order(scenario[way.key]['served_order'])}")
    for way in WAYS:
        usage = _usage(scenario[way.key])
        if usage is not None:
            out.append(f"{way.title}: {usage}")
        out += [f"{way.title} error: {e}" for e in scenario[way.key]["errors"][:5]]
    out.append("")
    return out


def report(results: dict[str, Any]) -> str:
    settings = results["settings"]
    out = [
        "Keys served in turn (issue 21): batches of very different sizes, each key's "
        "a list sent to POST /jobs, a second apart, and a person's sync "
        f"{settings['person_model']} chat every answer + {settings['person_think_s']:g} s. "
        "On the design's Mac (one big model at a time, loads 1 s, jobs "
        f"{settings['job_seconds']:g} s). Ways: FIFO (straight at the simulator, one "
        "sequential sender in submission order); foreman with every batch under the admin "
        "token (today's rule: one caller); foreman with a key per batch and for the person "
        f"(keys in turn). foreman --swap-grace {settings['swap_grace']}, defaults otherwise. "
        "A key's completion: its submission → its last job finished; a job's wait: its "
        "key's submission → the job finished.",
        "",
    ]
    for scenario in results["scenarios"]:
        out += scenario_report(scenario)
    out.append(f"Wall time of this part {results['wall_seconds']:.0f} s.")
    return "\n".join(out)

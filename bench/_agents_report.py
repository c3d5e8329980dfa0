"""The tables of ``bench/_agents.py``: each scenario four ways, side by side."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from bench._agents import ANSWER_SECONDS, NEW_RULE, WAYS
from foreman.wire.model_names import canonical_model_name

Row = tuple[str, ...]


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _pct(share: float) -> str:
    return f"{share * 100:.0f} %"


def _both(scenario: dict[str, Any], check: str, figure: str) -> str:
    """A target's verdict for the new rule, fresh / loads known: ``figure`` of each."""
    verdicts = " / ".join(_met(scenario["met"][key][check]) for key in NEW_RULE)
    return f"{figure}: {verdicts}"


def _figure(scenario: dict[str, Any], measure: Any) -> str:
    return " / ".join(measure(scenario[key]) for key in NEW_RULE)


def _worker_time(figures: dict[str, Any]) -> str:
    """foreman's worker: seconds loading / holding / generating, from its /metrics."""
    spent = (figures.get("foreman") or {}).get("worker_seconds")
    if not spent:
        return "—"
    return " / ".join(
        f"{spent.get(kind, 0.0):.1f}" for kind in ("loading", "holding", "generating")
    )


def _holds(figures: dict[str, Any]) -> str:
    holds = (figures.get("foreman") or {}).get("swap_holds")
    if holds is None:
        return "—"
    hits, other = holds.get("hit", 0.0), holds.get("other", 0.0)
    return f"{hits + other:.0f} ({hits:.0f} hits)"


def _costs(models: list[dict[str, Any]] | None, agents: list[str], *, gaps: bool) -> str:
    """Each agent's model's load time as foreman has it (measured or estimated), and
    its callers' gap."""
    parts = []
    for each in models or []:
        if each["model"] not in agents:
            continue
        name = each["model"].split(":")[0]
        how = f"{each['loads_measured']} loads" if each.get("loads_measured") else "estimate"
        text = f"{name} {each['load_seconds']:.2f} s ({how})"
        if gaps:
            gap = each.get("next_call_seconds")
            text += f", next call {'?' if gap is None else f'{gap:.2f} s'}"
        parts.append(text)
    return "; ".join(parts) or "—"


def _rows(scenario: dict[str, Any]) -> Iterator[Row]:
    ways = [scenario[way.key] for way in WAYS]
    straight = scenario["straight"]
    targets = scenario["targets"]
    seconds = scenario["ran_seconds"]

    def over(figures: dict[str, Any]) -> str:
        return f"{figures['calls'] / straight['calls']:.2f}x" if straight["calls"] else "—"

    yield (
        f"calls answered (started in the {seconds:g} s)",
        *(str(w["calls"]) for w in ways),
        _both(
            scenario,
            "calls",
            f"≥ {targets['calls_over_straight']:g}x straight: " + _figure(scenario, over),
        ),
    )
    per_load = targets["calls_per_load"]
    loads_target = ""
    if per_load is not None:
        loads_target = _both(
            scenario,
            "loads",
            f"≤ 1 per {per_load:g} calls: "
            + _figure(scenario, lambda w: f"{w['calls'] / max(1, w['loads']):.1f}"),
        )
    yield (
        "model loads (calls per load)",
        *(f"{w['loads']} ({w['calls'] / max(1, w['loads']):.1f})" for w in ways),
        loads_target,
    )
    yield (
        f"within the {seconds:g} s: calls answered, loads begun (calls per load)",
        *(
            f"{w['answered_in_time']}, {w['loads_begun_in_time']} "
            f"({w['answered_in_time'] / max(1, w['loads_begun_in_time']):.1f})"
            for w in ways
        ),
        "",
    )
    for number, model in enumerate(scenario["models"]):
        yield (
            f"agent {number + 1} ({model}): calls (share)",
            *(
                f"{w['agents'][number]['calls']} ({_pct(w['agents'][number]['share'])})"
                for w in ways
            ),
            _both(
                scenario,
                "share",
                f"each ≥ {_pct(targets['min_share'])}: least "
                + _figure(scenario, lambda w: _pct(min(a["share"] for a in w["agents"]))),
            )
            if number == 0
            else "",
        )
    for number, model in enumerate(scenario["models"]):
        yield (
            f"agent {number + 1} ({model}): longest wait",
            *(f"{w['agents'][number]['longest_wait_s']:.1f} s" for w in ways),
            _both(
                scenario,
                "wait",
                f"≤ {targets['max_wait']:g} s: longest "
                + _figure(scenario, lambda w: f"{w['longest_wait_s']:.1f} s"),
            )
            if number == 0
            else "",
        )
    yield (
        "wait p50, each agent",
        *(
            " / ".join(f"{a['waits']['p50_ms'] / 1e3:.1f}" for a in w["agents"]) + " s"
            for w in ways
        ),
        "",
    )
    yield "foreman's worker: s loading / holding / generating", *map(_worker_time, ways), ""
    yield "holds for the resident model's next call", *map(_holds, ways), ""
    yield "failed calls", *(str(len(w["errors"])) for w in ways), "0"


def _verdicts(scenario: dict[str, Any]) -> str:
    """Which ways meet the scenario's targets, in a line."""
    parts = []
    for way in WAYS:
        missed = [name for name, ok in scenario["met"][way.key].items() if not ok]
        parts.append(f"{way.title}: {'all met' if not missed else 'missed ' + ', '.join(missed)}")
    return "Targets by way: " + "; ".join(parts) + "."


def scenario_report(scenario: dict[str, Any], quick: bool) -> list[str]:
    grace = f", --swap-grace {scenario['swap_grace']}" if scenario["swap_grace"] else ""
    title = (
        f"Agents ({scenario['key']}): {scenario['agents']} agents on "
        f"{', '.join(scenario['models'])}, {scenario['think']:g} s between calls, "
        f"{scenario['load']:g} s loads{grace}, {scenario['ran_seconds']:g} s"
    )
    if quick:
        title += " (--quick: the targets are for the full length)"
    what = "target" if scenario["targets_set"] else "(b)'s targets, for reference"
    target_title = f"{what} (new rule / loads known)"
    titles = " | ".join(way.title for way in WAYS)
    out = [
        title + ":",
        "",
        f"| measure | {titles} | {target_title} |",
        "|---|" + "---:|" * len(WAYS) + "---|",
        *(f"| {' | '.join(row)} |" for row in _rows(scenario)),
        "",
        _verdicts(scenario),
    ]
    for way in WAYS:
        out.append(f"Order served, {way.title}: {scenario[way.key]['served_order']}")
    agents = [canonical_model_name(model) for model in scenario["models"]]
    for way in WAYS:
        figures = scenario[way.key]["foreman"]
        if figures is not None:
            out.append(
                f"foreman's load times, {way.title}: at start "
                f"{_costs(figures.get('models_at_start'), agents, gaps=False)}; at the end "
                f"{_costs(figures.get('models'), agents, gaps=True)}"
            )
    for way in WAYS:
        out += [f"{way.title} error: {error}" for error in scenario[way.key]["errors"][:5]]
    out.append("")
    return out


def report(results: dict[str, Any]) -> str:
    settings = results["settings"]
    out = [
        "Agents in closed loops (issue 17): each agent, on its own model, sends a sync "
        "non-streamed /api/chat, waits for the whole answer, thinks, and sends the next. "
        "Stand-in: the simulated Ollama holding one model at a time, answers "
        f"{ANSWER_SECONDS:g} s. Ways: straight to it; foreman --swap-rule fixed (today's "
        "rule); foreman's defaults (new rule), on a fresh data directory; the same on a "
        "data directory that knows every model's load time (loads known). A wait is "
        "call sent → whole answer received.",
        "",
    ]
    for scenario in results["scenarios"]:
        out += scenario_report(scenario, settings["quick"])
    out.append(f"Wall time of this part {results['wall_seconds']:.0f} s.")
    return "\n".join(out)

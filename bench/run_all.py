"""``make bench``: run every benchmark and collect what they print in ``bench/results/``.

Each script runs in its own process, one after the other (they would skew
each other's figures if run together), with ``--json`` so that its raw
figures are kept beside its printed tables:

- ``bench/results/<script>.md``: what the script printed, under a header
  saying when, on which commit and on what machine it ran;
- ``bench/results/<script>.json``: its raw figures;
- ``bench/results/README.md``: the headline figures of every script in one
  table, against their targets;
- ``bench/results/latency.png``: latency percentiles of every script side by
  side, when matplotlib is installed (it is optional).

Usage: ``python bench/run_all.py [--quick] [--only NAME ...]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
#: In the order they run; a script that is not there yet is left out.
SCRIPTS = ("overhead", "dialects", "scheduler", "jobs", "batches", "fleet", "soak")

Row = tuple[str, str, str]


def _commit() -> str:
    try:
        found = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return found.stdout.strip()


def _machine() -> str:
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores"


def run_script(name: str, quick: bool) -> tuple[int, float]:
    """Run one script; its output goes to ``<name>.md``, its figures to ``<name>.json``."""
    command = [sys.executable, str(HERE / f"{name}.py"), "--json", str(RESULTS / f"{name}.json")]
    if quick:
        command.append("--quick")
    started = time.monotonic()
    printed = subprocess.run(command, capture_output=True, text=True)
    seconds = time.monotonic() - started
    header = (
        f"# bench/{name}.py\n\n"
        f"Run {time.strftime('%Y-%m-%d %H:%M %Z')} on commit {_commit()}, {_machine()}"
        f"{', --quick' if quick else ''}; {seconds:.0f} s, exit status {printed.returncode}.\n\n"
    )
    body = printed.stdout
    if printed.returncode != 0:
        body += f"\n\n```\n{printed.stderr[-4000:]}\n```\n"
    (RESULTS / f"{name}.md").write_text(header + body + "\n")
    return printed.returncode, seconds


# -- headline figures ------------------------------------------------------------------


def _overhead_rows(figures: dict[str, Any]) -> Iterator[Row]:
    c1, rates = figures["c1"], figures["throughput_c16"]
    first, lines = figures["first_line"], figures["line_delay"]
    yield (
        "relay: added latency p50, concurrency 1",
        f"{c1['foreman_p50_ms'] - c1['direct_p50_ms']:.2f} ms",
        "≤ 1 ms",
    )
    yield (
        "relay: added time to first line",
        f"{first['foreman_p50_ms'] - first['direct_p50_ms']:.2f} ms",
        "≤ 2 ms",
    )
    yield (
        "relay: added per-line delay p99",
        f"{lines['foreman_p99_ms'] - lines['direct_p99_ms']:.2f} ms",
        "≤ 2 ms",
    )
    yield (
        "relay: throughput at concurrency 16, over direct",
        f"{rates['foreman_rps'] / rates['direct_rps']:.2f}",
        "≥ 0.25",
    )


def _dialects_rows(figures: dict[str, Any]) -> Iterator[Row]:
    for dialect in ("openai", "anthropic"):
        first = figures[dialect]["first_event"]
        delay = figures[dialect]["event_delay"]["schedule"]
        yield (
            f"relay, {dialect} SSE: added time to first event",
            f"{first['foreman_p50_ms'] - first['direct_p50_ms']:.2f} ms",
            "≤ 2 ms",
        )
        yield (
            f"relay, {dialect} SSE: added per-event delay p99",
            f"{delay['foreman_p99_ms'] - delay['direct_p99_ms']:.2f} ms",
            "≤ 2 ms",
        )


def _scheduler_rows(figures: dict[str, Any]) -> Iterator[Row]:
    for scenario in figures["scenarios"]:
        direct, through = scenario["direct"], scenario["foreman"]
        name = scenario["name"]
        yield (
            f"scheduler, {name}: model loads direct → foreman",
            f"{direct['loads']} → {through['loads']}"
            f" ({direct['loads'] / max(1, through['loads']):.1f}x)",
            "≥ 3x fewer",
        )
        yield (
            f"scheduler, {name}: makespan direct → foreman",
            f"{direct['makespan_s']:.1f} s → {through['makespan_s']:.1f} s",
            "shorter",
        )
        yield (
            f"scheduler, {name}: embed p95 alone → under load (foreman)",
            f"{through['embed_alone']['p95_ms']:.1f} ms → "
            f"{through['embed_under_load']['p95_ms']:.1f} ms",
            "unaffected",
        )
    overhead = figures["queue_overhead"]
    yield (
        "scheduler: added by the queue, p50",
        f"{overhead['queue']['p50_ms'] - overhead['no_queue']['p50_ms']:.2f} ms",
        "≤ 5 ms",
    )
    if "classes" in figures:
        yield from _classes_rows(figures["classes"])
    if "agents" in figures:
        yield from _agents_rows(figures["agents"])
    if "keys" in figures:
        yield from _keys_rows(figures["keys"])


def _classes_rows(figures: dict[str, Any]) -> Iterator[Row]:
    """Scheduling classes: direct FIFO / today's rule / the new policy."""
    loops = figures["loops"]
    targets = figures["settings"]["targets"]
    ways = ("direct", "today", "classes")
    yield (
        "scheduler, loops: the other caller's wait, direct / today's rule / new policy",
        " / ".join(f"{loops[way]['other_wait_s']:.1f} s" for way in ways),
        f"≤ {targets['other_wait_s']:.1f} s (new policy)",
    )
    for key, batch in figures["batch_people"].items():
        what = f"scheduler, batch + people ({key})"
        yield (
            f"{what}: interactive p95, direct / today's rule / new policy",
            " / ".join(f"{batch[way]['interactive']['p95_ms'] / 1e3:.2f} s" for way in ways),
            f"≤ {targets['people_p95_s']:.1f} s (new policy)",
        )
        today, new = batch["today"], batch["classes"]
        yield (
            f"{what}: model loads, today's rule → new policy",
            f"{today['loads']} → {new['loads']} ({new['loads'] / max(1, today['loads']):.2f}x)",
            f"≤ {targets['loads_over_today']}x",
        )
        yield (
            f"{what}: batch makespan, today's rule → new policy",
            f"{today['batch_makespan_s']:.1f} s → {new['batch_makespan_s']:.1f} s"
            f" ({new['batch_makespan_s'] / today['batch_makespan_s']:.2f}x)",
            f"≤ {targets['makespan_over_today']}x",
        )


def _agents_rows(figures: dict[str, Any]) -> Iterator[Row]:
    """Agents in closed loops: straight / today's rule / new rule / new rule, loads known."""
    ways = ("straight", "fixed", "learned", "warm")
    for scenario in figures["scenarios"]:
        what = f"scheduler, agents ({scenario['key']})"
        targets = scenario["targets"]
        yield (
            f"{what}: calls (loads), straight / today's rule / new rule / loads known",
            " / ".join(f"{scenario[w]['calls']} ({scenario[w]['loads']})" for w in ways),
            f"≥ {targets['calls_over_straight']:g}x straight"
            + (
                f", ≤ 1 load per {targets['calls_per_load']:g} calls"
                if targets["calls_per_load"]
                else ""
            ),
        )
        yield (
            f"{what}: least share, longest wait, same four ways",
            " / ".join(
                f"{min(a['share'] for a in scenario[w]['agents']) * 100:.0f} %, "
                f"{scenario[w]['longest_wait_s']:.1f} s"
                for w in ways
            ),
            f"≥ {targets['min_share'] * 100:.0f} %, ≤ {targets['max_wait']:g} s"
            + ("" if scenario["targets_set"] else " ((b)'s, for reference)"),
        )


def _keys_rows(figures: dict[str, Any]) -> Iterator[Row]:
    """Keys served in turn: FIFO / today's rule (one token) / a key per batch."""
    ways = ("fifo", "today", "keys")
    for scenario in figures["scenarios"]:
        what = f"scheduler, keys ({scenario['name']})"
        small = min(scenario["key_loads"], key=lambda k: k["jobs"])
        big = max(scenario["key_loads"], key=lambda k: k["jobs"])
        for each, target in ((small, "sooner with keys"), (big, "")):
            yield (
                f"{what}: key {each['name']}'s {each['jobs']} jobs done, "
                "FIFO / today's rule / keys",
                " / ".join(
                    f"{scenario[w]['keys'][each['name']]['completion_s']:.1f} s" for w in ways
                ),
                target,
            )
        yield (
            f"{what}: loads, makespan, same three ways",
            " / ".join(f"{scenario[w]['loads']}, {scenario[w]['makespan_s']:.0f} s" for w in ways),
            "",
        )


def _jobs_rows(figures: dict[str, Any]) -> Iterator[Row]:
    targets = {"submit_p50_ms": "≤ 5 ms (paced)", "done_to_webhook_p50_ms": "≤ 20 ms (paced)"}
    for scenario, measured in figures.items():
        for key in ("submit_p50_ms", "submit_p99_ms", "done_to_webhook_p50_ms"):
            what = key.removesuffix("_ms").replace("_", " ")
            yield f"jobs, {scenario}: {what}", f"{measured[key]:.2f} ms", targets.get(key, "")


def _batches_rows(figures: dict[str, Any]) -> Iterator[Row]:
    batch = figures["batch"]
    lines = f"{batch['lines']:,}"
    yield f"batches: {lines} lines accepted (create)", f"{batch['create_seconds']:.2f} s", ""
    yield f"batches: {lines} lines run", f"{batch['run_seconds']:.1f} s", ""
    yield f"batches: {lines} lines, model loads", str(batch["loads"]), "3 (one per model)"
    depths = figures["depths"]
    first = depths[0]["submit"]["p50_ms"]
    for depth in depths:
        submit = depth["submit"]["p50_ms"]
        yield (
            f"batches: submit p50 at {depth['depth']:,} queued",
            f"{submit:.2f} ms",
            f"≤ twice that at 1,000 ({2 * first:.2f} ms)",
        )


def _fleet_rows(figures: dict[str, Any]) -> Iterator[Row]:
    runs, t = figures["runs"], figures["targets"]
    counts = sorted(runs, key=int)
    yield from _fleet_batch_rows(runs, t, counts) if runs else ()
    yield from _fleet_agents_rows(figures.get("agents"), t)


def _fleet_batch_rows(runs: dict[str, Any], t: dict[str, Any], counts: list[str]) -> Iterator[Row]:
    yield (
        f"fleet: batch makespan, {' / '.join(counts)} boxes",
        " / ".join(f"{runs[c]['makespan_s']:.1f} s" for c in counts),
        "",
    )
    for count in ("2", "3"):
        if f"speedup_{count}" in t:
            speedup = t[f"speedup_{count}"]
            yield (
                f"fleet: {count} boxes over 1, speed-up",
                f"{speedup['measured']:.2f}x",
                f"≥ {speedup['target']:g}x",
            )
    yield (
        f"fleet: model loads (allowed: models + boxes), {' / '.join(counts)} boxes",
        " / ".join(f"{runs[c]['loads']} ({runs[c]['loads_allowed']})" for c in counts),
        "≤ allowed",
    )
    if "submit_to_start_p50_ms" in t:
        yield (
            "fleet: submit to start on an idle fleet of 2, p50",
            f"{t['submit_to_start_p50_ms']['measured']:.1f} ms",
            f"≤ {t['submit_to_start_p50_ms']['target']:g} ms",
        )
    yield (
        f"fleet: database statements per job, {' / '.join(counts)} boxes",
        " / ".join(f"{runs[c]['statements_per_job']:.1f}" for c in counts),
        "",
    )


def _fleet_agents_rows(agents: dict[str, Any] | None, t: dict[str, Any]) -> Iterator[Row]:
    if agents is not None:
        fleet, apart = agents["fleet"], agents["apart"]
        yield (
            "fleet: 4 agents through one box of 2 / 2 boxes apart, calls (loads)",
            f"{fleet['calls']} ({fleet['loads']}) / {apart['calls']} ({apart['loads']})",
            "",
        )
        added = t["added_ttft_p50_ms"]
        yield (
            "fleet: time to first token added by forwarding, p50",
            f"{added['measured']:.2f} ms",
            f"≤ {added['target']:g} ms",
        )


def _soak_rows(figures: dict[str, Any]) -> Iterator[Row]:
    t, minutes = figures["targets"], figures["settings"]["minutes"]
    yield (
        f"soak ({minutes} min): RSS growth after warm-up, peak / after drain",
        f"{t['rss_growth_peak_mb']:+.1f} / {t['rss_growth_end_mb']:+.1f} MB",
        f"≤ {t['rss_target_mb']:.0f} MB",
    )
    yield (
        "soak: open file descriptors after the load, against the baseline",
        f"{figures['end']['fds']} vs {figures['baseline']['fds']}",
        "back to baseline",
    )
    yield "soak: jobs lost", f"{t['jobs_lost']} of {t['jobs_submitted']}", "0"
    on_purpose = sum(row["on_purpose"] for row in figures["minutes"])
    yield (
        "soak: errors not caused on purpose (unexpected, foreman 5xx, log errors)",
        f"{t['unexpected_all_phases']}, {t['foreman_5xx']}, {t['log_errors']}"
        f" ({on_purpose} on purpose)",
        "0",
    )


HEADLINES: dict[str, Callable[[dict[str, Any]], Iterator[Row]]] = {
    "overhead": _overhead_rows,
    "dialects": _dialects_rows,
    "scheduler": _scheduler_rows,
    "jobs": _jobs_rows,
    "batches": _batches_rows,
    "fleet": _fleet_rows,
    "soak": _soak_rows,
}


def headline_table(ran: dict[str, tuple[int, float]]) -> str:
    out = [
        "# Benchmark results",
        "",
        f"Commit {_commit()}, {_machine()}, {time.strftime('%Y-%m-%d %H:%M %Z')}. "
        "Each script's full output is in its own file here; docs/performance.md explains "
        "what is measured and how to read it.",
        "",
        "| figure | measured | target |",
        "|---|---:|---|",
    ]
    for name, (status, _seconds) in ran.items():
        figures_file = RESULTS / f"{name}.json"
        if status != 0 or not figures_file.exists():
            out.append(f"| bench/{name}.py | failed (exit {status}), see {name}.md | |")
            continue
        try:
            rows = list(HEADLINES[name](json.loads(figures_file.read_text())))
        except (KeyError, TypeError, ValueError) as e:
            rows = [(f"bench/{name}.py", f"figures not understood ({e!r})", "")]
        out += [f"| {what} | {measured} | {target} |" for what, measured, target in rows]
    out.append("")
    return "\n".join(out)


# -- the optional chart -------------------------------------------------------------------


#: Inputs, and the per-model breakdown (the overall figure is charted).
_NOT_CHARTED = frozenset(
    {"settings", "plan", "schedule", "per_model", "batch_plan", "people_schedule"}
)


def latency_series(name: str, figures: Any, prefix: str = "") -> Iterator[tuple[str, float, float]]:
    """Every (label, p50, p99) in a script's figures: any ``<stem>p50_ms`` key with its
    ``<stem>p99_ms`` (or ``p95``) partner, at any depth of dicts and lists."""
    if isinstance(figures, list):
        for index, item in enumerate(figures):
            label = str(item.get("name", index)) if isinstance(item, dict) else str(index)
            label = re.sub(r"\s*\(.*?\)", "", label)  # scenario names: the gist only
            yield from latency_series(name, item, f"{prefix} {label}".strip())
        return
    if not isinstance(figures, dict):
        return
    for key, p50 in figures.items():
        if not key.endswith("p50_ms") or not isinstance(p50, int | float):
            continue
        stem = key.removesuffix("p50_ms")
        high = figures.get(stem + "p99_ms", figures.get(stem + "p95_ms"))
        if isinstance(high, int | float):
            label = f"{prefix} {stem.strip('_')}".strip()
            yield f"{name}: {label}", float(p50), float(high)
    for key, value in figures.items():
        if isinstance(value, dict | list) and key not in _NOT_CHARTED:
            # A list's items carry their own names; its key adds nothing.
            inner = prefix if isinstance(value, list) else f"{prefix} {key}".strip()
            yield from latency_series(name, value, inner)


def draw_chart(names: list[str]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    series = []
    for name in names:
        path = RESULTS / f"{name}.json"
        if path.exists():
            series += list(latency_series(name, json.loads(path.read_text())))
    if not series:
        return None
    labels = [label for label, _, _ in series]
    figure, axes = plt.subplots(figsize=(10, 0.3 * len(series) + 1.5))
    positions = range(len(series))
    axes.barh(positions, [p99 for _, _, p99 in series], color="#c8d7ea", label="p99 (or p95)")
    axes.barh(positions, [p50 for _, p50, _ in series], color="#3a6ea5", label="p50")
    axes.set_yticks(list(positions), labels, fontsize=7)
    axes.set_xscale("log")
    axes.set_xlabel("milliseconds (log scale)")
    axes.legend()
    figure.tight_layout()
    chart = RESULTS / "latency.png"
    figure.savefig(chart, dpi=120)
    return chart


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="each script's short run")
    parser.add_argument("--only", nargs="*", choices=SCRIPTS, help="run only these")
    arguments = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    names = [n for n in arguments.only or SCRIPTS if (HERE / f"{n}.py").exists()]
    ran: dict[str, tuple[int, float]] = {}
    for name in names:
        print(f"bench/{name}.py ...", flush=True)
        ran[name] = run_script(name, arguments.quick)
        status, seconds = ran[name]
        print(f"  {'done' if status == 0 else f'FAILED ({status})'} in {seconds:.0f} s")
    summary = headline_table(ran)
    (RESULTS / "README.md").write_text(summary)
    print(summary)
    chart = draw_chart(names)
    print(f"chart: {chart}" if chart else "chart: skipped (matplotlib is not installed)")
    return 0 if all(status == 0 for status, _ in ran.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

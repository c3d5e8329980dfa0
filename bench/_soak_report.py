"""``bench/soak.py``'s printed report: the per-minute table, the targets, what happened."""

from __future__ import annotations

import os
from typing import Any


def _verdict(met: bool) -> str:
    return "met" if met else "**MISSED**"


def minute_table(figures: dict[str, Any]) -> list[str]:
    baseline = figures["baseline"]
    out = [
        "| minute | foreman CPU | RSS MB | fds (max) | connections in (max) | to Ollama (max)"
        " | queue depth (max) | requests | 4xx | of which 499 | 5xx | on purpose | unexpected |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| baseline | | {baseline['rss_mb']:.1f} | {baseline['fds']} | {baseline['inbound']}"
        f" | {baseline['upstream']} | 0 | | | | | | |",
    ]
    for row in figures["minutes"]:
        out.append(
            f"| {row['minute']} | {row['cpu_percent']:.0f} % | {row['rss_mb']:.1f}"
            f" | {row['fds_max']} | {row['inbound_max']}"
            f" | {row['upstream_max']} | {row['queue_max']:.0f} | {row['requests']:.0f}"
            f" | {row['status_4xx']:.0f} | {row['status_499']:.0f} | {row['status_5xx']:.0f}"
            f" | {row['on_purpose']}"
            f" | {row['unexpected']} |"
        )
    end = figures["end"]
    out.append(
        f"| after drain | | {end['rss_mb']:.1f} | {end['fds']} | {end['inbound']}"
        f" | {end['upstream']} | 0 | | | | | | |"
    )
    return out


def target_table(figures: dict[str, Any]) -> list[str]:
    t = figures["targets"]
    growth = max(t["rss_growth_peak_mb"], t["rss_growth_end_mb"])
    errors = t["unexpected_all_phases"] + t["foreman_5xx"] + t["log_errors"]
    drain = figures["drain"]
    return [
        "| target | measured | |",
        "|---|---|---|",
        f"| RSS growth after warm-up ≤ {t['rss_target_mb']:.0f} MB"
        f" | peak {t['rss_growth_peak_mb']:+.1f} MB, after drain {t['rss_growth_end_mb']:+.1f} MB"
        f" | {_verdict(growth <= t['rss_target_mb'])} |",
        f"| file descriptors back to baseline when load stops"
        f" | {figures['end']['fds']} vs {figures['baseline']['fds']}"
        f" ({t['fds_over_baseline']:+d}), {drain['settled_in_s']:.0f} s after the checks"
        f" | {_verdict(t['fds_over_baseline'] <= 0)} |",
        f"| 0 lost jobs | {t['jobs_lost']} of {t['jobs_submitted']}"
        f" | {_verdict(t['jobs_lost'] == 0)} |",
        f"| 0 errors not caused on purpose | {t['unexpected_all_phases']} unexpected outcomes"
        f" (all phases), {t['foreman_5xx']} foreman 5xx, {t['log_errors']} error lines in"
        f" its log | {_verdict(errors == 0)} |",
    ]


def outcome_lines(figures: dict[str, Any]) -> list[str]:
    out = ["| call: outcome | count |", "|---|---:|"]
    out += [f"| {what} | {count} |" for what, count in figures["outcomes"].items()]
    return out


def report(figures: dict[str, Any]) -> str:
    s = figures["settings"]
    drain = figures["drain"]
    hooks = figures["webhooks"]
    conns = figures["connections"]
    front = s["front_door"]
    found = front.get("options") or []
    limits = ", ".join(
        f"{name} {value:g}"
        for name, value in front.items()
        if name != "options" and value is not None
    )
    options = ", ".join(found) if found else "none (idle connections: Twisted's 60 s timeout)"
    out = [
        f"{s['minutes']} minute(s) of mixed load after a {s['warm_up_s']:.0f} s warm-up, seed"
        f" {s['seed']}, {os.cpu_count()} cores shared by foreman, the simulator and this load;"
        f" simulator {s['simulator']}; {s['calls_started']} calls started in all.",
        f"Front-door options in `twistd foreman --help`: {options}; so expected: {limits}.",
        "",
        *minute_table(figures),
        "",
        "RSS is at the minute's end, the other process figures the largest of its 5 s samples;"
        " requests, 4xx and 5xx are foreman's own counts (/metrics, its 12 scrapes a minute"
        " included; 499: the caller left before the answer was complete); on purpose /"
        " unexpected are outcomes seen by the load.",
        "",
        *target_table(figures),
        "",
        f"Load stopped: calls under way finished in {drain['calls_finished_in_s']:.1f} s; queue"
        f" and webhook outbox empty {drain['queue_and_outbox_empty_in_s']:.1f} s later"
        f" ({drain['queue_jobs_left']} jobs left in /api/foreman/queue).",
        f"Jobs by final state: {figures['jobs_final_states']}. Model loads (swaps) from the"
        f" baseline to the end: {figures['model_loads']:.0f}. Longest time the worker sat idle"
        f" with jobs queued and none done: {figures['worker_longest_stall_s']:.0f} s.",
        f"Client connections at the end: foreman counts {conns['foreman_count_at_end']:.0f},"
        f" /proc shows {conns['sockets_at_end']} (the watcher's); cap {conns['limit']:.0f},"
        f" closed idle at the cap {conns['closed_idle_at_cap']:.0f},"
        f" refused at the cap {conns['refused_at_cap']:.0f}.",
        f"Webhooks, foreman's count: {hooks['foreman']}; received: {hooks['received']}.",
        "",
        *outcome_lines(figures),
    ]
    if figures["unexpected"]:
        out += ["", "Unexpected outcomes (first ones):", ""]
        out += [f"    {line}" for line in figures["unexpected"][:20]]
    if figures["jobs_lost"]:
        out += ["", "Lost jobs (first ones):", ""]
        out += [f"    {line}" for line in figures["jobs_lost"][:20]]
    if figures["log_errors"]:
        out += ["", "Error lines in foreman's log (first ones):", ""]
        out += [f"    {line[:300]}" for line in figures["log_errors"][:20]]
    if figures["log_warnings"]:
        out += ["", "Warnings in foreman's log, by gist:", ""]
        out += [f"    {n:6d}  {gist}" for gist, n in sorted(figures["log_warnings"].items())]
    return "\n".join(out)

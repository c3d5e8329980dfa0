"""Each box's worker on the status page's timeline, in a fleet (issue 18).

A box publishes its recent runs with its heartbeat (:func:`published`), each
time measured back from the moment it published: seconds *ago*, not stamps,
since the boxes' clocks may differ. A box that shows the timeline places
another box's runs on its own clock with the age of that box's last
heartbeat (on the database's clock, :meth:`FleetMember.seen`): the
picture is as fresh as the heartbeat, a few seconds at most.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from foreman.queue.fleet.member import FleetMember
from foreman.queue.worker import Worker
from foreman.wire.timestamps import timestamp

if TYPE_CHECKING:
    from foreman.ops.timeline import Run

#: Runs a box publishes at most with each heartbeat (a few kilobytes).
MAX_PUBLISHED = 30
#: How a run of a box that went away mid-run ended, as far as anyone here knows.
GONE = "unknown"


def published(runs: Iterable[Run], now: float) -> list[dict[str, Any]]:
    """``runs`` (the newest last) as a box publishes them: ages, not stamps."""

    def ago(at: float | None) -> float | None:
        return None if at is None else round(max(0.0, now - at), 3)

    return [
        {
            "job_id": run.job_id,
            "model": run.model,
            "priority": run.priority,
            "endpoint": run.endpoint,
            "sync": run.sync,
            "attempt": run.attempt,
            "overdue": run.overdue,
            "outcome": run.outcome,
            "load": run.load,
            "waited_seconds": round(run.started_at - run.queued_at, 3),
            "started_ago": ago(run.started_at),
            "working_ago": ago(run.working_at),
            "ended_ago": ago(run.ended_at),
        }
        for run in list(runs)[-MAX_PUBLISHED:]
    ]


def lanes(fleet: FleetMember, worker: Worker, now: float, window: float) -> list[dict[str, Any]]:
    """One lane per box: this one first (its runs are the timeline's own),
    then every other box alive or seen within ``window``, by name."""
    this = {
        "id": fleet.identity.id,
        "name": fleet.identity.name,
        "this": True,
        "alive": True,
        "seen_seconds_ago": 0.0,
        "activity": worker.activity.now,
        "doing": worker.doing(),
        "runs": None,
    }
    shown = [this]
    for box in fleet.boxes:
        if box.id == fleet.identity.id:
            continue
        seen, alive = fleet.seen(box)
        if not alive and seen > window:
            continue
        report = box.report or {}
        at = now - seen  # when it published, on this box's clock
        runs = report.get("runs")
        shown.append(
            {
                "id": box.id,
                "name": box.name,
                "this": False,
                "alive": alive,
                "seen_seconds_ago": round(seen, 3),
                "activity": report.get("activity"),
                "running": report.get("running"),
                "waiting": report.get("waiting", {}),
                "runs": [
                    placed
                    for each in (runs if isinstance(runs, list) else [])
                    if (placed := _placed(each, at, alive)) is not None
                ],
            }
        )
    return shown


def _placed(run: Any, at: float, alive: bool) -> dict[str, Any] | None:
    """A published run as :meth:`Run.view` shows one, on this box's clock;
    ``None`` if it says less than that (another version of foreman)."""
    if not isinstance(run, Mapping):
        return None
    try:
        started = at - float(run["started_ago"])
        working = None if run.get("working_ago") is None else at - float(run["working_ago"])
        ended = None if run.get("ended_ago") is None else at - float(run["ended_ago"])
        waited = float(run.get("waited_seconds") or 0.0)
        outcome = run.get("outcome")
        if ended is None and not alive:
            # Its box went away mid-run: the run ends where the picture does.
            ended, outcome = at, GONE
        return {
            "job_id": str(run["job_id"]),
            "model": str(run["model"]),
            "priority": str(run.get("priority") or "interactive"),
            "endpoint": str(run.get("endpoint") or "chat"),
            "sync": bool(run.get("sync")),
            "attempt": int(run.get("attempt") or 1),
            "queued_at": timestamp(started - waited),
            "started_at": timestamp(started),
            "working_at": timestamp(working),
            "ended_at": timestamp(ended),
            "waited_seconds": round(waited, 3),
            "overdue": bool(run.get("overdue")),
            "outcome": None if outcome is None else str(outcome),
            "error": None,
            "load": run.get("load") if run.get("load") in ("load", "swap") else None,
        }
    except (KeyError, TypeError, ValueError):
        return None

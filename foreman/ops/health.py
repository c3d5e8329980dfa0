"""``GET /healthz``: what an operator wants to know at a glance, never behind auth."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from foreman import __version__
from foreman.queue.costs import LoadCost
from foreman.queue.fleet.member import FleetMember
from foreman.queue.worker import Worker
from foreman.relay.inventory import Inventory
from foreman.relay.upstream import Target


def _timestamp(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


#: Jobs in one page of the queue report, by default and at most.
QUEUE_PAGE = 100
MAX_QUEUE_PAGE = 1000


def queue_report(
    worker: Worker,
    inventory: Inventory,
    now: float,
    fleet: FleetMember | None = None,
    *,
    limit: int = QUEUE_PAGE,
    offset: int = 0,
) -> dict[str, Any]:
    """``GET /api/foreman/queue``: what runs, what waits (a page of it, and
    how many in all, by model and by batch), what is loaded; in a fleet,
    every box too (ADR-0026)."""
    report = _queue_report(worker, inventory, now, limit, offset)
    if fleet is not None:
        report["box"] = fleet.identity.name
        report["boxes"] = fleet.report()
    return report


def _queue_report(
    worker: Worker, inventory: Inventory, now: float, limit: int, offset: int
) -> dict[str, Any]:
    residency = worker.residency
    total = worker.scheduler.depth + (worker.current is not None)
    following = offset + limit
    return {
        "jobs": [
            {
                "id": job.id,
                "model": job.model,
                "endpoint": job.endpoint,
                "state": job.state.value,
                "sync": job.sync,
                "priority": job.priority.value,
                # The name of the key it was sent with (ADR-0030); null: none.
                "caller": job.caller,
                "attempt": job.attempt,
                "age_seconds": round(max(0.0, now - job.created_at), 3),
                # Queued: waiting so far; running: how long it waited to start.
                "waited_seconds": round(worker.waited(job), 3),
                "overdue": position > 0 and worker.overdue(job),
                "position": position,
            }
            for job, position in worker.snapshot(limit, offset)
        ],
        "total": total,
        "offset": offset,
        "limit": limit,
        "next_offset": following if following < total else None,
        "waiting_by_model": worker.scheduler.waiting_by_model(),
        "waiting_by_batch": worker.scheduler.waiting_by_batch(),
        "depth": worker.scheduler.depth,
        "max_queue": worker.scheduler.max_queue,
        "max_batch_queue": worker.scheduler.max_batch_queue,
        "max_wait_seconds": worker.scheduler.policy.max_wait,
        "batch_max_wait_seconds": worker.scheduler.policy.batch_max_wait,
        "worker_model": residency.worker_model,
        "paused": worker.paused,
        "activity": worker.activity.now,
        "doing": worker.doing(),
        "quantum": worker.quantum_report(),
        "models": [
            {
                "model": cost.model,
                "load_seconds": round(cost.seconds, 3),
                "loads_measured": cost.samples,
                "next_call_seconds": _rounded(worker.costs.expected_gap(cost.model)),
            }
            for cost in _model_costs(worker, inventory)
        ],
        "embed_model": residency.embed_model,
        "resident_models": list(inventory.resident),
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _model_costs(worker: Worker, inventory: Inventory) -> list[LoadCost]:
    """Every model the target has, and any other with a measured load, by name."""
    names = set(inventory.model_names) | {cost.model for cost in worker.costs.known()}
    return [worker.costs.load_cost(name) for name in sorted(names)]


def health_report(
    inventory: Inventory,
    target: Target,
    *,
    simulated: bool,
    worker: Worker | None = None,
    fleet: FleetMember | None = None,
) -> dict[str, Any]:
    queue: dict[str, Any] | None = None
    store: dict[str, Any] | None = None
    degraded = inventory.degraded or (fleet is not None and fleet.error is not None)
    if worker is not None:
        queue = {
            "depth": worker.scheduler.depth,
            "running": worker.current.id if worker.current else None,
            "worker_model": worker.residency.worker_model,
            "paused": worker.paused,
        }
        journal = worker.journal
        store = {
            "writable": not journal.troubled,
            "error": journal.error,
            "unrecorded_states": journal.kept,
        }
        degraded = degraded or journal.troubled
    return {
        "status": "degraded" if degraded else "ok",
        "degraded": degraded,
        "foreman_version": __version__,
        "upstream": {
            "url": target.base_url,
            "simulated": simulated,
            "reachable": inventory.reachable,
            "ollama_version": inventory.ollama_version,
            "last_poll_at": _timestamp(inventory.last_poll_at),
            "last_error": inventory.last_error,
        },
        "models_available": len(inventory.model_names),
        "resident_models": list(inventory.resident),
        "queue": queue,
        "store": store,
        **({} if fleet is None else {"fleet": fleet_health(fleet)}),
    }


def fleet_health(fleet: FleetMember) -> dict[str, Any]:
    """``/healthz``'s ``fleet``: who this box is, how many boxes live, and why
    its heartbeat fails, if it does (ADR-0026)."""
    boxes = fleet.report()
    return {
        "box": fleet.identity.name,
        "box_id": fleet.identity.id,
        "url": fleet.identity.url,
        "boxes_alive": sum(1 for box in boxes if box["alive"]),
        "boxes_gone": sum(1 for box in boxes if not box["alive"]),
        "lease_seconds": fleet.lease,
        "store_reachable": fleet.error is None,
        "error": fleet.error,
        "last_heartbeat_at": _timestamp(fleet.last_heartbeat_at),
        "heartbeat_failures": fleet.heartbeat_failures,
    }

"""``GET /healthz``: what an operator wants to know at a glance, never behind auth."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from foreman import __version__
from foreman.inventory import Inventory
from foreman.upstream import Target


def _timestamp(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def health_report(inventory: Inventory, target: Target, *, simulated: bool) -> dict[str, Any]:
    return {
        "status": "degraded" if inventory.degraded else "ok",
        "degraded": inventory.degraded,
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
    }


def health_body(inventory: Inventory, target: Target, *, simulated: bool) -> bytes:
    return json.dumps(health_report(inventory, target, simulated=simulated)).encode()

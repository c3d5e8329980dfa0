"""What foreman answers itself at its root: ``/``, ``/healthz``, ``/metrics`` and
the queue report (``/api/foreman/queue``).

A part of :class:`foreman.front.api.ForemanAPI` (its routes are on the same
Klein app), kept apart from the dialects' calls, which are relayed or queued.
"""

from __future__ import annotations

import json
import time
from typing import Any

from klein import Klein
from twisted.web.iweb import IRequest
from werkzeug.exceptions import NotFound

from foreman.http import routing
from foreman.http.errors import JSON_CONTENT_TYPE
from foreman.ops.health import MAX_QUEUE_PAGE, QUEUE_PAGE, health_report, queue_report
from foreman.ops.metrics import ForemanMetrics
from foreman.ops.status_page import redirect_to_page, wants_page
from foreman.queue.fleet.member import FleetMember
from foreman.queue.key_book import KeyBook
from foreman.queue.worker import Worker
from foreman.relay.forward import Relay
from foreman.relay.inventory import Inventory


def whole(request: IRequest, body: bytes | None) -> bytes | None:
    """Give a body that is sent in one piece its Content-Length, as Ollama does."""
    if body is not None:
        request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


class OwnAnswers:
    app = Klein()

    _relay: Relay
    _inventory: Inventory
    _worker: Worker | None
    _fleet: FleetMember | None
    _metrics: ForemanMetrics | None
    _simulated: bool
    _key_book: KeyBook | None

    @app.route("/", methods=["GET", "HEAD"])
    def root(self, request: IRequest) -> bytes | None:
        if wants_page(request):
            return redirect_to_page(request)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return whole(request, b"Ollama is running")

    @app.route("/healthz", methods=["GET", "HEAD"])
    def healthz(self, request: IRequest) -> bytes | None:
        request.setHeader(b"Content-Type", JSON_CONTENT_TYPE)
        request.setHeader(b"Cache-Control", b"no-store")
        report = health_report(
            self._inventory,
            self._relay.target,
            simulated=self._simulated,
            worker=self._worker,
            fleet=self._fleet,
        )
        if self._key_book is not None:
            # Keys that could not be read fail closed: only the token opens.
            report["keys"] = self._key_book.health()
            if not self._key_book.loaded:
                report["status"], report["degraded"] = "degraded", True
        return whole(request, json.dumps(report).encode())

    @app.route("/metrics", methods=["GET", "HEAD"])
    def metrics(self, request: IRequest) -> bytes | None:
        if self._metrics is None:
            raise NotFound()
        request.setHeader(b"Content-Type", self._metrics.content_type)
        request.setHeader(b"Cache-Control", b"no-store")
        return whole(request, self._metrics.render())

    @app.route("/api/foreman/queue", methods=["GET", "HEAD"])
    def queue(self, request: IRequest) -> bytes | None:
        request.setHeader(b"Content-Type", JSON_CONTENT_TYPE)
        request.setHeader(b"Cache-Control", b"no-store")
        if self._worker is None:
            report: dict[str, Any] = {"jobs": [], "depth": 0, "queue": "disabled"}
        else:
            limit = whole_number(request, "limit", QUEUE_PAGE, 1, MAX_QUEUE_PAGE)
            offset = whole_number(request, "offset", 0, 0, None)
            report = queue_report(
                self._worker, self._inventory, time.time(), self._fleet, limit=limit, offset=offset
            )
        return whole(request, json.dumps(report).encode())


def whole_number(request: IRequest, name: str, default: int, least: int, most: int | None) -> int:
    """Query parameter ``name`` as a whole number in its range; else :class:`BadRequest`."""
    values = request.args.get(name.encode())
    if not values:
        return default
    try:
        number = int(values[-1])
    except ValueError:
        number = least - 1
    if number < least or (most is not None and number > most):
        upper = "" if most is None else f" to {most}"
        raise routing.BadRequest(f"{name} must be a whole number from {least}{upper}")
    return number

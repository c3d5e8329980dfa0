"""The status page: ``GET /ui``, its data at ``/ui/status.json``, and a sign-in
that keeps the token out of the page (docs/status-page.md).

A Klein app of its own, mounted under ``/ui`` by :class:`foreman.front.api.ForemanAPI`
(routes here are relative to ``/ui``). The token guard lets ``/ui`` through to
this module, which checks access itself: the page holds no data and is open;
the data accepts the Bearer header or the session cookie that ``/ui/login``
sets. The cookie is honoured here and nowhere else, and its ``Path=/ui`` keeps
the browser from even sending it to the API.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import urllib.parse
from base64 import b64encode
from collections.abc import Callable
from importlib.resources import files
from typing import Any, cast

import attrs
from klein import Klein
from twisted.web.iweb import IRequest

from foreman.http import routing
from foreman.http.auth import BearerTokenGuard
from foreman.http.errors import write_json_error
from foreman.http.routing import json_answer
from foreman.ops.health import health_report, queue_report
from foreman.ops.status_access import (
    COOKIE_NAME,
    MAX_FORM_BYTES,
    PAGE_PATH,
    SESSION_SECONDS,
    Presented,
    Sessions,
    refuse_cross_site,
    set_cookie,
)
from foreman.ops.timeline import Timeline
from foreman.queue.engines import Connection
from foreman.queue.fleet.member import FleetMember
from foreman.queue.store import JobStore
from foreman.queue.worker import Worker
from foreman.relay.forward import Outcome, Relay
from foreman.relay.inventory import Inventory
from foreman.wire.model_names import canonical_model_name
from foreman.wire.timestamps import timestamp

RECENT_JOBS = 20
#: ``/api/ps`` is asked at most this often, however many pages are open.
RESIDENT_CACHE_SECONDS = 1.0


def serves(request: IRequest) -> bool:
    """Is ``request`` for this module, which checks access itself?

    ``/ui`` and below, and a browser's ``GET /`` (answered with a redirect
    that carries nothing). The path is compared as sent, before any
    decoding, so nothing outside ``/ui`` can pass for it.
    """
    path = request.path
    return path == PAGE_PATH or path.startswith(PAGE_PATH + b"/") or wants_page(request)


def wants_page(request: IRequest) -> bool:
    """A browser asking for ``/``: it prefers HTML to the plain-text answer."""
    return (
        request.path == b"/"
        and request.method in (b"GET", b"HEAD")
        and prefers_html(request.getHeader(b"accept"))
    )


def prefers_html(accept: bytes | None) -> bool:
    """Does this ``Accept`` name ``text/html`` and rank it above ``text/plain``?

    Browsers send ``text/html,…,*/*;q=0.8``; Ollama's clients and curl send
    ``*/*``, ``application/json`` or nothing, and keep getting the text.
    """
    html: float | None = None
    plain = {b"text/plain": 0.0, b"text/*": 0.0, b"*/*": 0.0}
    seen: set[bytes] = set()
    for entry in (accept or b"").split(b","):
        media, *parameters = entry.split(b";")
        media = media.strip().lower()
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition(b"=")
            if name.strip().lower() == b"q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    quality = 0.0
        if media == b"text/html":
            html = max(html or 0.0, quality)
        elif media in plain:
            plain[media] = max(plain[media], quality)
            seen.add(media)
    # The most specific range that matches text/plain decides its quality.
    ranked = next((plain[media] for media in plain if media in seen), 0.0)
    return html is not None and html > 0 and html > ranked


def redirect_to_page(request: IRequest) -> bytes:
    request.setResponseCode(302)
    request.setHeader(b"Location", PAGE_PATH)
    # ``/`` answers differently by Accept: no cache may hand curl the redirect.
    request.setHeader(b"Vary", b"Accept")
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"Content-Length", b"0")
    return b""


@attrs.frozen
class _Page:
    """The page's HTML, and a Content-Security-Policy that admits its own
    inline script and style by hash and nothing from anywhere else."""

    html: bytes
    policy: bytes

    @classmethod
    def load(cls) -> _Page:
        html = (files("foreman.ops") / "ui" / "index.html").read_bytes()

        def hashes(tag: bytes) -> str:
            found = re.findall(b"<" + tag + b">(.*?)</" + tag + b">", html, re.DOTALL)
            digests = (b64encode(hashlib.sha256(each).digest()).decode() for each in found)
            return " ".join(f"'sha256-{digest}'" for digest in digests)

        policy = (
            f"default-src 'none'; script-src {hashes(b'script')}; style-src {hashes(b'style')};"
            " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        )
        return cls(html, policy.encode())


class StatusPage:
    app = Klein()

    def __init__(
        self,
        inventory: Inventory,
        relay: Relay,
        guard: BearerTokenGuard,
        *,
        worker: Worker | None,
        store: JobStore | None,
        simulated: bool,
        timeline: Timeline | None = None,
        fleet: FleetMember | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._inventory = inventory
        self._relay = relay
        self._guard = guard
        self._worker = worker
        self._store = store
        self._simulated = simulated
        self._timeline = timeline
        self._fleet = fleet
        self._now = now
        self.sessions = Sessions(now)
        self._page = _Page.load()
        self._resident: tuple[float, list[dict[str, Any]]] | None = None

    # -- the page ------------------------------------------------------------------

    # ``/ui`` reaches this app with an empty path; without strict_slashes=False
    # werkzeug would redirect it to ``/ui/``.
    @app.route("/", methods=["GET", "HEAD"], strict_slashes=False)
    def page(self, request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Content-Security-Policy", self._page.policy)
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Referrer-Policy", b"no-referrer")
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"Content-Length", b"%d" % len(self._page.html))
        return self._page.html

    @app.route("/status.json", methods=["GET", "HEAD"])
    async def status(self, request: IRequest) -> bytes:
        auth = self._access(request)
        if auth is None:
            return write_json_error(
                request,
                401,
                "unauthorized: sign in on the status page, or send a Bearer token",
                {b"WWW-Authenticate": b'Bearer realm="foreman"'},
            )
        request.setHeader(b"Cache-Control", b"no-store")
        document = await self.document()
        document["auth"] = auth
        return json_answer(request, document)

    def _access(self, request: IRequest) -> str | None:
        """How the caller may read the data: ``open``, ``bearer``, ``cookie``."""
        if not self._guard.enabled:
            return "open"
        if request.getHeader(b"authorization") is not None:
            # A header that is present decides: a wrong token is not rescued
            # by a cookie, as it is not anywhere else in foreman.
            return "bearer" if self._guard.allows(request) else None
        cookie = request.getCookie(COOKIE_NAME)
        # A session opened with a key ends when the key is revoked.
        if self.sessions.valid(cookie) and self._guard.admits(self.sessions.owner(cookie)):
            return "cookie"
        return None

    # -- signing in and out ------------------------------------------------------------

    @app.route("/login", methods=["POST"])
    def login(self, request: IRequest) -> bytes:
        refused = refuse_cross_site(request)
        if refused is not None:
            return refused
        request.setHeader(b"Cache-Control", b"no-store")
        if not self._guard.enabled:
            # Nothing to sign in to: the data is open.
            request.setResponseCode(204)
            return b""
        request.content.seek(0)
        # Anyone may post here: read no more than a sign-in form can hold.
        form = request.content.read(MAX_FORM_BYTES + 1)
        if len(form) > MAX_FORM_BYTES:
            return write_json_error(request, 413, "a sign-in form is smaller than that")
        try:
            fields = urllib.parse.parse_qs(form.decode("utf-8", "replace"), max_num_fields=4)
        except ValueError:
            return write_json_error(request, 400, "a sign-in form has one field: token")
        token = (fields.get("token") or [""])[-1].strip()
        presented = cast(IRequest, Presented(token.encode("utf-8")))
        caller = self._guard.identify(presented) if token else None
        if caller is None or not caller.admin:
            return write_json_error(request, 401, "unauthorized: that token is not right")
        set_cookie(request, self.sessions.open(caller.name), SESSION_SECONDS)
        request.setResponseCode(204)
        return b""

    @app.route("/logout", methods=["POST"])
    def logout(self, request: IRequest) -> bytes:
        refused = refuse_cross_site(request)
        if refused is not None:
            return refused
        self.sessions.close(request.getCookie(COOKIE_NAME))
        set_cookie(request, "", 0)
        request.setHeader(b"Cache-Control", b"no-store")
        request.setResponseCode(204)
        return b""

    # -- the data ----------------------------------------------------------------------

    async def document(self) -> dict[str, Any]:
        """Everything the page shows, in one JSON document."""
        now = self._now()
        worker = self._worker
        return {
            "generated_at": timestamp(now),
            "health": health_report(
                self._inventory,
                self._relay.target,
                simulated=self._simulated,
                worker=worker,
                fleet=self._fleet,
            ),
            "resident": await self._resident_models(now),
            "queue": None
            if worker is None
            else queue_report(worker, self._inventory, now, self._fleet),
            "recent_jobs": None if self._store is None else await self._recent_jobs(),
            "timeline": None if self._timeline is None else self._timeline.report(),
            "usage": await self._usage(),
        }

    async def _usage(self) -> list[dict[str, Any]] | None:
        """Each key's usage, every box's summed (``null``: the queue is off)."""
        usage = None if self._worker is None else self._worker.usage
        if usage is None:
            return None
        totals = await usage.totals()
        return [{"key": name, **totals[name].as_json()} for name in sorted(totals)]

    async def _resident_models(self, now: float) -> list[dict[str, Any]]:
        """What Ollama holds, with expiry, from a fresh ``/api/ps``.

        The inventory keeps only the names (polled every few seconds); when
        Ollama cannot say, those names are shown without expiry.
        """
        if self._resident is not None and now - self._resident[0] < RESIDENT_CACHE_SECONDS:
            entries = self._resident[1]
        else:
            entries = await self._ask_resident()
            self._resident = (now, entries)
        worker_model = self._worker.residency.worker_model if self._worker else None
        embed_model = self._worker.residency.embed_model if self._worker else None
        roles = {
            canonical_model_name(name): role
            for name, role in ((embed_model, "embedder"), (worker_model, "worker"))
            if name
        }
        return [
            {**entry, "role": roles.get(canonical_model_name(entry["name"]), "other")}
            for entry in entries
        ]

    async def _ask_resident(self) -> list[dict[str, Any]]:
        attempt = await self._relay.fetch(b"GET", b"/api/ps")
        if attempt.outcome is Outcome.DELIVERED:
            entries = _ps_entries(attempt.body or b"")
            if entries is not None:
                return entries
        return [{"name": name, "expires_at": None} for name in self._inventory.resident]

    async def _recent_jobs(self) -> list[dict[str, Any]]:
        assert self._store is not None
        return await self._store.read(_recent_jobs)

    # -- errors ------------------------------------------------------------------------

    routing.answer_routing_errors(app)


def _ps_entries(body: bytes) -> list[dict[str, Any]] | None:
    try:
        models = json.loads(body)["models"]
        return [
            {
                "name": str(model.get("name") or model["model"]),
                "expires_at": model.get("expires_at"),
            }
            for model in models
        ]
    except (ValueError, LookupError, TypeError, AttributeError):
        return None


def _recent_jobs(db: Connection) -> list[dict[str, Any]]:
    """The newest jobs of either kind: what a person wants to see ran lately.

    Native API calls are jobs too (``sync``); ``GET /jobs`` lists only the
    asynchronous ones. Bodies and results are never read: they can be large.
    """
    rows = db.execute(
        "SELECT id AS job_id, model, endpoint, state, sync, attempt, last_error AS error,"
        " created_at, started_at, finished_at FROM jobs ORDER BY id DESC LIMIT ?",
        (RECENT_JOBS,),
    ).fetchall()
    times = ("created_at", "started_at", "finished_at")
    return [
        {**dict(row), "sync": bool(row["sync"]), **{name: timestamp(row[name]) for name in times}}
        for row in rows
    ]

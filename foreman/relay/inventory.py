"""What the target Ollama has and holds: a polled view of /api/tags and /api/ps.

foreman serves its own ``/api/tags`` from this view, refuses calls naming a
model the target does not have (after one fresh look, so a model pulled a
moment ago is found), and reports itself degraded while the target cannot be
reached (ADR-0007). An unreachable target is ordinary weather on a laptop:
the last good view is kept and polling goes on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from treq.client import HTTPClient
from twisted.application.internet import TimerService
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from foreman.relay.upstream import (
    Target,
    UpstreamStatusError,
    UpstreamTimeout,
    describe_failure,
)
from foreman.wire.clocks import WallClock
from foreman.wire.model_names import canonical_model_name

log = Logger()

#: Metadata calls are quick; a poll that hangs this long is a failed poll.
POLL_TIMEOUT = 10.0

_DONE = Failure(ResponseDone())

__all__ = ["POLL_TIMEOUT", "Inventory", "UpstreamStatusError"]


class Inventory:
    """The last known models, resident models and version of the target."""

    def __init__(
        self,
        http: HTTPClient,
        target: Target,
        clock: IReactorTime,
        *,
        timeout: float = POLL_TIMEOUT,
        wall: WallClock | None = None,
    ) -> None:
        self._http = http
        self._target = target
        #: Polls and timeouts run on it (the reactor's clock: monotonic in the daemon).
        self._clock = clock
        #: Stamps ``last_poll_at`` (shown in ``/healthz``); the clock's by default.
        self._wall: WallClock = clock.seconds if wall is None else wall
        self._timeout = timeout
        self._in_flight: Deferred[None] | None = None
        self._recovery_listeners: list[Callable[[], object]] = []
        #: ``/api/tags`` exactly as the target last sent it.
        self.tags_body: bytes | None = None
        self.model_names: frozenset[str] = frozenset()
        #: ``/api/tags``' and ``/api/ps``' model entries as last read (a fleet's
        #: boxes publish them, ADR-0027).
        self.tags_entries: list[dict[str, Any]] = []
        self.ps_entries: list[dict[str, Any]] = []
        #: Each model's size in bytes, as ``/api/tags`` says (canonical names).
        self.sizes: dict[str, int] = {}
        #: Names of the models the target has loaded, from ``/api/ps``.
        self.resident: tuple[str, ...] = ()
        self.ollama_version: str | None = None
        #: ``None`` until the first poll ends.
        self.reachable: bool | None = None
        #: Whether the last poll got any HTTP answer at all (an Ollama-alike
        #: without ``/api/tags`` still answers, and can still run jobs).
        self.answering: bool | None = None
        #: When the last poll ended, on the wall clock (seconds since the epoch).
        self.last_poll_at: float | None = None
        self.last_error: str | None = None

    def model_sizes(self) -> dict[str, int]:
        """Each model's size in bytes, as last listed."""
        return self.sizes

    @property
    def target(self) -> Target:
        return self._target

    @property
    def degraded(self) -> bool:
        return self.reachable is False

    def on_reachable(self, listener: Callable[[], object]) -> None:
        """Call ``listener`` each time the target becomes reachable: at first
        contact, and again whenever it answers after an outage."""
        self._recovery_listeners.append(listener)

    def refresh(self) -> Deferred[None]:
        """Poll the target now; concurrent callers share one poll. Never fails."""
        in_flight = self._in_flight
        if in_flight is None:
            in_flight = self._in_flight = ensureDeferred(self._poll())
            in_flight.addBoth(self._poll_ended, in_flight)
        shared: Deferred[None] = Deferred()
        in_flight.addBoth(lambda _: shared.callback(None))
        return shared

    def _poll_ended(self, result: object, ended: Deferred[None]) -> None:
        if self._in_flight is ended:
            self._in_flight = None

    def knows_model(self, name: str) -> Deferred[bool | None]:
        """Does the target have ``name``? ``None`` when it cannot be asked."""
        wanted = canonical_model_name(name)
        if wanted in self.model_names:
            return succeed(True)

        def after_refresh(_: None) -> bool | None:
            if wanted in self.model_names:
                return True
            return False if self.reachable else None

        return self.refresh().addCallback(after_refresh)

    def poller(self, interval: float) -> TimerService:
        """A service that refreshes every ``interval`` seconds, first at start."""
        service = _Poller(self, interval)
        service.clock = self._clock
        return service

    def stop(self) -> None:
        """Abandon a poll in progress (its connection is closed)."""
        if self._in_flight is not None:
            self._in_flight.cancel()

    async def _poll(self) -> None:
        try:
            tags_body = await self._get(b"/api/tags")
            tags = json.loads(tags_body)
        except CancelledError:
            return  # foreman is stopping
        except Exception as e:  # any failure means: keep the last view
            self.answering = isinstance(e, (UpstreamStatusError, ValueError))
            self._mark_unreachable(Failure(e))
            return
        # What is loaded and which version runs are good to know, but a
        # target that cannot say is still a working target.
        ps = await self._optional_json(b"/api/ps")
        version = await self._optional_json(b"/api/version")
        self.tags_body = tags_body
        self.model_names = frozenset(
            canonical_model_name(name) for name in _names(_field(tags, "models"))
        )
        self.sizes = _sizes(_field(tags, "models"))
        self.resident = tuple(_names(_field(ps, "models")))
        self.tags_entries = _entries(_field(tags, "models"))
        self.ps_entries = _entries(_field(ps, "models"))
        found_version = _field(version, "version")
        self.ollama_version = found_version if isinstance(found_version, str) else None
        self.last_poll_at = self._wall()
        was_reachable = self.reachable
        self.reachable = True
        self.answering = True
        self.last_error = None
        if was_reachable is False:
            log.info(
                "Ollama at {url} answers again; foreman is no longer degraded",
                url=self._target.base_url,
            )
        if not was_reachable:
            for listener in list(self._recovery_listeners):
                listener()

    async def refresh_resident(self) -> tuple[str, ...]:
        """Read ``/api/ps`` now; raises if the target cannot say."""
        ps = json.loads(await self._get(b"/api/ps"))
        self.resident = tuple(_names(_field(ps, "models")))
        self.ps_entries = _entries(_field(ps, "models"))
        return self.resident

    async def _optional_json(self, path: bytes) -> Any:
        try:
            return json.loads(await self._get(path))
        except Exception:
            return None

    async def _get(self, path: bytes) -> bytes:
        headers = Headers()
        if self._target.token:
            headers.setRawHeaders(b"Authorization", [b"Bearer " + self._target.token.encode()])
        # One deadline for the headers and the body. treq's own ``timeout=``
        # covers only the headers (a reply that stalls after them would hold
        # the poll, and a swap waiting on /api/ps, for ever), and its
        # failure cannot be told from any other cancel.
        clock: Any = self._clock
        waiting: list[Deferred[Any]] = []
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            waiting[-1].cancel()

        timer = self._clock.callLater(self._timeout, expire)
        try:
            waiting.append(
                self._http.get(
                    self._target.url(path), headers=headers, reactor=clock, unbuffered=True
                )
            )
            response = await waiting[-1]
            body = _Body()
            waiting.append(body.done)
            response.deliverBody(body)
            content: bytes = await body.done
        except Exception:
            if expired:
                raise UpstreamTimeout(self._timeout) from None
            raise
        finally:
            if timer.active():
                timer.cancel()
        if response.code != 200:
            raise UpstreamStatusError(path, response.code)
        return content

    def _mark_unreachable(self, failure: Failure) -> None:
        reason = describe_failure(failure)
        self.last_poll_at = self._wall()
        self.last_error = reason
        if self.reachable is not False:
            log.warn(
                "Cannot reach Ollama at {url} ({reason}); foreman is degraded and keeps "
                "the last known models",
                url=self._target.base_url,
                reason=reason,
            )
        self.reachable = False


class _Body(Protocol):
    """A metadata reply's body; cancelling ``done`` closes its connection."""

    def __init__(self) -> None:
        self.done: Deferred[bytes] = Deferred(self._cancel)
        self._chunks: list[bytes] = []

    def _cancel(self, _: Deferred[bytes]) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = _DONE) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._chunks))
        else:
            self.done.errback(reason)


class _Poller(TimerService):
    def __init__(self, inventory: Inventory, interval: float) -> None:
        super().__init__(interval, inventory.refresh)
        self._inventory = inventory

    def stopService(self) -> Deferred[None] | None:
        stopped: Deferred[None] | None = super().stopService()
        self._inventory.stop()
        return stopped


def _field(document: Any, name: str) -> Any:
    return document.get(name) if isinstance(document, dict) else None


def _names(models: Any) -> list[str]:
    if not isinstance(models, list):
        return []
    names = []
    for entry in models:
        if isinstance(entry, dict):
            name = entry.get("name") or entry.get("model")
            if isinstance(name, str):
                names.append(name)
    return names


def _sizes(models: Any) -> dict[str, int]:
    if not isinstance(models, list):
        return {}
    sizes: dict[str, int] = {}
    for entry in models:
        if isinstance(entry, dict):
            name = entry.get("name") or entry.get("model")
            size = entry.get("size")
            if isinstance(name, str) and isinstance(size, int) and size > 0:
                sizes[canonical_model_name(name)] = size
    return sizes


def _entries(models: Any) -> list[dict[str, Any]]:
    """The model objects of a listing, as they came."""
    if not isinstance(models, list):
        return []
    return [entry for entry in models if isinstance(entry, dict)]

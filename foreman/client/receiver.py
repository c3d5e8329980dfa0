"""The jobs client's ephemeral webhook receiver (ADR-0005, seen from the caller's side).

:class:`~foreman.client.JobsClient` starts one lazily, on a port the system
picks, and names it as the ``state_webhook_url`` of the jobs it submits. It is
a shortcut, never the source of truth: ``wait`` also polls ``GET /jobs/{id}``
and reads the stored view once the receiver hears of a terminal state, so a
receiver foreman cannot reach (foreman on another host, a firewall) costs
latency, not correctness.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.protocols.policies import WrappingFactory
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import Site

from foreman.wire.signature import verify

#: The states a job never leaves.
TERMINAL_STATES = frozenset({"done", "failed", "cancelled"})

SIGNATURE_HEADER = b"x-foreman-signature"

Event = dict[str, Any]


class JobWatch:
    """One ``wait``'s interest in one job: hands over its terminal events
    (with ``every_state``, its events of every state).

    An event that arrives while nobody is waiting on :meth:`next_event` is
    kept (the waiter may be busy polling), and consumed by the next call.
    """

    def __init__(
        self, job_id: str, release: Callable[[JobWatch], None], *, every_state: bool = False
    ) -> None:
        self.job_id = job_id
        self.every_state = every_state
        self._release = release
        self._pending: Event | None = None
        self._waiter: Deferred[Event] | None = None

    def notify(self, event: Event) -> None:
        if not self.every_state and event.get("state") not in TERMINAL_STATES:
            return
        if self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            waiter.callback(event)
        else:
            self._pending = event

    def next_event(self) -> Deferred[Event]:
        """Fires with the next event watched for; cancelling it only stops listening."""
        if self._pending is not None:
            event, self._pending = self._pending, None
            return succeed(event)
        waiter: Deferred[Event] = Deferred(self._forget_waiter)
        self._waiter = waiter
        return waiter

    #: Its name from before ``every_state``: a plain watch hands over terminal events only.
    next_terminal = next_event

    def _forget_waiter(self, waiter: Deferred[Event]) -> None:
        if self._waiter is waiter:
            self._waiter = None

    def close(self) -> None:
        self._release(self)


class ConnectionTracker(WrappingFactory):
    """Remembers open connections so stopping can close them too.

    ``stopListening`` leaves accepted connections open, and a webhook sender
    keeps its connection alive between events; a stopped receiver must not.
    """

    noisy = False

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self._all_closed: list[Deferred[None]] = []

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            closed, self._all_closed = self._all_closed, []
            for waiter in closed:
                waiter.callback(None)

    def close_all(self) -> Deferred[None]:
        if not self.protocols:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._all_closed.append(waiter)
        for protocol in list(self.protocols):
            protocol.transport.abortConnection()
        return waiter


class WebhookReceiver:
    """Accepts foreman's state events on ``http://<host>:<port>/hooks/<random>``.

    The random path keeps stray POSTs out; with a ``secret`` every event must
    carry a valid ``X-Foreman-Signature`` (checked by the sender's own
    :func:`foreman.wire.signature.verify`) or is refused with 401 (which
    foreman counts as a failed delivery and retries, so a misconfigured
    secret shows in foreman's log, while ``wait`` carries on by polling).
    """

    def __init__(
        self,
        reactor: Any,
        *,
        secret: str | None = None,
        interface: str = "127.0.0.1",
        advertised_host: str | None = None,
    ) -> None:
        self._reactor = reactor
        self._secret = secret
        self._interface = interface
        self._host = advertised_host or interface
        self._path = b"/hooks/" + secrets.token_urlsafe(16).encode("ascii")
        self._watches: dict[str, set[JobWatch]] = {}
        self._port: Any = None
        self._tracker: ConnectionTracker | None = None
        self.url: str | None = None
        #: Events accepted, and requests refused (bad signature or body).
        self.accepted = 0
        self.refused = 0

    @property
    def running(self) -> bool:
        return self._port is not None

    def start(self) -> str:
        """Listen (synchronously: binding a local port does not wait) and return the URL."""
        if self.url is not None:
            return self.url
        site = Site(_HookResource(self))
        site.noisy = False
        self._tracker = ConnectionTracker(site)
        self._port = self._reactor.listenTCP(0, self._tracker, interface=self._interface)
        port = self._port.getHost().port
        host = f"[{self._host}]" if ":" in self._host else self._host
        self.url = f"http://{host}:{port}{self._path.decode('ascii')}"
        return self.url

    async def stop(self) -> None:
        port, self._port = self._port, None
        if port is None:
            return
        await port.stopListening()
        if self._tracker is not None:
            await self._tracker.close_all()

    def watch(self, job_id: str, *, every_state: bool = False) -> JobWatch:
        """Hear of ``job_id``'s terminal events (``every_state``: of all its events)."""
        watch = JobWatch(job_id, self._unwatch, every_state=every_state)
        self._watches.setdefault(job_id, set()).add(watch)
        return watch

    def _unwatch(self, watch: JobWatch) -> None:
        watches = self._watches.get(watch.job_id)
        if watches is not None:
            watches.discard(watch)
            if not watches:
                del self._watches[watch.job_id]

    def receive(self, body: bytes, signature: str | None) -> tuple[int, str | None]:
        """Judge one POST: the status to answer and, for a refusal, why."""
        if self._secret is not None and (
            signature is None or not verify(self._secret, body, signature)
        ):
            self.refused += 1
            return 401, "invalid or missing X-Foreman-Signature"
        try:
            event = json.loads(body)
        except ValueError:
            event = None
        if not (
            isinstance(event, dict)
            and isinstance(event.get("job_id"), str)
            and isinstance(event.get("state"), str)
        ):
            self.refused += 1
            return 400, "not a foreman state event"
        self.accepted += 1
        for watch in list(self._watches.get(event["job_id"], ())):
            watch.notify(event)
        return 204, None


class _HookResource(Resource):
    isLeaf = True

    def __init__(self, receiver: WebhookReceiver) -> None:
        super().__init__()
        self._receiver = receiver

    def render(self, request: IRequest) -> bytes:
        # Not Resource.render: its 405 page is deprecated (and a warning).
        if request.path != self._receiver._path:
            return _answer(request, 404, "no such webhook")
        if request.method != b"POST":
            request.setHeader(b"Allow", b"POST")
            return _answer(request, 405, "webhooks are POSTed")
        request.content.seek(0)
        body: bytes = request.content.read()
        raw_signature = request.getHeader(SIGNATURE_HEADER)
        signature = raw_signature.decode("latin-1") if raw_signature is not None else None
        status, problem = self._receiver.receive(body, signature)
        return _answer(request, status, problem)


def _answer(request: IRequest, status: int, problem: str | None) -> bytes:
    request.setResponseCode(status)
    if problem is None:
        return b""
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps({"error": problem}).encode()

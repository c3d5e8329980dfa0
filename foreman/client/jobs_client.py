"""A Twisted client for foreman's ``/jobs`` surface (ADR-0004, ADR-0005, ADR-0011).

Every call is a coroutine: ``await`` it from ``async def`` code, or wrap it
with ``Deferred.fromCoroutine`` (or ``ensureDeferred``) where a
:class:`~twisted.internet.defer.Deferred` is wanted; cancelling that Deferred
cancels the call. Bodies and job views stay plain JSON dicts so that fields
this client does not know about pass through untouched.

``wait`` listens for the job's webhook (when the job was submitted with
``notify=True``) and polls ``GET /jobs/{id}`` with backoff, whichever learns
of the end first; the answer is always the stored view, never the event.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, cast
from urllib.parse import quote, urlencode

from twisted.internet.defer import CancelledError, Deferred, FailureGroup, TimeoutError, race
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from foreman.client.receiver import TERMINAL_STATES, JobWatch, WebhookReceiver
from foreman.client.transport import (
    ClientError,
    ForemanError,
    ForemanHTTP,
    ForemanUnreachable,
    WaitTimeout,
)
from foreman.wire.priority import Priority, parse_priority

__all__ = [
    "TERMINAL_STATES",
    "ClientError",
    "Endpoint",
    "ForemanError",
    "ForemanUnreachable",
    "JobView",
    "JobsClient",
    "WaitTimeout",
    "terminal",
]

Endpoint = Literal["chat", "generate"]
#: A job as ``GET /jobs/{id}`` shows it (see docs/client.md for the fields).
JobView = dict[str, Any]

DEFAULT_URL = "http://127.0.0.1:11435"
#: Polling backoff: the first pause, doubled up to the last.
POLL_INITIAL = 0.5
POLL_MAX = 10.0
#: Polls in a row that may fail to reach foreman before ``wait`` gives up:
#: enough to ride out a restart of foreman, not to hide a dead one for long.
POLL_FAILURES_TOLERATED = 5


class JobsClient:
    """Submit, inspect, wait for and cancel foreman jobs over HTTP.

    ``clock`` paces the polling backoff and ``wait``'s timeout (a
    :class:`~twisted.internet.task.Clock` in tests); ``reactor`` does the
    networking. ``webhook_secret`` is foreman's ``FOREMAN_WEBHOOK_SECRET``:
    with it, the receiver refuses unsigned or wrongly signed events.
    ``receiver_interface`` is where the receiver listens and
    ``receiver_host`` the name foreman is told to call it by (default: the
    interface), for a foreman that is not on this machine.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        reactor: Any = None,
        webhook_secret: str | None = None,
        clock: IReactorTime | None = None,
        receiver_interface: str = "127.0.0.1",
        receiver_host: str | None = None,
        connect_timeout: float = 10.0,
        poll_initial: float = POLL_INITIAL,
        poll_max: float = POLL_MAX,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self._http = ForemanHTTP(reactor, base_url, token, connect_timeout)
        self.base_url = self._http.base_url
        self._clock: IReactorTime = clock if clock is not None else reactor
        self._receiver = WebhookReceiver(
            reactor,
            secret=webhook_secret,
            interface=receiver_interface,
            advertised_host=receiver_host,
        )
        self._poll_initial = poll_initial
        self._poll_max = poll_max
        self._waits: set[Deferred[JobView]] = set()

    @property
    def receiver(self) -> WebhookReceiver:
        """The webhook receiver (listening once a ``notify=True`` submit started it)."""
        return self._receiver

    # -- the calls -----------------------------------------------------------

    async def submit(
        self,
        body: Mapping[str, Any],
        *,
        endpoint: Endpoint = "chat",
        webhook_url: str | None = None,
        metadata: Any = None,
        idempotency_key: str | None = None,
        notify: bool = True,
        priority: Priority | str | None = None,
    ) -> str:
        """``POST /jobs``; the new (or, for a repeated idempotency key, the old) job id.

        ``body`` is a native ``/api/chat`` body (``/api/generate`` with
        ``endpoint="generate"``); the keyword arguments win over same-named
        fields in it. With ``notify`` and no webhook URL of the caller's own
        (argument or ``state_webhook_url`` in ``body``), the job reports to
        this client's receiver, started now, so ``wait`` hears of it at once.

        Not with an ``idempotency_key``, though: foreman takes a retry with a
        different webhook URL for a different request (422), and the
        receiver's URL changes from one client to the next, so a retry from
        a new process would be refused. Such jobs are waited for by polling.

        ``priority`` is the job's scheduling class, ``"interactive"`` or
        ``"batch"`` (or a :class:`~foreman.wire.priority.Priority`); without
        it, foreman's default (``batch``) or the body's own ``priority``.
        """
        if endpoint not in ("chat", "generate"):
            raise ValueError(f"endpoint must be 'chat' or 'generate', not {endpoint!r}")
        payload = dict(body)
        payload["endpoint"] = endpoint
        if priority is not None:
            chosen = (
                priority
                if isinstance(priority, Priority)
                else parse_priority(priority, Priority.BATCH)
            )
            payload["priority"] = chosen.value
        if webhook_url is not None:
            payload["state_webhook_url"] = webhook_url
        elif notify and idempotency_key is None and "state_webhook_url" not in payload:
            payload["state_webhook_url"] = self._receiver.start()
        if metadata is not None:
            payload["metadata"] = metadata
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else {}
        answer = await self._http.call_json("POST", "/jobs", payload, headers)
        job_id = answer.get("job_id") if isinstance(answer, dict) else None
        if not isinstance(job_id, str):
            raise ClientError(f"foreman's answer to POST /jobs has no job_id: {answer!r}")
        return job_id

    async def get(self, job_id: str) -> JobView:
        """``GET /jobs/{id}``: the stored view of the job."""
        return cast(JobView, await self._http.call_json("GET", _job_path(job_id)))

    async def cancel(self, job_id: str) -> JobView:
        """``POST /jobs/{id}/cancel``; a finished job is a :class:`ForemanError` 409."""
        return cast(JobView, await self._http.call_json("POST", _job_path(job_id, "cancel")))

    async def artifact(self, job_id: str, name: str = "completion") -> bytes:
        """The raw bytes of an artifact (``completion``: Ollama's response JSON)."""
        _, body = await self._http.call("GET", _job_path(job_id, "artifacts", name))
        return body

    async def ps(self) -> dict[str, Any]:
        """``GET /api/ps``: what the target Ollama has loaded."""
        return cast(dict[str, Any], await self._http.call_json("GET", "/api/ps"))

    async def queue(self) -> dict[str, Any]:
        """``GET /api/foreman/queue``: what runs and waits in foreman's queue."""
        return cast(dict[str, Any], await self._http.call_json("GET", "/api/foreman/queue"))

    async def keys(self) -> list[dict[str, Any]]:
        """``GET /api/foreman/keys`` (admin): every key, revoked ones too."""
        answer = await self._http.call_json("GET", "/api/foreman/keys")
        keys = answer.get("keys") if isinstance(answer, dict) else None
        if not isinstance(keys, list):
            raise ClientError(f"foreman's answer to GET /api/foreman/keys has no keys: {answer!r}")
        return [key for key in keys if isinstance(key, dict)]

    async def add_key(
        self,
        name: str,
        scopes: Sequence[str] | None = None,
        *,
        weight: float | None = None,
        max_waiting: int | None = None,
    ) -> dict[str, Any]:
        """``POST /api/foreman/keys`` (admin): a new key, its ``key`` shown this once.

        Without ``scopes``, foreman's default: ``generate``, ``embed`` and ``jobs``.
        """
        body: dict[str, Any] = {"name": name}
        if scopes is not None:
            body["scopes"] = list(scopes)
        if weight is not None:
            body["weight"] = weight
        if max_waiting is not None:
            body["max_waiting"] = max_waiting
        return cast(dict[str, Any], await self._http.call_json("POST", "/api/foreman/keys", body))

    async def revoke_key(self, name: str) -> dict[str, Any]:
        """``DELETE /api/foreman/keys/{name}`` (admin): refused from now on, at every box."""
        path = "/api/foreman/keys/" + quote(name, safe="")
        return cast(dict[str, Any], await self._http.call_json("DELETE", path))

    async def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        progress: Callable[[JobView], object] | None = None,
    ) -> JobView:
        """The job's view once it is terminal (``done``, ``failed`` or ``cancelled``).

        ``progress``, if given, is called with each view read before then (the
        job queued, loading or working), as it is read; the receiver then
        also cuts the polling pause short on the job's other state events,
        so that a change of state shows at once.

        Raises :class:`WaitTimeout` after ``timeout`` seconds on the client's
        clock (the job itself is left alone), :class:`ForemanError` when
        foreman refuses (404: no such job), and :class:`ForemanUnreachable`
        when foreman cannot be reached at first, or for several polls in a row.
        """
        waiting = Deferred.fromCoroutine(self._wait_until_terminal(job_id, progress))
        if timeout is not None:
            waiting.addTimeout(timeout, self._clock)
        self._waits.add(waiting)
        try:
            return await waiting
        except TimeoutError:
            assert timeout is not None
            raise WaitTimeout(job_id, timeout) from None
        finally:
            self._waits.discard(waiting)

    async def close(self) -> None:
        """Cancel pending waits, stop the receiver, close pooled connections."""
        for waiting in list(self._waits):
            waiting.cancel()
        await self._receiver.stop()
        await self._http.close()

    async def __aenter__(self) -> JobsClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # -- waiting -----------------------------------------------------------

    async def _wait_until_terminal(
        self, job_id: str, progress: Callable[[JobView], object] | None
    ) -> JobView:
        # Watch before the first look, so an event that lands while that
        # look is on its way is not missed.
        watch = None
        if self._receiver.running:
            watch = self._receiver.watch(job_id, every_state=progress is not None)
        pause = self._poll_initial
        looked = False
        failures = 0
        try:
            while True:
                try:
                    view = await self.get(job_id)
                except ForemanUnreachable:
                    failures += 1
                    # The first look must succeed (a wrong URL fails fast);
                    # later ones may miss while foreman restarts.
                    if not looked or failures > POLL_FAILURES_TOLERATED:
                        raise
                else:
                    looked = True
                    failures = 0
                    if terminal(view):
                        return view
                    if progress is not None:
                        progress(view)
                await self._pause(pause, watch)
                pause = min(pause * 2, self._poll_max)
        finally:
            if watch is not None:
                watch.close()

    async def _pause(self, seconds: float, watch: JobWatch | None) -> None:
        """Sleep on the clock, cut short by an event the watch hands over."""
        sleep: Deferred[object] = deferLater(self._clock, seconds)
        if watch is None:
            await sleep
            return
        # race cancels the loser: the delayed call, or the event waiter.
        try:
            await race([sleep, cast(Deferred[object], watch.next_event())])
        except FailureGroup as e:
            # Both lost: race itself was cancelled (timeout, close, caller).
            if all(failure.check(CancelledError) for failure in e.failures):
                raise CancelledError() from None
            raise

    # Last: inside the class body this name shadows the builtin ``list``.
    async def list(
        self,
        state: str | None = None,
        model: str | None = None,
        limit: int | None = None,
        before: str | None = None,
    ) -> dict[str, Any]:
        """``GET /jobs``: ``{"jobs": [views, newest first], "next": id or None}``.

        Pass ``next`` back as ``before`` for the following page.
        """
        query = {
            key: str(value)
            for key, value in (("state", state), ("model", model), ("limit", limit))
            if value is not None
        }
        if before is not None:
            query["before"] = before
        path = "/jobs" + ("?" + urlencode(query) if query else "")
        return cast(dict[str, Any], await self._http.call_json("GET", path))


def _job_path(job_id: str, *rest: str) -> str:
    return "/".join(["/jobs", *(quote(part, safe="") for part in (job_id, *rest))])


def terminal(view: Mapping[str, Any]) -> bool:
    """Whether a job view (or a webhook event) is in a final state."""
    return view.get("state") in TERMINAL_STATES

"""The jobs client's HTTP (one request to foreman) and the client's errors.

foreman's refusals are Ollama-shaped (``{"error": "..."}`` with a status)
and become :class:`ForemanError`; no answer at all (refused, unresolvable,
cut off) becomes :class:`ForemanUnreachable`, so a script can tell "foreman
said no" from "foreman is not there".
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Mapping
from typing import Any, TypeVar

import treq
from treq.client import HTTPClient
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

T = TypeVar("T")


class ClientError(Exception):
    """Anything the jobs client reports."""


class ForemanError(ClientError):
    """foreman answered with a status outside 2xx; ``message`` is its ``error``."""

    def __init__(self, status: int, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        #: Seconds to wait before retrying, from ``Retry-After`` (on 503).
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"foreman answered {self.status}: {self.message}"


class ForemanUnreachable(ClientError):
    """No HTTP answer at all: refused, unresolvable, timed out or cut off."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, reason)
        self.url = url
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot reach foreman at {self.url}: {self.reason}"


class WaitTimeout(ClientError, builtins.TimeoutError):
    """The job was not finished within ``wait``'s timeout (it goes on running)."""

    def __init__(self, job_id: str, timeout: float) -> None:
        super().__init__(job_id, timeout)
        self.job_id = job_id
        self.timeout = timeout

    def __str__(self) -> str:
        return f"job {self.job_id} did not finish within {self.timeout:g} s"


#: Failures that mean foreman never answered, as opposed to answering badly.
_CONNECTION_FAILURES: tuple[type[BaseException], ...] = (
    net_error.ConnectError,
    net_error.DNSLookupError,
    net_error.TimeoutError,
    net_error.ConnectionLost,
    net_error.ConnectionDone,
    OSError,
)


class ForemanHTTP:
    """Requests to one foreman, with its Bearer token, over a pool of connections."""

    def __init__(
        self, reactor: Any, base_url: str, token: str | None, connect_timeout: float
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._http = HTTPClient(Agent(reactor, connectTimeout=connect_timeout, pool=self._pool))

    async def close(self) -> None:
        await self._pool.closeCachedConnections()

    async def call_json(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        status, raw = await self.call(method, path, body, headers)
        try:
            return json.loads(raw)
        except ValueError:
            raise ForemanError(status, f"not JSON: {raw[:200]!r}") from None

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """One request; the status and whole body of a 2xx answer."""
        sent = Headers({b"Accept": [b"application/json"]})
        if self._token:
            sent.setRawHeaders(b"Authorization", [f"Bearer {self._token}".encode()])
        for name, value in (headers or {}).items():
            sent.setRawHeaders(name.encode("latin-1"), [value.encode("latin-1")])
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            sent.setRawHeaders(b"Content-Type", [b"application/json"])
        try:
            response = await _owned(
                self._http.request(
                    method, self.base_url + path, headers=sent, data=data, allow_redirects=False
                )
            )
            content: bytes = await _owned(treq.content(response))
        except CancelledError:
            raise
        except Exception as e:
            raise self._unreachable(e) from None
        if not 200 <= response.code < 300:
            raise _refusal(response, content)
        return response.code, content

    def _unreachable(self, failure: Exception) -> Exception:
        """A connection-level failure as :class:`ForemanUnreachable`; others as they are."""
        reasons = getattr(failure, "reasons", None)
        if reasons:
            # The Agent's wrappers (ResponseNeverReceived and kin): the first reason.
            return ForemanUnreachable(self.base_url, _describe(reasons[0].value))
        if isinstance(failure, _CONNECTION_FAILURES):
            return ForemanUnreachable(self.base_url, _describe(failure))
        return failure


def _owned(inner: Deferred[T]) -> Deferred[T]:
    """``inner``, except that cancelling it fails with CancelledError, at once.

    How the Agent reports its own cancellation depends on the moment: a
    cancelled name lookup even comes back as a DNSLookupError. Whoever
    cancels (a timeout, ``close``, the caller) must see a cancellation.
    """

    cancelled = False

    def cancel(_: Deferred[T]) -> None:
        nonlocal cancelled
        cancelled = True
        inner.cancel()

    outer: Deferred[T] = Deferred(cancel)

    def relay(result: T | Failure) -> None:
        # After a cancel, whatever ``inner`` says (even at once) is dropped;
        # Deferred.cancel then fails ``outer`` with CancelledError.
        if not cancelled:
            if isinstance(result, Failure):
                outer.errback(result)
            else:
                outer.callback(result)

    inner.addBoth(relay)
    return outer


def _refusal(response: IResponse, content: bytes) -> ForemanError:
    """foreman's ``{"error": …}`` (or whatever came instead) as a :class:`ForemanError`."""
    try:
        parsed = json.loads(content)
        message = parsed["error"] if isinstance(parsed.get("error"), str) else None
    except (ValueError, AttributeError):
        message = None
    if message is None:
        text = content.decode("utf-8", "replace").strip()[:200]
        message = text or response.phrase.decode("latin-1")
    retry_after = None
    raw = response.headers.getRawHeaders(b"retry-after")
    if raw:
        try:
            retry_after = float(raw[0])
        except ValueError:
            retry_after = None
    return ForemanError(response.code, message, retry_after=retry_after)


def _describe(failure: BaseException) -> str:
    text = str(failure).strip()
    name = type(failure).__name__
    return f"{name}: {text}" if text else name

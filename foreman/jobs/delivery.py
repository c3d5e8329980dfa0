"""The HTTP side of a webhook delivery: the URL, the receiver's answer, the reasons.

Kept apart from :mod:`foreman.jobs.outbox` (the outbox: what is due, retries,
persistence) because none of it knows about the outbox: it turns a URL into
bytes for the Agent, reads and judges a receiver's answer, and says in a few
words why an attempt failed.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import hyperlink
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionRefusedError, DNSLookupError
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse

import foreman
from foreman.relay.upstream import BytesBodyProducer
from foreman.wire.signature import sign, standard_signature

#: A receiver owes us a status, not a body: read at most this much of one.
MAX_RESPONSE_BODY = 64 * 1024

USER_AGENT = f"foreman-webhooks/{foreman.__version__}"
EVENT = "job.state"
#: A batch's state change (ADR-0029): its outbox rows carry the batch's id.
BATCH_EVENT = "batch.state"


#: OpenAI's events (``evt_…``) carry their own id in the outbox row.
OPENAI_EVENT_PREFIX = "evt_"


def event_type(subject: str) -> str:
    """What an event reports, by whose id its outbox row carries."""
    return BATCH_EVENT if subject.startswith("batch_") else EVENT


def is_openai_event(subject: str) -> bool:
    """Whether the outbox row holds an event in OpenAI's form (Standard Webhooks)."""
    return subject.startswith(OPENAI_EVENT_PREFIX)


def standard_headers(event_id: str, body: bytes, secret: str | None, now: float) -> Headers:
    """The Standard Webhooks headers of one attempt: the event's stable id, the
    attempt's time, and the signature over both and the body (made afresh on
    every attempt, so a retry is never stale to a receiver checking the time)."""
    timestamp = int(now)
    headers = Headers(
        {
            b"Content-Type": [b"application/json"],
            b"User-Agent": [USER_AGENT.encode("ascii")],
            b"webhook-id": [event_id.encode("ascii")],
            b"webhook-timestamp": [str(timestamp).encode("ascii")],
        }
    )
    if secret is not None:
        signature = standard_signature(secret, event_id, timestamp, body)
        headers.addRawHeader(b"webhook-signature", signature.encode("ascii"))
    return headers


class DeliveryFailed(Exception):
    """An attempt failed for the reason given, already in words."""


def event_headers(
    delivery_id: int,
    body: bytes,
    timestamp: str | None,
    secret: str | None,
    event: str = EVENT,
) -> Headers:
    """An event's headers: its kind, its stable delivery id, and its signature
    with a secret."""
    headers = Headers(
        {
            b"Content-Type": [b"application/json"],
            b"User-Agent": [USER_AGENT.encode("ascii")],
            b"X-Foreman-Delivery": [str(delivery_id).encode("ascii")],
            b"X-Foreman-Event": [event.encode("ascii")],
        }
    )
    if timestamp is not None:
        headers.addRawHeader(b"X-Foreman-Timestamp", timestamp.encode("ascii"))
    if secret is not None:
        headers.addRawHeader(b"X-Foreman-Signature", sign(secret, body).encode("ascii"))
    return headers


def post_event(
    agent: IAgent, clock: IReactorTime, url: str, headers: Headers, body: bytes, timeout: float
) -> Deferred[None]:
    """One POST; fires when a 2xx answer has been read within ``timeout``
    seconds, fails otherwise."""
    requesting = agent.request(b"POST", url_bytes(url), headers, BytesBodyProducer(body))
    answered = requesting.addCallback(read_answer)

    def timed_out(result: object, timeout: float) -> Failure:
        return Failure(DeliveryFailed(f"no complete answer within {timeout:g} s"))

    # One budget for connecting, the headers and the body: a receiver that
    # trickles bytes cannot hold an attempt open either.
    return answered.addTimeout(timeout, clock, timed_out)


def read_answer(response: IResponse) -> Deferred[None]:
    body = _Discard(MAX_RESPONSE_BODY)
    response.deliverBody(body)

    def judge(_: None) -> None:
        if not 200 <= response.code < 300:
            phrase = response.phrase.decode("latin-1", "replace")
            # The raw Agent never follows one; say so, it is the usual surprise.
            note = " (redirects are not followed)" if 300 <= response.code < 400 else ""
            raise DeliveryFailed(f"HTTP {response.code} {phrase}".rstrip() + note)

    return body.done.addCallback(judge)


class _Discard(Protocol):
    """Reads a response body to its end (or to ``limit`` bytes) and forgets it."""

    def __init__(self, limit: int) -> None:
        self.done: Deferred[None] = Deferred(self._cancel)
        self._left = limit

    def _cancel(self, _: Deferred[None]) -> None:
        # The Agent's body transport has no abortConnection; stopping it closes
        # the connection.
        transport: IPushProducer | None = self.transport  # type: ignore[assignment]
        if transport is not None:
            transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        self._left -= len(data)
        if self._left < 0 and not self.done.called:
            self.done.callback(None)
            self._cancel(self.done)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(reason)


def body_timestamp(body: bytes) -> str | None:
    """The body's own ``timestamp`` (signed with it), for ``X-Foreman-Timestamp``."""
    try:
        event = json.loads(body)
    except ValueError:
        return None
    value = event.get("timestamp") if isinstance(event, dict) else None
    # Only what can go in a header as it is.
    if isinstance(value, str) and value.isascii() and value.isprintable():
        return value
    return None


def url_bytes(url: str) -> bytes:
    if url.isascii():
        return url.encode("ascii")
    # An internationalised host or path becomes its ASCII (IDNA, percent) form.
    text: str = hyperlink.URL.from_text(url).to_uri().to_text()
    return text.encode("ascii")


def for_log(url: str) -> str:
    """The URL without user info and query, where credentials tend to hide."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<malformed URL>"
    netloc = parts.netloc.rpartition("@")[2]
    query = "?…" if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}"


def describe(failure: Failure) -> str:
    """A short reason for the log and ``last_error``."""
    reasons = getattr(failure.value, "reasons", None)
    if isinstance(reasons, list) and reasons and isinstance(reasons[0], Failure):
        # ResponseNeverReceived, ResponseFailed, RequestGenerationFailed.
        inner = reasons[0]
        if inner.check(CancelledError):
            return "cancelled"
        return f"{type(failure.value).__name__}: {describe(inner)}"
    if failure.check(DeliveryFailed):
        return str(failure.value)
    if failure.check(ConnectionRefusedError):
        return "connection refused"
    if failure.check(DNSLookupError):
        return f"DNS lookup failed: {failure.value}"
    return f"{type(failure.value).__name__}: {failure.value}".rstrip(": ")

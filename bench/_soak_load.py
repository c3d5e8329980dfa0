"""The HTTP side of ``bench/soak.py``'s load: streams, embeddings, hostile calls, /jobs.

Every call made here ends in exactly one entry of the :class:`Tally`: ``ok``,
``on purpose`` (a hostile call refused with a 4xx, a hang-up, a slow sender
cut) or ``unexpected`` (anything else: a 5xx nobody provoked, a reset, a
stream that did not end properly, a job that did not end as it should).
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, task
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest, IResponse
from twisted.web.resource import Resource

from foreman.relay.upstream import BytesBodyProducer
from foreman.wire.signature import verify

#: Chat models the load asks for (the second one costs a swap), and the pinned embedder.
CHAT_MODELS = ("llama3.2", "llama3.2", "llama3.2", "qwen3:8b")
EMBED_MODEL = "all-minilm"
#: No single call may take longer than this.
CALL_TIMEOUT = 120.0
#: Terminal job states.
TERMINAL = frozenset({"done", "failed", "cancelled"})


class Tally:
    """Every outcome, by phase (``warm-up``, ``1``, ``2``, …) and by kind of call."""

    def __init__(self) -> None:
        self.phase = "warm-up"
        self.by_phase: dict[str, Counter[str]] = {}
        self.kinds: Counter[str] = Counter()
        self.unexpected_log: list[str] = []
        self.started = time.monotonic()

    def _add(self, kind: str, result: str, verdict: str) -> None:
        self.by_phase.setdefault(self.phase, Counter())[verdict] += 1
        self.kinds[f"{kind}: {result}"] += 1

    def ok(self, kind: str, result: str = "ok") -> None:
        self._add(kind, result, "ok")

    def on_purpose(self, kind: str, result: str) -> None:
        self._add(kind, result, "on purpose")

    def unexpected(self, kind: str, message: str) -> None:
        self._add(kind, "UNEXPECTED", "unexpected")
        at = time.monotonic() - self.started
        self.unexpected_log.append(f"{at:7.1f} s [{self.phase}] {kind}: {message[:300]}")

    def count(self, phase: str, verdict: str) -> int:
        return self.by_phase.get(phase, Counter())[verdict]


# -- HTTP -------------------------------------------------------------------------------


class _Collect(Protocol):
    def __init__(self) -> None:
        self.done: defer.Deferred[bytes] = defer.Deferred()
        self._parts: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self._parts.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._parts))
        else:
            self.done.errback(reason)


@dataclass
class Answer:
    status: int
    body: bytes
    headers: Headers


class Http:
    """Persistent connections to foreman, as a busy client library keeps them."""

    def __init__(self, reactor: Any, url: str, token: str, idle_seconds: float) -> None:
        self.reactor = reactor
        self.url = url
        self.token = token
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 16
        # Drop a pooled connection before foreman's idle timeout (if it has one)
        # would: a POST is never retried on a connection found closed.
        self.pool.cachedConnectionTimeout = int(idle_seconds)
        self.agent = Agent(reactor, pool=self.pool)

    def headers(self, token: str | None = "default", **more: str) -> Headers:
        headers = Headers({b"Content-Type": [b"application/json"]})
        token = self.token if token == "default" else token
        if token is not None:
            headers.addRawHeader(b"Authorization", f"Bearer {token}".encode())
        for name, value in more.items():
            headers.addRawHeader(name.replace("_", "-").encode(), value.encode())
        return headers

    def call(
        self, method: str, path: str, body: bytes | None = None, headers: Headers | None = None
    ) -> defer.Deferred[Answer]:
        async def go() -> Answer:
            producer = None if body is None else BytesBodyProducer(body)
            response: IResponse = await self.agent.request(
                method.encode(), (self.url + path).encode(), headers or self.headers(), producer
            )
            reader = _Collect()
            response.deliverBody(reader)
            return Answer(response.code, await reader.done, response.headers)

        return defer.ensureDeferred(go()).addTimeout(CALL_TIMEOUT, self.reactor)

    def post(self, path: str, document: Any, **headers: str) -> defer.Deferred[Answer]:
        return self.call("POST", path, json.dumps(document).encode(), self.headers(**headers))


def chat_body(rng: random.Random, n: int, stream: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": rng.choice(CHAT_MODELS),
        "messages": [{"role": "user", "content": f"soak call {n}: why is the sky blue?"}],
        "stream": stream,
    }
    if body["model"].startswith("qwen3"):
        body["think"] = False
    return body


#: dialect -> (path, what shows a stream ended properly, what shows it broke)
STREAMS = {
    "native": ("/api/chat", b'"done":true', b'{"error"'),
    "openai": ("/v1/chat/completions", b"data: [DONE]", b'data: {"error"'),
    "anthropic": ("/v1/messages", b"event: message_stop", b"event: error"),
}


async def stream(http: Http, tally: Tally, rng: random.Random, n: int, dialect: str) -> None:
    """A streamed chat, read to its end."""
    kind = f"{dialect} stream"
    path, end, broken = STREAMS[dialect]
    body = chat_body(rng, n)
    if dialect == "anthropic":
        body["max_tokens"] = 256
    try:
        answer = await http.post(path, body)
    except Exception as e:
        tally.unexpected(kind, f"{type(e).__name__}: {e}")
        return
    text = answer.body.replace(b'"done": true', b'"done":true')
    if answer.status != 200:
        tally.unexpected(kind, f"{answer.status} {answer.body[:200]!r}")
    elif broken in text or end not in text:
        tally.unexpected(kind, f"stream did not end properly: {answer.body[-200:]!r}")
    else:
        tally.ok(kind)


async def embed(http: Http, tally: Tally, n: int) -> None:
    try:
        answer = await http.post("/api/embed", {"model": EMBED_MODEL, "input": f"text {n}"})
    except Exception as e:
        tally.unexpected("embed", f"{type(e).__name__}: {e}")
        return
    if answer.status == 200 and b'"embeddings"' in answer.body:
        tally.ok("embed")
    else:
        tally.unexpected("embed", f"{answer.status} {answer.body[:200]!r}")


# -- hostile calls over HTTP --------------------------------------------------------------


def hostile_calls(http: Http) -> list[tuple[str, str, str, bytes | None, Headers]]:
    """(name, method, path, body, headers): each must be answered 4xx."""
    chat = b'{"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}'
    plain = http.headers()
    return [
        ("bad JSON", "POST", "/api/chat", b'{"model": "llama3.2", "messages": [', plain),
        ("model not a string", "POST", "/api/chat", b'{"model": 5, "messages": []}', plain),
        ("body not an object", "POST", "/api/generate", b"[1, 2, 3]", plain),
        ("empty body", "POST", "/api/chat", b"", plain),
        ("stream not a bool", "POST", "/api/chat", chat[:-1] + b', "stream": "yes"}', plain),
        ("huge model name", "POST", "/api/chat", b'{"model": "' + b"m" * 60_000 + b'"}', plain),
        ("unknown model", "POST", "/api/embed", b'{"model": "nope:1b", "input": "x"}', plain),
        ("OpenAI bad JSON", "POST", "/v1/chat/completions", b"{not json", plain),
        ("Anthropic no model", "POST", "/v1/messages", b'{"max_tokens": 5}', plain),
        ("unknown path", "GET", "/nowhere/at/all", None, plain),
        ("unknown /api path", "POST", "/api/nonsense", b"{}", plain),
        ("wrong method", "GET", "/api/chat", None, plain),
        ("wrong method on /jobs", "DELETE", "/jobs", None, plain),
        ("unknown job", "GET", "/jobs/01JDA9Q4V2M7Y8K3N5P6R7S8T9", None, plain),
        (
            "bad webhook URL",
            "POST",
            "/jobs",
            chat[:-1] + b', "state_webhook_url": "ftp://x"}',
            plain,
        ),
        ("bad priority", "POST", "/api/chat", chat, http.headers(X_Foreman_Priority="urgent")),
        ("no token", "POST", "/api/chat", chat, http.headers(token=None)),
        ("wrong token", "GET", "/api/foreman/queue", None, http.headers(token="not-the-token")),
    ]


async def hostile(http: Http, tally: Tally, n: int) -> None:
    calls = hostile_calls(http)
    name, method, path, body, headers = calls[n % len(calls)]
    try:
        answer = await http.call(method, path, body, headers)
    except Exception as e:
        tally.unexpected("hostile", f"{name}: {type(e).__name__}: {e}")
        return
    if 400 <= answer.status < 500:
        tally.on_purpose("hostile", f"{name}: {answer.status}")
    else:
        tally.unexpected("hostile", f"{name}: answered {answer.status} {answer.body[:200]!r}")


# -- /jobs and webhook receivers ------------------------------------------------------------


@dataclass
class JobRecord:
    receiver: str
    expected: frozenset[str] = frozenset({"done"})
    states: list[str] = field(default_factory=list)


class Receivers(Resource):
    """``/ok`` answers 204 and keeps each event; ``/fail`` answers 500. Both check
    the signature."""

    isLeaf = True

    def __init__(self, secret: str, tally: Tally, jobs: dict[str, JobRecord]) -> None:
        super().__init__()
        self.secret = secret
        self.tally = tally
        self.jobs = jobs
        self.received: Counter[str] = Counter()
        self.unknown: list[str] = []

    def render_POST(self, request: IRequest) -> bytes:
        body = request.content.read()
        signature = request.getHeader(b"X-Foreman-Signature") or b""
        if not verify(self.secret, body, signature.decode("ascii", "replace")):
            self.tally.unexpected("webhook", f"bad signature on {body[:100]!r}")
        where = request.path.decode()
        self.received[where] += 1
        if where == "/fail":
            request.setResponseCode(500)
            return b"receiver down"
        event = json.loads(body)
        record = self.jobs.get(event["job_id"])
        if record is None:  # its 202 may still be on the way
            self.unknown.append(event["job_id"])
            self.jobs[event["job_id"]] = record = JobRecord("ok")
        record.states.append(event["state"])
        request.setResponseCode(204)
        return b""


async def job(
    http: Http,
    tally: Tally,
    rng: random.Random,
    n: int,
    jobs: dict[str, JobRecord],
    hooks: dict[str, str],
    cancel_share: float,
) -> None:
    """Submit one job with a webhook (some receivers fail or refuse); cancel some."""
    receiver = rng.choices(("ok", "fail", "refused"), (0.7, 0.15, 0.15))[0]
    body = chat_body(rng, n, stream=False)
    body["state_webhook_url"] = hooks[receiver]
    body["metadata"] = {"soak": n}
    body["priority"] = rng.choice(("batch", "batch", "interactive"))
    if rng.random() < 0.15:
        body["endpoint"] = "generate"
        body["prompt"] = body.pop("messages")[0]["content"]
    cancel_after = rng.uniform(0.0, 1.5) if rng.random() < cancel_share else None
    try:
        answer = await http.post("/jobs", body)
    except Exception as e:
        tally.unexpected("job submit", f"{type(e).__name__}: {e}")
        return
    if answer.status != 202:
        tally.unexpected("job submit", f"{answer.status} {answer.body[:200]!r}")
        return
    job_id = json.loads(answer.body)["job_id"]
    record = jobs.setdefault(job_id, JobRecord(receiver))
    record.receiver = receiver
    tally.ok("job submit")
    if cancel_after is None:
        return
    await task.deferLater(http.reactor, cancel_after, lambda: None)
    try:
        answer = await http.call("POST", f"/jobs/{job_id}/cancel", b"")
    except Exception as e:
        tally.unexpected("job cancel", f"{type(e).__name__}: {e}")
        return
    if answer.status == 200:
        record.expected = frozenset({"cancelled"})
        tally.ok("job cancel", "cancelled")
    elif answer.status == 409:
        record.expected = frozenset({"done"})
        tally.ok("job cancel", "already done (409)")
    else:
        tally.unexpected("job cancel", f"{answer.status} {answer.body[:200]!r}")


async def check_jobs(http: Http, jobs: dict[str, JobRecord]) -> tuple[dict[str, int], list[str]]:
    """Every job's final state against what was expected; an ``ok`` receiver must have
    heard the final state. Returns counts by final state and what went wrong."""
    states: Counter[str] = Counter()
    lost: list[str] = []
    for job_id, record in sorted(jobs.items()):
        answer = await http.call("GET", f"/jobs/{job_id}")
        if answer.status != 200:
            lost.append(f"{job_id}: GET answered {answer.status}")
            continue
        state = json.loads(answer.body)["state"]
        states[state] += 1
        if state not in record.expected:
            lost.append(f"{job_id}: {state}, expected {'/'.join(sorted(record.expected))}")
        elif record.receiver == "ok" and state not in record.states:
            lost.append(f"{job_id}: {state}, but its receiver heard only {record.states}")
    return dict(states), lost

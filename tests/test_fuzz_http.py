"""Hostile requests against a real foreman over sockets (issue 11): property-based.

Random methods, paths, queries, headers and bodies over every route and
dialect (:mod:`tests.fuzz_requests`), with and without the token, sent to a
foreman (with a token) in front of the simulated Ollama. For every answer:

- no 5xx of foreman's own making: the target is up and the queue is not
  full, so foreman's 502 and 503 are never right here, and its 500 never
  is; a 500 relayed from the simulator is allowed only with one of the
  messages Ollama itself answers with a 500 (:data:`OLLAMA_500`);
- every refusal in the caller's dialect, as Ollama routes it (by the
  decoded path): ``{"error": str}``, OpenAI's error object, Anthropic's
  envelope; or gin's plain ``404 page not found`` / ``405 method not
  allowed``, or CORS's empty ``403``;
- nothing logged as a failure or an error (no traceback, no "Unhandled
  Error"), in foreman or in the simulator;

and afterwards foreman still answers. ``make test`` runs a short,
derandomized run; ``make fuzz`` (``HYPOTHESIS_PROFILE=fuzz``) a long random one.
"""

from __future__ import annotations

import gc
import json
import os
import re
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import unquote

import attrs
import greenlet
import pytest
import pytest_twisted
from hypothesis import HealthCheck, Phase, given, settings
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, LogEvent, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from foreman.relay.upstream import BytesBodyProducer
from foreman.testing import DEFAULT_MODELS
from tests.conftest import RunningForeman, RunningSimulator, StartForeman, StartSimulator
from tests.fuzz_requests import BODY_LIMIT, TOKEN, FuzzRequest, requests

T = TypeVar("T")

#: ``make fuzz`` sets this; ``make test`` runs the quick, repeatable run.
FUZZING = os.environ.get("HYPOTHESIS_PROFILE") == "fuzz"
QUICK_EXAMPLES = 500
#: Read no more of an answer than this (a long generation streams on).
READ_CAP = 256 * 1024
SECONDS = 15.0

#: What Ollama itself answers with a 500, so foreman relays as a 500.
OLLAMA_500 = (
    # api.Options.FromMap: a known option of the wrong type (chat, generate, embed).
    re.compile(r'option "[^"]*" must be of (type \w+|an array of strings)'),
    # The runner's grammar: a format that is neither "json" nor a schema.
    re.compile(r'invalid format: .*; expected "json" or a valid JSON Schema object', re.S),
    # Pushing a model that is not there (not streamed).
    re.compile(r"open .*: no such file or directory"),
)
PLAIN_TEXT_ANSWERS = {404: b"404 page not found", 405: b"405 method not allowed"}


@attrs.frozen
class Reply:
    status: int
    headers: dict[str, list[str]]
    body: bytes
    truncated: bool


class _CappedReader(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.truncated = False
        self.done: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if len(self.data) > READ_CAP and not self.truncated:
            self.truncated = True  # an endless stream: hang up, as a caller would
            self.transport.stopProducing()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        if not self.done.called:
            self.done.callback(None)


@implementer(IBodyProducer)
class _ChunkedProducer:
    """A body of unknown length: sent with ``Transfer-Encoding: chunked``."""

    length = UNKNOWN_LENGTH

    def __init__(self, body: bytes) -> None:
        self._body = body

    def startProducing(self, consumer: Any) -> Deferred[None]:
        for start in range(0, len(self._body), 4096):
            consumer.write(self._body[start : start + 4096])
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


async def _exchange(agent: Agent, base: str, request: FuzzRequest, reactor: Any) -> Reply:
    headers = Headers()
    for name, value in request.headers:
        headers.addRawHeader(name.encode(), value.encode())
    producer: IBodyProducer | None = None
    if request.body is not None:
        producer = (
            _ChunkedProducer(request.body) if request.chunked else BytesBodyProducer(request.body)
        )
    asked = agent.request(
        request.method.encode(), (base + request.target).encode(), headers, producer
    )
    response = await asked.addTimeout(SECONDS, reactor)
    reader = _CappedReader()
    response.deliverBody(reader)
    await reader.done.addTimeout(SECONDS, reactor)
    answered = {
        name.decode("latin-1").lower(): [v.decode("latin-1") for v in values]
        for name, values in response.headers.getAllRawHeaders()
    }
    return Reply(response.code, answered, reader.data, reader.truncated)


async def _exchange_settled(agent: Agent, base: str, request: FuzzRequest, reactor: Any) -> Reply:
    """The exchange; for a job it made, once the job has ended too.

    What a job's run logs then belongs to the example that made it, so a
    failing example fails alike every time it is replayed.
    """
    reply = await _exchange(agent, base, request, reactor)
    if reply.status == 202 and unquote(request.path) == "/jobs":
        job = json.loads(reply.body)["job_id"]
        auth = (("Authorization", f"Bearer {TOKEN}"),)
        for _ in range(int(SECONDS / 0.01)):
            look = await _exchange(
                agent, base, FuzzRequest("GET", f"/jobs/{job}", auth, None), reactor
            )
            if json.loads(look.body)["state"] in ("done", "failed", "cancelled"):
                break
            await deferLater(reactor, 0.01, lambda: None)
        else:
            raise AssertionError(f"job {job} of {request} never ended")
    return reply


def in_greenlet(reactor: Any, work: Callable[[], None]) -> Deferred[None]:
    """Run ``work`` in a greenlet of its own; it may :func:`wait` on the reactor's Deferreds.

    Hypothesis calls the test synchronously; each example waits for its
    exchange by switching back to the reactor's greenlet. Everything stays
    on the reactor's thread, so nothing else runs while Hypothesis draws.
    """
    done: Deferred[None] = Deferred()

    def body() -> None:
        try:
            work()
        except BaseException:
            failed = Failure()
            reactor.callLater(0, done.errback, failed)
        else:
            reactor.callLater(0, done.callback, None)

    greenlet.greenlet(body).switch()
    return done


def wait(result: Deferred[T]) -> T:
    """From the greenlet :func:`in_greenlet` made: the result of ``result``."""
    me = greenlet.getcurrent()
    outcome: list[T | Failure] = []

    def arrived(value: T | Failure) -> None:
        outcome.append(value)
        if greenlet.getcurrent() is not me:
            me.switch()

    result.addBoth(arrived)
    if not outcome:
        assert me.parent is not None
        me.parent.switch()
    value = outcome[0]
    if isinstance(value, Failure):
        value.raiseException()
    return value


# --- what an answer must look like -------------------------------------------------------------


def dialect_of(path: str) -> str:
    """The dialect Ollama answers ``path`` in: gin routes on the decoded path."""
    decoded = unquote(path)
    if decoded == "/v1/messages" or decoded.startswith("/v1/messages/"):
        return "anthropic"
    if decoded == "/v1" or decoded.startswith("/v1/"):
        return "openai"
    return "native"


def error_message(dialect: str, document: Any) -> str | None:
    """The message of an error ``document`` shaped as ``dialect`` writes them, else ``None``."""
    if not isinstance(document, dict):
        return None
    error = document.get("error")
    if dialect == "native":
        return error if isinstance(error, str) else None
    if not isinstance(error, dict):
        return None
    message, kind = error.get("message"), error.get("type")
    if not (isinstance(message, str) and isinstance(kind, str)):
        return None
    if dialect == "anthropic" and document.get("type") != "error":
        return None
    return message


def problems(request: FuzzRequest, reply: Reply) -> Iterator[str]:
    """What is wrong with ``reply`` to ``request``; nothing when all is well."""
    if reply.status < 400:
        return
    if request.method == "HEAD" or reply.truncated:
        if reply.status >= 500:
            yield f"{reply.status} (no body to tell whose)"
        return
    if PLAIN_TEXT_ANSWERS.get(reply.status) == reply.body:
        return  # gin's own, in every dialect
    if reply.status == 403 and reply.body == b"" and request.header("Origin") is not None:
        return  # CORS refuses an origin with an empty 403
    dialect = dialect_of(request.path)
    try:
        document = json.loads(reply.body)
    except ValueError:
        yield f"{reply.status} not JSON: {reply.body[:200]!r}"
        return
    message = error_message(dialect, document)
    if message is None:
        yield f"{reply.status} not a {dialect} error: {reply.body[:300]!r}"
        return
    if reply.status >= 500 and not (
        reply.status == 500 and any(p.fullmatch(message) for p in OLLAMA_500)
    ):
        yield f"{reply.status} of foreman's own making, or not Ollama's: {message!r}"


# --- the log ----------------------------------------------------------------------------------


@implementer(ILogObserver)
class _Failures:
    """Every event logged as a failure, an error or worse while it listens."""

    def __init__(self) -> None:
        self.events: list[LogEvent] = []

    def __call__(self, event: LogEvent) -> None:
        level = event.get("log_level")
        if (
            "log_failure" in event
            or event.get("isError")
            or level
            in (
                LogLevel.error,
                LogLevel.critical,
            )
        ):
            self.events.append(event)

    def text(self) -> str:
        lines = []
        for event in self.events:
            failure = event.get("log_failure")
            detail = failure.getTraceback() if isinstance(failure, Failure) else ""
            lines.append(f"{event.get('log_format')!r} {detail}")
        return "\n".join(lines)


# --- the run ------------------------------------------------------------------------------------


def _settings() -> settings:
    checks = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]
    if FUZZING:
        # The profile (tests/conftest.py) decides how many examples, and the seed is random.
        return settings(deadline=None, suppress_health_check=checks)
    return settings(
        max_examples=QUICK_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        suppress_health_check=checks,
    )


async def _start(
    start_simulator: StartSimulator, start_foreman: StartForeman
) -> tuple[RunningSimulator, RunningForeman]:
    simulator = await start_simulator()
    running = await start_foreman(
        simulator.url, token=TOKEN, max_body_size=BODY_LIMIT, swap_grace=0.0
    )
    return simulator, running


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_hostile_requests_never_break_foreman(
    reactor: Any, start_simulator: StartSimulator, start_foreman: StartForeman
) -> None:
    simulator, running = await _start(start_simulator, start_foreman)
    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    failures = _Failures()

    # Hypothesis drives the examples from a greenlet of its own; each one is
    # sent, and its answer read, by the reactor meanwhile.
    @_settings()
    @given(request=requests())
    def exchange(request: FuzzRequest) -> None:
        exchanged = ensureDeferred(_exchange_settled(agent, running.url, request, reactor))
        reply = wait(exchanged)
        found = list(problems(request, reply))
        assert not found, f"{request}\n{found}"
        assert not failures.events, f"{request}\n{failures.text()}"

    globalLogPublisher.addObserver(failures)
    try:
        await in_greenlet(reactor, exchange)
        gc.collect()  # an unhandled error in a Deferred is logged when it is collected
        assert not failures.events, failures.text()
    finally:
        globalLogPublisher.removeObserver(failures)
    for model in DEFAULT_MODELS:
        simulator.sim.add_model(model)  # a fuzzed /api/delete may have removed it
    await _still_answers(agent, running, reactor)


async def _still_answers(agent: Agent, running: RunningForeman, reactor: Any) -> None:
    """foreman answers after the storm: metadata, and a generation."""
    auth = (("Authorization", f"Bearer {TOKEN}"),)
    version = await _exchange(
        agent, running.url, FuzzRequest("GET", "/api/version", auth, None), reactor
    )
    assert version.status == 200, version
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
    chat = FuzzRequest("POST", "/api/chat", auth, json.dumps(body).encode())
    reply = await _exchange(agent, running.url, chat, reactor)
    assert reply.status == 200, reply
    assert json.loads(reply.body.splitlines()[-1])["done"] is True

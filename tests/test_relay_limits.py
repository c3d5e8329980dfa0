"""Limits on Ollama's silence, and cutting every call, in simulated time.

The upstream is the scripted one (``tests/scripted_upstream.py``) served in
memory through a real ``Agent`` (``treq.testing.RequestTraversalAgent``), so
the relay meets Twisted's own client failures; the caller is a small stand-in
request that records what is written to it. A ``Clock`` drives the limits.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from foreman.relay.forward import Attempt, Outcome, Relay
from foreman.relay.upstream import BytesBodyProducer, Target
from tests.scripted_upstream import HeldRequest, ScriptedUpstream

LOAD = 30.0
STALL = 8.0
#: The sweep's tick with these limits: min(1 s, 8 s / 4).
TICK = 1.0
URL = "http://ollama.test"
CHAT = b'{"model":"scripted","messages":[{"role":"user","content":"hi"}]}'
CUT = "foreman is stopping: the call was cut; try again in a moment"


class Caller:
    """The caller's side of a relayed call: what foreman wrote to it."""

    method = b"POST"

    def __init__(self, path: bytes = b"/api/chat") -> None:
        self.path = self.uri = path
        self.requestHeaders = Headers({b"Content-Type": [b"application/json"]})
        self.responseHeaders = Headers()
        self.code: int | None = None
        self.written: list[bytes] = []
        self.producer: IPushProducer | None = None
        #: twisted.web's request keeps its channel while the caller is there.
        self.channel: object | None = object()

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        self.code = code

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.responseHeaders.setRawHeaders(name, [value])

    def header(self, name: bytes) -> bytes | None:
        values = self.responseHeaders.getRawHeaders(name)
        return values[0] if values else None

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    @property
    def body(self) -> bytes:
        return b"".join(self.written)


@attrs.define
class Rig:
    clock: Clock
    upstream: ScriptedUpstream
    agent: RequestTraversalAgent
    relay: Relay

    def flush(self) -> None:
        for _ in range(3):
            self.agent.flush()

    def advance(self, seconds: float, step: float = 0.25) -> None:
        """Let ``seconds`` pass, a step at a time, moving bytes in between."""
        end = self.clock.seconds() + seconds
        while self.clock.seconds() < end - 1e-9:
            self.clock.advance(min(step, end - self.clock.seconds()))
            self.flush()

    def held(self) -> HeldRequest:
        self.flush()
        got: list[HeldRequest] = []
        self.upstream.next_request().addCallback(got.append)
        assert got, "the call did not reach the upstream"
        return got[0]

    def relay_call(self, caller: Caller, body: bytes = CHAT) -> Deferred[Attempt]:
        return self.relay.relay(caller, b"POST", caller.path, BytesBodyProducer(body))  # type: ignore[arg-type]


def make_rig(**limits: Any) -> Rig:
    clock = Clock()
    upstream = ScriptedUpstream()
    agent = RequestTraversalAgent(upstream)
    limits.setdefault("load_timeout", LOAD)
    limits.setdefault("stall_timeout", STALL)
    relay = Relay(agent, Target(URL), clock=clock, **limits)
    return Rig(clock, upstream, agent, relay)


def ended(d: Deferred[Any]) -> bool:
    """Whether ``d`` has its result (not merely waiting on another Deferred)."""
    return bool(d.called and not d.paused)


def result(d: Deferred[Any]) -> Any:
    assert ended(d), "not finished"
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


def line(text: str, done: bool = False) -> bytes:
    return json.dumps({"message": {"content": text}, "done": done}).encode() + b"\n"


def closed(held: HeldRequest) -> bool:
    return held.disconnected.called


# -- limits on a stream already relaying ----------------------------------------------


def test_a_native_stream_that_goes_silent_ends_with_an_error_line() -> None:
    rig = make_rig()
    caller = Caller()
    attempt_d = rig.relay_call(caller)
    held = rig.held()
    held.start()
    for word in ["one", "two", "three"]:
        # Silences shorter than the limit, however long the stream runs in all.
        rig.advance(STALL - TICK)
        held.send(line(word))
        rig.flush()
    silent_since = rig.clock.seconds()
    cut_at: list[float] = []

    def note_the_time(attempt: Attempt) -> Attempt:
        cut_at.append(rig.clock.seconds())
        return attempt

    attempt_d.addCallback(note_the_time)
    rig.advance(STALL - TICK)
    assert not ended(attempt_d), "cut before the limit"
    rig.advance(2 * TICK)
    attempt = result(attempt_d)
    assert STALL <= cut_at[0] - silent_since <= STALL + TICK
    assert attempt.outcome is Outcome.BROKEN and attempt.status == 200
    assert "sent nothing for 8 s in the middle of its reply" in attempt.error
    lines = [json.loads(each) for each in caller.body.splitlines()]
    assert [each.get("message", {}).get("content") for each in lines[:3]] == [
        "one",
        "two",
        "three",
    ]
    assert lines[3] == {"error": attempt.error}
    assert len(lines) == 4
    assert closed(held), "the upstream connection must be closed"
    assert rig.relay.in_flight == 0


def test_an_openai_stream_cut_in_the_middle_of_an_event_ends_with_an_error_event() -> None:
    rig = make_rig()
    caller = Caller(b"/v1/chat/completions")
    attempt_d = rig.relay_call(caller)
    held = rig.held()
    held.start(content_type=b"text/event-stream")
    held.send(b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n')
    # The first line of an event, its end never comes.
    held.send(b'data: {"choices":[{"delta":{"content":"lo"}}]}\n')
    rig.advance(STALL + 2 * TICK)
    attempt = result(attempt_d)
    assert attempt.outcome is Outcome.BROKEN
    events = caller.body.split(b"\n\n")
    assert events[-1] == b""
    assert events[:2] == [
        b'data: {"choices":[{"delta":{"content":"Hel"}}]}',
        b'data: {"choices":[{"delta":{"content":"lo"}}]}',
    ]
    assert events[2].startswith(b"data: ")
    error = json.loads(events[2].removeprefix(b"data: "))["error"]
    assert error["message"] == attempt.error and error["type"] == "api_error"
    assert len(events) == 4
    assert closed(held)


def test_an_anthropic_stream_that_goes_silent_ends_with_an_error_event() -> None:
    rig = make_rig()
    caller = Caller(b"/v1/messages")
    attempt_d = rig.relay_call(caller)
    held = rig.held()
    held.start(content_type=b"text/event-stream")
    held.send(b'event: message_start\ndata: {"type":"message_start"}\n\n')
    rig.advance(STALL + 2 * TICK)
    attempt = result(attempt_d)
    assert attempt.outcome is Outcome.BROKEN
    tail = caller.body.split(b"\n\n")[-2]
    name, data = tail.split(b"\n")
    assert name == b"event: error"
    envelope = json.loads(data.removeprefix(b"data: "))
    assert envelope["error"]["message"] == attempt.error


def test_a_caller_holding_the_stream_back_is_not_ollamas_silence() -> None:
    rig = make_rig()
    caller = Caller()
    attempt_d = rig.relay_call(caller)
    held = rig.held()
    held.start()
    held.send(line("one"))
    rig.flush()
    assert caller.producer is not None
    caller.producer.pauseProducing()  # the caller's socket is full
    rig.advance(5 * STALL)
    assert not ended(attempt_d)
    caller.producer.resumeProducing()
    rig.advance(STALL - TICK)
    assert not ended(attempt_d)
    rig.advance(2 * TICK)
    assert result(attempt_d).outcome is Outcome.BROKEN


def test_time_foreman_was_not_running_is_not_ollamas_silence() -> None:
    rig = make_rig()
    caller = Caller()
    attempt_d = rig.relay_call(caller)
    held = rig.held()
    held.start()
    held.send(line("before the Mac slept"))
    rig.advance(STALL / 2)
    # Ten minutes asleep: the reactor wakes to one sweep, far past its tick.
    rig.clock.advance(10 * 60.0)
    rig.advance(STALL - TICK)
    assert not ended(attempt_d), "the time asleep was counted as silence"
    held.send(line("after it woke"))
    rig.advance(STALL - TICK)
    assert not ended(attempt_d)
    rig.advance(2 * TICK)
    assert result(attempt_d).outcome is Outcome.BROKEN


def test_a_stream_that_ends_in_time_is_delivered_and_the_timer_stops() -> None:
    rig = make_rig()
    caller = Caller()
    attempt_d = rig.relay_call(caller)
    held = rig.held()
    held.start()
    held.send(line("one", done=True))
    held.finish()
    rig.flush()
    attempt = result(attempt_d)
    assert attempt.outcome is Outcome.DELIVERED
    assert rig.relay.in_flight == 0
    rig.advance(2 * TICK)
    assert rig.clock.getDelayedCalls() == [], "the sweep runs only while calls are in flight"


# -- limits before anything was written -------------------------------------------------


def test_no_headers_within_the_load_limit_is_unreachable_in_words() -> None:
    rig = make_rig()
    caller = Caller()
    attempt_d = rig.relay_call(caller)
    held = rig.held()
    # A load is silent: the stall limit does not apply before the headers.
    rig.advance(LOAD - TICK)
    assert not ended(attempt_d)
    rig.advance(2 * TICK)
    attempt = result(attempt_d)
    assert attempt.outcome is Outcome.UNREACHABLE
    assert attempt.status is None and attempt.retry_after is None
    assert attempt.error == (
        "foreman: Ollama at http://ollama.test had not begun its reply after 30 s; "
        "the call was stopped (limit: --load-timeout)"
    )
    assert caller.written == [] and caller.code is None
    rig.flush()
    assert closed(held)
    assert rig.relay.in_flight == 0


def test_a_whole_body_that_stops_coming_is_unreachable_and_nothing_is_written() -> None:
    rig = make_rig()
    caller = Caller(b"/api/show")
    attempt_d = rig.relay_call(caller, b'{"model":"scripted"}')
    held = rig.held()
    held.start(200, b"application/json; charset=utf-8", length=1000)
    held.send(b'{"license":"')
    rig.advance(STALL + 2 * TICK)
    attempt = result(attempt_d)
    assert attempt.outcome is Outcome.UNREACHABLE
    assert "sent nothing for 8 s in the middle of its reply" in attempt.error
    assert caller.written == [] and caller.code is None
    assert closed(held)


@pytest.mark.parametrize(
    ("headers_first", "framing"),
    [(False, None), (True, b"HTTP/1.1"), (True, b"HTTP/1.0")],
)
def test_fetch_is_bounded_too(headers_first: bool, framing: bytes | None) -> None:
    rig = make_rig()
    fetched = rig.relay.fetch(b"POST", b"/api/chat", CHAT)
    held = rig.held()
    if headers_first:
        # Chunked, or (as HTTP/1.0) ended by closing the connection: then a
        # cut must not pass for the end of the body.
        assert framing is not None
        held.request.clientproto = framing
        held.start(200, b"application/json")
        held.send(b'{"model":')
    rig.advance((STALL if headers_first else LOAD) + 2 * TICK)
    attempt = result(fetched)
    assert attempt.outcome is Outcome.UNREACHABLE
    assert ("in the middle of its reply" in attempt.error) is headers_first
    assert closed(held)


def test_without_a_clock_nothing_is_timed() -> None:
    clock = Clock()
    upstream = ScriptedUpstream()
    agent = RequestTraversalAgent(upstream)
    relay = Relay(agent, Target(URL))
    fetched = relay.fetch(b"POST", b"/api/chat", CHAT)
    agent.flush()
    clock.advance(24 * 3600)
    assert not ended(fetched)
    assert clock.getDelayedCalls() == []
    assert relay.cut_all(CUT) == 1
    assert result(fetched).status == 503


def test_a_limit_can_be_switched_off() -> None:
    rig = make_rig(stall_timeout=None)
    attempt_d = rig.relay_call(Caller())
    held = rig.held()
    held.start()
    rig.advance(4 * LOAD, step=5.0)
    assert not ended(attempt_d)
    assert rig.relay.cut_all(CUT) == 1


# -- cutting every call ------------------------------------------------------------------


def test_cut_all_in_every_state_of_a_call() -> None:
    rig = make_rig()
    waiting = Caller()
    waiting_d = rig.relay_call(waiting)
    waiting_held = rig.held()
    streaming = Caller(b"/v1/chat/completions")
    streaming_d = rig.relay_call(streaming)
    streaming_held = rig.held()
    streaming_held.start(content_type=b"text/event-stream")
    streaming_held.send(b'data: {"choices":[]}\n\n')
    whole = Caller(b"/api/show")
    whole_d = rig.relay_call(whole, b'{"model":"scripted"}')
    whole_held = rig.held()
    whole_held.start(200, b"application/json; charset=utf-8", length=100)
    whole_held.send(b'{"lic')
    fetching_d = rig.relay.fetch(b"POST", b"/api/chat", CHAT)
    fetching_held = rig.held()
    rig.flush()
    assert rig.relay.in_flight == 4

    assert rig.relay.cut_all(CUT) == 4
    rig.flush()

    for attempt in [result(waiting_d), result(whole_d), result(fetching_d)]:
        assert attempt == Attempt(Outcome.UNREACHABLE, 503, CUT, retry_after=5)
    assert waiting.written == [] and whole.written == [] and whole.code is None
    broken = result(streaming_d)
    assert broken.outcome is Outcome.BROKEN and broken.error == CUT
    last = streaming.body.split(b"\n\n")[-2]
    assert json.loads(last.removeprefix(b"data: "))["error"]["message"] == CUT
    for held in [waiting_held, streaming_held, whole_held, fetching_held]:
        assert closed(held)
    assert rig.relay.in_flight == 0
    assert rig.relay.cut_all(CUT) == 0


def test_a_caller_hanging_up_is_still_a_cancel_not_a_cut() -> None:
    rig = make_rig()
    attempt_d = rig.relay_call(Caller())
    held = rig.held()
    attempt_d.cancel()
    failures: list[Failure] = []
    attempt_d.addErrback(failures.append)
    assert failures and failures[0].check(CancelledError)
    rig.flush()
    assert closed(held)
    assert rig.relay.in_flight == 0


@pytest.mark.parametrize(
    ("path", "check"),
    [
        (b"/api/show", lambda body, message: body == {"error": message}),
        (
            b"/v1/embeddings",
            lambda body, message: (
                body["error"]["message"] == message and body["error"]["type"] == "api_error"
            ),
        ),
        (
            b"/v1/messages",
            lambda body, message: body["error"] == {"type": "overloaded_error", "message": message},
        ),
    ],
)
def test_forward_answers_a_cut_with_503_and_retry_after_in_the_callers_dialect(
    path: bytes, check: Any
) -> None:
    rig = make_rig()
    caller = Caller(path)
    forwarded = rig.relay.forward(caller, b"POST", path, BytesBodyProducer(b"{}"))  # type: ignore[arg-type]
    rig.held()
    assert rig.relay.cut_all(CUT) == 1
    result(forwarded)
    assert caller.code == 503
    assert caller.header(b"retry-after") == b"5"
    assert check(json.loads(caller.body), CUT)


def test_forward_answers_silence_before_a_reply_with_502() -> None:
    rig = make_rig()
    caller = Caller(b"/api/pull")
    forwarded = rig.relay.forward(caller, b"POST", b"/api/pull", BytesBodyProducer(b"{}"))  # type: ignore[arg-type]
    rig.held()
    rig.advance(LOAD + 2 * TICK)
    result(forwarded)
    assert caller.code == 502
    assert caller.header(b"retry-after") is None
    assert "had not begun its reply after 30 s" in json.loads(caller.body)["error"]

"""Every error text foreman writes about Ollama is a sentence for a person.

Seen in the field before: ``[<twisted.python.failure.Failure
twisted.internet.defer.CancelledError: >]`` as a job's error after a swap
during which the target stopped answering, and ``HostnameAddress(hostname=
b'127.0.0.1', port=…)`` for a cancelled connect.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet import error
from twisted.internet.address import HostnameAddress, IPv4Address
from twisted.internet.defer import CancelledError, fail
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web._newclient import RequestNotSent
from twisted.web.client import (
    RequestGenerationFailed,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss, _DataLoss
from twisted.web.iweb import IAgent
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from foreman.queue.job import JobState
from foreman.relay.inventory import Inventory
from foreman.relay.upstream import (
    ReplyCutShort,
    Target,
    UpstreamStatusError,
    UpstreamTimeout,
    describe_failure,
)
from tests.test_inventory import Hanging
from tests.worker_rig import make_worker_rig

#: What a repr looks like; none of it may reach a person.
REPR_MARKS = ("<", ">", "Failure", "Address(", "b'", 'b"', "\\x", "\n")


def assert_plain(text: str) -> None:
    assert text and text == text.strip()
    for mark in REPR_MARKS:
        assert mark not in text, f"{mark!r} in {text!r}"


@pytest.mark.parametrize(
    ("failure", "words"),
    [
        (error.ConnectionRefusedError(111, "Connection refused"), "the connection was refused"),
        (
            error.TimeoutError(string="User timeout caused connection failure."),
            "connecting took too long",
        ),
        (error.TCPTimedOutError(110, "Connection timed out"), "connecting took too long"),
        (
            error.DNSLookupError("no results for hostname lookup: ollama.local"),
            "its host name could not be resolved",
        ),
        (
            error.UnknownHostError(-2, "Name or service not known"),
            "its host name could not be resolved",
        ),
        (error.NoRouteError(113, "No route to host"), "there is no route to its host"),
        (error.ConnectError(string="whatever"), "the connection could not be opened"),
        (
            error.ConnectingCancelledError(HostnameAddress(b"127.0.0.1", 11434)),
            "the call was cancelled while connecting",
        ),
        (CancelledError(), "the call was cancelled"),
        (
            ResponseNeverReceived([Failure(CancelledError())]),
            "the call was cancelled before a reply",
        ),
        (
            ResponseNeverReceived([Failure(error.ConnectionDone())]),
            "the connection closed before a reply",
        ),
        (
            ResponseNeverReceived([Failure(error.ConnectionLost())]),
            "the connection closed before a reply",
        ),
        (
            RequestTransmissionFailed([Failure(error.ConnectionLost())]),
            "the connection closed while the request was being sent",
        ),
        (
            ResponseFailed([Failure(error.ConnectionDone()), Failure(_DataLoss())]),
            "the reply was cut short",
        ),
        (ReplyCutShort(), "the reply was cut short"),
        (PotentialDataLoss(), "the reply was cut short"),
        (UpstreamTimeout(10.0), "no answer within 10 s"),
        (UpstreamTimeout(300.0), "no answer within 5 minutes"),
        (UpstreamStatusError(b"/api/ps", 500), "/api/ps answered with status 500"),
        (json.JSONDecodeError("Expecting value", "", 0), "its reply could not be read"),
        (ConnectionResetError(104, "Connection reset by peer"), "connection reset by peer"),
        (KeyError("model"), "an unexpected error (KeyError)"),
    ],
)
def test_each_failure_in_words(failure: BaseException, words: str) -> None:
    assert describe_failure(failure) == words
    assert describe_failure(Failure(failure)) == words


# Anything Twisted may carry in an exception's arguments: text, bytes,
# numbers, the address objects whose reprs were seen in the field.
_ARGS = st.one_of(
    st.text(),
    st.binary(),
    st.integers(),
    st.none(),
    st.builds(HostnameAddress, st.binary(max_size=20), st.integers(0, 65535)),
    st.builds(IPv4Address, st.just("TCP"), st.just("127.0.0.1"), st.integers(0, 65535)),
)
_CONNECT_ERRORS = [
    error.ConnectError,
    error.ConnectionRefusedError,
    error.TimeoutError,
    error.TCPTimedOutError,
    error.UnknownHostError,
    error.NoRouteError,
    error.UserError,
    error.SSLError,
    error.BadFileError,
    error.ServiceNameUnknownError,
    error.ConnectBindError,
]
_PLAIN_ERRORS = [
    CancelledError,
    error.ConnectingCancelledError,
    error.ConnectionLost,
    error.ConnectionDone,
    error.ConnectionAborted,
    error.ConnectionClosed,
    error.DNSLookupError,
    DeferredTimeoutError,
    TimeoutError,
    ConnectionResetError,
    ConnectionRefusedError,
    OSError,
    ValueError,
    PotentialDataLoss,
    _DataLoss,
    ReplyCutShort,
]
_LEAVES = st.one_of(
    st.builds(
        lambda kind, os_error, text: kind(os_error, text),
        st.sampled_from(_CONNECT_ERRORS),
        _ARGS,
        st.text(),
    ),
    st.builds(lambda kind, arg: kind(arg), st.sampled_from(_PLAIN_ERRORS), _ARGS),
    st.builds(
        lambda kind: kind(),
        st.sampled_from(
            [kind for kind in _PLAIN_ERRORS if kind is not error.ConnectingCancelledError]
        ),
    ),
    st.builds(
        lambda path, status: UpstreamStatusError(path, status),
        st.binary(max_size=30),
        st.integers(100, 599),
    ),
    st.builds(UpstreamTimeout, st.floats(0.001, 1e6)),
)
_WRAPPERS = [
    ResponseNeverReceived,
    RequestTransmissionFailed,
    ResponseFailed,
    RequestGenerationFailed,
    RequestNotSent,
]


def _wrapped(kind: type[Exception], reasons: list[BaseException]) -> Exception:
    if kind is RequestNotSent:
        return kind()
    return kind([Failure(reason) for reason in reasons])


_FAILURES = st.recursive(
    _LEAVES,
    lambda inner: st.builds(_wrapped, st.sampled_from(_WRAPPERS), st.lists(inner, max_size=3)),
    max_leaves=6,
)


@given(_FAILURES, st.booleans())
def test_no_failure_is_ever_described_with_a_repr(failure: BaseException, wrap: bool) -> None:
    words = describe_failure(Failure(failure) if wrap else failure)
    assert_plain(words)
    assert len(words) < 120


# -- where the words end up ---------------------------------------------------------------


def test_a_hung_poll_leaves_words_in_healthz() -> None:
    clock = Clock()
    stub = StubTreq(Hanging())
    inventory = Inventory(stub, Target("http://ollama.test"), clock, timeout=10.0)  # type: ignore[arg-type]
    inventory.refresh()
    stub.flush()
    clock.advance(10.0)
    stub.flush()
    assert inventory.degraded
    assert inventory.last_error == "no answer within 10 s"


class _StallsAfterHeaders(Resource):
    """Begins every reply, then sends nothing more."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.disconnected = 0

    def render(self, request: Any) -> int:
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        request.write(b'{"models":[')
        request.notifyFinish().addErrback(lambda _: setattr(self, "disconnected", 1))
        return NOT_DONE_YET


def test_a_metadata_reply_that_stalls_after_its_headers_is_bounded_too() -> None:
    clock = Clock()
    upstream = _StallsAfterHeaders()
    stub = StubTreq(upstream)
    inventory = Inventory(stub, Target("http://ollama.test"), clock, timeout=10.0)  # type: ignore[arg-type]
    polled = inventory.refresh()
    stub.flush()
    clock.advance(9.9)
    stub.flush()
    assert not polled.called
    clock.advance(0.1)
    stub.flush()
    assert polled.called
    assert inventory.degraded and inventory.last_error == "no answer within 10 s"
    assert upstream.disconnected, "the stalled connection must be closed"


@implementer(IAgent)
class _Refusing:
    def request(self, *args: Any, **kwargs: Any) -> Any:
        return fail(error.ConnectionRefusedError(111, "Connection refused"))


def test_a_refused_poll_leaves_words_in_healthz() -> None:
    clock = Clock()
    inventory = Inventory(HTTPClient(_Refusing()), Target("http://ollama.test"), clock)
    inventory.refresh()
    assert inventory.last_error == "the connection was refused"


def _swap_after_one_job(tmp_path: Path, **options: Any) -> Any:
    """A rig whose worker model is ``llama3.2``, about to swap to ``gemma3:12b``."""
    rig = make_worker_rig(tmp_path, **options)
    rig.worker.startService()
    rig.submit("llama3.2", "first")
    rig.run_until(rig.all_finished)
    return rig


def test_a_target_that_stops_answering_during_a_swap_leaves_a_sentence(tmp_path: Path) -> None:
    rig = _swap_after_one_job(tmp_path)
    # Stopped (SIGSTOP): it accepts calls and never answers, /api/ps included.
    rig.agent.hangs = lambda uri: True
    rig.submit("gemma3:12b", "second")
    rig.run_until(lambda: any(job.last_error for job in rig.jobs()))
    job = next(job for job in rig.jobs() if job.last_error)
    assert job.state is JobState.QUEUED  # to be tried again
    assert (
        job.last_error
        == "foreman: cannot reach Ollama at http://ollama.test: no answer within 10 s"
    )
    assert_plain(
        job.last_error.removeprefix("foreman: cannot reach Ollama at http://ollama.test: ")
    )
    rig.agent.hangs = lambda uri: False
    rig.run_until(rig.all_finished)
    assert all(job.state is JobState.DONE for job in rig.jobs())
    rig.stop()


def test_an_unload_that_never_answers_is_stopped_at_the_load_limit(tmp_path: Path) -> None:
    rig = _swap_after_one_job(tmp_path, relay_limits={"load_timeout": 30.0, "stall_timeout": 10.0})
    # /api/ps still answers; the unload before the swap does not.
    rig.agent.hangs = lambda uri: uri.endswith(b"/api/generate")
    started = rig.clock.seconds()
    rig.submit("gemma3:12b", "second")
    rig.run_until(lambda: any(job.last_error for job in rig.jobs()))
    assert 30.0 <= rig.clock.seconds() - started <= 32.0
    job = next(job for job in rig.jobs() if job.last_error)
    assert job.last_error == (
        "foreman: Ollama at http://ollama.test had not begun its reply after 30 s; "
        "the call was stopped (limit: --load-timeout)"
    )
    rig.agent.hangs = lambda uri: False
    rig.run_until(rig.all_finished)
    rig.stop()

"""The pieces of ``/jobs`` that are plain functions: reading a submission,
the job view, the webhook event and the artifacts it names."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred

from foreman.http.routing import BadRequest
from foreman.jobs.api import uncancellable
from foreman.jobs.artifacts import artifact_content, outputs_of
from foreman.jobs.events import event, event_body
from foreman.jobs.requests import idempotency_key, parse_submission
from foreman.jobs.views import job_view, summary
from foreman.queue.job import Job, JobState
from foreman.wire.timestamps import timestamp

NOW = 1_800_000_000.0
COMPLETION = b'{"model":"llama3.2","message":{"role":"assistant","content":"hi"},"done":true}'


def job(state: JobState = JobState.QUEUED, **fields: Any) -> Job:
    values: dict[str, Any] = {
        "id": "01JD8X3Z4Q5R6S7T8V9W0XYZAB",
        "model": "llama3.2",
        "endpoint": "chat",
        "body": b"{}",
        "sync": False,
        "state": state,
        "created_at": NOW,
        "updated_at": NOW + 1.5,
    }
    values.update(fields)
    return Job(**values)


# -- submissions ---------------------------------------------------------------------------


def test_extension_fields_are_kept_apart_and_the_call_is_not_streamed() -> None:
    submission = parse_submission(
        {
            "model": "llama3.2",
            "messages": [{"role": "user", "content": "<hi>"}],
            "Stream": True,
            "stream": True,
            "options": {"seed": 1},
            "state_webhook_url": "https://example.com/hook?k=v",
            "endpoint": "chat",
            "metadata": {"n": [1, 2]},
        }
    )
    assert submission.endpoint == "chat"
    assert submission.model == "llama3.2"
    assert json.loads(submission.body) == {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "<hi>"}],
        "options": {"seed": 1},
        "stream": False,
    }
    assert submission.webhook_url == "https://example.com/hook?k=v"
    assert submission.metadata == b'{"n":[1,2]}'
    made = submission.job("ID", NOW, "key")
    assert (made.sync, made.state, made.idempotency_key) == (False, JobState.QUEUED, "key")
    assert submission.same_request(made)
    assert not parse_submission({"model": "llama3.2"}).same_request(made)


def test_defaults_and_nulls() -> None:
    submission = parse_submission(
        {"model": "m", "endpoint": None, "metadata": None, "state_webhook_url": None}
    )
    assert (submission.endpoint, submission.webhook_url, submission.metadata) == (
        "chat",
        None,
        None,
    )
    assert parse_submission({"model": "m", "endpoint": "generate"}).endpoint == "generate"


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/x", "https://[::1]/", "HTTP://host", "https://user:pw@h.example/p"]
)
def test_webhook_urls_that_are_accepted(url: str) -> None:
    assert parse_submission({"model": "m", "state_webhook_url": url}).webhook_url == url


@pytest.mark.parametrize("url", ["", "http://", "mailto:a@b", "file:///etc/passwd", "http:///x"])
def test_webhook_urls_that_are_refused(url: str) -> None:
    with pytest.raises(BadRequest):
        parse_submission({"model": "m", "state_webhook_url": url})


def test_idempotency_keys() -> None:
    assert idempotency_key(None) is None
    assert idempotency_key(b"  abc-123  ") == "abc-123"
    assert idempotency_key(b"k" * 255) == "k" * 255
    for bad in (b"", b"   ", b"k" * 256, b"caf\xc3\xa9", b"a\x01b"):
        with pytest.raises(BadRequest):
            idempotency_key(bad)


# -- views and artifacts -------------------------------------------------------------------


def test_timestamps_are_utc_with_milliseconds() -> None:
    assert timestamp(NOW + 0.1234) == "2027-01-15T08:00:00.123Z"
    assert timestamp(NOW) == "2027-01-15T08:00:00.000Z"
    assert timestamp(None) is None


def test_the_view_of_a_done_job_inlines_a_small_completion() -> None:
    done = job(JobState.DONE, result=COMPLETION, metadata=b'"m"', finished_at=NOW + 1.5)
    view = job_view(done, inline_limit=len(COMPLETION))
    assert view["result"] == json.loads(COMPLETION)
    assert view["artifacts"] == [
        {
            "name": "completion",
            "content_type": "application/json",
            "size": len(COMPLETION),
            "url": "/jobs/01JD8X3Z4Q5R6S7T8V9W0XYZAB/artifacts/completion",
            "inline": True,
        }
    ]
    assert view["metadata"] == "m"
    assert view["finished_at"] == "2027-01-15T08:00:01.500Z"
    assert set(view) == {*summary(done), "position", "result", "artifacts"}
    assert view["position"] is None
    assert job_view(job(JobState.QUEUED), 0, position=3)["position"] == 3
    over = job_view(done, inline_limit=len(COMPLETION) - 1)
    assert over["result"] is None
    assert over["artifacts"][0]["inline"] is False
    assert artifact_content(done, "completion") == ("application/json", COMPLETION)
    assert artifact_content(done, "other") is None


def test_a_reply_that_is_not_json_is_served_but_never_inlined() -> None:
    odd = job(JobState.DONE, result=b"not json")
    outputs = outputs_of(odd, inline_limit=1 << 20)
    assert outputs.result is None
    assert [(a.size, a.inline) for a in outputs.artifacts] == [(8, False)]
    assert artifact_content(odd, "completion") == ("application/json", b"not json")


@pytest.mark.parametrize("state", [s for s in JobState if s is not JobState.DONE])
def test_only_a_done_job_has_output(state: JobState) -> None:
    unfinished = job(state, result=COMPLETION)
    assert outputs_of(unfinished, inline_limit=1 << 20).artifacts == ()
    assert artifact_content(unfinished, "completion") is None


# -- events --------------------------------------------------------------------------------


def test_the_first_event_has_no_previous_state() -> None:
    assert event(job(metadata=b"[1]"), None, 100) == {
        "job_id": "01JD8X3Z4Q5R6S7T8V9W0XYZAB",
        "state": "queued",
        "previous_state": None,
        "timestamp": "2027-01-15T08:00:01.500Z",
        "model": "llama3.2",
        "attempt": 0,
        "error": None,
        "result": None,
        "artifacts": [],
        "metadata": [1],
    }


@pytest.mark.parametrize(
    ("state", "shown"),
    [
        (JobState.QUEUED, False),  # a retry: the reason is in GET /jobs/{id}
        (JobState.FAILED, True),
        (JobState.CANCELLED, True),
    ],
)
def test_the_error_travels_with_failed_and_cancelled(state: JobState, shown: bool) -> None:
    told = event(job(state, last_error="why", attempt=2), JobState.LOADING, 100)
    assert told["error"] == ("why" if shown else None)
    assert told["previous_state"] == "loading"
    assert told["attempt"] == 2


def test_the_done_event_carries_the_completion_or_its_url() -> None:
    done = job(JobState.DONE, result=COMPLETION)
    small = json.loads(event_body(done, JobState.WORKING, inline_limit=1 << 10))
    assert small["result"] == json.loads(COMPLETION)
    assert small["artifacts"][0]["inline"] is True
    big = json.loads(event_body(done, JobState.WORKING, inline_limit=10))
    assert big["result"] is None
    assert big["artifacts"][0]["inline"] is False
    assert big["artifacts"][0]["url"].endswith("/artifacts/completion")


def test_event_bodies_are_utf8_json() -> None:
    body = event_body(job(metadata='{"text":"été <b>"}'.encode()), None, 0)
    assert "été <b>".encode() in body
    assert json.loads(body)["metadata"] == {"text": "été <b>"}


def test_a_submit_the_caller_leaves_still_finishes() -> None:
    work: Deferred[int] = Deferred(lambda _: pytest.fail("the work was cancelled"))
    shield = uncancellable(work)
    shield.cancel()
    failures: list[Any] = []
    shield.addErrback(failures.append)
    assert failures[0].check(CancelledError)
    work.callback(1)  # later: nobody listens, nothing fails
    assert work.result is None
    passed: Deferred[int] = Deferred()
    outcomes: list[int] = []
    uncancellable(passed).addCallback(outcomes.append)
    passed.callback(7)
    assert outcomes == [7]

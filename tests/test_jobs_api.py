"""The ``/jobs`` surface over real sockets: submit, look, list, cancel, and
every refusal, in front of the simulated Ollama with a real SQLite file."""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet.defer import ensureDeferred, gatherResults

from foreman.queue.job import JobState
from foreman.testing import DEFAULT_MODELS, SimModel
from tests.conftest import RunningForeman, StartForeman, StartSimulator
from tests.http_helpers import eventually
from tests.jobs_http import JobsClient, chat

SLOW_LOADER = SimModel(name="slowload:latest", size=1, load_seconds=30.0)


def queue_of(running: RunningForeman) -> Any:
    queue = running.foreman.queue
    assert queue is not None
    return queue


async def hold_the_worker(jobs: JobsClient, reactor: Any) -> str:
    """Submit a job that generates until cancelled; its id once it is working."""
    job_id = await jobs.submitted(chat("llama3.2", "endless"))
    await jobs.until(job_id, "working", reactor=reactor)
    return job_id


# -- submit ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_submit_answers_202_with_the_id_and_where_to_look(
    reactor: Any, simulator: Any, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running = await start_foreman(simulator.url)
    jobs = JobsClient(http, running.url)
    answer = await jobs.submit(
        {**chat("llama3.2", "hello"), "stream": True, "keep_alive": 0, "metadata": [1, "two"]}
    )
    assert answer.code == 202
    assert answer.header("Content-Type") == "application/json; charset=utf-8"
    job_id = answer.json()["job_id"]
    assert answer.json() == {"job_id": job_id}
    assert len(job_id) == 26
    assert answer.header("Location") == f"/jobs/{job_id}"
    view = await jobs.until(job_id, "done", reactor=reactor)
    assert view["job_id"] == job_id
    assert view["model"] == "llama3.2"
    assert view["endpoint"] == "chat"
    assert view["attempt"] == 1
    assert view["metadata"] == [1, "two"]
    assert view["error"] is None and view["error_status"] is None
    assert view["state_webhook_url"] is None
    assert view["created_at"] <= view["started_at"] <= view["finished_at"]
    assert view["updated_at"] == view["finished_at"]
    # ``stream: true`` was ignored: the result is one whole reply.
    assert view["result"]["done"] is True
    assert "hello" in view["result"]["message"]["content"]
    (call,) = [r for r in simulator.sim.requests if r.path == "/api/chat" and b"hello" in r.body]
    sent = json.loads(call.body)
    assert sent["stream"] is False
    assert sent["keep_alive"] == -1  # foreman's, as for every queued call
    assert not {"metadata", "state_webhook_url", "endpoint"} & set(sent)


@pytest_twisted.ensureDeferred
async def test_a_generate_job(
    reactor: Any, simulator: Any, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running = await start_foreman(simulator.url)
    jobs = JobsClient(http, running.url)
    job_id = await jobs.submitted({"model": "llama3.2", "prompt": "why", "endpoint": "generate"})
    view = await jobs.until(job_id, "done", reactor=reactor)
    assert view["endpoint"] == "generate"
    assert "why" in view["result"]["response"]
    assert any(r.path == "/api/generate" and b"why" in r.body for r in simulator.sim.requests)


@pytest_twisted.ensureDeferred
async def test_a_retried_submit_with_the_same_idempotency_key_is_the_same_job(
    reactor: Any, simulator: Any, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running = await start_foreman(simulator.url)
    jobs = JobsClient(http, running.url)
    body = chat("llama3.2", "once")
    key = {"Idempotency-Key": "order-1234"}
    first = await jobs.submit(body, key)
    again = await jobs.submit(body, key)
    assert first.code == again.code == 202
    assert first.json() == again.json()
    assert again.header("Location") == first.header("Location")
    # Two at once, with another key: still one job.
    racing = await gatherResults(
        [ensureDeferred(jobs.submit(body, {"Idempotency-Key": "race"})) for _ in range(4)]
    )
    assert {answer.code for answer in racing} == {202}
    assert len({answer.json()["job_id"] for answer in racing}) == 1
    # Another body under a used key is refused, not answered with a wrong job.
    other = await jobs.submit(chat("llama3.2", "twice"), key)
    assert other.code == 422
    assert "Idempotency-Key 'order-1234'" in other.json()["error"]
    await jobs.until(first.json()["job_id"], "done", reactor=reactor)
    await jobs.until(racing[0].json()["job_id"], "done", reactor=reactor)
    listed = (await jobs.call("GET", "/jobs")).json()["jobs"]
    assert len(listed) == 2
    # Each job ran once.
    sent = [r.body for r in simulator.sim.requests if r.path == "/api/chat"]
    assert sum(b"once" in each for each in sent) == 2
    # An unusable key is refused.
    empty = await jobs.submit(body, {"Idempotency-Key": " "})
    assert empty.code == 400
    assert "Idempotency-Key" in empty.json()["error"]


# -- refusals ----------------------------------------------------------------------------


ENDPOINT_REFUSAL = (
    'endpoint must be "chat" or "generate" (or one of "/v1/chat/completions", '
    '"/v1/completions", "/v1/responses", "/v1/messages", "/v1/embeddings")'
)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "missing request body"),
        (b"{", "unexpected EOF"),
        (b"nope", "invalid character 'o' in literal null (expecting 'u')"),
        # A list is many jobs (docs/batches.md): each element must be one.
        (b"[1]", "job 0: json: cannot unmarshal number into Go value of type api.ChatRequest"),
        (b"[]", "a list of jobs must hold at least one job"),
        (b"{}", "model is required"),
        (b"null", "model is required"),
        (b'{"model": ""}', "model is required"),
        (
            b'{"model": 7}',
            "json: cannot unmarshal number into Go struct field ChatRequest.model of type string",
        ),
        (
            b'{"model": true, "endpoint": "generate"}',
            "json: cannot unmarshal bool into Go struct field GenerateRequest.model of type string",
        ),
        (b'{"model": "llama3.2", "endpoint": "embed"}', ENDPOINT_REFUSAL),
        (b'{"model": "llama3.2", "endpoint": 1}', ENDPOINT_REFUSAL),
        # Multipart, not JSON: only a sync call can carry it.
        (b'{"model": "llama3.2", "endpoint": "/v1/audio/transcriptions"}', ENDPOINT_REFUSAL),
        (
            b'{"model": "llama3.2", "state_webhook_url": "ftp://example.com/x"}',
            "state_webhook_url must be an absolute http:// or https:// URL",
        ),
        (
            b'{"model": "llama3.2", "state_webhook_url": "/relative"}',
            "state_webhook_url must be an absolute http:// or https:// URL",
        ),
        (
            b'{"model": "llama3.2", "state_webhook_url": 5}',
            "state_webhook_url must be an absolute http:// or https:// URL",
        ),
        (
            b'{"model": "llama3.2", "state_webhook_url": "http://host:port/"}',
            "state_webhook_url must be an absolute http:// or https:// URL",
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_malformed_submission_is_a_400(
    body: bytes, message: str, simulator: Any, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running = await start_foreman(simulator.url)
    answer = await JobsClient(http, running.url).call("POST", "/jobs", body)
    assert (answer.code, answer.json()) == (400, {"error": message})
    assert answer.header("Content-Type") == "application/json; charset=utf-8"
    assert queue_of(running).worker.scheduler.depth == 0


@pytest_twisted.ensureDeferred
async def test_an_unknown_model_is_ollama_s_404_after_a_fresh_look(
    reactor: Any, simulator: Any, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running = await start_foreman(simulator.url)
    jobs = JobsClient(http, running.url)
    answer = await jobs.submit(chat("nosuch"))
    assert (answer.code, answer.json()) == (404, {"error": "model 'nosuch' not found"})
    # A model pulled a moment ago (not yet polled) is found by the fresh look.
    simulator.sim.add_model(SimModel(name="fresh:latest", size=1))
    job_id = await jobs.submitted(chat("fresh"))
    await jobs.until(job_id, "done", reactor=reactor)


@pytest_twisted.ensureDeferred
async def test_unknown_jobs_paths_and_methods(
    simulator: Any, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running = await start_foreman(simulator.url)
    jobs = JobsClient(http, running.url)
    missing = "01JD8X3Z4Q5R6S7T8V9W0XYZAB"
    for method, path in [
        ("GET", f"/jobs/{missing}"),
        ("POST", f"/jobs/{missing}/cancel"),
        ("GET", f"/jobs/{missing}/artifacts/completion"),
    ]:
        answer = await jobs.call(method, path)
        assert (answer.code, answer.json()) == (404, {"error": f"job {missing} not found"})
    for path in [f"/jobs/{missing}/nothing/here", "/jobs/", "/jobsx"]:
        answer = await jobs.call("GET", path)
        assert (answer.code, answer.body) == (404, b"404 page not found"), path
    for method, path in [
        ("PUT", "/jobs"),
        ("DELETE", f"/jobs/{missing}"),
        ("GET", "/jobs/x/cancel"),
    ]:
        answer = await jobs.call(method, path)
        assert (answer.code, answer.body) == (405, b"405 method not allowed"), path


@pytest_twisted.ensureDeferred
async def test_a_full_queue_is_a_503_with_retry_after(
    reactor: Any, start_simulator: StartSimulator, start_foreman: StartForeman, http: HTTPClient
) -> None:
    sim = await start_simulator(tokens_per_second=5.0, reply_tokens=10_000)
    # /jobs are batch work by default: --max-batch-queue bounds them, and
    # --max-queue the people's calls, each apart from the other.
    running = await start_foreman(sim.url, max_queue=1, max_batch_queue=1)
    jobs = JobsClient(http, running.url)
    endless = await hold_the_worker(jobs, reactor)
    waiting = await jobs.submitted(chat("llama3.2", "waiting"))
    refused = await jobs.submit(chat("llama3.2", "refused"))
    assert refused.code == 503
    assert refused.json() == {
        "error": "server busy, please try again.  maximum pending requests exceeded"
    }
    assert int(refused.header("Retry-After") or 0) >= 1
    person = await jobs.submitted({**chat("llama3.2", "a person"), "priority": "interactive"})
    assert (await jobs.submit({**chat("llama3.2", "another"), "priority": "interactive"})).code == (
        503
    )
    assert (await jobs.cancel(person)).code == 200
    # A retry of an accepted submit still finds its job, full queue or not.
    key = {"Idempotency-Key": "k"}
    await jobs.call("POST", f"/jobs/{waiting}/cancel")
    kept = await jobs.submitted(chat("llama3.2", "kept"), key)
    assert (await jobs.submit(chat("llama3.2", "kept"), key)).json()["job_id"] == kept
    for job_id in (endless, kept):
        assert (await jobs.cancel(job_id)).code == 200
    sim.sim.shutdown()


@pytest_twisted.ensureDeferred
async def test_a_store_that_fails_is_a_503(
    simulator: Any, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running = await start_foreman(simulator.url)
    await queue_of(running).store.close()
    answer = await JobsClient(http, running.url).submit(chat())
    assert answer.code == 503
    assert answer.header("Retry-After")
    assert "could not record the job" in answer.json()["error"]
    assert queue_of(running).worker.scheduler.depth == 0


@pytest_twisted.ensureDeferred
async def test_every_jobs_route_needs_the_token(
    reactor: Any, simulator: Any, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running = await start_foreman(simulator.url, token="secret")
    allowed = JobsClient(http, running.url, "secret")
    job_id = await allowed.submitted(chat())
    await allowed.until(job_id, "done", reactor=reactor)
    for token in (None, "wrong"):
        refused = JobsClient(http, running.url, token)
        for method, path in [
            ("POST", "/jobs"),
            ("GET", "/jobs"),
            ("GET", f"/jobs/{job_id}"),
            ("POST", f"/jobs/{job_id}/cancel"),
            ("GET", f"/jobs/{job_id}/artifacts/completion"),
            ("GET", "/jobs/no/such/path"),
        ]:
            answer = await refused.call(method, path, b"{}")
            assert answer.code == 401, (method, path)
            assert answer.header("WWW-Authenticate") == 'Bearer realm="foreman"'


@pytest_twisted.ensureDeferred
async def test_without_the_queue_jobs_answer_501(
    simulator: Any, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running = await start_foreman(simulator.url, queue=False)
    jobs = JobsClient(http, running.url)
    for method, path in [
        ("POST", "/jobs"),
        ("GET", "/jobs"),
        ("GET", "/jobs/01JD8X3Z4Q5R6S7T8V9W0XYZAB"),
        ("POST", "/jobs/01JD8X3Z4Q5R6S7T8V9W0XYZAB/cancel"),
    ]:
        answer = await jobs.call(method, path, json.dumps(chat()).encode())
        assert answer.code == 501, (method, path)
        assert "--no-queue" in answer.json()["error"]


# -- cancel ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_cancel_a_queued_job_before_it_can_load_anything(
    reactor: Any, start_simulator: StartSimulator, start_foreman: StartForeman, http: HTTPClient
) -> None:
    sim = await start_simulator(tokens_per_second=5.0, reply_tokens=10_000)
    running = await start_foreman(sim.url)
    jobs = JobsClient(http, running.url)
    endless = await hold_the_worker(jobs, reactor)
    queued = await jobs.submitted(chat("gemma3:12b", "never"))
    answer = await jobs.cancel(queued)
    assert answer.code == 200
    view = answer.json()
    assert view["state"] == "cancelled"
    assert view["error"] == "cancelled while queued"
    assert view["attempt"] == 0 and view["started_at"] is None
    assert view["finished_at"] is not None
    assert queue_of(running).worker.scheduler.depth == 0
    assert (await jobs.cancel(queued)).code == 409
    assert (await jobs.cancel(endless)).code == 200
    assert sim.sim.load_history == ["llama3.2:latest"]
    assert not any(b"never" in r.body for r in sim.sim.requests)
    sim.sim.shutdown()


@pytest_twisted.ensureDeferred
async def test_cancel_a_loading_job_stops_the_load(
    reactor: Any, start_simulator: StartSimulator, start_foreman: StartForeman, http: HTTPClient
) -> None:
    sim = await start_simulator(models=[*DEFAULT_MODELS, SLOW_LOADER])
    running = await start_foreman(sim.url)
    jobs = JobsClient(http, running.url)
    job_id = await jobs.submitted(chat("slowload", "heavy"))
    await jobs.until(job_id, "loading", reactor=reactor)
    await eventually(lambda: sim.sim.loads == 0 and bool(sim.sim.requests), reactor)
    answer = await jobs.cancel(job_id)
    assert answer.code == 200
    assert answer.json()["state"] == "cancelled"
    assert answer.json()["error"] == "cancelled while running"
    await eventually(lambda: sim.sim.cancelled_requests == 1, reactor)
    assert sim.sim.loaded_models() == []
    assert queue_of(running).worker.current is None
    # The worker goes on with the next job.
    after = await jobs.submitted(chat("llama3.2", "after"))
    await jobs.until(after, "done", reactor=reactor)


@pytest_twisted.ensureDeferred
async def test_cancel_a_working_job_stops_the_generation(
    reactor: Any, start_simulator: StartSimulator, start_foreman: StartForeman, http: HTTPClient
) -> None:
    sim = await start_simulator(tokens_per_second=5.0, reply_tokens=10_000)
    running = await start_foreman(sim.url)
    jobs = JobsClient(http, running.url)
    job_id = await hold_the_worker(jobs, reactor)
    assert sim.sim.active_generations == 1
    answer = await jobs.cancel(job_id)
    assert answer.code == 200
    view = answer.json()
    assert view["state"] == "cancelled"
    assert view["attempt"] == 1
    assert view["result"] is None and view["artifacts"] == []
    await eventually(lambda: sim.sim.active_generations == 0, reactor)
    assert sim.sim.cancelled_requests == 1
    assert sim.sim.completed_generations == 0
    assert (await jobs.job(job_id))["state"] == "cancelled"
    assert (await jobs.call("GET", f"/jobs/{job_id}/artifacts/completion")).code == 404


@pytest_twisted.ensureDeferred
async def test_cancel_a_finished_job_is_a_409(
    reactor: Any, simulator: Any, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running = await start_foreman(simulator.url)
    jobs = JobsClient(http, running.url)
    job_id = await jobs.submitted(chat())
    await jobs.until(job_id, "done", reactor=reactor)
    answer = await jobs.cancel(job_id)
    assert (answer.code, answer.json()) == (409, {"error": f"job {job_id} is already done"})
    assert (await jobs.job(job_id))["state"] == "done"


# -- listing -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_listing_newest_first_filtered_and_paged(
    reactor: Any, simulator: Any, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running = await start_foreman(simulator.url)
    jobs = JobsClient(http, running.url)
    ids = []
    for index in range(5):
        model = "llama3.2" if index % 2 == 0 else "qwen3:8b"
        ids.append(await jobs.submitted({**chat(model, f"n{index}"), "metadata": index}))
    for job_id in ids:
        await jobs.until(job_id, "done", reactor=reactor)
    # A sync call is a job row too, but not one of /jobs.
    sync = await jobs.call("POST", "/api/chat", json.dumps({**chat(), "stream": False}).encode())
    assert sync.code == 200
    cancelled = await jobs.submitted(chat("gemma3:12b", "x"))
    await jobs.cancel(cancelled)  # whichever state it had reached

    everything = (await jobs.call("GET", "/jobs")).json()
    assert [job["job_id"] for job in everything["jobs"]] == [cancelled, *reversed(ids)]
    assert everything["next"] is None
    first = everything["jobs"][1]
    assert first["metadata"] == 4 and first["state"] == "done"
    assert "result" not in first and "artifacts" not in first

    pages, before = [], ""
    while True:
        page = (await jobs.call("GET", f"/jobs?limit=2{before}")).json()
        pages.append([job["job_id"] for job in page["jobs"]])
        if page["next"] is None:
            break
        before = f"&before={page['next']}"
    assert pages == [[cancelled, ids[4]], [ids[3], ids[2]], [ids[1], ids[0]]]

    def listed(query: str) -> Any:
        return jobs.call("GET", f"/jobs?{query}")

    by_model = (await listed("model=registry.ollama.ai/library/LLAMA3.2:latest")).json()
    assert [job["job_id"] for job in by_model["jobs"]] == [ids[4], ids[2], ids[0]]
    done_qwen = (await listed("state=done&model=qwen3:8b&limit=1")).json()
    assert [job["job_id"] for job in done_qwen["jobs"]] == [ids[3]]
    assert done_qwen["next"] == ids[3]
    rest = (await listed(f"state=done&model=qwen3:8b&before={ids[3]}")).json()
    assert [job["job_id"] for job in rest["jobs"]] == [ids[1]]
    assert (await listed("state=failed")).json() == {"jobs": [], "next": None}
    assert len((await listed("limit=500")).json()["jobs"]) == 6

    for query, message in [
        ("state=finished", "state must be one of "),
        ("limit=0", "limit must be a whole number from 1 to 500"),
        ("limit=501", "limit must be a whole number from 1 to 500"),
        ("limit=ten", "limit must be a whole number from 1 to 500"),
    ]:
        answer = await listed(query)
        assert answer.code == 400, query
        assert answer.json()["error"].startswith(message)
    assert ", ".join(state.value for state in JobState) in (await listed("state=x")).json()["error"]


# -- the TTL -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_ttl_sweep_removes_jobs_with_their_artifacts(
    reactor: Any, simulator: Any, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running = await start_foreman(simulator.url)
    jobs = JobsClient(http, running.url)
    job_id = await jobs.submitted(chat())
    view = await jobs.until(job_id, "done", reactor=reactor)
    url = view["artifacts"][0]["url"]
    assert (await jobs.call("GET", url)).code == 200
    store = queue_of(running).store
    # Nothing finished before now is younger than a TTL of 0.
    assert await store.sweep(reactor.seconds() - 3600) == 0
    assert await store.sweep(reactor.seconds() + 1) == 1
    assert (await jobs.call("GET", f"/jobs/{job_id}")).code == 404
    assert (await jobs.call("GET", url)).code == 404
    assert (await jobs.call("GET", "/jobs")).json() == {"jobs": [], "next": None}

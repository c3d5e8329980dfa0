"""Every dialect is a queued job: hang-ups cancel, a mix drains by model,
keep-alive holds, ``/jobs`` takes a dialect, and the token guards every path."""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
import treq
from treq.client import HTTPClient
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.web.http_headers import Headers

from foreman.queue.job import JobState
from tests.conftest import RunningForeman, RunningSimulator, StartForeman, StartSimulator
from tests.http_helpers import StreamingClient, eventually, within
from tests.jobs_http import JobsClient
from tests.sdk_helpers import USER, anthropic_client, in_thread, openai_client

MODELS = ["llama3.2", "gemma3:12b", "qwen3:8b"]
#: How ``/api/ps`` names each of MODELS.
PS_NAME = {"llama3.2": "llama3.2:latest", "gemma3:12b": "gemma3:12b", "qwen3:8b": "qwen3:8b"}
NATIVE, OPENAI, ANTHROPIC = "/api/chat", "/v1/chat/completions", "/v1/messages"


def body_for(path: str, model: str, text: str) -> dict[str, Any]:
    """A non-streamed chat call in the dialect of ``path``."""
    messages = [{"role": "user", "content": text}]
    if path == NATIVE:
        return {"model": model, "messages": messages, "stream": False}
    if path == ANTHROPIC:
        return {"model": model, "max_tokens": 64, "messages": messages}
    if path in ("/v1/completions",):
        return {"model": model, "prompt": text}
    if path == "/v1/responses":
        return {"model": model, "input": text}
    return {"model": model, "messages": messages}


async def post(running: RunningForeman, http: HTTPClient, path: str, document: Any) -> Any:
    response = await http.post(running.url + path, json=document)
    assert response.code == 200, (path, response.code, await response.text())
    return await response.json()


# -- hang-ups ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_sdk_closing_a_stream_cancels_the_generation_and_the_job(
    reactor: Any, start_simulator: StartSimulator, start_foreman: StartForeman
) -> None:
    running_sim = await start_simulator(tokens_per_second=50.0, reply_tokens=10_000)
    sim = running_sim.sim
    running = await start_foreman(running_sim.url)
    queue = running.foreman.queue
    assert queue is not None

    def openai_hangs_up() -> int:
        with openai_client(running.url) as client:
            stream = client.chat.completions.create(model="llama3.2", messages=USER, stream=True)
            with stream:
                seen = [chunk for chunk, _ in zip(stream, range(3), strict=False)]
            return len(seen)

    def anthropic_hangs_up() -> int:
        with (
            anthropic_client(running.url) as client,
            client.messages.stream(model="llama3.2", max_tokens=99_999, messages=USER) as stream,
        ):
            return len([text for text, _ in zip(stream.text_stream, range(3), strict=False)])

    assert await in_thread(openai_hangs_up) == 3
    await eventually(lambda: sim.cancelled_requests == 1 and sim.active_generations == 0, reactor)
    assert await in_thread(anthropic_hangs_up) == 3
    await eventually(lambda: sim.cancelled_requests == 2 and sim.active_generations == 0, reactor)
    await eventually(lambda: queue.worker.current is None, reactor)
    counts = await queue.store.count_by_state()
    assert (counts[JobState.CANCELLED], counts[JobState.DONE]) == (2, 0)
    assert sim.completed_generations == 0
    generated = [r.path for r in sim.requests if r.path.startswith("/v1/")]
    assert generated == [OPENAI, ANTHROPIC]
    sim.shutdown()


# -- a mix of dialects ------------------------------------------------------------------


async def _loads_for(
    reactor: Any,
    start_simulator: StartSimulator,
    start_foreman: StartForeman,
    data_dir: Any,
    calls: list[tuple[str, str]],
) -> RunningSimulator:
    running_sim = await start_simulator(tokens_per_second=200.0, reply_tokens=4)
    running = await start_foreman(running_sim.url, data_dir=data_dir)
    client = StreamingClient(reactor)

    async def one(index: int, path: str, model: str) -> None:
        document = json.dumps(body_for(path, model, f"call {index}")).encode()
        headers = {b"Content-Type": b"application/json"}
        response = await client.request(b"POST", running.url + path, document, headers)
        assert response.code == 200, (path, model, response.code)
        await treq.content(response)

    everyone = [ensureDeferred(one(i, path, model)) for i, (path, model) in enumerate(calls)]
    await within(gatherResults(everyone), 30, reactor)
    running_sim.sim.shutdown()
    return running_sim


@pytest_twisted.ensureDeferred
async def test_a_mix_of_dialects_drains_by_model_like_native_calls(
    reactor: Any, start_simulator: StartSimulator, start_foreman: StartForeman, tmp_path: Any
) -> None:
    # Nine calls at once: every model in every dialect, models interleaved.
    dialects = [NATIVE, OPENAI, ANTHROPIC]
    mixed = [(dialects[(i + i // 3) % 3], MODELS[i % 3]) for i in range(9)]
    assert sorted(mixed) == sorted((d, m) for d in dialects for m in MODELS)
    native_only = [(NATIVE, model) for _, model in mixed]

    mix = await _loads_for(reactor, start_simulator, start_foreman, tmp_path / "mix", mixed)
    native = await _loads_for(
        reactor, start_simulator, start_foreman, tmp_path / "native", native_only
    )
    assert mix.sim.max_active_generations == native.sim.max_active_generations == 1
    assert mix.sim.completed_generations == native.sim.completed_generations == 9
    assert mix.sim.loads == native.sim.loads == len(MODELS)
    assert sorted(mix.sim.load_history) == sorted(native.sim.load_history)
    # The dialect calls reached Ollama in their own dialect.
    paths = [r.path for r in mix.sim.requests if r.path in (OPENAI, ANTHROPIC)]
    assert sorted(paths) == sorted([OPENAI] * 3 + [ANTHROPIC] * 3)


# -- keep-alive ------------------------------------------------------------------------------


def expiry_years(ps: dict[str, Any]) -> dict[str, int]:
    return {model["name"]: int(model["expires_at"][:4]) for model in ps["models"]}


@pytest_twisted.ensureDeferred
async def test_keep_alive_holds_in_every_dialect(
    simulator: RunningSimulator, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running = await start_foreman(simulator.url, embed_model="all-minilm")
    # Each dialect loads a model (a swap) and then calls it again (no load):
    # neither leaves it with Ollama's five minutes.
    for path, model in [
        (OPENAI, "llama3.2"),
        (ANTHROPIC, "gemma3:12b"),
        ("/v1/completions", "llama3.2"),
        ("/v1/responses", "qwen3:8b"),
    ]:
        for attempt in range(2):
            await post(running, http, path, body_for(path, model, f"{path} {attempt}"))
            ps = await (await http.get(running.url + "/api/ps")).json()
            years = expiry_years(ps)
            assert set(years) == {PS_NAME[model], "all-minilm:latest"}, (path, ps)
            assert all(year > 2300 for year in years.values()), (path, ps)  # Go's "forever"
    assert simulator.sim.loads == 1 + 4  # the embedder, then one per swap

    # The control: the same call straight to Ollama loads with its default.
    straight = await http.post(simulator.url + OPENAI, json=body_for(OPENAI, "gemma3:12b", "x"))
    assert straight.code == 200
    await straight.content()
    ps = await (await http.get(simulator.url + "/api/ps")).json()
    assert expiry_years(ps)["gemma3:12b"] < 2300
    simulator.sim.shutdown()


# -- /jobs in a dialect ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_jobs_in_the_openai_and_anthropic_dialects(
    reactor: Any, simulator: RunningSimulator, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running = await start_foreman(simulator.url)
    jobs = JobsClient(http, running.url)
    openai_id = await jobs.submitted(
        {"endpoint": OPENAI, **body_for(OPENAI, "llama3.2", "hello"), "stream": True}
    )
    anthropic_id = await jobs.submitted(
        {"endpoint": ANTHROPIC, **body_for(ANTHROPIC, "llama3.2", "hello"), "stream": True}
    )
    openai_view = await jobs.until(openai_id, "done", "failed", reactor=reactor)
    anthropic_view = await jobs.until(anthropic_id, "done", "failed", reactor=reactor)
    assert (openai_view["state"], openai_view["endpoint"]) == ("done", OPENAI)
    assert (anthropic_view["state"], anthropic_view["endpoint"]) == ("done", ANTHROPIC)

    # ``stream: true`` is ignored: the completion is the dialect's whole reply.
    completion = openai_view["result"]
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"]["role"] == "assistant"
    assert "hello" in completion["choices"][0]["message"]["content"]
    assert completion["choices"][0]["finish_reason"] == "stop"
    message = anthropic_view["result"]
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["content"][0]["type"] == "text" and "hello" in message["content"][0]["text"]
    assert message["stop_reason"] == "end_turn"

    for job_id, inline in [(openai_id, completion), (anthropic_id, message)]:
        answer = await jobs.call("GET", f"/jobs/{job_id}/artifacts/completion")
        assert answer.code == 200
        assert answer.header("Content-Type") == "application/json"
        assert answer.json() == inline
    sent = [json.loads(r.body) for r in simulator.sim.requests if r.path in (OPENAI, ANTHROPIC)]
    assert [document.get("stream") for document in sent] == [False, False]


# -- the token guards every path ---------------------------------------------------------------

GUARDED = [
    ("GET", "/api/tags"),
    ("GET", "/api/ps"),
    ("GET", "/api/version"),
    ("POST", "/api/show"),
    ("POST", "/api/chat"),
    ("POST", "/api/generate"),
    ("POST", "/api/embed"),
    ("POST", "/api/embeddings"),
    ("POST", "/api/pull"),
    ("DELETE", "/api/delete"),
    ("HEAD", "/api/blobs/sha256:0"),
    ("GET", "/api/foreman/queue"),
    ("POST", "/api/me"),
    ("GET", "/api/nope?x=1"),
    ("GET", "/v1"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/llama3.2"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
    ("POST", "/v1/responses"),
    ("POST", "/v1/audio/transcriptions"),
    ("POST", "/v1/messages"),
    ("POST", "/v1/messages/count_tokens"),
    ("GET", "/v1/files"),
    ("DELETE", "/v1/files/abc"),
]


@pytest_twisted.ensureDeferred
async def test_with_a_token_every_path_under_api_and_v1_is_401_without_it(
    simulator: RunningSimulator, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running = await start_foreman(simulator.url, token="t", poll_interval=3600.0)
    seen_before = len(simulator.sim.requests)
    body = json.dumps(body_for(NATIVE, "llama3.2", "hi")).encode()
    refusals = [
        {},
        {b"Authorization": [b"Bearer wrong"]},
        {b"x-api-key": [b"wrong"]},
        {b"Authorization": [b"Basic dDp0"]},
    ]
    for method, path in GUARDED:
        for headers in refusals:
            response = await http.request(
                method, running.url + path, data=body, headers=Headers(headers)
            )
            content = await response.content()
            assert response.code == 401, (method, path, headers, response.code, content)
            if method == "HEAD":
                continue
            document = json.loads(content)
            if path.startswith("/v1/messages"):
                assert document["error"]["type"] == "authentication_error", (path, document)
            elif path.startswith("/v1"):
                assert document["error"]["type"] == "api_error", (path, document)
            else:
                assert set(document) == {"error"}, (path, document)
    # Nothing of it reached Ollama.
    assert len(simulator.sim.requests) == seen_before

    # The control: with the token, the same paths are answered (or relayed).
    for method, path in [("GET", "/api/tags"), ("POST", "/api/me"), ("GET", "/v1/files")]:
        for token in ({b"Authorization": [b"Bearer t"]}, {b"x-api-key": [b"t"]}):
            response = await http.request(method, running.url + path, headers=Headers(token))
            await response.content()
            assert response.code != 401, (method, path)

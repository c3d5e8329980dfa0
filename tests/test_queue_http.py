"""The queue as callers see it, over real sockets: positions, 503s, hang-ups,
the gate under concurrent callers, embeddings alongside generation."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest_twisted
import treq
from treq.client import HTTPClient
from twisted.internet.defer import ensureDeferred, gatherResults, maybeDeferred
from twisted.web.http_headers import Headers

from tests.conftest import StartForeman, StartSimulator
from tests.http_helpers import StreamingClient, eventually, within


def chat(model: str, text: str, stream: bool = True) -> bytes:
    return json.dumps(
        {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}
    ).encode()


@pytest_twisted.ensureDeferred
async def test_a_caller_hanging_up_while_queued_never_causes_a_load(
    reactor: Any, start_simulator: StartSimulator, start_foreman: StartForeman
) -> None:
    running_sim = await start_simulator(tokens_per_second=50.0, reply_tokens=10_000)
    sim = running_sim.sim
    running = await start_foreman(running_sim.url)
    client = StreamingClient(reactor)
    first = await within(
        client.request(b"POST", running.url + "/api/chat", chat("llama3.2", "long")), 5, reactor
    )
    first_lines = client.read_lines(first)
    await within(first_lines.lines.get(), 5, reactor)
    # The second caller waits behind the first, for another model; it gives up.
    second = client.request(b"POST", running.url + "/api/chat", chat("gemma3:12b", "never"))
    queue = running.foreman.queue
    assert queue is not None
    await eventually(lambda: queue.worker.scheduler.depth == 1, reactor)
    second.cancel()
    second.addErrback(lambda _: None)
    await eventually(lambda: queue.worker.scheduler.depth == 0, reactor)
    first_lines.abort()
    await eventually(lambda: queue.worker.current is None, reactor)
    assert sim.load_history == ["llama3.2:latest"]
    states = {job.model: job.state.value for job in await queue.store.unfinished()}
    assert states == {}
    sim.shutdown()


@pytest_twisted.ensureDeferred
async def test_queue_position_full_queue_and_visibility(
    reactor: Any, start_simulator: StartSimulator, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running_sim = await start_simulator(tokens_per_second=50.0, reply_tokens=10_000)
    running = await start_foreman(running_sim.url, max_queue=1, token="t")
    bearer = {b"Authorization": [b"Bearer t"]}
    client = StreamingClient(reactor)
    first = await within(
        client.request(
            b"POST",
            running.url + "/api/chat",
            chat("llama3.2", "a"),
            {k: v[0] for k, v in bearer.items()},
        ),
        5,
        reactor,
    )
    assert first.headers.getRawHeaders(b"x-foreman-queue-position") == [b"1"]
    first_lines = client.read_lines(first)
    await within(first_lines.lines.get(), 5, reactor)

    second = client.request(
        b"POST", running.url + "/api/chat", chat("llama3.2", "b"), {b"Authorization": b"Bearer t"}
    )
    queue = running.foreman.queue
    assert queue is not None
    await eventually(lambda: queue.worker.scheduler.depth == 1, reactor)

    refused = await http.post(
        running.url + "/api/chat", data=chat("llama3.2", "c"), headers=Headers(bearer)
    )
    assert refused.code == 503
    assert int(refused.headers.getRawHeaders(b"retry-after")[0]) >= 1
    assert await refused.json() == {
        "error": "server busy, please try again.  maximum pending requests exceeded"
    }

    listing = await (
        await http.get(running.url + "/api/foreman/queue", headers=Headers(bearer))
    ).json()
    assert [(job["state"], job["position"]) for job in listing["jobs"]] == [
        ("working", 0),
        ("queued", 2),
    ]
    assert listing["worker_model"] == "llama3.2:latest"
    assert (await http.get(running.url + "/api/foreman/queue")).code == 401
    health = await (await http.get(running.url + "/healthz")).json()
    assert health["queue"]["depth"] == 1

    first_lines.abort()
    second_response = await within(second, 10, reactor)
    assert second_response.headers.getRawHeaders(b"x-foreman-queue-position") == [b"2"]
    second_lines = client.read_lines(second_response)
    await within(second_lines.lines.get(), 5, reactor)
    second_lines.abort()
    running_sim.sim.shutdown()


async def _fifty_callers(
    reactor: Any, start_simulator: StartSimulator, start_foreman: StartForeman, *, queue: bool
) -> int:
    running_sim = await start_simulator(num_parallel=4, tokens_per_second=200.0, reply_tokens=4)
    running = await start_foreman(running_sim.url, queue=queue)
    models = ["llama3.2", "gemma3:12b"]
    client = StreamingClient(reactor)

    async def one(index: int) -> None:
        response = await client.request(
            b"POST", running.url + "/api/chat", chat(models[index % 2], f"n{index}", False)
        )
        assert response.code == 200
        await treq.content(response)

    await within(gatherResults([ensureDeferred(one(i)) for i in range(50)]), 60, reactor)
    running_sim.sim.shutdown()
    return running_sim.sim.max_active_generations


@pytest_twisted.ensureDeferred
async def test_fifty_concurrent_callers_never_run_two_generations_at_once(
    reactor: Any, start_simulator: StartSimulator, start_foreman: StartForeman
) -> None:
    assert await _fifty_callers(reactor, start_simulator, start_foreman, queue=True) == 1


@pytest_twisted.ensureDeferred
async def test_without_the_queue_the_same_callers_overlap(
    reactor: Any, start_simulator: StartSimulator, start_foreman: StartForeman
) -> None:
    # The control: the test above could fail.
    assert await _fifty_callers(reactor, start_simulator, start_foreman, queue=False) > 1


@pytest_twisted.ensureDeferred
async def test_embeddings_run_while_a_generation_is_in_progress(
    reactor: Any, start_simulator: StartSimulator, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running_sim = await start_simulator(tokens_per_second=20.0, reply_tokens=20)
    running = await start_foreman(running_sim.url, embed_model="all-minilm")
    client = StreamingClient(reactor)
    generation_started = time.monotonic()
    response = await within(
        client.request(b"POST", running.url + "/api/chat", chat("llama3.2", "slow")), 5, reactor
    )
    lines = client.read_lines(response)
    await within(lines.lines.get(), 5, reactor)
    embed_started = time.monotonic()
    embedded = await http.post(
        running.url + "/api/embed", json={"model": "all-minilm", "input": "quick"}
    )
    assert embedded.code == 200
    assert len((await embedded.json())["embeddings"]) == 1
    embed_finished = time.monotonic()
    await within(lines.ended, 10, reactor)
    generation_finished = time.monotonic()
    # The embedding started and finished inside the generation (about 1 s).
    assert generation_started < embed_started < embed_finished < generation_finished
    assert embed_finished - embed_started < (generation_finished - generation_started) / 2
    running_sim.sim.shutdown()


@pytest_twisted.ensureDeferred
async def test_the_embedder_is_pinned_at_start_and_again_after_an_outage(
    reactor: Any, start_simulator: StartSimulator, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running_sim = await start_simulator()
    sim = running_sim.sim
    running = await start_foreman(running_sim.url, embed_model="all-minilm")
    await eventually(lambda: "all-minilm:latest" in sim.loaded_models(), reactor)
    ps = await (await http.get(running_sim.url + "/api/ps")).json()
    (embedder,) = ps["models"]
    assert int(embedder["expires_at"][:4]) > 2300  # "forever", as Go prints it

    # Ollama restarts: it stops answering, and comes back with nothing loaded.
    port = running_sim.port
    number = port.getHost().port
    await port.stopListening()
    await running.foreman.pool.closeCachedConnections()
    await running.foreman.inventory.refresh()
    assert running.foreman.inventory.degraded
    sim.shutdown()
    assert sim.loaded_models() == []

    # It answers again: foreman pins the embedder once more.
    again = reactor.listenTCP(number, sim.site(reactor), interface="127.0.0.1")
    await running.foreman.inventory.refresh()
    await eventually(lambda: "all-minilm:latest" in sim.loaded_models(), reactor)
    await again.stopListening()
    sim.shutdown()


@pytest_twisted.ensureDeferred
async def test_a_store_that_fails_is_a_503_not_a_traceback(
    simulator: Any, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running = await start_foreman(simulator.url)
    queue = running.foreman.queue
    assert queue is not None
    await queue.store.close()  # as a full or vanished disk would
    response = await http.post(running.url + "/api/chat", data=chat("llama3.2", "x", False))
    assert response.code == 503
    assert response.headers.getRawHeaders(b"retry-after")
    assert "could not record the job" in (await response.json())["error"]
    assert queue.worker.scheduler.depth == 0


@pytest_twisted.ensureDeferred
async def test_stopping_foreman_answers_waiting_callers_with_503(
    reactor: Any, start_simulator: StartSimulator, start_foreman: StartForeman
) -> None:
    from foreman.testing import DEFAULT_MODELS, SimModel

    slow = SimModel(name="slowload:latest", size=1, load_seconds=30.0)
    running_sim = await start_simulator(models=[*DEFAULT_MODELS, slow])
    running = await start_foreman(running_sim.url)
    queue = running.foreman.queue
    assert queue is not None
    client = StreamingClient(reactor)
    loading = client.request(b"POST", running.url + "/api/chat", chat("slowload", "a", False))
    # The second caller must arrive only once the slow load holds the worker,
    # or it could be served first and answered 200.
    await eventually(lambda: queue.worker.current is not None, reactor)
    waiting = client.request(b"POST", running.url + "/api/chat", chat("llama3.2", "b", False))
    await eventually(lambda: queue.worker.scheduler.depth == 1, reactor)
    await maybeDeferred(queue.worker.stopService)
    for response_d in (loading, waiting):
        response = await within(response_d, 5, reactor)
        assert response.code == 503
        assert "stopping" in json.loads(await treq.content(response))["error"]
    running_sim.sim.shutdown()

"""The official OpenAI and Anthropic Python SDKs, pointed at foreman, see a private Ollama.

Every call goes SDK -> foreman -> simulated Ollama over real sockets, and
every generation is a job in foreman's queue.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import anthropic
import openai
import pytest_twisted
from twisted.internet.threads import deferToThread

from foreman.queue.job import JobState
from tests.conftest import RunningSimulator, StartForeman, StartScripted, StartSimulator
from tests.http_helpers import StreamingClient, eventually, within
from tests.sdk_helpers import (
    USER,
    anthropic_client,
    endless_chat,
    in_thread,
    openai_client,
    raised,
    spread,
    stream_openai_chat,
    warm_up_stream,
)

TOKEN = "sdk-token"


@pytest_twisted.ensureDeferred
async def test_openai_chat_streamed_and_not(
    start_simulator: StartSimulator, start_foreman: StartForeman
) -> None:
    running_sim = await start_simulator(tokens_per_second=40, reply_tokens=8)
    running = await start_foreman(running_sim.url)

    def work() -> tuple[Any, list[str], list[float], Any]:
        with openai_client(running.url) as client:
            whole = client.chat.completions.create(model="llama3.2", messages=USER)
            warm_up_stream(client)
            texts, arrivals, last = stream_openai_chat(client)
            return whole, texts, arrivals, last

    try:
        whole, texts, arrivals, last = await in_thread(work)
    finally:
        running_sim.sim.shutdown()
    assert whole.object == "chat.completion"
    assert whole.choices[0].message.content == "Why is the sky blue? Why is the"
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None and whole.usage.completion_tokens == 8
    assert "".join(texts) == whole.choices[0].message.content
    assert len(texts) == 8
    # Eight tokens at 40/s: foreman passed them on one by one, not at the end.
    assert spread(arrivals) > 0.1
    assert last is not None and last.usage is not None and last.usage.total_tokens > 8
    assert running_sim.sim.completed_generations == 3
    # All were queued jobs of their dialect.
    queue = running.foreman.queue
    assert queue is not None
    counts = await queue.store.count_by_state()
    assert counts[JobState.DONE] == 3


@pytest_twisted.ensureDeferred
async def test_openai_completions_embeddings_and_models(
    simulator: RunningSimulator, start_foreman: StartForeman
) -> None:
    running = await start_foreman(simulator.url)

    def work() -> dict[str, Any]:
        with openai_client(running.url) as client:
            return {
                "completion": client.completions.create(model="llama3.2", prompt="hi there"),
                # The SDK asks for base64 unless told otherwise, and decodes it.
                "default": client.embeddings.create(model="all-minilm", input=["a", "b"]),
                "float": client.embeddings.create(
                    model="all-minilm", input=["a", "b"], encoding_format="float"
                ),
                "models": client.models.list(),
                "one": client.models.retrieve("qwen3:8b"),
                "missing": raised(lambda: client.models.retrieve("nope")),
                "unknown": raised(
                    lambda: client.chat.completions.create(model="no-such-model", messages=USER)
                ),
                "no_embedder": raised(lambda: client.embeddings.create(model="nope", input="x")),
            }

    got = await in_thread(work)
    assert got["completion"].object == "text_completion"
    assert got["completion"].choices[0].text.startswith("hi there")
    floats = [d.embedding for d in got["float"].data]
    assert len(floats) == 2 and len(floats[0]) == 384
    assert len(got["default"].data[0].embedding) == 384
    ids = [m.id for m in got["models"]]
    assert "llama3.2:latest" in ids and "all-minilm:latest" in ids
    assert (got["one"].id, got["one"].owned_by) == ("qwen3:8b", "library")
    assert isinstance(got["missing"], openai.NotFoundError)
    unknown = got["unknown"]
    # foreman answers this one itself (no job), in the OpenAI error shape.
    assert isinstance(unknown, openai.NotFoundError)
    assert unknown.message.endswith("model 'no-such-model' not found")
    assert unknown.type == "not_found_error"
    assert isinstance(got["no_embedder"], openai.NotFoundError)
    assert simulator.sim.completed_generations == 1


@pytest_twisted.ensureDeferred
async def test_openai_and_anthropic_with_a_token(
    simulator: RunningSimulator, start_foreman: StartForeman
) -> None:
    running = await start_foreman(simulator.url, token=TOKEN)

    def work() -> dict[str, Any]:
        got: dict[str, Any] = {}
        with openai_client(running.url) as client:
            # The SDK insists on a key; Ollama's docs give "ollama". Sent, or not at all:
            got["openai_placeholder"] = raised(client.models.list)
            got["openai_none"] = raised(
                lambda: client.models.list(extra_headers={"Authorization": openai.omit})
            )
        with openai_client(running.url, api_key="wrong") as client:
            got["openai_wrong"] = raised(
                lambda: client.chat.completions.create(model="llama3.2", messages=USER)
            )
        with openai_client(running.url, api_key=TOKEN) as client:
            got["openai_right"] = client.chat.completions.create(model="llama3.2", messages=USER)
        for name, credentials in [
            ("x_api_key", {"api_key": TOKEN}),
            ("bearer", {"auth_token": TOKEN}),
            ("wrong", {"api_key": "wrong"}),
            ("wrong_bearer", {"auth_token": "wrong"}),
        ]:
            with anthropic_client(running.url, **credentials) as client:
                call = lambda c=client: c.messages.create(  # noqa: E731
                    model="llama3.2", max_tokens=64, messages=USER
                )
                got[f"anthropic_{name}"] = raised(call) if "wrong" in name else call()
        return got

    got = await in_thread(work)
    for name in ["openai_placeholder", "openai_none", "openai_wrong"]:
        assert isinstance(got[name], openai.AuthenticationError), got[name]
        assert got[name].status_code == 401
    assert got["openai_right"].choices[0].message.content
    assert got["anthropic_x_api_key"].content[0].text
    assert got["anthropic_bearer"].content[0].text
    for name in ["anthropic_wrong", "anthropic_wrong_bearer"]:
        error = got[name]
        assert isinstance(error, anthropic.AuthenticationError), error
        assert error.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    # Neither the token nor the api key ever reached Ollama.
    for request in simulator.sim.requests:
        assert request.header("authorization") is None and request.header("x-api-key") is None
    assert simulator.sim.completed_generations == 3


@pytest_twisted.ensureDeferred
async def test_anthropic_messages_streamed_and_not(
    start_simulator: StartSimulator, start_foreman: StartForeman
) -> None:
    running_sim = await start_simulator(tokens_per_second=40, reply_tokens=8)
    running = await start_foreman(running_sim.url)

    def work() -> tuple[Any, list[str], list[float], Any, Exception]:
        with anthropic_client(running.url) as client:
            whole = client.messages.create(model="llama3.2", max_tokens=1024, messages=USER)
            warm_up_stream(client)
            texts, arrivals = [], []
            with client.messages.stream(model="llama3.2", max_tokens=1024, messages=USER) as stream:
                for text in stream.text_stream:
                    arrivals.append(time.monotonic())
                    texts.append(text)
                final = stream.get_final_message()
            missing = raised(
                lambda: client.messages.create(model="no-such-model", max_tokens=9, messages=USER)
            )
            return whole, texts, arrivals, final, missing

    try:
        whole, texts, arrivals, final, missing = await in_thread(work)
    finally:
        running_sim.sim.shutdown()
    assert whole.type == "message" and whole.id.startswith("msg_")
    assert whole.stop_reason == "end_turn"
    assert whole.content[0].text == "Why is the sky blue? Why is the"
    assert whole.usage.output_tokens == 8
    assert "".join(texts) == whole.content[0].text and len(texts) == 8
    assert spread(arrivals) > 0.1
    assert final.content[0].text == whole.content[0].text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 8
    assert isinstance(missing, anthropic.NotFoundError)
    assert missing.body["error"] == {  # type: ignore[index]
        "type": "not_found_error",
        "message": "model 'no-such-model' not found",
    }
    assert running_sim.sim.completed_generations == 3


@pytest_twisted.ensureDeferred
async def test_a_full_queue_is_503_with_retry_after_in_both_sdks(
    reactor: Any, start_simulator: StartSimulator, start_foreman: StartForeman
) -> None:
    running_sim = await start_simulator(tokens_per_second=50.0)
    running = await start_foreman(running_sim.url, max_queue=1)
    queue = running.foreman.queue
    assert queue is not None
    client = StreamingClient(reactor)
    working = await endless_chat(reactor, client, running.url)
    waiting = client.request(
        b"POST",
        running.url + "/api/chat",
        json.dumps({"model": "llama3.2", "messages": USER}).encode(),
    )
    await eventually(lambda: queue.worker.scheduler.depth == 1, reactor)

    def work() -> tuple[Exception, Exception, Exception]:
        with openai_client(running.url) as client:
            refused = raised(
                lambda: client.chat.completions.create(model="llama3.2", messages=USER)
            )
            streamed = raised(
                lambda: client.chat.completions.create(
                    model="gemma3:12b", messages=USER, stream=True
                )
            )
        with anthropic_client(running.url) as client:
            overloaded = raised(
                lambda: client.messages.create(model="llama3.2", max_tokens=9, messages=USER)
            )
        return refused, streamed, overloaded

    try:
        refused, streamed, overloaded = await in_thread(work)
    finally:
        waiting.cancel()
        waiting.addErrback(lambda _: None)
        working.abort()
        await eventually(lambda: queue.worker.current is None, reactor)
        running_sim.sim.shutdown()
    for error in (refused, streamed):
        assert isinstance(error, openai.InternalServerError), error
        assert error.status_code == 503
        assert error.type == "api_error"
        assert "maximum pending requests exceeded" in error.message
        assert 1 <= int(error.response.headers["retry-after"]) <= 60
    assert isinstance(overloaded, anthropic.InternalServerError), overloaded
    assert overloaded.status_code == 503
    assert overloaded.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    assert 1 <= int(overloaded.response.headers["retry-after"]) <= 60


@pytest_twisted.ensureDeferred
async def test_a_stream_that_breaks_raises_in_both_sdks(
    reactor: Any, start_scripted: StartScripted
) -> None:
    rig = await start_scripted()
    first_event = threading.Event()

    def openai_reads() -> list[str]:
        texts = []
        with openai_client(rig.foreman.url) as client:
            stream = client.chat.completions.create(model="scripted", messages=USER, stream=True)
            with stream:
                for chunk in stream:
                    texts.append(chunk.choices[0].delta.content or "")
                    first_event.set()
        return texts

    def anthropic_reads() -> list[str]:
        texts = []
        with (
            anthropic_client(rig.foreman.url) as client,
            client.messages.stream(model="scripted", max_tokens=9, messages=USER) as stream,
        ):
            for text in stream.text_stream:
                texts.append(text)
                first_event.set()
        return texts

    openai_chunk = (
        b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"scripted",'
        b'"choices":[{"index":0,"delta":{"role":"assistant","content":"a"},"finish_reason":null}]}'
        b"\n\n"
    )
    anthropic_events = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1",'
        b'"type":"message","role":"assistant","model":"scripted","content":[],'
        b'"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":1,"output_tokens":0}}}'
        b"\n\n"
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"text","text":""}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"a"}}\n\n'
    )
    outcomes = []
    for reads, first in [(openai_reads, openai_chunk), (anthropic_reads, anthropic_events)]:
        first_event.clear()
        outcome = deferToThread(reads)
        held = await within(rig.upstream.next_request(), 5, reactor)
        held.start(content_type=b"text/event-stream")
        held.send(first)
        assert await deferToThread(first_event.wait, 5)
        held.die()
        try:
            got = await within(outcome, 10, reactor)
        except Exception as e:
            outcomes.append(e)
        else:
            raise AssertionError(f"a broken stream must not look complete: {got}")
    openai_error, anthropic_error = outcomes
    # Not a dropped connection: foreman ended each stream with its dialect's
    # error event, which the SDK raises with foreman's words.
    assert type(openai_error) is openai.APIError, repr(openai_error)
    assert "the stream broke before it was done" in openai_error.message
    assert openai_error.type == "api_error"
    assert isinstance(anthropic_error, anthropic.APIStatusError), repr(anthropic_error)
    assert anthropic_error.body["error"]["type"] == "api_error"  # type: ignore[index]
    assert "the stream broke" in anthropic_error.body["error"]["message"]  # type: ignore[index]

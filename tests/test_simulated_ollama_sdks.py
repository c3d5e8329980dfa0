"""The official OpenAI and Anthropic Python SDKs against the simulator's /v1 dialects.

The SDKs are synchronous httpx clients: they run in a thread while the
reactor serves the simulator on a real 127.0.0.1 socket. Retries are off,
so an error reaches the test as the SDK raises it the first time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anthropic
import openai
import pytest
import pytest_twisted

from tests import sdk_helpers
from tests.conftest import RunningSimulator, StartSimulator
from tests.sdk_helpers import USER, in_thread, spread, stream_openai_chat, warm_up_stream


def openai_client(running: RunningSimulator) -> openai.OpenAI:
    return sdk_helpers.openai_client(running.url)


def anthropic_client(running: RunningSimulator) -> anthropic.Anthropic:
    return sdk_helpers.anthropic_client(running.url)


@pytest_twisted.ensureDeferred
async def test_openai_chat_streamed_and_not(start_simulator: StartSimulator) -> None:
    running = await start_simulator(tokens_per_second=40, reply_tokens=8)

    def work() -> tuple[Any, list[str], list[float], Any]:
        with openai_client(running) as client:
            whole = client.chat.completions.create(model="llama3.2", messages=USER)
            warm_up_stream(client)
            texts, arrivals, last = stream_openai_chat(client)
            return whole, texts, arrivals, last

    try:
        whole, texts, arrivals, last = await in_thread(work)
    finally:
        running.sim.shutdown()
    assert whole.choices[0].message.content == "Why is the sky blue? Why is the"
    assert whole.choices[0].finish_reason == "stop"
    assert whole.system_fingerprint == "fp_ollama"
    assert whole.usage is not None and whole.usage.completion_tokens == 8
    assert "".join(texts) == whole.choices[0].message.content
    assert len(texts) == 8
    assert spread(arrivals) > 0.1  # eight tokens at 40/s: they came one by one
    assert last is not None and last.usage is not None and last.usage.total_tokens > 8
    assert running.sim.completed_generations == 3  # the warm-up stream too


@pytest_twisted.ensureDeferred
async def test_openai_embeddings_models_and_completions(start_simulator: StartSimulator) -> None:
    running = await start_simulator()

    def work() -> dict[str, Any]:
        with openai_client(running) as client:
            return {
                # The SDK asks for base64 unless told otherwise, and decodes it.
                "default": client.embeddings.create(model="all-minilm", input=["a", "b"]),
                "float": client.embeddings.create(
                    model="all-minilm", input=["a", "b"], encoding_format="float"
                ),
                "models": client.models.list(),
                "one": client.models.retrieve("qwen3:8b"),
                "completion": client.completions.create(model="llama3.2", prompt="hi there"),
            }

    try:
        got = await in_thread(work)
    finally:
        running.sim.shutdown()
    floats = [d.embedding for d in got["float"].data]
    assert len(floats) == 2 and len(floats[0]) == 384
    decoded = [d.embedding for d in got["default"].data]
    assert all(a == pytest.approx(b, rel=1e-6) for a, b in zip(decoded, floats, strict=True))
    assert got["float"].usage.prompt_tokens == 6
    ids = [m.id for m in got["models"]]
    assert ids[0] == "llama3.2:latest" and "all-minilm:latest" in ids
    assert (got["one"].id, got["one"].owned_by) == ("qwen3:8b", "library")
    assert got["completion"].choices[0].text.startswith("hi there")


@pytest_twisted.ensureDeferred
async def test_openai_responses(start_simulator: StartSimulator) -> None:
    running = await start_simulator(reply_tokens=4)

    def work() -> tuple[Any, list[str], Any]:
        with openai_client(running) as client:
            whole = client.responses.create(model="llama3.2", input="hello there")
            deltas = []
            with client.responses.stream(model="llama3.2", input="hello there") as stream:
                for event in stream:
                    if event.type == "response.output_text.delta":
                        deltas.append(event.delta)
                final = stream.get_final_response()
            return whole, deltas, final

    try:
        whole, deltas, final = await in_thread(work)
    finally:
        running.sim.shutdown()
    assert whole.output_text == "hello there hello there"
    assert "".join(deltas) == whole.output_text
    assert final.output_text == whole.output_text and final.status == "completed"


@pytest_twisted.ensureDeferred
async def test_openai_errors_raise_the_sdks_classes(start_simulator: StartSimulator) -> None:
    running = await start_simulator()

    def attempt(call: Callable[[openai.OpenAI], object]) -> openai.APIStatusError:
        with openai_client(running) as client:
            try:
                call(client)
            except openai.APIStatusError as e:
                return e
        raise AssertionError("no error")

    def work() -> list[openai.APIStatusError]:
        return [
            attempt(lambda c: c.models.retrieve("nope")),
            attempt(lambda c: c.chat.completions.create(model="nope", messages=USER)),
            attempt(lambda c: c.chat.completions.create(model="llama3.2", messages=[])),
            attempt(lambda c: c.embeddings.create(model="", input="x")),
        ]

    try:
        missing, unknown, empty, no_model = await in_thread(work)
    finally:
        running.sim.shutdown()
    assert isinstance(missing, openai.NotFoundError)
    assert isinstance(unknown, openai.NotFoundError)
    assert unknown.message.endswith("model 'nope' not found")
    assert unknown.type == "not_found_error"
    assert isinstance(empty, openai.BadRequestError)
    assert empty.type == "invalid_request_error"
    assert isinstance(no_model, openai.NotFoundError)  # 404 model '' not found


@pytest_twisted.ensureDeferred
async def test_anthropic_messages_streamed_and_not(start_simulator: StartSimulator) -> None:
    running = await start_simulator(tokens_per_second=40, reply_tokens=8)

    def work() -> tuple[Any, list[str], list[float], Any]:
        with anthropic_client(running) as client:
            whole = client.messages.create(model="llama3.2", max_tokens=1024, messages=USER)
            texts, arrivals = [], []
            with client.messages.stream(model="llama3.2", max_tokens=1024, messages=USER) as stream:
                for text in stream.text_stream:
                    arrivals.append(time.monotonic())
                    texts.append(text)
                final = stream.get_final_message()
            return whole, texts, arrivals, final

    try:
        whole, texts, arrivals, final = await in_thread(work)
    finally:
        running.sim.shutdown()
    assert whole.id.startswith("msg_") and whole.stop_reason == "end_turn"
    assert whole.content[0].type == "text"
    assert whole.content[0].text == "Why is the sky blue? Why is the"
    assert whole.usage.output_tokens == 8
    assert "".join(texts) == whole.content[0].text and len(texts) == 8
    assert spread(arrivals) > 0.1
    assert final.content[0].text == whole.content[0].text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 8


@pytest_twisted.ensureDeferred
async def test_anthropic_thinking_model_stream(start_simulator: StartSimulator) -> None:
    running = await start_simulator(reply_tokens=4)

    def work() -> Any:
        with (
            anthropic_client(running) as client,
            client.messages.stream(model="qwen3:8b", max_tokens=1024, messages=USER) as stream,
        ):
            return stream.get_final_message()

    try:
        final = await in_thread(work)
    finally:
        running.sim.shutdown()
    assert [block.type for block in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "Thinking about"


@pytest_twisted.ensureDeferred
async def test_anthropic_errors_raise_the_sdks_classes(start_simulator: StartSimulator) -> None:
    running = await start_simulator(max_queue=0)

    def attempt(**overrides: Any) -> anthropic.APIStatusError:
        body: dict[str, Any] = {"model": "llama3.2", "max_tokens": 10, "messages": USER}
        body.update(overrides)
        with anthropic_client(running) as client:
            try:
                client.messages.create(**body)
            except anthropic.APIStatusError as e:
                return e
        raise AssertionError("no error")

    def work() -> list[anthropic.APIStatusError]:
        return [attempt(model="nope"), attempt(max_tokens=0), attempt()]

    try:
        missing, refused, busy = await in_thread(work)
    finally:
        running.sim.shutdown()
    assert isinstance(missing, anthropic.NotFoundError)
    assert missing.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "model 'nope' not found"},
        "request_id": missing.body["request_id"],  # type: ignore[index]
    }
    assert isinstance(refused, anthropic.BadRequestError)
    # A full queue is 503: the SDK's InternalServerError, typed overloaded_error.
    assert isinstance(busy, anthropic.InternalServerError) and busy.status_code == 503
    assert busy.body["error"]["type"] == "overloaded_error"  # type: ignore[index]

"""Real third-party Ollama clients, pointed at foreman, cannot tell it from Ollama.

The clients are synchronous; they run in a thread while the reactor serves
foreman and the simulated Ollama on real sockets.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import ollama
import pytest
import pytest_twisted
from langchain_ollama import ChatOllama
from twisted.internet.threads import deferToThread

from tests.conftest import RunningForeman, RunningSimulator, StartForeman
from tests.http_helpers import within
from tests.scripted_upstream import listen_scripted

T = TypeVar("T")
TOKEN = "client-test-token"


async def in_thread(function: Callable[[], T]) -> T:
    result: T = await deferToThread(function)
    return result


@pytest.fixture
def clients() -> Iterator[list[ollama.Client]]:
    """Every client a test makes is closed afterwards (filterwarnings = error)."""
    made: list[ollama.Client] = []
    yield made
    for each in made:
        each.close()


@pytest.fixture
def client(clients: list[ollama.Client]) -> MakeClient:
    def make(foreman: RunningForeman, token: str | None = None) -> ollama.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        made = ollama.Client(host=foreman.url, headers=headers)
        clients.append(made)
        return made

    return make


MakeClient = Callable[..., ollama.Client]


@pytest_twisted.ensureDeferred
async def test_chat_streamed_and_not(foreman: RunningForeman, client: MakeClient) -> None:
    messages = [{"role": "user", "content": "tell me about twisted"}]
    reply = await in_thread(lambda: client(foreman).chat(model="llama3.2", messages=messages))
    assert reply.done and reply.done_reason == "stop"
    assert reply.message.role == "assistant" and reply.message.content
    assert reply.eval_count and reply.eval_count > 0

    def streamed() -> list[Any]:
        return list(client(foreman).chat(model="llama3.2", messages=messages, stream=True))

    chunks = await in_thread(streamed)
    assert len(chunks) > 2
    assert chunks[-1].done is True
    assert "".join(c.message.content for c in chunks) == reply.message.content


@pytest_twisted.ensureDeferred
async def test_generate_embed_and_metadata(foreman: RunningForeman, client: MakeClient) -> None:
    c = client(foreman)
    generated = await in_thread(lambda: c.generate(model="llama3.2", prompt="hello"))
    assert generated.done and generated.response

    embedded = await in_thread(lambda: c.embed(model="all-minilm", input=["a", "b"]))
    assert len(embedded.embeddings) == 2
    legacy = await in_thread(lambda: c.embeddings(model="all-minilm", prompt="a"))
    assert len(legacy.embedding) == len(embedded.embeddings[0])

    listed = await in_thread(c.list)
    assert "llama3.2:latest" in {m.model for m in listed.models}
    running = await in_thread(c.ps)
    assert "llama3.2:latest" in {m.model for m in running.models}
    shown = await in_thread(lambda: c.show("llama3.2"))
    assert shown.details is not None and shown.details.family
    assert shown.capabilities and "completion" in shown.capabilities
    version = await in_thread(lambda: c._request_raw("GET", "/api/version").json())
    assert version == {"version": "0.13.0"}


@pytest_twisted.ensureDeferred
async def test_errors_raise_response_error_with_ollamas_status(
    simulator: RunningSimulator, start_foreman: StartForeman, client: MakeClient
) -> None:
    guarded = await start_foreman(simulator.url, token=TOKEN)

    def unknown_model() -> None:
        client(guarded, TOKEN).chat(model="no-such-model", messages=[])

    def wrong_token() -> None:
        client(guarded, "nope").list()

    def unknown_embedder() -> None:
        client(guarded, TOKEN).embed(model="no-such-embedder", input="x")

    for call, status in [(unknown_model, 404), (wrong_token, 401), (unknown_embedder, 404)]:
        try:
            await in_thread(call)
        except ollama.ResponseError as e:
            assert e.status_code == status, (call.__name__, e)
            assert e.error
        else:
            raise AssertionError(f"{call.__name__} did not raise")


@pytest_twisted.ensureDeferred
async def test_a_stream_that_breaks_raises_in_the_client(
    reactor: Any, start_foreman: StartForeman, client: MakeClient
) -> None:
    upstream, port, url = await listen_scripted(reactor)
    running = await start_foreman(url)
    first_chunk = threading.Event()

    def streamed() -> list[Any]:
        chunks = []
        for chunk in client(running).chat(
            model="scripted", messages=[{"role": "user", "content": "x"}], stream=True
        ):
            chunks.append(chunk)
            first_chunk.set()
        return chunks

    outcome = deferToThread(streamed)
    held = await within(upstream.next_request(), 5, reactor)
    held.start()
    held.send(b'{"model":"scripted","message":{"role":"assistant","content":"a"},"done":false}\n')
    assert await deferToThread(first_chunk.wait, 5)
    held.die()
    try:
        await within(outcome, 10, reactor)
    except ollama.ResponseError as e:
        assert e.status_code == -1  # the client's mark for an error line mid-stream
        assert "Ollama" in e.error
    else:
        raise AssertionError("a broken stream must not look complete")
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_langchain_chat_ollama_invoke(
    simulator: RunningSimulator, start_foreman: StartForeman
) -> None:
    guarded = await start_foreman(simulator.url, token=TOKEN)
    chat = ChatOllama(
        model="llama3.2",
        base_url=guarded.url,
        client_kwargs={"headers": {"Authorization": f"Bearer {TOKEN}"}},
    )
    try:
        message = await in_thread(lambda: chat.invoke("Say something about queues."))
    finally:
        chat._client.close()
    assert isinstance(message.content, str) and message.content
    metadata = message.response_metadata
    assert metadata.get("done_reason") == "stop"
    usage = message.usage_metadata
    assert usage is not None and usage["output_tokens"] > 0

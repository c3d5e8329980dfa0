"""Sync calls placed across a fleet and forwarded between boxes (issue 19), over
real processes: twistd boxes, each with its own simulated Ollama, on a real
PostgreSQL."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.web.http_headers import Headers

from tests.fault_helpers import in_thread, ollama_client, until
from tests.fleet_rig import Box, Fleet
from tests.sdk_helpers import openai_client

pytestmark = pytest.mark.postgres

OLLAMA = ("--load-seconds", "0.3", "--tokens-per-second", "40", "--reply-tokens", "8")


async def knows(fleet: Fleet, at: Box, name: str, token: str | None = None, **wanted: Any) -> bool:
    """Whether ``at``'s queue report shows box ``name`` alive with ``wanted``."""
    headers: dict[bytes | str, bytes | str] = {"Authorization": f"Bearer {token}"} if token else {}
    response = await fleet.http.get(at.url + "/api/foreman/queue", headers=headers)
    report = await response.json()
    for box in report.get("boxes", []):
        if box["name"] == name and box["alive"]:
            models = wanted.get("model")
            if models and not any(m.startswith(models) for m in box["models"]):
                return False
            resident = wanted.get("resident")
            return resident is None or (box["resident"] or "").startswith(resident)
    return False


def stream_chat(url: str, model: str, marker: str) -> tuple[list[float], str]:
    """Stream a chat with the official ``ollama`` client: each chunk's arrival
    time, and the whole reply."""
    client = ollama_client(url)
    try:
        times, text = [], []
        for chunk in client.chat(
            model=model, messages=[{"role": "user", "content": marker}], stream=True
        ):
            times.append(time.monotonic())
            text.append(chunk["message"]["content"])
        return times, "".join(text)
    finally:
        client.close()


def chat_once(url: str, model: str, marker: str) -> str:
    client = ollama_client(url)
    try:
        reply = client.chat(model=model, messages=[{"role": "user", "content": marker}])
        return str(reply["message"]["content"])
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_a_call_for_a_model_only_another_box_has_streams_back_through_this_one(
    fleet: Fleet,
) -> None:
    slow = ("--load-seconds", "0.2", "--tokens-per-second", "20", "--reply-tokens", "20")
    # a lists its Ollama's models once a minute: asked again, it would be per call.
    a = await fleet.start_box("a", *slow, "--models", "llama3.2", extra=("--poll-interval", "60"))
    b = await fleet.start_box("b", *slow, "--models", "qwen3:8b")
    await until(fleet.reactor, lambda: knows(fleet, a, "b", model="qwen3"), "a to know b", 10)
    times, text = await in_thread(lambda: stream_chat(a.url, "qwen3:8b", "far-away"))
    assert "far-away" in text
    assert b.generations("far-away") == 1 and a.generations("far-away") == 0
    # Arriving as it was made: 20 tokens at 20/s spread over about a second.
    assert len(times) > 10 and times[-1] - times[0] > 0.5, times

    # The official OpenAI client, pointed at a, uses b's model too; and a's own.
    def ask(model: str, marker: str) -> str:
        client = openai_client(a.url)
        try:
            answer = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": marker}]
            )
            return answer.choices[0].message.content or ""
        finally:
            client.close()

    listed = a.ollama.requests("GET", "/api/tags")
    assert "openai-far" in await in_thread(lambda: ask("qwen3:8b", "openai-far"))
    assert "openai-near" in await in_thread(lambda: ask("llama3.2", "openai-near"))
    assert b.generations("openai-far") == 1 and a.generations("openai-near") == 1
    # A call the fleet places elsewhere does not first ask a's Ollama for its
    # models (a round trip that was most of what forwarding added).
    assert a.ollama.requests("GET", "/api/tags") == listed


@pytest_twisted.ensureDeferred
async def test_a_call_goes_to_the_idle_box_that_holds_its_model(fleet: Fleet) -> None:
    long = ("--load-seconds", "0.5", "--tokens-per-second", "10", "--reply-tokens", "8")
    a = await fleet.start_box("a", *long)
    b = await fleet.start_box("b", *long)
    # b holds qwen3 (a call of its own), a is busy with a long llama3.2 job.
    await in_thread(lambda: chat_once(b.url, "qwen3:8b", "warm"))
    await until(fleet.reactor, lambda: knows(fleet, a, "b", resident="qwen3"), "b's resident", 10)
    busy = await a.jobs.submitted(
        {
            "model": "llama3.2",
            "messages": [{"role": "user", "content": "busy"}],
            "options": {"num_predict": 60},
        }
    )
    await until(fleet.reactor, lambda: a.generations("busy") == 1, "a to be busy", 10)
    loads_before = await b.loads(fleet.http)
    _, text = await in_thread(lambda: stream_chat(a.url, "qwen3:8b", "to-b"))
    assert "to-b" in text
    assert b.generations("to-b") == 1 and a.generations("to-b") == 0
    assert await b.loads(fleet.http) == loads_before  # no load: b held it
    del busy


@pytest_twisted.ensureDeferred
async def test_a_box_gone_before_the_first_byte_leaves_the_call_to_another(fleet: Fleet) -> None:
    a = await fleet.start_box("a", *OLLAMA, lease="9s")
    b = await fleet.start_box("b", *OLLAMA, lease="9s")
    await in_thread(lambda: chat_once(b.url, "qwen3:8b", "warm"))
    await until(fleet.reactor, lambda: knows(fleet, a, "b", resident="qwen3"), "b's resident", 10)
    b.daemon.process.send_signal(signal.SIGKILL)  # still alive to a: its lease is 9 s
    b.daemon.process.wait(timeout=10)
    _, text = await in_thread(lambda: stream_chat(a.url, "qwen3:8b", "fallback"))
    assert "fallback" in text and a.generations("fallback") == 1


@pytest_twisted.ensureDeferred
async def test_a_caller_hanging_up_at_one_box_stops_the_generation_on_the_other(
    fleet: Fleet,
) -> None:
    slow = ("--load-seconds", "0.1", "--tokens-per-second", "5", "--reply-tokens", "200")
    a = await fleet.start_box("a", *slow, "--models", "llama3.2")
    b = await fleet.start_box("b", *slow, "--models", "qwen3:8b")
    await until(fleet.reactor, lambda: knows(fleet, a, "b", model="qwen3"), "a to know b", 10)

    def hang_up_after_two_chunks() -> float:
        client = ollama_client(a.url)
        stream = client.chat(
            model="qwen3:8b", messages=[{"role": "user", "content": "hang-up"}], stream=True
        )
        for count, _ in enumerate(stream, start=1):
            if count == 2:
                break
        client.close()  # the connection goes
        return time.monotonic()

    left = await in_thread(hang_up_after_two_chunks)
    await until(
        fleet.reactor,
        lambda: [call.ended for call in b.ollama.generations("hang-up")] == ["cut"],
        "b to stop generating",
        5,
    )
    # Within half a second of the hang-up (about 50 ms here: the polling's step).
    assert time.monotonic() - left < 0.5


@pytest_twisted.ensureDeferred
async def test_every_box_shows_the_fleets_models_and_embeds_with_any_boxs_embedder(
    fleet: Fleet,
) -> None:
    a = await fleet.start_box("a", *OLLAMA, "--models", "llama3.2")
    b = await fleet.start_box("b", *OLLAMA, "--models", "qwen3:8b,all-minilm")
    await in_thread(lambda: chat_once(b.url, "qwen3:8b", "resident"))
    await until(fleet.reactor, lambda: knows(fleet, a, "b", resident="qwen3"), "b's resident", 10)

    async def names(path: str) -> set[str]:
        response = await fleet.http.get(a.url + path)
        assert response.code == 200
        return {entry["name"] for entry in (await response.json())["models"]}

    assert await names("/api/tags") == {"llama3.2:latest", "qwen3:8b", "all-minilm:latest"}
    await until(
        fleet.reactor,
        lambda: _holds(fleet, a, "qwen3:8b"),
        "a's /api/ps to show what b holds",
        10,
    )

    def listed() -> set[str]:
        client = openai_client(a.url)
        try:
            return {model.id for model in client.models.list()}
        finally:
            client.close()

    assert await in_thread(listed) == {"llama3.2:latest", "qwen3:8b", "all-minilm:latest"}
    embedded = await fleet.http.post(
        a.url + "/api/embed", json={"model": "all-minilm", "input": "far"}
    )
    assert embedded.code == 200, await embedded.text()
    assert len((await embedded.json())["embeddings"]) == 1
    shown = await fleet.http.post(a.url + "/api/show", json={"model": "qwen3:8b"})
    assert shown.code == 200
    await shown.content()
    nowhere = await fleet.http.post(a.url + "/api/embed", json={"model": "nomic", "input": "x"})
    assert nowhere.code == 404
    await nowhere.content()


async def _holds(fleet: Fleet, at: Box, model: str) -> bool:
    response = await fleet.http.get(at.url + "/api/ps")
    return any(entry["name"] == model for entry in (await response.json())["models"])


@pytest_twisted.ensureDeferred
async def test_boxes_with_a_token_forward_with_the_fleets_secret_not_the_callers(
    fleet: Fleet,
) -> None:
    token_file = fleet.tmp_path / "token"
    token_file.write_text("callers-secret\n")
    guarded = ("--token-file", str(token_file))
    a = await fleet.start_box("a", *OLLAMA, "--models", "llama3.2", extra=guarded)
    b = await fleet.start_box("b", *OLLAMA, "--models", "qwen3:8b", extra=guarded)
    await until(
        fleet.reactor,
        lambda: knows(fleet, a, "b", "callers-secret", model="qwen3"),
        "a to know b",
        10,
    )
    body: dict[str, Any] = {
        "model": "qwen3:8b",
        "messages": [{"role": "user", "content": "guarded"}],
        "stream": False,
    }
    refused = await fleet.http.post(b.url + "/api/chat", json=body)
    assert refused.code == 401  # b is guarded
    await refused.content()
    wrong = await fleet.http.post(
        a.url + "/api/chat", json=body, headers=Headers({b"Authorization": [b"Bearer wrong"]})
    )
    assert wrong.code == 401  # nothing is forwarded for a caller a refuses
    await wrong.content()
    answered = await fleet.http.post(
        a.url + "/api/chat",
        json=body,
        headers=Headers({b"Authorization": [b"Bearer callers-secret"]}),
    )
    assert answered.code == 200, await answered.text()
    assert "guarded" in (await answered.json())["message"]["content"]
    assert b.generations("guarded") == 1

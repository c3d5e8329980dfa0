"""The official SDKs, each with a key of its own (docs/keys.md): ``ollama``,
``openai`` and ``anthropic`` calling foreman over sockets; the 401 and 403 each
raises as its own exception; one key's batches and files are not another's."""

from __future__ import annotations

import io
import json
from typing import Any, Final

import anthropic
import ollama
import openai
import pytest_twisted
from treq.client import HTTPClient

from tests.conftest import RunningSimulator, StartForeman
from tests.fault_helpers import until
from tests.keys_helpers import KEYS, TOKEN, call, make_key
from tests.sdk_helpers import USER, anthropic_client, in_thread, openai_client, raised

CHAT: Final = "/v1/chat/completions"


def request_line(custom_id: str) -> bytes:
    body = {"model": "llama3.2", "messages": USER}
    line = {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}
    return json.dumps(line).encode() + b"\n"


@pytest_twisted.ensureDeferred
async def test_each_sdk_calls_with_its_own_key_and_is_refused_in_its_own_words(
    simulator: RunningSimulator, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running = await start_foreman(simulator.url, token=TOKEN)
    url = running.url
    ollama_key = await make_key(http, url, "ollama-user", "generate", "embed")
    openai_key = await make_key(http, url, "openai-user", "generate")
    anthropic_key = await make_key(http, url, "anthropic-user", "generate")
    embed_only = await make_key(http, url, "embedder", "embed")

    def work() -> dict[str, Any]:
        got: dict[str, Any] = {}
        native = ollama.Client(host=url, headers={"Authorization": f"Bearer {ollama_key}"})
        stranger = ollama.Client(host=url, headers={"Authorization": "Bearer fk-nobody"})
        try:
            got["ollama_chat"] = native.chat(model="llama3.2", messages=USER)
            got["ollama_embed"] = native.embed(model="all-minilm", input=["a"])
            got["ollama_wrong"] = raised(lambda: stranger.chat(model="llama3.2", messages=USER))
        finally:
            native.close()
            stranger.close()
        with openai_client(url, api_key=openai_key) as client:
            got["openai_chat"] = client.chat.completions.create(model="llama3.2", messages=USER)
            got["openai_embed"] = raised(
                lambda: client.embeddings.create(model="all-minilm", input="a")
            )
        with openai_client(url, api_key=embed_only) as client:
            got["openai_no_scope"] = raised(
                lambda: client.chat.completions.create(model="llama3.2", messages=USER)
            )
        with anthropic_client(url, api_key=anthropic_key) as client:
            got["anthropic"] = client.messages.create(
                model="llama3.2", max_tokens=16, messages=USER
            )
        with anthropic_client(url, auth_token=anthropic_key) as client:
            got["anthropic_bearer"] = client.messages.create(
                model="llama3.2", max_tokens=16, messages=USER
            )
        with anthropic_client(url, api_key=embed_only) as client:
            got["anthropic_no_scope"] = raised(
                lambda: client.messages.create(model="llama3.2", max_tokens=16, messages=USER)
            )
        return got

    got = await in_thread(work)
    assert got["ollama_chat"].message.content and len(got["ollama_embed"].embeddings) == 1
    wrong = got["ollama_wrong"]
    assert isinstance(wrong, ollama.ResponseError) and wrong.status_code == 401
    assert got["openai_chat"].choices[0].message.content
    assert isinstance(got["openai_embed"], openai.PermissionDeniedError)
    assert got["openai_embed"].code == "insufficient_permissions"
    assert isinstance(got["openai_no_scope"], openai.PermissionDeniedError)
    assert got["anthropic"].content[0].text and got["anthropic_bearer"].content[0].text
    refused = got["anthropic_no_scope"]
    assert isinstance(refused, anthropic.PermissionDeniedError)
    assert refused.body["error"]["type"] == "permission_error"  # type: ignore[index]

    # Revoked: each SDK's authentication error on its next call.
    for name in ("ollama-user", "openai-user", "anthropic-user"):
        assert (await call(http, url, "DELETE", f"{KEYS}/{name}", TOKEN)).code == 200

    def after() -> dict[str, Any]:
        got: dict[str, Any] = {}
        native = ollama.Client(host=url, headers={"Authorization": f"Bearer {ollama_key}"})
        try:
            got["ollama"] = raised(lambda: native.chat(model="llama3.2", messages=USER))
        finally:
            native.close()
        with openai_client(url, api_key=openai_key) as client:
            got["openai"] = raised(
                lambda: client.chat.completions.create(model="llama3.2", messages=USER)
            )
        with anthropic_client(url, api_key=anthropic_key) as client:
            got["anthropic"] = raised(
                lambda: client.messages.create(model="llama3.2", max_tokens=16, messages=USER)
            )
        return got

    revoked = await in_thread(after)
    assert isinstance(revoked["ollama"], ollama.ResponseError)
    assert revoked["ollama"].status_code == 401
    assert isinstance(revoked["openai"], openai.AuthenticationError)
    assert revoked["openai"].code == "invalid_api_key"
    assert isinstance(revoked["anthropic"], anthropic.AuthenticationError)
    # No key ever reached Ollama.
    for request in simulator.sim.requests:
        assert request.header("authorization") is None and request.header("x-api-key") is None


@pytest_twisted.ensureDeferred
async def test_one_keys_files_and_batches_are_not_anothers(
    simulator: RunningSimulator, start_foreman: StartForeman, http: HTTPClient, reactor: Any
) -> None:
    running = await start_foreman(simulator.url, token=TOKEN)
    url = running.url
    mine = await make_key(http, url, "mine", "jobs")
    theirs = await make_key(http, url, "theirs", "jobs")

    def work() -> dict[str, Any]:
        got: dict[str, Any] = {}
        content = request_line("a") + request_line("b")
        with openai_client(url, api_key=mine) as client:
            made = client.files.create(file=("in.jsonl", io.BytesIO(content)), purpose="batch")
            batch = client.batches.create(
                input_file_id=made.id, endpoint=CHAT, completion_window="24h"
            )
            got["file"], got["batch"] = made, batch
            got["my_files"] = [each.id for each in client.files.list()]
            got["my_batches"] = [each.id for each in client.batches.list()]
        with openai_client(url, api_key=theirs) as client:
            got["their_file"] = raised(lambda: client.files.retrieve(made.id))
            got["their_content"] = raised(lambda: client.files.content(made.id))
            got["their_delete"] = raised(lambda: client.files.delete(made.id))
            got["their_batch"] = raised(lambda: client.batches.retrieve(batch.id))
            got["their_cancel"] = raised(lambda: client.batches.cancel(batch.id))
            got["their_create"] = raised(
                lambda: client.batches.create(
                    input_file_id=made.id, endpoint=CHAT, completion_window="24h"
                )
            )
            got["their_files"] = [each.id for each in client.files.list()]
            got["their_batches"] = [each.id for each in client.batches.list()]
        with openai_client(url, api_key=TOKEN) as client:
            got["all_batches"] = [each.id for each in client.batches.list()]
        return got

    got = await in_thread(work)
    assert got["my_files"] == [got["file"].id] and got["my_batches"] == [got["batch"].id]
    for name in ["file", "content", "delete", "batch", "cancel", "create"]:
        error = got[f"their_{name}"]
        assert isinstance(error, openai.NotFoundError), (name, error)
    assert got["their_files"] == [] and got["their_batches"] == []
    assert got["all_batches"] == [got["batch"].id]
    queue = running.foreman.queue
    assert queue is not None
    batch_id = got["batch"].id
    owners = await queue.store.transact(
        lambda db: db.execute(
            "SELECT DISTINCT caller FROM jobs WHERE batch_id = ?", (batch_id,)
        ).fetchall()
    )
    assert [row[0] for row in owners] == ["mine"]

    # The answers a batch is gathered into are its key's files too.
    finished: list[Any] = []

    async def completed() -> bool:
        with openai_client(url, api_key=mine) as client:
            batch = await in_thread(lambda: client.batches.retrieve(batch_id))
        finished.append(batch)
        return batch.status == "completed"

    await until(reactor, completed, "the batch to complete", 30)
    output = finished[-1].output_file_id
    with openai_client(url, api_key=mine) as client:
        assert (await in_thread(lambda: client.files.retrieve(output))).purpose == "batch_output"
    with openai_client(url, api_key=theirs) as client:
        error = await in_thread(lambda: raised(lambda: client.files.retrieve(output)))
    assert isinstance(error, openai.NotFoundError)

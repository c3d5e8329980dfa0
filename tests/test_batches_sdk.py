"""OpenAI's Batch API on foreman, driven by the official ``openai`` SDK over sockets (issue 20)."""

from __future__ import annotations

import base64
import io
import itertools
import json
import sqlite3
from typing import Any, Final

import openai
import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet.defer import fail

from foreman.jobs.batches import table
from foreman.wire.signature import verify
from tests.conftest import StartForeman, StartSimulator
from tests.fault_helpers import sleep, until
from tests.sdk_helpers import in_thread, openai_client
from tests.webhook_receiver import WebhookReceiver

CHAT: Final = "/v1/chat/completions"


def request_line(custom_id: str, model: str, text: str, url: str = CHAT, **body: Any) -> bytes:
    line = {
        "custom_id": custom_id,
        "method": "POST",
        "url": url,
        "body": {"model": model, "messages": [{"role": "user", "content": text}], **body},
    }
    return json.dumps(line).encode() + b"\n"


def upload(client: openai.OpenAI, content: bytes) -> str:
    made = client.files.create(file=("requests.jsonl", io.BytesIO(content)), purpose="batch")
    assert made.purpose == "batch" and made.bytes == len(content)
    return made.id


def create(client: openai.OpenAI, content: bytes, **more: Any) -> Any:
    file_id = upload(client, content)
    return client.batches.create(
        input_file_id=file_id, endpoint=CHAT, completion_window="24h", **more
    )


async def finished(reactor: Any, client: openai.OpenAI, batch_id: str, seconds: float = 30) -> Any:
    seen: list[Any] = []

    async def ended() -> bool:
        batch = await in_thread(lambda: client.batches.retrieve(batch_id))
        seen.append(batch)
        return batch.status in ("completed", "cancelled", "failed", "expired")

    await until(reactor, ended, f"batch {batch_id} to end", seconds)
    return seen[-1]


def chats(sim: Any) -> list[str]:
    """The models of the chats the simulated Ollama was asked, in order."""
    return [json.loads(r.body)["model"] for r in sim.sim.requests if r.path == CHAT]


def output_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    text = client.files.content(file_id).text
    return [json.loads(line) for line in text.splitlines()]


@pytest_twisted.ensureDeferred
async def test_a_batch_runs_to_completed_and_every_custom_id_has_its_answer(
    reactor: Any, start_simulator: StartSimulator, start_foreman: StartForeman
) -> None:
    sim = await start_simulator(tokens_per_second=200, reply_tokens=4)
    running = await start_foreman(sim.url)
    client = openai_client(running.url)
    models = ("llama3.2", "qwen3:8b", "llama3.2", "qwen3:8b", "llama3.2", "qwen3:8b")
    content = b"".join(
        request_line(f"line-{n}", model, f"question {n}") for n, model in enumerate(models)
    )
    batch = await in_thread(lambda: create(client, content, metadata={"job": "nightly"}))
    assert batch.status == "in_progress" and batch.request_counts.total == 6
    assert batch.metadata == {"job": "nightly"} and batch.endpoint == CHAT
    done = await finished(reactor, client, batch.id)
    assert done.status == "completed" and done.completed_at is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (6, 0)
    assert done.error_file_id is None
    lines = await in_thread(lambda: output_lines(client, done.output_file_id))
    assert sorted(line["custom_id"] for line in lines) == [f"line-{n}" for n in range(6)]
    for line in lines:
        number = line["custom_id"].removeprefix("line-")
        response = line["response"]
        assert response["status_code"] == 200 and line["error"] is None
        assert response["body"]["object"] == "chat.completion"
        assert response["body"]["model"].startswith(models[int(number)].split(":")[0])
    # Lines for one model drained together: two loads, not six.
    asked = chats(sim)
    switches = sum(1 for a, b in itertools.pairwise(asked) if a != b)
    assert switches == 1, asked
    # The batch and its files are listed; the output file is batch_output.
    listed = await in_thread(lambda: client.batches.list(limit=10))
    assert [each.id for each in listed.data] == [batch.id]
    out = await in_thread(lambda: client.files.retrieve(done.output_file_id))
    assert out.purpose == "batch_output"


@pytest_twisted.ensureDeferred
async def test_a_cancelled_batch_keeps_what_finished_and_runs_nothing_more(
    reactor: Any, start_simulator: StartSimulator, start_foreman: StartForeman
) -> None:
    sim = await start_simulator(tokens_per_second=20, reply_tokens=10)
    running = await start_foreman(sim.url)
    client = openai_client(running.url)
    content = b"".join(request_line(f"c-{n}", "llama3.2", f"slow {n}") for n in range(8))
    batch = await in_thread(lambda: create(client, content))

    async def some_done() -> bool:
        got = await in_thread(lambda: client.batches.retrieve(batch.id))
        return got.request_counts is not None and got.request_counts.completed >= 1

    await until(reactor, some_done, "a line to finish", 20)
    cancelling = await in_thread(lambda: client.batches.cancel(batch.id))
    assert cancelling.status in ("cancelling", "cancelled")
    ended = await finished(reactor, client, batch.id)
    assert ended.status == "cancelled" and ended.cancelled_at is not None
    assert ended.request_counts is not None
    completed = ended.request_counts.completed
    assert 1 <= completed < 8
    answers = await in_thread(lambda: output_lines(client, ended.output_file_id))
    not_run = await in_thread(lambda: output_lines(client, ended.error_file_id))
    assert len(answers) == completed
    assert len(answers) + len(not_run) == 8
    assert all(line["error"]["code"] == "batch_cancelled" for line in not_run)
    generated = len(chats(sim))
    await sleep(reactor, 1.0)
    assert len(chats(sim)) == generated
    assert generated == completed


BAD_FILES = [
    (b"{not json\n", "invalid_json_line", 1),
    (
        request_line("a", "llama3.2", "x") + request_line("a", "llama3.2", "y"),
        "duplicate_custom_id",
        2,
    ),
    (
        request_line("a", "llama3.2", "x") + request_line("b", "no-such-model", "y"),
        "model_not_found",
        2,
    ),
    (
        request_line("a", "llama3.2", "x")
        + request_line("b", "llama3.2", "y", url="/v1/completions"),
        "mismatched_endpoint",
        2,
    ),
    (b"\n\n", "empty_file", None),
]


@pytest.mark.parametrize(("content", "code", "line"), BAD_FILES)
@pytest_twisted.ensureDeferred
async def test_a_bad_input_file_is_refused_whole_with_the_sdks_exception(
    start_simulator: StartSimulator,
    start_foreman: StartForeman,
    content: bytes,
    code: str,
    line: int | None,
) -> None:
    sim = await start_simulator()
    running = await start_foreman(sim.url)
    client = openai_client(running.url)
    with pytest.raises(openai.BadRequestError) as refused:
        await in_thread(lambda: create(client, content))
    error = refused.value.body
    assert isinstance(error, dict)
    assert error["code"] == code and error.get("line") == line, error
    # Nothing half-made: no batch, no job.
    assert (await in_thread(lambda: client.batches.list())).data == []
    assert running.foreman.queue is not None
    assert sum((await running.foreman.queue.store.count_by_state()).values()) == 0


@pytest_twisted.ensureDeferred
async def test_files_and_batches_refuse_what_they_cannot_do_in_openais_words(
    start_simulator: StartSimulator, start_foreman: StartForeman
) -> None:
    sim = await start_simulator()
    running = await start_foreman(sim.url)
    client = openai_client(running.url)
    with pytest.raises(openai.NotFoundError):
        await in_thread(lambda: client.batches.retrieve("batch_nope"))
    with pytest.raises(openai.NotFoundError):
        await in_thread(lambda: client.files.retrieve("file-nope"))
    with pytest.raises(openai.NotFoundError):
        await in_thread(
            lambda: client.batches.create(
                input_file_id="file-nope", endpoint=CHAT, completion_window="24h"
            )
        )
    with pytest.raises(openai.BadRequestError):
        await in_thread(
            lambda: client.files.create(file=("x.jsonl", io.BytesIO(b"{}")), purpose="assistants")
        )
    file_id = await in_thread(lambda: upload(client, request_line("a", "llama3.2", "x")))
    with pytest.raises(openai.BadRequestError):
        await in_thread(
            lambda: client.batches.create(
                input_file_id=file_id, endpoint="/v1/moderations", completion_window="24h"
            )
        )
    listed = await in_thread(lambda: client.files.list())
    assert [each.id for each in listed.data] == [file_id]
    deleted = await in_thread(lambda: client.files.delete(file_id))
    assert deleted.deleted is True
    with pytest.raises(openai.NotFoundError):
        await in_thread(lambda: client.files.content(file_id))


@pytest_twisted.ensureDeferred
async def test_a_persons_chat_during_a_batch_goes_before_the_batchs_waiting_lines(
    reactor: Any, start_simulator: StartSimulator, start_foreman: StartForeman
) -> None:
    sim = await start_simulator(tokens_per_second=40, reply_tokens=8)  # 0.2 s a line
    running = await start_foreman(sim.url)
    client = openai_client(running.url)
    content = b"".join(request_line(f"b-{n}", "llama3.2", f"bulk {n}") for n in range(20))
    batch = await in_thread(lambda: create(client, content))

    async def under_way() -> bool:
        got = await in_thread(lambda: client.batches.retrieve(batch.id))
        return got.request_counts is not None and got.request_counts.completed >= 2

    await until(reactor, under_way, "the batch to be under way", 20)
    reply = await in_thread(
        lambda: client.chat.completions.create(
            model="qwen3:8b", messages=[{"role": "user", "content": "a person"}]
        )
    )
    assert "a person" in (reply.choices[0].message.content or "")
    # The person waited for the line running, a load, and their own answer:
    # not for the batch's other lines, nor for its model's drain.
    order = chats(sim)
    person = order.index("qwen3:8b")
    assert person <= 4, order
    done = await finished(reactor, client, batch.id)
    assert done.request_counts is not None and done.request_counts.completed == 20


@pytest_twisted.ensureDeferred
async def test_a_batchs_state_changes_are_signed_webhook_events(
    reactor: Any, start_simulator: StartSimulator, start_foreman: StartForeman
) -> None:
    receiver = WebhookReceiver(reactor)
    receiver.listen()
    try:
        sim = await start_simulator(tokens_per_second=200, reply_tokens=4)
        running = await start_foreman(sim.url, webhook_secret="s3cret")
        client = openai_client(running.url)
        content = b"".join(request_line(f"w-{n}", "llama3.2", f"hook {n}") for n in range(3))
        hook = receiver.url("/batch-hook")
        batch = await in_thread(
            lambda: create(client, content, extra_body={"state_webhook_url": hook})
        )
        second = await receiver.arrived(2)
        first = receiver.received[0]
        events = [json.loads(each.body) for each in (first, second)]
        assert [(e["batch_id"], e["state"]) for e in events] == [
            (batch.id, "in_progress"),
            (batch.id, "completed"),
        ]
        assert events[1]["previous_state"] == "finalizing"
        assert events[1]["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
        assert events[1]["output_file_id"] is not None
        for each in (first, second):
            assert verify("s3cret", each.body, each.headers["x-foreman-signature"])
            assert each.headers["x-foreman-event"] == "batch.state"
    finally:
        await receiver.close()


@pytest_twisted.ensureDeferred
async def test_an_embeddings_batch_runs_beside_the_worker_model_without_unloading_it(
    reactor: Any, start_simulator: StartSimulator, start_foreman: StartForeman
) -> None:
    sim = await start_simulator(tokens_per_second=200, reply_tokens=4)
    running = await start_foreman(sim.url)
    client = openai_client(running.url)
    await in_thread(
        lambda: client.chat.completions.create(
            model="llama3.2", messages=[{"role": "user", "content": "warm"}]
        )
    )
    chat_loads = sim.sim.load_history.count("llama3.2:latest")
    content = b"".join(
        json.dumps(
            {
                "custom_id": f"e{n}",
                "method": "POST",
                "url": "/v1/embeddings",
                "body": {"model": "all-minilm", "input": f"text {n}"},
            }
        ).encode()
        + b"\n"
        for n in range(5)
    )
    file_id = await in_thread(lambda: upload(client, content))
    batch = await in_thread(
        lambda: client.batches.create(
            input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h"
        )
    )
    done = await finished(reactor, client, batch.id)
    assert done.status == "completed"
    lines = await in_thread(lambda: output_lines(client, done.output_file_id))
    assert sorted(line["custom_id"] for line in lines) == [f"e{n}" for n in range(5)]
    for line in lines:
        body = line["response"]["body"]
        assert body["object"] == "list" and len(body["data"][0]["embedding"]) > 0
    # The worker model stayed: a chat after the batch loads nothing.
    await in_thread(
        lambda: client.chat.completions.create(
            model="llama3.2", messages=[{"role": "user", "content": "again"}]
        )
    )
    assert sim.sim.load_history.count("llama3.2:latest") == chat_loads


@pytest_twisted.ensureDeferred
async def test_a_create_the_store_refuses_is_a_503_and_leaves_nothing(
    start_simulator: StartSimulator, start_foreman: StartForeman
) -> None:
    sim = await start_simulator()
    running = await start_foreman(sim.url)
    queue = running.foreman.queue
    assert queue is not None
    client = openai_client(running.url)
    file_id = await in_thread(lambda: upload(client, request_line("a", "llama3.2", "x")))
    store = queue.store
    insert_many = store.insert_many

    def full(*_: Any, **__: Any) -> Any:
        return fail(sqlite3.OperationalError("database or disk is full"))

    store.insert_many = full  # type: ignore[method-assign]
    try:
        with pytest.raises(openai.InternalServerError) as refused:
            await in_thread(
                lambda: client.batches.create(
                    input_file_id=file_id, endpoint=CHAT, completion_window="24h"
                )
            )
        assert refused.value.status_code == 503
        assert refused.value.response.headers.get("retry-after")
    finally:
        store.insert_many = insert_many  # type: ignore[method-assign]
    assert (await in_thread(lambda: client.batches.list())).data == []
    assert queue.worker.scheduler.depth == 0
    # The disk has room again: the same create goes through.
    again = await in_thread(
        lambda: client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    )
    assert again.status == "in_progress"


@pytest_twisted.ensureDeferred
async def test_a_cancel_the_store_refuses_is_a_503_and_puts_the_lines_back(
    reactor: Any,
    start_simulator: StartSimulator,
    start_foreman: StartForeman,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim = await start_simulator(tokens_per_second=5.0, reply_tokens=10_000)  # lines run long
    running = await start_foreman(sim.url)
    queue = running.foreman.queue
    assert queue is not None
    client = openai_client(running.url)
    content = b"".join(request_line(f"x{n}", "llama3.2", f"long {n}") for n in range(4))
    batch = await in_thread(lambda: create(client, content))
    await until(reactor, lambda: queue.worker.current is not None, "a line to run", 10)

    def locked(*_: Any, **__: Any) -> bool:
        raise sqlite3.OperationalError("database is locked")

    with monkeypatch.context() as patched:
        patched.setattr(table, "start_cancel", locked)
        with pytest.raises(openai.InternalServerError) as refused:
            await in_thread(lambda: client.batches.cancel(batch.id))
        assert refused.value.status_code == 503
    # Nothing was cancelled: the three waiting lines are back in the queue.
    assert queue.worker.scheduler.waiting_by_batch() == {batch.id: 3}
    assert (await in_thread(lambda: client.batches.retrieve(batch.id))).status == "in_progress"
    cancelled = await in_thread(lambda: client.batches.cancel(batch.id))
    assert cancelled.status == "cancelling"
    assert queue.worker.scheduler.waiting_by_batch() == {}
    assert queue.worker.current is not None
    await queue.worker.cancel(queue.worker.current.id)  # the running line, to end the test
    ended = await finished(reactor, client, batch.id)
    assert ended.status == "cancelled"


@pytest_twisted.ensureDeferred
async def test_with_a_standard_webhooks_secret_a_batchs_end_is_openais_signed_event(
    reactor: Any, start_simulator: StartSimulator, start_foreman: StartForeman
) -> None:
    secret = "whsec_" + base64.b64encode(b"a standard webhooks key, 32 bytes").decode()
    receiver = WebhookReceiver(reactor)
    receiver.listen()
    try:
        sim = await start_simulator(tokens_per_second=200, reply_tokens=4)
        running = await start_foreman(sim.url, openai_webhook_secret=secret)
        client = openai_client(running.url)
        content = b"".join(request_line(f"s-{n}", "llama3.2", f"std {n}") for n in range(2))
        hook = receiver.url("/openai-hook")
        batch = await in_thread(
            lambda: create(client, content, extra_body={"state_webhook_url": hook})
        )
        received = await receiver.arrived(1)
        # The official SDK checks the signature and parses the event, as a
        # handler of OpenAI's webhooks would.
        event = client.webhooks.unwrap(received.body, received.headers, secret=secret)
        assert event.type == "batch.completed" and event.data.id == batch.id
        with pytest.raises(openai.InvalidWebhookSignatureError):
            client.webhooks.unwrap(received.body + b" ", received.headers, secret=secret)
        # OpenAI has no events for the other states: nothing else was sent.
        await sleep(reactor, 0.5)
        assert len(receiver.received) == 1
    finally:
        await receiver.close()


@pytest_twisted.ensureDeferred
async def test_unknown_paths_methods_and_bad_uploads_are_refused_not_faults(
    start_simulator: StartSimulator, start_foreman: StartForeman, http: HTTPClient
) -> None:
    sim = await start_simulator()
    running = await start_foreman(sim.url)
    # Routing's own answers, as on every foreman path (they were 500s here).
    for method, path, status in [
        ("GET", "/v1/batches/a/b/c", 404),
        ("GET", "/v1/files/x/y/z", 404),
        ("PUT", "/v1/batches", 405),
        ("PATCH", "/v1/files/file-1", 405),
    ]:
        response = await http.request(method, running.url + path)
        await response.content()
        assert response.code == status, (method, path, response.code)
    # Uploads that are not a form with a file: OpenAI's 400, nothing stored.
    form = "multipart/form-data; boundary=b"
    uploads: list[tuple[bytes | str, bytes]] = [
        ("application/json", b"{}"),
        ("multipart/form-data", b"no boundary"),
        (form, b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--b--\r\n'),
        (form, b"--b\r\nno headers at all--b--\r\n"),
    ]
    for content_type, body in uploads:
        headers: dict[bytes | str, bytes | str] = {"Content-Type": content_type}
        response = await http.post(running.url + "/v1/files", data=body, headers=headers)
        document = await response.json()
        assert response.code == 400 and document["error"]["type"] == "invalid_request_error"
    client = openai_client(running.url)
    assert (await in_thread(lambda: client.files.list())).data == []

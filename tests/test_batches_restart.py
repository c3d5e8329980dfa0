"""A batch through ``kill -9``: every line answered exactly once after a restart (issue 20).

A real twistd foreman in front of a simulated Ollama in a process of its own
(:mod:`tests.ollama_process`, which logs every call and how it ended), the
``openai`` SDK as the caller. The kill lands while a line generates.
"""

from __future__ import annotations

import io
import json
import signal
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any, Final

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet.threads import deferToThread

from foreman.queue.schema import DATABASE_NAME
from tests.daemons import spawn, wait_until_up
from tests.fault_helpers import sleep, until
from tests.ollama_process import OllamaProcess
from tests.sdk_helpers import in_thread, openai_client

pytestmark = pytest.mark.slow

LINES = 12
CHAT: Final = "/v1/chat/completions"


def batch_file() -> bytes:
    lines = []
    for n in range(LINES):
        model = "llama3.2" if n % 2 else "qwen3:8b"
        body = {"model": model, "messages": [{"role": "user", "content": f"line-{n:02d}"}]}
        lines.append({"custom_id": f"c{n:02d}", "method": "POST", "url": CHAT, "body": body})
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


@pytest_twisted.ensureDeferred
async def test_kill_9_mid_batch_then_restart_answers_every_line_once(
    reactor: Any, http: HTTPClient, tmp_path: Path
) -> None:
    ollama = OllamaProcess(tmp_path, "--tokens-per-second", "40", "--reply-tokens", "8")
    await ollama.wait_until_up(http, reactor)
    data = tmp_path / "data"
    options = ("--upstream", "ollama", "--ollama-url", ollama.url)
    daemon = spawn(tmp_path, *options, data_dir=data, log_name="first.log")
    try:
        await wait_until_up(daemon, http, reactor)
        client = openai_client(daemon.url)

        def create() -> str:
            made = client.files.create(file=("in.jsonl", io.BytesIO(batch_file())), purpose="batch")
            batch = client.batches.create(
                input_file_id=made.id, endpoint=CHAT, completion_window="24h"
            )
            return batch.id

        batch_id = await in_thread(create)

        def started() -> bool:
            # A third of the lines answered, and the next one generating now.
            calls = ollama.calls(CHAT)
            return len(calls) >= LINES // 3 and calls[-1].ended is None

        await until(reactor, started, "a line to be generating", 30)
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait(timeout=10)
        cut = ollama.calls(CHAT)[-1].asked

        daemon = spawn(tmp_path, *options, data_dir=data, log_name="second.log")
        await wait_until_up(daemon, http, reactor)
        client = openai_client(daemon.url)

        async def completed() -> bool:
            batch = await in_thread(lambda: client.batches.retrieve(batch_id))
            return batch.status == "completed"

        await until(reactor, completed, "the batch to complete after the restart", 60)
        batch = await in_thread(lambda: client.batches.retrieve(batch_id))
        counts, output_file = batch.request_counts, batch.output_file_id
        assert counts is not None and output_file is not None
        assert (counts.total, counts.completed) == (LINES, LINES)
        text = await in_thread(lambda: client.files.content(output_file).text)
        answered = Counter(json.loads(line)["custom_id"] for line in text.splitlines())
        assert answered == Counter(f"c{n:02d}" for n in range(LINES))  # each once
        finished = Counter(call.asked for call in ollama.calls(CHAT) if call.ended == "finished")
        assert finished == Counter(f"line-{n:02d}" for n in range(LINES))  # each once
        runs = Counter(call.asked for call in ollama.calls(CHAT))
        assert runs[cut] == 2 and sum(runs.values()) == LINES + 1  # only the cut one again
    finally:
        if daemon.process.poll() is None:
            daemon.process.terminate()
            daemon.process.wait(timeout=30)
        ollama.stop_all()


@pytest.mark.parametrize("kill_after", [0.6, 1.6, 4.0])
@pytest_twisted.ensureDeferred
async def test_kill_9_during_a_create_leaves_the_whole_batch_or_none(
    reactor: Any, http: HTTPClient, tmp_path: Path, kill_after: float
) -> None:
    # A create of 30,000 lines takes a second or two here: the kill lands while
    # its lines are read, while they are stored, or after (the batch is whole).
    lines = 30_000
    ollama = OllamaProcess(tmp_path, "--tokens-per-second", "1", "--reply-tokens", "1000")
    await ollama.wait_until_up(http, reactor)
    data = tmp_path / "data"
    options = ("--upstream", "ollama", "--ollama-url", ollama.url)
    daemon = spawn(tmp_path, *options, data_dir=data, log_name="first.log")
    try:
        await wait_until_up(daemon, http, reactor)
        client = openai_client(daemon.url)
        content = b"".join(
            json.dumps(
                {
                    "custom_id": f"k{n}",
                    "method": "POST",
                    "url": CHAT,
                    "body": {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}]},
                }
            ).encode()
            + b"\n"
            for n in range(lines)
        )
        made = await in_thread(
            lambda: client.files.create(file=("in.jsonl", io.BytesIO(content)), purpose="batch")
        )
        creating = deferToThread(
            lambda: client.batches.create(
                input_file_id=made.id, endpoint=CHAT, completion_window="24h"
            )
        )
        creating.addErrback(lambda _: None)  # the connection dies with the process
        await sleep(reactor, kill_after)
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait(timeout=10)
        await creating
        # The store as the kill left it, read straight from the file.
        with sqlite3.connect(data / DATABASE_NAME) as db:
            batches = db.execute("SELECT id, total FROM batches").fetchall()
            per_batch = dict(
                db.execute(
                    "SELECT batch_id, COUNT(*) FROM jobs WHERE batch_id IS NOT NULL"
                    " GROUP BY batch_id"
                ).fetchall()
            )
        print(f"killed after {kill_after} s: {batches} {per_batch}")  # which case, with -s
        assert all(per_batch.get(batch_id) == total for batch_id, total in batches), batches
        assert set(per_batch) <= {batch_id for batch_id, _ in batches}, per_batch
        # And a restart serves whichever it is: the batch, whole, or none.
        daemon = spawn(tmp_path, *options, data_dir=data, log_name="second.log")
        await wait_until_up(daemon, http, reactor)
        client = openai_client(daemon.url)
        listed = await in_thread(lambda: client.batches.list())
        assert [b.id for b in listed.data] == [batch_id for batch_id, _ in batches]
        for batch in listed.data:
            assert batch.request_counts is not None and batch.request_counts.total == lines
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait(timeout=30)
        ollama.stop_all()

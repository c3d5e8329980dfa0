"""An Ollama stopped with SIGSTOP mid-stream: the caller's stream ends in words, in time.

The simulated Ollama runs as a process of its own (``python -m
foreman.testing``), so that stopping it stops only it; foreman runs in this
process with a short ``--stall-timeout``. Stopped, the simulator still
holds its sockets open and sends nothing: the fault a wedged or suspended
Ollama shows, and which no connection error ever reports.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet.task import deferLater
from twisted.web.client import ResponseDone

from tests.conftest import StartForeman
from tests.daemons import free_port
from tests.http_helpers import StreamingClient, within

pytestmark = pytest.mark.slow

STALL = 2.0
#: The sweep looks every min(1 s, limit / 4).
TICK = STALL / 4
CHAT = json.dumps(
    {"model": "llama3.2", "messages": [{"role": "user", "content": "tell me a long story"}]}
).encode()


class StoppableOllama:
    """The simulated Ollama in a child process, which the test can stop."""

    def __init__(self, tmp_path: Path) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = tmp_path / "simulated-ollama.log"
        with self.log.open("wb") as output:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "foreman.testing",
                    "--listen",
                    f"tcp:{port}:interface=127.0.0.1",
                    # 400 tokens at 20 a second: a stream of 20 s.
                    "--tokens-per-second",
                    "20",
                    "--reply-tokens",
                    "400",
                ],
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self.stopped = False

    async def wait_until_up(self, http: HTTPClient, reactor: Any) -> None:
        for _ in range(200):
            if self.process.poll() is not None:
                raise AssertionError(f"the simulator exited: {self.log.read_text()}")
            try:
                response = await http.get(self.url + "/api/version")
                await response.content()
                if response.code == 200:
                    return
            except Exception:
                pass
            await deferLater(reactor, 0.05, lambda: None)
        raise AssertionError(f"the simulator did not come up: {self.log.read_text()}")

    def stop(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)
        self.stopped = True

    def resume(self) -> None:
        if self.stopped:
            os.kill(self.process.pid, signal.SIGCONT)
            self.stopped = False

    def kill(self) -> None:
        if self.process.poll() is None:
            self.resume()
            self.process.terminate()
        self.process.wait(timeout=20)


@pytest_twisted.async_yield_fixture
async def ollama(tmp_path: Path) -> AsyncIterator[StoppableOllama]:
    child = StoppableOllama(tmp_path)
    try:
        yield child
    finally:
        # Never leave a stopped child behind, whatever the test did.
        child.kill()


@pytest_twisted.ensureDeferred
async def test_a_stream_from_a_stopped_ollama_ends_with_an_error_line_at_the_limit(
    ollama: StoppableOllama, start_foreman: StartForeman, http: HTTPClient, reactor: Any
) -> None:
    await ollama.wait_until_up(http, reactor)
    running = await start_foreman(ollama.url, stall_timeout=STALL)
    client = StreamingClient(reactor)
    response = await within(client.request(b"POST", running.url + "/api/chat", CHAT), 30, reactor)
    assert response.code == 200
    reader = client.read_lines(response)
    for _ in range(3):
        await within(reader.lines.get(), 10, reactor)
    try:
        ollama.stop()
        stopped_at = time.monotonic()
        await within(reader.ended, STALL + 15, reactor)
        waited = time.monotonic() - stopped_at
    finally:
        ollama.resume()

    lines = reader.json_lines()
    assert reader.end is not None and reader.end.check(ResponseDone)
    assert not any(line.get("done") for line in lines), "a cut stream must not look complete"
    assert set(lines[-1]) == {"error"}
    assert lines[-1]["error"] == (
        f"foreman: Ollama at {ollama.url} sent nothing for 2 s in the middle of its reply; "
        "the call was stopped (limit: --stall-timeout)"
    )
    assert all("message" in line for line in lines[:-1])
    # Lines already on their way when it stopped may arrive a little later.
    assert STALL - 0.2 <= waited <= STALL + TICK + 2.0, waited

    # Resumed, it serves the next call as if nothing happened.
    short = {**json.loads(CHAT), "stream": False, "options": {"num_predict": 4}}
    answer = await within(
        http.post(running.url + "/api/chat", data=json.dumps(short).encode()), 30, reactor
    )
    assert answer.code == 200
    reply = await answer.json()
    assert reply["done"] is True and reply["message"]["content"]

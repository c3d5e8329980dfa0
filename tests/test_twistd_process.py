"""foreman as people run it: a real ``twistd`` process, started and stopped."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet.task import deferLater
from twisted.web.http_headers import Headers

TWISTD = str(Path(sys.executable).with_name("twistd"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("FOREMAN_")}


@attrs.frozen
class Daemon:
    process: subprocess.Popen[bytes]
    url: str
    log: Path


def spawn(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Daemon:
    port = free_port()
    log = tmp_path / "foreman.log"
    command = [TWISTD, "--nodaemon", "--pidfile=", "foreman"]
    command += ["--listen", f"tcp:{port}:interface=127.0.0.1", "--data-dir", str(tmp_path / "d")]
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*command, *args],
            cwd=tmp_path,  # the plugin must be found from any folder
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env or clean_environment(),
        )
    return Daemon(process, f"http://127.0.0.1:{port}", log)


async def wait_until_up(daemon: Daemon, http: HTTPClient, reactor: Any) -> None:
    for _ in range(200):
        if daemon.process.poll() is not None:
            raise AssertionError(f"twistd exited: {daemon.log.read_text()}")
        try:
            response = await http.get(daemon.url + "/healthz")
            await response.content()
            if response.code == 200:
                return
        except Exception:
            pass
        await deferLater(reactor, 0.1, lambda: None)
    raise AssertionError(f"foreman did not come up: {daemon.log.read_text()}")


def stop(daemon: Daemon) -> int:
    if daemon.process.poll() is None:
        daemon.process.send_signal(signal.SIGTERM)
    return daemon.process.wait(timeout=20)


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()


@pytest_twisted.async_yield_fixture
async def simulated_daemon(
    tmp_path: Path, daemons: list[Daemon], http: HTTPClient, reactor: Any
) -> AsyncIterator[Daemon]:
    daemon = spawn(tmp_path, "--upstream", "sim")
    daemons.append(daemon)
    await wait_until_up(daemon, http, reactor)
    yield daemon


@pytest_twisted.ensureDeferred
async def test_twistd_serves_a_streamed_chat_and_stops_cleanly(
    simulated_daemon: Daemon, http: HTTPClient
) -> None:
    response = await http.post(
        simulated_daemon.url + "/api/chat",
        json={"model": "llama3.2", "messages": [{"role": "user", "content": "hello there"}]},
    )
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"application/x-ndjson"]
    lines = [json.loads(line) for line in (await response.text()).splitlines()]
    assert len(lines) > 1
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "stop"
    health = await (await http.get(simulated_daemon.url + "/healthz")).json()
    assert health["upstream"]["simulated"] is True

    assert stop(simulated_daemon) in (0, -signal.SIGTERM)
    log = simulated_daemon.log.read_text()
    assert "SIMULATED Ollama" in log
    assert "POST /api/chat 200 model=llama3.2" in log
    assert "Traceback" not in log


def test_plugin_is_listed_from_any_folder(tmp_path: Path) -> None:
    listing = subprocess.run(
        [TWISTD, "--help"], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert "foreman" in listing.stdout
    options = subprocess.run(
        [TWISTD, "foreman", "--help"], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    for flag in ["--listen", "--ollama-url", "--token-file", "--upstream", "--max-body-size"]:
        assert flag in options.stdout


def test_refuses_to_listen_beyond_loopback_without_a_token(tmp_path: Path) -> None:
    result = subprocess.run(
        [TWISTD, "--nodaemon", "--pidfile=", "foreman", "--listen", "tcp:0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=clean_environment(),
        timeout=30,
    )
    assert result.returncode != 0
    message = [line for line in result.stderr.splitlines() if "refusing" in line]
    assert len(message) == 1, result.stderr
    assert "FOREMAN_TOKEN" in message[0]


@pytest_twisted.ensureDeferred
async def test_json_log_format_and_token(
    tmp_path: Path, daemons: list[Daemon], http: HTTPClient, reactor: Any
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("tok-123\n")
    daemon = spawn(
        tmp_path, "--upstream", "sim", "--log-format", "json", "--token-file", str(token_file)
    )
    daemons.append(daemon)
    await wait_until_up(daemon, http, reactor)
    refused = await http.get(daemon.url + "/api/tags")
    assert refused.code == 401
    bearer = Headers({b"Authorization": [b"Bearer tok-123"]})
    allowed = await http.get(daemon.url + "/api/tags", headers=bearer)
    assert allowed.code == 200
    stop(daemon)
    records = [json.loads(line) for line in daemon.log.read_text().splitlines() if line.strip()]
    access = [r for r in records if r.get("namespace") == "foreman.access"]
    assert {r["status"] for r in access} >= {401, 200}
    assert "tok-123" not in daemon.log.read_text()

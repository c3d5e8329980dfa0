"""Real ``twistd foreman`` processes for tests: start, wait for, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from treq.client import HTTPClient
from twisted.internet.task import deferLater

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


def spawn(
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    data_dir: Path | None = None,
    log_name: str = "foreman.log",
    twistd_args: tuple[str, ...] = (),
    before_exec: Callable[[], object] | None = None,
) -> Daemon:
    """Start ``twistd foreman`` on a free loopback port, logging to ``log_name``."""
    port = free_port()
    log = tmp_path / log_name
    data = data_dir if data_dir is not None else tmp_path / "d"
    command = [TWISTD, "--nodaemon", "--pidfile=", *twistd_args, "foreman"]
    command += ["--listen", f"tcp:{port}:interface=127.0.0.1", "--data-dir", str(data)]
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*command, *args],
            cwd=tmp_path,  # the plugin must be found from any folder
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env or clean_environment(),
            preexec_fn=before_exec,
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

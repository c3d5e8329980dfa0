"""Start the simulated Ollama and foreman as real processes for benchmarks."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for(url: str, process: subprocess.Popen[bytes], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer in {seconds} s")


@contextmanager
def _running(command: list[str], ready_url: str) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` started, once ``ready_url`` answers; terminated on the way out."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FOREMAN_")}
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment
    )
    try:
        _wait_for(ready_url, process)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=20)


@contextmanager
def _process(command: list[str], ready_url: str) -> Iterator[str]:
    with _running(command, ready_url):
        yield ready_url.rsplit("/", 1)[0] if ready_url.endswith("healthz") else ready_url


@contextmanager
def simulated_ollama(*arguments: str, script: Path | None = None) -> Iterator[str]:
    """A simulated Ollama in its own process (``python -m foreman.testing``, or
    ``script``, which takes the same options); yields its base URL."""
    port = free_port()
    program = ["-m", "foreman.testing"] if script is None else [str(script)]
    command = [str(BIN / "python"), *program]
    command += ["--listen", f"tcp:{port}:interface=127.0.0.1", *arguments]
    with _process(command, f"http://127.0.0.1:{port}/api/version"):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def foreman(ollama_url: str, *arguments: str) -> Iterator[str]:
    """foreman under twistd in front of ``ollama_url``; yields its base URL."""
    with foreman_process(ollama_url, *arguments) as running:
        yield running.url


@dataclass(frozen=True)
class RunningForeman:
    """A foreman under twistd: where it answers, its process id, its data directory."""

    url: str
    port: int
    pid: int
    data_dir: Path


@contextmanager
def foreman_process(
    ollama_url: str, *arguments: str, logfile: str | None = None, keep_log: Path | None = None
) -> Iterator[RunningForeman]:
    """foreman under twistd in front of ``ollama_url``, for benchmarks that watch the
    process itself; it logs to ``logfile`` in its (temporary) data directory, if named,
    and that log (with its rotated parts) is copied to ``keep_log`` once it has stopped."""
    port = free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        log_to = "/dev/null" if logfile is None else str(Path(data_dir) / logfile)
        command = [str(BIN / "twistd"), "--nodaemon", "--pidfile=", f"--logfile={log_to}"]
        command += ["foreman", "--ollama-url", ollama_url, "--data-dir", data_dir]
        command += ["--listen", f"tcp:{port}:interface=127.0.0.1", *arguments]
        url = f"http://127.0.0.1:{port}"
        try:
            with _running(command, url + "/healthz") as process:
                yield RunningForeman(url, port, process.pid, Path(data_dir))
        finally:
            if logfile is not None and keep_log is not None:
                for part in Path(data_dir).glob(logfile + "*"):
                    shutil.copy(part, keep_log / part.name)

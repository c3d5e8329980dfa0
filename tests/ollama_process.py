"""A simulated Ollama in a process of its own, for tests over real processes.

It can be killed with SIGKILL and started again on the same port, as
``brew services restart`` or an app update does to Ollama, and it says what
it was asked (:mod:`tests.recording_ollama`): :meth:`OllamaProcess.calls`
reads that back over every run, so a test can count the generations of each
job across a restart.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
from treq.client import HTTPClient
from twisted.internet.task import deferLater

from tests.daemons import free_port

SCRIPT = Path(__file__).with_name("recording_ollama.py")
CALL = re.compile(r"^CALL (\d+) (\S+) (\S+) (\S+)$")
ENDED = re.compile(r"^ENDED (\d+) (\S+) (\S+) (\S+) (finished|cut)$")


@attrs.frozen
class Call:
    """One request the simulator received, in one of its runs."""

    run: int
    path: str
    asked: str
    #: ``finished``, ``cut``, or ``None``: it had not ended when the process died.
    ended: str | None


class OllamaProcess:
    """``tests/recording_ollama.py`` on a fixed loopback port."""

    def __init__(self, tmp_path: Path, *options: str) -> None:
        self._tmp_path = tmp_path
        self._options = options
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.runs: list[tuple[subprocess.Popen[bytes], Path]] = []
        self.start()

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.runs[-1][0]

    @property
    def log(self) -> Path:
        return self.runs[-1][1]

    def start(self) -> None:
        """Start (again) on the same port."""
        log = self._tmp_path / f"ollama-{len(self.runs) + 1}.log"
        command = [sys.executable, str(SCRIPT), "--listen", f"tcp:{self.port}:interface=127.0.0.1"]
        with log.open("wb") as output:
            process = subprocess.Popen(
                [*command, *self._options], stdout=output, stderr=subprocess.STDOUT
            )
        self.runs.append((process, log))

    async def wait_until_up(self, http: HTTPClient, reactor: Any, seconds: float = 20) -> None:
        for _ in range(int(seconds / 0.05)):
            if self.process.poll() is not None:
                raise AssertionError(f"the simulator exited: {self.log.read_text()}")
            if f"LISTENING {self.port}" in self.log.read_text():
                return
            await deferLater(reactor, 0.05, lambda: None)
        raise AssertionError(f"the simulator did not come up: {self.log.read_text()}")

    def kill(self) -> None:
        """SIGKILL: the process dies at once, its connections with it."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=20)

    def stop_all(self) -> None:
        for process, _ in self.runs:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=20)

    def calls(self, path: str | None = None) -> list[Call]:
        """Every POST to ``path`` (any, by default) in every run, in order."""
        found: list[Call] = []
        for run, (_, log) in enumerate(self.runs, start=1):
            numbered: dict[str, Call] = {}
            for line in log.read_text(errors="replace").splitlines():
                if called := CALL.match(line):
                    number, method, called_path, what = called.groups()
                    if method == "POST" and path in (None, called_path):
                        numbered[number] = Call(run, called_path, what, None)
                elif ended := ENDED.match(line):
                    number, *_, how = ended.groups()
                    if number in numbered:
                        numbered[number] = attrs.evolve(numbered[number], ended=how)
            found.extend(numbered.values())
        return found

    def requests(self, method: str, path: str) -> int:
        """How many ``method`` requests for ``path`` it received, over every run."""
        wanted = (method, path)
        return sum(
            1
            for _, log in self.runs
            for line in log.read_text(errors="replace").splitlines()
            if (called := CALL.match(line)) and called.group(2, 3) == wanted
        )

    def generations(self, asked: str) -> list[Call]:
        """The calls that asked ``asked``, in any dialect (foreman's model loads ask nothing)."""
        return [call for call in self.calls() if call.asked == asked]

"""A fleet over real processes: one PostgreSQL, several ``twistd foreman`` boxes,
each in front of its own simulated Ollama (``tests/recording_ollama.py``,
which says what it was asked, so a test can count each job's generations
across the whole fleet)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import attrs
from treq.client import HTTPClient

from tests.daemons import Daemon, spawn, wait_until_up
from tests.jobs_http import JobsClient
from tests.ollama_process import OllamaProcess

LOADS = re.compile(r"^foreman_model_loads_total(?:\{[^}]*\})? ([0-9.e+]+)$", re.MULTILINE)


@attrs.define
class Box:
    name: str
    ollama: OllamaProcess
    daemon: Daemon
    jobs: JobsClient
    directory: Path

    @property
    def url(self) -> str:
        return self.daemon.url

    def generations(self, marker: str) -> int:
        """How many times this box's Ollama was asked to generate ``marker``."""
        return len(self.ollama.generations(marker))

    async def loads(self, http: HTTPClient) -> int:
        response = await http.get(self.url + "/metrics")
        text = (await response.content()).decode()
        return int(sum(float(value) for value in LOADS.findall(text)))


@attrs.define
class Fleet:
    tmp_path: Path
    database: str
    http: HTTPClient
    reactor: Any
    daemons: list[Daemon]
    boxes: list[Box] = attrs.field(factory=list)
    ollamas: list[OllamaProcess] = attrs.field(factory=list)

    async def start_box(
        self,
        name: str,
        *ollama_options: str,
        lease: str = "2s",
        extra: tuple[str, ...] = (),
        wait: bool = True,
    ) -> Box:
        directory = self.tmp_path / name
        directory.mkdir(parents=True, exist_ok=True)
        ollama = OllamaProcess(directory, *ollama_options)
        self.ollamas.append(ollama)
        await ollama.wait_until_up(self.http, self.reactor)
        daemon = self.spawn(name, ollama, lease=lease, extra=extra)
        box = Box(name, ollama, daemon, JobsClient(self.http, daemon.url), directory)
        self.boxes.append(box)
        if wait:
            await wait_until_up(daemon, self.http, self.reactor)
        return box

    def spawn(
        self, name: str, ollama: OllamaProcess, *, lease: str = "2s", extra: tuple[str, ...] = ()
    ) -> Daemon:
        directory = self.tmp_path / name
        runs = len([box for box in self.boxes if box.name == name])
        daemon = spawn(
            directory,
            "--upstream",
            "ollama",
            "--ollama-url",
            ollama.url,
            "--database",
            self.database,
            "--box-name",
            name,
            "--box-lease",
            lease,
            "--drain-timeout",
            "1s",
            *extra,
            log_name=f"foreman-{runs + 1}.log",
        )
        self.daemons.append(daemon)
        return daemon

    def stop_all(self) -> None:
        for ollama in self.ollamas:
            ollama.stop_all()

    def logs(self) -> str:
        return "\n".join(
            f"--- {box.name}\n{box.daemon.log.read_text(errors='replace')[-6000:]}"
            for box in self.boxes
        )

"""Shared fixtures: the reactor, a simulated Ollama on a real socket, foreman in-process,
a real PostgreSQL.

The reactor is imported inside fixtures, never at module level, so that
pytest-twisted can install the reactor it was asked for first.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import pytest_twisted
from hypothesis import settings
from treq.client import HTTPClient
from twisted.internet.defer import maybeDeferred
from twisted.web.client import Agent, HTTPConnectionPool

from foreman.config import Config
from foreman.queue.engines import Engine
from foreman.service import Foreman, build_foreman
from tests.daemons import Daemon
from tests.fleet_rig import Fleet
from tests.http_helpers import StreamingClient
from tests.ollama_process import OllamaProcess
from tests.postgres_server import PostgresServer, find_bindir, missing_reason, required
from tests.scripted_upstream import ScriptedUpstream, listen_scripted
from tests.store_engines import ENGINES, make_engine, rigs_on_each_engine
from tests.webhook_receiver import WebhookReceiver

if TYPE_CHECKING:
    from foreman.testing import SimulatedOllama

# ``make fuzz``: many more examples for the property tests, from a random seed
# (tests/test_fuzz_http.py; ``make test`` runs them few and derandomized).
settings.register_profile("fuzz", max_examples=3000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def reactor() -> Any:
    from twisted.internet import reactor as global_reactor

    return global_reactor


@attrs.frozen
class RunningSimulator:
    sim: SimulatedOllama
    url: str
    port: Any


@attrs.frozen
class RunningForeman:
    foreman: Foreman
    url: str
    port: Any


StartSimulator = Callable[..., Awaitable[RunningSimulator]]
StartForeman = Callable[..., Awaitable[RunningForeman]]


@pytest_twisted.async_yield_fixture
async def start_simulator(reactor: Any) -> AsyncIterator[StartSimulator]:
    """Start simulated Ollamas on 127.0.0.1 with any constructor arguments."""
    ports: list[Any] = []

    from foreman.testing import SimulatedOllama

    async def start(**kwargs: Any) -> RunningSimulator:
        sim = SimulatedOllama(reactor, **kwargs)
        port = reactor.listenTCP(0, sim.site(reactor), interface="127.0.0.1")
        ports.append(port)
        return RunningSimulator(sim, f"http://127.0.0.1:{port.getHost().port}", port)

    yield start
    for port in ports:
        # A test may have stopped it already, to play a target going away.
        await maybeDeferred(port.stopListening)


@pytest_twisted.async_yield_fixture
async def simulator(start_simulator: StartSimulator) -> AsyncIterator[RunningSimulator]:
    yield await start_simulator()


@pytest_twisted.async_yield_fixture
async def start_foreman(reactor: Any, tmp_path: Path) -> AsyncIterator[StartForeman]:
    """Start foreman in-process in front of ``ollama_url``; stopped afterwards."""
    running: list[RunningForeman] = []

    async def start(ollama_url: str, **overrides: Any) -> RunningForeman:
        settings: dict[str, Any] = {
            "ollama_url": ollama_url,
            "listen": "tcp:0:interface=127.0.0.1",
            "data_dir": tmp_path / "data",
            # A test that ends with calls still open should not wait out the
            # daemon's 20 s drain at teardown; drain tests set their own.
            "drain_timeout": 1.0,
        }
        settings.update(overrides)
        foreman = build_foreman(Config(**settings), reactor)
        foreman.root.startService()
        # The poller's first look is under way; let it land so tests start
        # from a known inventory.
        await foreman.inventory.refresh()
        port = reactor.listenTCP(0, foreman.site, interface="127.0.0.1")
        instance = RunningForeman(foreman, f"http://127.0.0.1:{port.getHost().port}", port)
        running.append(instance)
        return instance

    yield start
    for instance in running:
        await instance.port.stopListening()
        await instance.foreman.root.stopService()


@pytest_twisted.async_yield_fixture
async def foreman(
    simulator: RunningSimulator, start_foreman: StartForeman
) -> AsyncIterator[RunningForeman]:
    """foreman in front of a default simulated Ollama."""
    yield await start_foreman(simulator.url)


@attrs.frozen
class ScriptedRig:
    """foreman in front of an upstream the test drives by hand."""

    upstream: ScriptedUpstream
    foreman: RunningForeman
    upstream_url: str
    client: StreamingClient

    def url(self, path: str) -> str:
        return self.foreman.url + path


StartScripted = Callable[..., Awaitable[ScriptedRig]]


@pytest_twisted.async_yield_fixture
async def start_scripted(reactor: Any, start_foreman: StartForeman) -> AsyncIterator[StartScripted]:
    """Start foreman (with any config overrides) in front of a scripted upstream."""
    ports: list[Any] = []

    async def start(**overrides: Any) -> ScriptedRig:
        upstream, port, url = await listen_scripted(reactor)
        ports.append(port)
        running = await start_foreman(url, **overrides)
        return ScriptedRig(upstream, running, url, StreamingClient(reactor))

    yield start
    for port in ports:
        await port.stopListening()


@pytest_twisted.async_yield_fixture
async def rig(start_scripted: StartScripted) -> AsyncIterator[ScriptedRig]:
    yield await start_scripted()


class _DrainingClient(HTTPClient):
    """A treq client that remembers its responses, to drain them at the end.

    A response whose body a test never read keeps its connection busy, and
    a busy connection is not closed with the pool's idle ones.
    """

    def __init__(self, agent: Agent) -> None:
        super().__init__(agent)
        self.responses: list[Any] = []

    def request(self, *args: Any, **kwargs: Any) -> Any:
        requested = super().request(*args, **kwargs)

        def remember(response: Any) -> Any:
            self.responses.append(response)
            return response

        return requested.addCallback(remember)


@pytest_twisted.async_yield_fixture
async def http(reactor: Any) -> AsyncIterator[HTTPClient]:
    """A treq client whose connections are closed when the test ends."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    client = _DrainingClient(Agent(reactor, pool=pool))
    yield client
    for response in client.responses:
        # A body that cannot be read has no connection left to free either.
        with contextlib.suppress(Exception):
            await response.content()
    await pool.closeCachedConnections()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """twistd processes a test started; any still running is killed afterwards."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
        daemon.process.wait(timeout=20)


StartOllama = Callable[..., OllamaProcess]


@pytest.fixture
def start_ollama(tmp_path: Path) -> Iterator[StartOllama]:
    """Start simulated Ollamas in processes of their own (``python -m foreman.testing``'s
    options); every run of each is killed afterwards."""
    started: list[OllamaProcess] = []

    def start(*options: str) -> OllamaProcess:
        ollama = OllamaProcess(tmp_path, *options)
        started.append(ollama)
        return ollama

    yield start
    for ollama in started:
        ollama.stop_all()


@pytest_twisted.async_yield_fixture
async def receiver(reactor: Any) -> AsyncIterator[WebhookReceiver]:
    """A webhook receiver on 127.0.0.1 that answers 200 to everything."""
    receiving = WebhookReceiver(reactor)
    receiving.listen()
    yield receiving
    await receiving.close()


__all__ = ["rigs_on_each_engine"]


@pytest.fixture(params=ENGINES)
def store_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    """Where a test's job store lives: each test that takes it runs on SQLite (a
    file in ``tmp_path``) and on PostgreSQL (a new database, ``postgres_url``)."""
    return make_engine(request, request.param, tmp_path)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL for the whole run, started when a test first asks for it.

    Skipped where the machine has no PostgreSQL binaries, unless
    FOREMAN_REQUIRE_POSTGRES=1 (as .ci/run sets) makes that a failure. A test
    may stop, kill or restart it; ``postgres_url`` and ``new_postgres_database``
    start it again, for the next test, if need be.
    """
    bindir = find_bindir()
    if bindir is None:
        if required():
            pytest.fail(missing_reason(), pytrace=False)
        pytest.skip(missing_reason())
    server = PostgresServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.close()


NewPostgresDatabase = Callable[[], str]


@pytest.fixture
def new_postgres_database(postgres_server: PostgresServer) -> Iterator[NewPostgresDatabase]:
    """Make new, empty databases (test_N) on ``postgres_server``; each a URL, all dropped
    afterwards."""
    made: list[str] = []

    def new() -> str:
        postgres_server.start()  # A test before may have left it stopped or killed.
        url = postgres_server.new_database()
        made.append(url.rsplit("/", 1)[1])
        return url

    yield new
    postgres_server.start()
    for name in made:
        postgres_server.drop_database(name)


@pytest.fixture
def postgres_url(new_postgres_database: NewPostgresDatabase) -> str:
    """The URL of a new, empty database on ``postgres_server``, for this test alone."""
    return new_postgres_database()


@pytest_twisted.async_yield_fixture
async def fleet(
    tmp_path: Path, postgres_url: str, http: HTTPClient, reactor: Any, daemons: list[Daemon]
) -> AsyncIterator[Fleet]:
    made = Fleet(tmp_path, postgres_url, http, reactor, daemons)
    yield made
    for daemon in daemons:
        if daemon.process.poll() is None:
            daemon.process.send_signal(signal.SIGKILL)
            daemon.process.wait(timeout=20)
    made.stop_all()

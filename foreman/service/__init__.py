"""Assemble foreman from its parts into one twistd service."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from typing import Any

import attrs
from treq.client import HTTPClient
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized
from twisted.web.client import HTTPConnectionPool

from foreman.config import (
    Config,
    LogFormat,
    StartupRefused,
    UpstreamMode,
    check_exposure,
    needs_a_credential,
)
from foreman.front.api import ForemanAPI
from foreman.front.forwarding import FleetGeneration
from foreman.front.keys_api import KeysAPI
from foreman.http.auth import OPEN_PATHS, BearerTokenGuard
from foreman.http.cors import OriginPolicy
from foreman.http.site import ForemanSite
from foreman.jobs.api import JobsAPI
from foreman.ops.drain import Drain
from foreman.ops.logging import json_observer
from foreman.ops.metrics import ForemanMetrics
from foreman.ops.open_files import raise_open_files_limit
from foreman.ops.reactor_clock import use_monotonic_clock
from foreman.ops.timeline import Timeline
from foreman.queue.key_book import KeyBook
from foreman.relay.forward import Relay
from foreman.relay.generation import DirectGeneration, GenerationRunner
from foreman.relay.inventory import Inventory
from foreman.relay.upstream import Target, make_agent
from foreman.service.queue import Queue, QueueUnavailable, batches_for, build_queue
from foreman.wire.clocks import WallTime

__all__ = [
    "Foreman",
    "ForemanService",
    "QueueUnavailable",
    "build_foreman",
    "make_service",
    "ollama_answers",
]

log = Logger()

#: How long ``--upstream auto`` waits for an Ollama to answer at start-up.
PROBE_TIMEOUT = 2.0


def ollama_answers(url: str, token: str | None, timeout: float = PROBE_TIMEOUT) -> bool:
    """Blocking probe used once, before the reactor runs.

    Any HTTP answer counts: whatever listens at the configured URL is the
    operator's Ollama, even if it dislikes this particular request.
    """
    probe = urllib.request.Request(url + "/api/tags")
    if token:
        probe.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(probe, timeout=timeout):
            return True
    except urllib.error.HTTPError as answer:
        answer.close()
        return True
    except (OSError, ValueError):
        return False


class _ListeningPortService(Service):
    """Owns a port that was opened before the reactor started."""

    def __init__(self, port: IListeningPort) -> None:
        self._port = port

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        return self._port.stopListening()


class _PoolService(Service):
    def __init__(self, pool: HTTPConnectionPool) -> None:
        self._pool = pool

    def stopService(self) -> Deferred[None]:
        super().stopService()
        closed: Deferred[None] = self._pool.closeCachedConnections()
        return closed


class ForemanService(MultiService):
    """The root service; also installs the chosen log format under twistd.

    A stop drains first (:mod:`foreman.ops.drain`): the doors close (the
    listening ports, :meth:`add_door`), what runs may finish or is cut, and
    only then do foreman's parts stop.
    """

    def __init__(self, log_observer: ILogObserver | None = None) -> None:
        super().__init__()
        self._log_observer = log_observer
        #: The address the simulated Ollama listens on, when one runs.
        self.simulated_url: str | None = None
        #: Where callers come in; closed first on a stop.
        self._doors: list[Service] = []
        self.drain: Drain | None = None
        self._stopped: Deferred[None] | None = None

    def add_door(self, door: Service) -> None:
        self._doors.append(door)
        if self.running:
            door.startService()

    def startService(self) -> None:
        super().startService()
        self._stopped = None
        for door in self._doors:
            door.startService()

    def stopService(self) -> Deferred[None]:
        if self._stopped is None:
            self._stopped = ensureDeferred(self._stop())
        # Each caller gets its own Deferred, fired when the one stop is over.
        stopped: Deferred[None] = Deferred()

        def tell(result: object) -> object:
            stopped.callback(None)
            return result

        self._stopped.addBoth(tell)
        return stopped

    async def _stop(self) -> None:
        for door in self._doors:
            try:
                await maybeDeferred(door.stopService)
            except Exception:
                log.failure("Could not close {door}", door=door)
        if self.drain is not None:
            try:
                await self.drain.run()
            except Exception:
                log.failure("The drain failed; stopping regardless")
        await super().stopService()

    def setServiceParent(self, parent: Any) -> None:
        # twistd starts its log observer after makeService, and takes it from
        # the application when the application offers one.
        if self._log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self._log_observer)
        super().setServiceParent(parent)


def _start_simulator(reactor: Any, root: ForemanService) -> str:
    from foreman.testing import SimulatedOllama

    # Its stamps (a reply's created_at, /api/ps's expires_at) are read by
    # people; its timers run on the reactor, monotonic under twistd.
    simulator = SimulatedOllama(reactor, tokens_per_second=25.0, wall=time.time)
    port = reactor.listenTCP(0, simulator.site(reactor), interface="127.0.0.1")
    _ListeningPortService(port).setServiceParent(root)
    url = f"http://127.0.0.1:{port.getHost().port}"
    root.simulated_url = url
    return url


@attrs.frozen
class Foreman:
    """foreman's parts, wired together but not yet listening."""

    root: ForemanService
    site: ForemanSite
    relay: Relay
    inventory: Inventory
    pool: HTTPConnectionPool
    simulated: bool
    queue: Queue | None
    metrics: ForemanMetrics
    #: The keys callers may present (docs/keys.md); ``None`` without the queue.
    keys: KeyBook | None = None


def build_foreman(config: Config, reactor: Any) -> Foreman:
    """Wire every part of foreman; the caller decides where it listens."""
    if not config.queue:
        check_exposure(config)  # no job store: no keys
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StartupRefused(
            f"foreman: cannot create data directory {config.data_dir}: {e}"
        ) from None

    root = ForemanService(
        json_observer(config.log_file) if config.log_format is LogFormat.JSON else None
    )
    open_files = raise_open_files_limit(select_reactor=_is_select_reactor(reactor))
    base_url, simulated = config.ollama_url, False
    if config.upstream is UpstreamMode.AUTO and not ollama_answers(
        config.ollama_url, config.ollama_token
    ):
        base_url, simulated = _start_simulator(reactor, root), True
        _announce_simulator(config.ollama_url, base_url)
    elif config.upstream is UpstreamMode.SIMULATED:
        base_url, simulated = _start_simulator(reactor, root), True
        _announce_simulator(None, base_url)

    target = Target(base_url, None if simulated else config.ollama_token)
    agent, pool = make_agent(reactor, config.connect_timeout)
    _PoolService(pool).setServiceParent(root)
    relay = Relay(
        agent,
        target,
        clock=reactor,
        load_timeout=config.load_timeout,
        stall_timeout=config.stall_timeout,
    )
    inventory = Inventory(HTTPClient(agent), target, reactor, wall=time.time)
    inventory.poller(config.poll_interval).setServiceParent(root)

    queue: Queue | None = None
    generation: GenerationRunner = DirectGeneration(relay)
    key_book: KeyBook | None = None
    if config.queue:
        queue, queue_services = build_queue(config, reactor, relay, inventory)
        queue_services.setServiceParent(root)
        generation = queue.worker
        key_book = queue.keys
        # Keys count as a credential for a listener beyond loopback.
        check_exposure(config, keys=key_book is not None and key_book.any_keys)
    fleet_secret: str | None = None
    if queue is not None and queue.member is not None:
        # A fleet: a sync call runs on the box where it starts soonest (ADR-0027).
        fleet_secret = queue.store.fleet_secret()
        generation = FleetGeneration(
            queue.worker,
            queue.member.placing,
            agent,
            me=queue.member.identity.id,
            name=queue.member.identity.name,
            secret=fleet_secret,
            relay_options={
                "clock": reactor,
                "load_timeout": config.load_timeout,
                "stall_timeout": config.stall_timeout,
            },
        )

    jobs = JobsAPI(
        inventory,
        reactor,
        worker=queue.worker if queue else None,
        store=queue.store if queue else None,
        inline_limit=config.artifact_inline_limit,
        fleet=queue.member if queue else None,
    )
    metrics = ForemanMetrics()
    metrics.watch(
        inventory=inventory,
        worker=queue.worker if queue else None,
        outbox=queue.outbox if queue else None,
    )
    if queue is not None and queue.member is not None:
        metrics.watch_fleet(queue.member)
    relay.observe(metrics.reply_delivered)
    # The status page's picture of the worker's recent runs.
    timeline = Timeline(queue.worker, WallTime(), fleet=queue.member) if queue else None
    api = ForemanAPI(
        relay,
        inventory,
        generation,
        worker=queue.worker if queue else None,
        store=queue.store if queue else None,
        jobs=jobs,
        simulated=simulated,
        metrics=metrics,
        timeline=timeline,
        fleet=queue.member if queue else None,
        fleet_calls=generation if isinstance(generation, FleetGeneration) else None,
        batches=None if queue is None else batches_for(queue, jobs),
        keys=KeysAPI(
            key_book, usage=None if queue is None or queue.usage is None else queue.usage.totals
        ),
    )
    open_paths = OPEN_PATHS | ({b"/metrics"} if config.metrics_public else set())
    guard = BearerTokenGuard(
        config.token,
        open_paths=frozenset(open_paths),
        fleet=fleet_secret,
        keys=key_book,
        # Beyond loopback without a token, only keys let anyone in: the last
        # one revoked shuts the door rather than opening it.
        open_when_keyless=not needs_a_credential(config),
        refused=None if queue is None or queue.usage is None else queue.usage.refused,
    )
    site = ForemanSite(
        api.resource(guard),
        max_body_size=config.max_body_size,
        metrics=metrics,
        cors=OriginPolicy(config.origins),
        header_timeout=config.header_timeout,
        body_timeout=config.body_timeout,
        idle_timeout=config.idle_timeout,
        max_connections=config.max_connections or open_files.connection_cap(),
        reactor=reactor,
    )
    metrics.watch_connections(site.connections)
    root.drain = Drain(
        site, relay, queue.worker if queue else None, reactor, limit=config.drain_timeout
    )
    log.info(
        "Accepting up to {cap} client connections",
        cap=site.connections.limit,
    )
    return Foreman(
        root=root,
        site=site,
        relay=relay,
        inventory=inventory,
        pool=pool,
        simulated=simulated,
        queue=queue,
        metrics=metrics,
        keys=key_book,
    )


def make_service(config: Config, reactor: Any = None) -> ForemanService:
    """The service twistd runs: foreman listening on ``config.listen``."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
        # Before anything is built: every timer foreman sets keeps its pace
        # when the wall clock is stepped (ADR-0023).
        if use_monotonic_clock(reactor):
            log.info(
                "Timers run on the monotonic clock: a step of the wall clock "
                "(NTP, a manual change) does not move them"
            )
    foreman = build_foreman(config, reactor)
    listening = StreamServerEndpointService(serverFromString(reactor, config.listen), foreman.site)
    foreman.root.add_door(listening)
    log.info(
        "foreman listening on {listen}, relaying to {url}{auth}",
        listen=config.listen,
        url=foreman.relay.target.base_url,
        auth=_credentials_needed(config, foreman.keys),
    )
    return foreman.root


def _credentials_needed(config: Config, keys: KeyBook | None) -> str:
    if config.token:
        return " (the token or a key required)"
    if (keys is not None and keys.any_keys) or needs_a_credential(config):
        return " (a key required)"
    return " (no token required)"


def _is_select_reactor(reactor: Any) -> bool:
    return type(reactor).__name__ == "SelectReactor"


def _announce_simulator(missing_url: str | None, simulator_url: str) -> None:
    why = (
        f"No Ollama answered at {missing_url}, so foreman"
        if missing_url
        else "--upstream sim was given, so foreman"
    )
    bar = "!" * 78
    log.warn(
        "\n{bar}\n!! {why} is relaying to its built-in SIMULATED Ollama at {url}.\n"
        "!! Replies are generated text, not a model's. Start Ollama and restart foreman\n"
        "!! (or pass --upstream ollama) to use the real thing.\n{bar}",
        bar=bar,
        why=why,
        url=simulator_url,
    )

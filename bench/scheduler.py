"""Scheduling: one mixed workload straight at a simulated Ollama and through foreman's queue.

Two measurements, each side by side in one run:

1. **Loads, makespan and latency under a mixed workload.** 48 non-streamed
   ``/api/chat`` calls over three models (``llama3.2``, ``qwen3:8b`` with
   ``think: false``, ``gemma3:12b``) in a seeded random order, sent either
   closed loop (six callers, one call at a time each) or open loop (the
   same calls on a seeded Poisson schedule at ``ARRIVALS_PER_SECOND``, not
   waiting for replies), while ``/api/embed`` calls (``all-minilm``) arrive
   open-loop at a fixed rate for as long as the chats last. The simulated
   Ollama has a scaled-down swap cost: every load takes 1 s (a 5-10 s load
   on a laptop), tokens come at 100/s, replies are 20 tokens and each model
   serves one request at a time. The same workload runs once straight at
   the simulator (Ollama's own FIFO and eviction) and once through foreman
   (queue on, ``--embed-model all-minilm``), each time against a fresh
   simulator with nothing loaded. Each run first loads the embedding model
   (direct: one embed call, as an application starting up would; foreman:
   its own pin at first contact, waited for), then measures embeddings
   alone at the same rate (the "no generation load" baseline), then runs
   the mixed workload. Scenarios (``SCENARIOS``): the design's Mac, where
   generations in progress share one GPU's bandwidth
   (``shared_bandwidth=True``) and only the embedder and one chat model
   fit (``max_loaded_models=2``), closed loop and open loop; and, for
   comparison with earlier figures, every generation at full speed
   whatever else runs, 3 models allowed (Ollama's default), closed loop.

2. **What the queue itself adds.** A small non-streamed chat at
   concurrency 1, the model loaded, an unpaced simulator: foreman with the
   queue against foreman with ``--no-queue``, both in front of the same
   simulator, alternating A, B, A, B, ...

Why the simulator for part 1 runs inside this process: the figure that
matters most is the number of model loads, and Ollama has no counter for
it. Sampling ``/api/ps`` from outside misses a model loaded and evicted
between two samples, cannot tell a reload from a model that stayed, and
adds requests of its own. In this process
``SimulatedOllama`` (on a real port, on the real reactor) counts every load
and unload exactly (``loads``, ``load_history``, ``unloads``), and a fresh
instance per run starts with nothing loaded. foreman still runs under
``twistd`` in its own process, as in production; it is started and stopped
from a thread so that this process's reactor keeps serving it meanwhile.
The cost of sharing: the simulator's work and the load generator's share
one Python process (and, with foreman, the machine's two cores), equally
in both runs. foreman's own swap count is read off the same counters: a
swap is a load of a generation model while another one was resident.

Part 2 uses a simulator in its own process, as ``bench/overhead.py`` does.

Usage: ``python bench/scheduler.py [--quick] [--json FILE] [--seed N]``
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, task, threads
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from bench._processes import foreman, simulated_ollama
from foreman.testing import DEFAULT_MODELS, SimulatedOllama
from foreman.upstream import BytesBodyProducer

CHAT_MODELS = ("llama3.2", "qwen3:8b", "gemma3:12b")
EMBED_MODEL = "all-minilm"
HEADERS = Headers({b"Content-Type": [b"application/json"]})

#: The simulated Ollama of part 1 (see the module docstring).
LOAD_SECONDS = 1.0
TOKENS_PER_SECOND = 100.0
REPLY_TOKENS = 20
NUM_PARALLEL = 1

#: Open-loop chats arrive as a Poisson process at this mean rate. One chat's
#: tokens take 0.2 s (5/s if the model never changed); with a 1 s load every
#: four chats, about 0.45 s (2.2/s): 2.5/s is about the machine's capacity.
ARRIVALS_PER_SECOND = 2.5


@attrs.frozen
class Scenario:
    name: str
    #: How many models the simulated Ollama keeps loaded.
    max_loaded_models: int
    #: Generations in progress share the token rate (one bandwidth-bound GPU).
    shared_bandwidth: bool
    #: "closed": the callers wait for each reply; "open": chats arrive on a schedule.
    arrivals: str


#: Part 1's scenarios. The first two are the design's Mac: one GPU whose
#: bandwidth concurrent generations share, room for the embedder and one chat
#: model. The last is the earlier headline: each model generating at full
#: speed whatever else runs, room for 3 (Ollama's default for one GPU).
SCENARIOS = (
    Scenario("shared bandwidth, room for 2, 6 closed-loop callers", 2, True, "closed"),
    Scenario("shared bandwidth, room for 2, open-loop arrivals", 2, True, "open"),
    Scenario("unshared bandwidth, room for 3, 6 closed-loop callers", 3, False, "closed"),
)

#: No single call may take longer than this; the whole run is bounded by it.
REQUEST_TIMEOUT = 120.0


@attrs.frozen
class Settings:
    callers: int
    chats_per_caller: int
    embeds_per_second: float
    baseline_seconds: float
    overhead_rounds: int
    overhead_calls_per_round: int


FULL = Settings(
    callers=6,
    chats_per_caller=8,
    embeds_per_second=10.0,
    baseline_seconds=6.0,
    overhead_rounds=10,
    overhead_calls_per_round=100,
)
QUICK = Settings(
    callers=6,
    chats_per_caller=3,
    embeds_per_second=10.0,
    baseline_seconds=2.0,
    overhead_rounds=4,
    overhead_calls_per_round=50,
)


# -- HTTP ------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    body: bytes
    started: float
    ended: float
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.ended - self.started


class _Body(Protocol):
    """Collects a response body (``readBody`` warns about the Agent's transport)."""

    def __init__(self) -> None:
        self.done: defer.Deferred[bytes] = defer.Deferred()
        self._parts: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self._parts.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._parts))
        else:
            self.done.errback(reason)


class Client:
    """A persistent-connection HTTP client with a timeout on every call."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 64
        self.agent = Agent(reactor, pool=self.pool)

    def post(self, url: str, document: dict[str, Any]) -> defer.Deferred[Reply]:
        call = defer.ensureDeferred(self._request(b"POST", url, json.dumps(document).encode()))
        call.addTimeout(REQUEST_TIMEOUT, self.reactor)
        return call

    def get(self, url: str) -> defer.Deferred[Reply]:
        call = defer.ensureDeferred(self._request(b"GET", url, None))
        call.addTimeout(REQUEST_TIMEOUT, self.reactor)
        return call

    async def _request(self, method: bytes, url: str, body: bytes | None) -> Reply:
        started = time.perf_counter()
        producer = BytesBodyProducer(body) if body is not None else None
        response: IResponse = await self.agent.request(method, url.encode(), HEADERS, producer)
        body_reader = _Body()
        response.deliverBody(body_reader)
        content = await body_reader.done
        headers = {
            name.decode().lower(): values[-1].decode()
            for name, values in response.headers.getAllRawHeaders()
        }
        return Reply(response.code, content, started, time.perf_counter(), headers)

    async def close(self) -> None:
        await self.pool.closeCachedConnections()


def chat_body(model: str, text: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "stream": False,
    }
    if model.startswith("qwen3"):
        body["think"] = False
    return body


def embed_body(index: int) -> dict[str, Any]:
    return {"model": EMBED_MODEL, "input": f"document number {index} about the sky"}


# -- figures ---------------------------------------------------------------------


def percentile(samples: list[float], fraction: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summary_ms(samples: list[float]) -> dict[str, float]:
    return {
        "count": len(samples),
        "p50_ms": percentile(samples, 0.50) * 1e3,
        "p95_ms": percentile(samples, 0.95) * 1e3,
        "p99_ms": percentile(samples, 0.99) * 1e3,
        "max_ms": max(samples, default=float("nan")) * 1e3,
    }


# -- part 1: the mixed workload -----------------------------------------------------


def workload(settings: Settings, seed: int) -> list[list[str]]:
    """Each caller's models, in order: seeded, identical for both runs."""
    rng = random.Random(seed)
    return [
        [rng.choice(CHAT_MODELS) for _ in range(settings.chats_per_caller)]
        for _ in range(settings.callers)
    ]


def open_schedule(plan: list[list[str]], seed: int) -> list[tuple[float, str]]:
    """The plan's chats (same models, same counts) as seeded Poisson arrivals:
    (seconds after the first, model), identical for both runs."""
    rng = random.Random(seed + 1)
    models = [model for models in plan for model in models]
    rng.shuffle(models)
    schedule, at = [], 0.0
    for model in models:
        schedule.append((at, model))
        at += rng.expovariate(ARRIVALS_PER_SECOND)
    return schedule


class EmbedStream:
    """``/api/embed`` calls at a fixed rate, open loop (not waiting for replies)."""

    def __init__(self, client: Client, url: str, per_second: float) -> None:
        self._client = client
        self._url = url + "/api/embed"
        self._interval = 1.0 / per_second
        self._calls: list[defer.Deferred[None]] = []
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._loop = task.LoopingCall(self._fire)
        self._loop.clock = client.reactor

    def start(self) -> None:
        self._loop.start(self._interval, now=True)

    async def stop(self) -> None:
        """Send no more; wait for every reply still due."""
        if self._loop.running:
            self._loop.stop()
        await defer.gatherResults(self._calls, consumeErrors=True)

    def _fire(self) -> None:
        index = len(self._calls)
        self._calls.append(defer.ensureDeferred(self._one(index)))

    async def _one(self, index: int) -> None:
        try:
            reply = await self._client.post(self._url, embed_body(index))
        except Exception as e:
            self.errors.append(f"embed {index}: {type(e).__name__}: {e}")
            return
        if reply.status != 200:
            self.errors.append(f"embed {index}: {reply.status} {reply.body[:200]!r}")
            return
        self.latencies.append(reply.seconds)


async def sleep(reactor: Any, seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def embeddings_alone(
    client: Client, url: str, settings: Settings, reactor: Any
) -> tuple[list[float], list[str]]:
    stream = EmbedStream(client, url, settings.embeds_per_second)
    stream.start()
    await sleep(reactor, settings.baseline_seconds)
    await stream.stop()
    return stream.latencies, stream.errors


@dataclass
class ChatSample:
    caller: int
    turn: int
    model: str
    status: int
    started: float
    ended: float
    queue_position: str | None
    error: str | None = None


async def one_chat(
    client: Client, chat_url: str, number: int, turn: int, model: str, started: float
) -> ChatSample:
    """One non-streamed chat; its latency counts from ``started`` (when it was due)."""
    text = f"caller {number}, turn {turn}: why is the sky blue?"
    try:
        reply = await client.post(chat_url, chat_body(model, text))
    except Exception as e:
        failure = f"{type(e).__name__}: {e}"
        return ChatSample(number, turn, model, 0, started, time.perf_counter(), None, failure)
    error = None
    if reply.status != 200:
        error = reply.body[:200].decode(errors="replace")
    elif json.loads(reply.body).get("done") is not True:
        error = "reply not done"
    return ChatSample(
        number,
        turn,
        model,
        reply.status,
        started,
        reply.ended,
        reply.headers.get("x-foreman-queue-position"),
        error,
    )


async def closed_loop(client: Client, chat_url: str, plan: list[list[str]]) -> list[ChatSample]:
    """Each caller sends its chats one at a time, each once the last was answered."""

    async def caller(number: int, models: list[str]) -> list[ChatSample]:
        return [
            await one_chat(client, chat_url, number, turn, model, time.perf_counter())
            for turn, model in enumerate(models)
        ]

    per_caller = await defer.gatherResults(
        [defer.ensureDeferred(caller(n, models)) for n, models in enumerate(plan)],
        consumeErrors=True,
    )
    return [sample for samples in per_caller for sample in samples]


async def open_loop(
    client: Client, chat_url: str, schedule: list[tuple[float, str]], reactor: Any
) -> list[ChatSample]:
    """Every chat sent at its time in ``schedule``, whatever is still unanswered."""
    first = time.perf_counter()

    async def send(number: int, offset: float, model: str) -> ChatSample:
        await sleep(reactor, max(0.0, first + offset - time.perf_counter()))
        return await one_chat(client, chat_url, number, 0, model, first + offset)

    calls = [
        defer.ensureDeferred(send(number, offset, model))
        for number, (offset, model) in enumerate(schedule)
    ]
    samples: list[ChatSample] = await defer.gatherResults(calls, consumeErrors=True)
    return samples


async def mixed(
    client: Client,
    url: str,
    settings: Settings,
    chats: Callable[[str], Awaitable[list[ChatSample]]],
) -> tuple[list[ChatSample], EmbedStream]:
    """The chats, with embeddings arriving open-loop for as long as they last."""
    stream = EmbedStream(client, url, settings.embeds_per_second)
    stream.start()
    try:
        samples = await chats(url + "/api/chat")
    finally:
        await stream.stop()
    return samples, stream


def make_simulator(reactor: Any, scenario: Scenario) -> SimulatedOllama:
    models = tuple(attrs.evolve(m, load_seconds=LOAD_SECONDS) for m in DEFAULT_MODELS)
    return SimulatedOllama(
        reactor,
        models=models,
        tokens_per_second=TOKENS_PER_SECOND,
        reply_tokens=REPLY_TOKENS,
        max_loaded_models=scenario.max_loaded_models,
        num_parallel=NUM_PARALLEL,
        shared_bandwidth=scenario.shared_bandwidth,
    )


def _is_embedder(name: str) -> bool:
    return name.split(":")[0] == EMBED_MODEL


def swaps_in(history: list[str]) -> int:
    """Loads of a generation model made while another had been loaded before."""
    generation = [name for name in history if not _is_embedder(name)]
    return max(0, len(generation) - 1)


async def _wait_until(reactor: Any, ready: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {seconds} s waiting for {what}")
        await sleep(reactor, 0.05)


def served_order(sim: SimulatedOllama) -> list[str]:
    """The models of the chats the simulator received, in order (load calls left out)."""
    order = []
    for request in sim.requests:
        if request.path != "/api/chat":
            continue
        document = json.loads(request.body)
        if document.get("messages"):
            order.append(document["model"])
    return order


def changes(order: list[str]) -> int:
    return sum(1 for before, after in itertools.pairwise(order) if before != after)


async def scheduling_run(
    reactor: Any,
    *,
    through_foreman: bool,
    plan: list[list[str]],
    settings: Settings,
    scenario: Scenario,
    seed: int,
) -> dict[str, Any]:
    """One run against a fresh simulator: embeddings alone, then the mixed workload."""
    sim = make_simulator(reactor, scenario)
    port: IListeningPort = await sim.listen("tcp:0:interface=127.0.0.1", reactor)
    address: Any = port.getHost()
    sim_url = f"http://127.0.0.1:{address.port}"
    client = Client(reactor)
    process: AbstractContextManager[str] | None = None
    result: dict[str, Any] = {"path": "foreman" if through_foreman else "direct"}
    try:
        if through_foreman:
            process = foreman(sim_url, "--embed-model", EMBED_MODEL)
            # Started from a thread: _processes waits for /healthz with blocking
            # calls, and this reactor must keep serving the simulator meanwhile.
            url: str = await threads.deferToThread(process.__enter__)
            # foreman loads and pins its embedder at first contact.
            await _wait_until(
                reactor,
                lambda: any(_is_embedder(m) for m in sim.loaded_models()),
                30.0,
                "foreman to load its embedding model",
            )
        else:
            url = sim_url
            warm = await client.post(url + "/api/embed", embed_body(-1))
            if warm.status != 200:
                raise RuntimeError(f"warm-up embed answered {warm.status}: {warm.body!r}")
        result["loads_before_workload"] = list(sim.load_history)

        baseline, baseline_errors = await embeddings_alone(client, url, settings, reactor)
        result["embed_alone"] = summary_ms(baseline)
        result["embed_alone_errors"] = baseline_errors

        loads_before = sim.loads
        if scenario.arrivals == "open":
            schedule = open_schedule(plan, seed)
            result["schedule"] = schedule

            def chats_of(chat_url: str) -> Awaitable[list[ChatSample]]:
                return open_loop(client, chat_url, schedule, reactor)
        else:

            def chats_of(chat_url: str) -> Awaitable[list[ChatSample]]:
                return closed_loop(client, chat_url, plan)

        chats, stream = await mixed(client, url, settings, chats_of)
        ok = [c for c in chats if c.error is None]
        result["makespan_s"] = max(c.ended for c in chats) - min(c.started for c in chats)
        # What the same work costs done one thing at a time: every chat's
        # tokens plus every load. Unshared, the simulator runs generations of
        # different models side by side at full speed each, so the makespan
        # can be shorter; shared, overlapping generations only slow each other.
        result["serial_estimate_s"] = (
            len(chats) * REPLY_TOKENS / TOKENS_PER_SECOND
            + (sim.loads - loads_before) * LOAD_SECONDS
        )
        result["chats"] = summary_ms([c.ended - c.started for c in ok])
        result["per_model"] = {
            model: summary_ms([c.ended - c.started for c in ok if c.model == model])
            for model in CHAT_MODELS
        }
        result["chat_errors"] = [asdict(c) for c in chats if c.error is not None]
        result["embed_under_load"] = summary_ms(stream.latencies)
        result["embed_errors"] = stream.errors
        result["loads"] = sim.loads
        result["loads_during_workload"] = sim.loads - loads_before
        result["generation_loads"] = sum(1 for m in sim.load_history if not _is_embedder(m))
        result["embedder_loads"] = sum(1 for m in sim.load_history if _is_embedder(m))
        result["unloads"] = sim.unloads
        result["load_history"] = list(sim.load_history)
        result["swaps"] = swaps_in(sim.load_history)
        result["served_order"] = served_order(sim)
        result["model_changes_in_served_order"] = changes(result["served_order"])
        result["max_active_generations"] = sim.max_active_generations
        result["completed_generations"] = sim.completed_generations
        result["cancelled_requests"] = sim.cancelled_requests
        if through_foreman:
            result["queue_positions"] = [c.queue_position for c in chats]
            report = await client.get(url + "/api/foreman/queue")
            result["queue_after"] = json.loads(report.body) if report.status == 200 else None
    finally:
        await client.close()
        if process is not None:
            await threads.deferToThread(process.__exit__, None, None, None)
        stopped = port.stopListening()
        if stopped is not None:
            await stopped
        sim.shutdown()
    return result


# -- part 2: what the queue adds ------------------------------------------------------


@dataclass
class Overhead:
    queue: list[float] = field(default_factory=list)
    no_queue: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def queue_overhead(reactor: Any, settings: Settings) -> dict[str, Any]:
    client = Client(reactor)
    figures = Overhead()
    small = chat_body("llama3.2", "hi")

    async def calls(url: str, count: int, into: list[float]) -> None:
        for _ in range(count):
            reply = await client.post(url + "/api/chat", small)
            if reply.status != 200:
                figures.errors.append(f"{url}: {reply.status} {reply.body[:200]!r}")
                continue
            into.append(reply.seconds)

    # These are all separate processes: blocking while they start is harmless.
    with (
        simulated_ollama("--reply-tokens", "8") as sim,
        foreman(sim) as queued,
        foreman(sim, "--no-queue") as direct,
    ):
        try:
            warm: list[float] = []
            await calls(queued, 50, warm)  # loads and pins llama3.2
            await calls(direct, 50, warm)
            for _ in range(settings.overhead_rounds):
                await calls(direct, settings.overhead_calls_per_round, figures.no_queue)
                await calls(queued, settings.overhead_calls_per_round, figures.queue)
        finally:
            await client.close()
    return {
        "no_queue": summary_ms(figures.no_queue),
        "queue": summary_ms(figures.queue),
        "errors": figures.errors,
    }


# -- the run and its report ------------------------------------------------------------


async def run(reactor: Any, settings: Settings, seed: int) -> dict[str, Any]:
    plan = workload(settings, seed)
    started = time.monotonic()
    results: dict[str, Any] = {
        "settings": attrs.asdict(settings),
        "simulator": {
            "load_seconds": LOAD_SECONDS,
            "tokens_per_second": TOKENS_PER_SECOND,
            "reply_tokens": REPLY_TOKENS,
            "num_parallel": NUM_PARALLEL,
            "open_loop_arrivals_per_second": ARRIVALS_PER_SECOND,
        },
        "seed": seed,
        "plan": plan,
        "scenarios": [],
    }
    for scenario in SCENARIOS:
        figures: dict[str, Any] = attrs.asdict(scenario)
        for path, through in (("direct", False), ("foreman", True)):
            figures[path] = await scheduling_run(
                reactor,
                through_foreman=through,
                plan=plan,
                settings=settings,
                scenario=scenario,
                seed=seed,
            )
        results["scenarios"].append(figures)
    results["queue_overhead"] = await queue_overhead(reactor, settings)
    results["wall_seconds"] = time.monotonic() - started
    return results


def _ms(figure: dict[str, float], key: str) -> str:
    return f"{figure[key]:,.0f} ms" if figure[key] >= 100 else f"{figure[key]:.1f} ms"


def _rows(direct: dict[str, Any], through: dict[str, Any]) -> Iterator[tuple[str, str, str, str]]:
    ratio = direct["loads"] / max(1, through["loads"])
    yield (
        "model loads, all",
        str(direct["loads"]),
        str(through["loads"]),
        f"≥ 3x fewer (got {ratio:.1f}x)",
    )
    yield (
        "… of generation models",
        str(direct["generation_loads"]),
        str(through["generation_loads"]),
        "",
    )
    yield "… of all-minilm", str(direct["embedder_loads"]), str(through["embedder_loads"]), ""
    yield "unloads (evictions / explicit)", str(direct["unloads"]), str(through["unloads"]), ""
    yield "swaps of the worker model", "", str(through["swaps"]), ""
    yield (
        "makespan",
        f"{direct['makespan_s']:.2f} s",
        f"{through['makespan_s']:.2f} s",
        "shorter through foreman",
    )
    yield (
        "most generations at once",
        str(direct["max_active_generations"]),
        str(through["max_active_generations"]),
        "",
    )
    yield (
        "work done one thing at a time (chats + loads during the workload)",
        f"{direct['serial_estimate_s']:.2f} s",
        f"{through['serial_estimate_s']:.2f} s",
        "",
    )
    for model in CHAT_MODELS:
        d, f = direct["per_model"][model], through["per_model"][model]
        yield (
            f"{model} p50 / p95 (n={d['count']:.0f})",
            f"{_ms(d, 'p50_ms')} / {_ms(d, 'p95_ms')}",
            f"{_ms(f, 'p50_ms')} / {_ms(f, 'p95_ms')}",
            "",
        )
    d, f = direct["chats"], through["chats"]
    yield (
        "all chats p50 / p95",
        f"{_ms(d, 'p50_ms')} / {_ms(d, 'p95_ms')}",
        f"{_ms(f, 'p50_ms')} / {_ms(f, 'p95_ms')}",
        "",
    )
    d, f = direct["embed_alone"], through["embed_alone"]
    yield (
        "embed p50 / p95, alone",
        f"{_ms(d, 'p50_ms')} / {_ms(d, 'p95_ms')}",
        f"{_ms(f, 'p50_ms')} / {_ms(f, 'p95_ms')}",
        "",
    )
    d, f = direct["embed_under_load"], through["embed_under_load"]
    yield (
        f"embed p50 / p95, under generation load (n={f['count']:.0f})",
        f"{_ms(d, 'p50_ms')} / {_ms(d, 'p95_ms')}",
        f"{_ms(f, 'p50_ms')} / {_ms(f, 'p95_ms')}",
        "foreman: ≈ alone",
    )
    errors = [
        len(r["chat_errors"]) + len(r["embed_errors"]) + len(r["embed_alone_errors"])
        for r in (direct, through)
    ]
    yield "failed calls", str(errors[0]), str(errors[1]), "0"


def report(results: dict[str, Any]) -> str:
    out = []
    for scenario in results["scenarios"]:
        direct, through = scenario["direct"], scenario["foreman"]
        out += [
            f"Mixed workload, {scenario['name']} (--max-loaded-models "
            f"{scenario['max_loaded_models']}"
            f"{', --shared-bandwidth' if scenario['shared_bandwidth'] else ''}):",
            "",
            "| measure | direct | through foreman | target |",
            "|---|---:|---:|---|",
        ]
        out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in _rows(direct, through)]
        out += [
            "",
            f"Load order direct:  {' '.join(direct['load_history'])}",
            f"Load order foreman: {' '.join(through['load_history'])}",
            "Model changes in the order chats were served: "
            f"direct {direct['model_changes_in_served_order']}, "
            f"foreman {through['model_changes_in_served_order']}",
        ]
        for path in (direct, through):
            errors = path["chat_errors"] + path["embed_errors"] + path["embed_alone_errors"]
            out += [f"{path['path']} error: {error}" for error in errors[:5]]
        out.append("")
    overhead = results["queue_overhead"]
    q, n = overhead["queue"], overhead["no_queue"]
    out += [
        f"Queue's own cost, small chat at concurrency 1 (n={q['count']:.0f} each):",
        "",
        "| | p50 | p99 |",
        "|---|---:|---:|",
        f"| foreman --no-queue | {n['p50_ms']:.2f} ms | {n['p99_ms']:.2f} ms |",
        f"| foreman, queue on | {q['p50_ms']:.2f} ms | {q['p99_ms']:.2f} ms |",
        f"| added by the queue (target p50 ≤ 5 ms) | {q['p50_ms'] - n['p50_ms']:.2f} ms "
        f"| {q['p99_ms'] - n['p99_ms']:.2f} ms |",
        "",
        f"Wall time {results['wall_seconds']:.0f} s.",
    ]
    for error in overhead["errors"][:5]:
        out.append(f"queue overhead error: {error}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a shorter run (< 1 minute)")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--seed", type=int, default=2026, help="workload seed (default 2026)")
    arguments = parser.parse_args()
    settings = QUICK if arguments.quick else FULL

    def go(reactor: Any) -> defer.Deferred[None]:
        async def body() -> None:
            results = await run(reactor, settings, arguments.seed)
            print(report(results))
            if arguments.json:
                arguments.json.write_text(json.dumps(results, indent=2))

        return defer.ensureDeferred(body())

    task.react(go)


if __name__ == "__main__":
    main()

"""Agents in closed loops (issue 17): each on its own model, four ways, side by side.

Part of ``bench/scheduler.py`` (``--only agents`` runs just this part; the
tables are printed by ``bench/_agents_report.py``). An agent sends a sync,
non-streamed ``/api/chat``, waits for the whole answer, thinks for a moment
(runs a tool, reads a file) and sends the next, for as long as the scenario
lasts; the calls it started by then are all answered. Each agent calls its
own model. The scenarios are the rows of the issue's table (``SCENARIOS``).

The stand-in is the simulated Ollama holding **one model at a time**
(``max_loaded_models=1``: a request for the loaded model is served at
once, the others wait in one FIFO for a load, and a load evicts the model
before), every load taking the scenario's load time, answers of 20 tokens
at 40 tokens/s (0.5 s). It runs in this process, a fresh one for every run,
so that its loads are counted exactly. The four ways:

- **straight**: the agents call the stand-in directly;
- **today's rule**: foreman with ``--swap-rule fixed`` (always hold
  ``--swap-grace`` for the resident model's next call, no quantum), and the
  scenario's ``--swap-grace`` (default 250 ms);
- **new rule**: foreman's defaults (``--swap-rule learned``,
  ``--swap-quantum 4``, ``--swap-grace`` unset: a model whose callers' return
  is not known yet is held up to a load of it), and the scenario's
  ``--swap-grace`` when it sets one (then that first hold);
- **new rule, loads known**: the same, on a data directory in which an
  earlier foreman has measured one load of every agent's model (a warm-up
  of one call per model, against a stand-in of its own): what foreman knows
  after a first use, as the simulated-time tests assume
  (``tests/test_closed_loops.py``). Only load times are kept across a
  restart; the callers' gaps are learned afresh.

Every other foreman run starts with a fresh data directory, so it knows
nothing of the models' load times nor of its callers: the figures are those
of a new user's first minute. Until it has measured a model's load, foreman
estimates it from the model's size (0.5 s + size / 1.5 GB/s: 1.85 s for
``llama3.2``, 3.98 s for ``qwen3:8b``, 5.93 s for ``gemma3:12b``), but never
longer than the longest load it has measured, while
every load of the stand-in takes the scenario's load time; the quantum a
waiting model gets is four of its loads, estimated or measured.

A call's **wait** is the time from sending it to receiving its whole
answer (a non-streamed answer comes in one piece, so this is also its
first byte); it includes the call's own load, if it needed one, and its
0.5 s answer. **Calls** are those the agents started within the scenario's
length (all answered), and **loads** all the loads the stand-in made for
them; the report also counts the calls answered and the loads begun within
that length.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
from twisted.internet import defer

from bench._simulator import foreman_in_front, listening
from bench._workload import ChatSample, Client, chat_body, one_chat, sleep, summary_ms
from foreman.testing import DEFAULT_MODELS, SimModel, SimulatedOllama
from foreman.wire.model_names import canonical_model_name

#: An answer: 20 tokens at 40 tokens/s, half a second.
TOKENS_PER_SECOND = 40.0
REPLY_TOKENS = 20
ANSWER_SECONDS = REPLY_TOKENS / TOKENS_PER_SECOND
#: The agents' models, one each, in order (those of tests/test_closed_loops.py).
MODELS = ("llama3.2", "gemma3:12b", "qwen3:8b")
#: The agents start this far apart, in order, as agents started by hand are.
START_INTERVAL = 0.01
#: How long foreman may take to read the stand-in's models before the agents start.
INVENTORY_SECONDS = 10.0
#: The fixed rule's hold when ``--swap-grace`` is not set.
DEFAULT_SWAP_GRACE = "250ms"


@attrs.frozen
class Targets:
    """The issue's targets for the new rule (``None``: not set)."""

    #: Each agent's share of the calls, at least.
    min_share: float
    #: Nobody waits longer than this, in seconds.
    max_wait: float
    #: Calls answered, at least this many times straight's.
    calls_over_straight: float
    #: At most one load per this many calls.
    calls_per_load: float | None = None


@attrs.frozen
class Scenario:
    key: str
    agents: int
    #: Seconds an agent thinks between an answer and its next call.
    think: float
    #: Seconds every load takes.
    load: float
    #: How long the agents keep starting calls.
    seconds: float
    #: foreman's ``--swap-grace`` (``None``: unset, foreman's default).
    swap_grace: str | None
    targets: Targets
    #: Whether the issue sets the targets for this row (else they are shown for reference).
    targets_set: bool = True

    @property
    def models(self) -> tuple[str, ...]:
        return MODELS[: self.agents]

    def title(self) -> str:
        grace = f", --swap-grace {self.swap_grace}" if self.swap_grace else ""
        return (
            f"({self.key}) {self.agents} agents, {self.think:g} s between calls, "
            f"{self.load:g} s loads{grace}, {self.seconds:g} s"
        )


#: The issue's three rows, with its targets.
SCENARIOS = (
    Scenario("a", 2, 0.2, 3.0, 45.0, None, Targets(0.30, 20.0, 2.0)),
    Scenario("b", 3, 1.0, 2.0, 45.0, None, Targets(0.20, 30.0, 1.0, 3.0)),
    # The issue sets no targets for this row; (b)'s are shown beside it.
    Scenario("c", 3, 1.0, 2.0, 40.0, "2s", Targets(0.20, 30.0, 1.0, 3.0), targets_set=False),
)
#: ``--quick``: every row for 20 s (the targets are for the full length).
QUICK_SECONDS = 20.0


@attrs.frozen
class Way:
    key: str
    title: str
    #: Whether the calls go through foreman.
    foreman: bool
    #: ``--swap-rule``, through foreman.
    swap_rule: str | None = None
    #: foreman starts knowing every model's load time (measured by a warm-up).
    warm: bool = False

    def arguments(self, scenario: Scenario) -> tuple[str, ...]:
        arguments: tuple[str, ...] = ()
        if self.swap_rule is not None:
            arguments += ("--swap-rule", self.swap_rule)
        if scenario.swap_grace is not None:
            arguments += ("--swap-grace", scenario.swap_grace)
        return arguments


WAYS = (
    Way("straight", "straight", False),
    Way("fixed", "today's rule", True, "fixed"),
    Way("learned", "new rule", True),
    Way("warm", "new rule, loads known", True, warm=True),
)
#: The ways the issue's targets are for.
NEW_RULE = ("learned", "warm")


class StandIn(SimulatedOllama):
    """The simulated Ollama, noting when each load ended (``perf_counter``)."""

    def __init__(self, *arguments: Any, **keywords: Any) -> None:
        super().__init__(*arguments, **keywords)
        self.load_ends: list[float] = []

    def _model_loaded(self, model: SimModel) -> None:
        self.load_ends.append(time.perf_counter())
        super()._model_loaded(model)


def stand_in(reactor: Any, load_seconds: float) -> StandIn:
    """The simulated Ollama holding one model at a time, every load ``load_seconds``."""
    models = tuple(attrs.evolve(m, load_seconds=load_seconds) for m in DEFAULT_MODELS)
    return StandIn(
        reactor,
        models=models,
        tokens_per_second=TOKENS_PER_SECOND,
        reply_tokens=REPLY_TOKENS,
        max_loaded_models=1,
        num_parallel=1,
    )


@asynccontextmanager
async def _target(reactor: Any, way: Way, scenario: Scenario) -> AsyncIterator[tuple[StandIn, str]]:
    """A fresh stand-in, and the URL the agents call (foreman's, or its own)."""
    sim = stand_in(reactor, scenario.load)
    async with listening(reactor, sim) as sim_url:
        if not way.foreman:
            yield sim, sim_url
        elif not way.warm:
            async with foreman_in_front(sim_url, *way.arguments(scenario)) as url:
                yield sim, url
        else:
            with tempfile.TemporaryDirectory() as data_dir:
                await warm_up(reactor, scenario, data_dir)
                arguments = (*way.arguments(scenario), "--data-dir", data_dir)
                async with foreman_in_front(sim_url, *arguments) as url:
                    yield sim, url


async def warm_up(reactor: Any, scenario: Scenario, data_dir: str) -> None:
    """foreman on ``data_dir`` measures one load of each of ``scenario``'s
    models, against a stand-in of its own; it keeps them in its store."""
    sim = stand_in(reactor, scenario.load)
    client = Client(reactor)
    try:
        async with (
            listening(reactor, sim) as sim_url,
            foreman_in_front(sim_url, "--data-dir", data_dir) as url,
        ):
            for model in scenario.models:
                reply = await client.post(url + "/api/chat", chat_body(model, "warm-up"))
                if reply.status != 200:
                    raise RuntimeError(f"warm-up call answered {reply.status}: {reply.body!r}")
    finally:
        await client.close()


async def agent(
    reactor: Any,
    client: Client,
    chat_url: str,
    number: int,
    model: str,
    think: float,
    until: float,
) -> list[ChatSample]:
    """One agent: call, wait for the whole answer, think, call again, while
    ``perf_counter`` is before ``until``."""
    calls: list[ChatSample] = []
    turn = 0
    while time.perf_counter() < until:
        sample = await one_chat(client, chat_url, number, turn, model, time.perf_counter())
        calls.append(sample)
        if sample.error is not None:
            break  # a failed call is reported; the agent stops
        turn += 1
        await sleep(reactor, think)
    return calls


async def agents(
    reactor: Any, client: Client, url: str, scenario: Scenario, seconds: float
) -> tuple[float, list[list[ChatSample]]]:
    """Every agent of ``scenario`` for ``seconds``: when they began, and each one's calls."""
    chat_url = url + "/api/chat"
    began = time.perf_counter()
    until = began + seconds

    async def start(number: int, model: str) -> list[ChatSample]:
        await sleep(reactor, number * START_INTERVAL)
        return await agent(reactor, client, chat_url, number, model, scenario.think, until)

    running = [
        defer.ensureDeferred(start(number, model)) for number, model in enumerate(scenario.models)
    ]
    calls: list[list[ChatSample]] = await defer.gatherResults(running, consumeErrors=True)
    return began, calls


def served_order(sim: SimulatedOllama) -> str:
    """The chats in the order the stand-in received them (through foreman: the
    order they ran), run-length encoded: ``llama3.2 x5, gemma3 x4, …``."""
    runs: list[list[Any]] = []
    for request in sim.requests:
        document = json.loads(request.body) if request.path == "/api/chat" else {}
        if not document.get("messages"):
            continue  # not a chat, or a load call
        model = document["model"].split(":")[0]
        if runs and runs[-1][0] == model:
            runs[-1][1] += 1
        else:
            runs.append([model, 1])
    return ", ".join(model if count == 1 else f"{model} x{count}" for model, count in runs)


def _metric(text: str, name: str, label: str) -> dict[str, float]:
    """The samples of ``name`` in a Prometheus text exposition, by ``label``'s value."""
    found: dict[str, float] = {}
    prefix = f'{name}{{{label}="'
    for line in text.splitlines():
        if line.startswith(prefix):
            value, _, rest = line[len(prefix) :].partition('"')
            found[value] = float(rest.rsplit(" ", 1)[-1])
    return found


async def _models(client: Client, url: str) -> list[dict[str, Any]] | None:
    """What foreman knows of each model: its load time and its callers' gap."""
    queue = await client.get(url + "/api/foreman/queue")
    if queue.status != 200:
        return None
    models: list[dict[str, Any]] | None = json.loads(queue.body).get("models")
    return models


async def _known_models(
    reactor: Any, client: Client, url: str, scenario: Scenario
) -> list[dict[str, Any]] | None:
    """foreman's costs of ``scenario``'s models, once it has read the stand-in's
    models (their sizes make its first estimates): the agents start then."""
    wanted = {canonical_model_name(model) for model in scenario.models}
    deadline = time.monotonic() + INVENTORY_SECONDS
    while True:
        models = await _models(client, url)
        known = {each["model"] for each in models or []}
        if wanted <= known or time.monotonic() > deadline:
            return models
        await sleep(reactor, 0.05)


async def _foreman_figures(client: Client, url: str) -> dict[str, Any]:
    """What foreman says of itself after the run: what it learned, where its time went."""
    figures: dict[str, Any] = {}
    queue = await client.get(url + "/api/foreman/queue")
    if queue.status == 200:
        report = json.loads(queue.body)
        figures["models"] = report.get("models")
        figures["doing"] = report.get("doing")
    metrics = await client.get(url + "/metrics")
    if metrics.status == 200:
        text = metrics.body.decode()
        figures["worker_seconds"] = _metric(text, "foreman_worker_seconds_total", "activity")
        figures["swap_holds"] = _metric(text, "foreman_swap_holds_total", "outcome")
    return figures


def _agent_figures(
    model: str, calls: Sequence[ChatSample], began: float, end: float
) -> dict[str, Any]:
    ok = [c for c in calls if c.error is None]
    waits = [c.ended - c.started for c in calls]
    return {
        "model": model,
        "calls": len(ok),
        "answered_in_time": sum(1 for c in ok if c.ended <= end),
        "longest_wait_s": max(waits, default=float("nan")),
        "waits": summary_ms([c.ended - c.started for c in ok]),
        #: Each call: (sent, answered), seconds after the agents began.
        "timeline": [(round(c.started - began, 3), round(c.ended - began, 3)) for c in calls],
        "errors": [f"turn {c.turn}: {c.error}" for c in calls if c.error is not None],
    }


async def one_run(reactor: Any, way: Way, scenario: Scenario, seconds: float) -> dict[str, Any]:
    """The agents of ``scenario`` one way, against a fresh stand-in."""
    client = Client(reactor)
    async with _target(reactor, way, scenario) as (sim, url):
        try:
            figures: dict[str, Any] = {"foreman": None}
            known = await _known_models(reactor, client, url, scenario) if way.foreman else None
            began, calls = await agents(reactor, client, url, scenario, seconds)
            if way.foreman:
                figures["foreman"] = await _foreman_figures(client, url)
                figures["foreman"]["models_at_start"] = known
        finally:
            await client.close()
        figures["loads"] = sim.loads
        figures["load_history"] = list(sim.load_history)
        load_ends = list(sim.load_ends)
        figures["served_order"] = served_order(sim)
    end = began + seconds
    per_agent = [
        _agent_figures(model, mine, began, end)
        for model, mine in zip(scenario.models, calls, strict=True)
    ]
    #: When each load ended, seconds after the agents began.
    figures["load_ends"] = [round(at - began, 3) for at in load_ends]
    figures["loads_begun_in_time"] = sum(1 for at in load_ends if at - scenario.load <= end)
    total = sum(each["calls"] for each in per_agent)
    for each in per_agent:
        each["share"] = each["calls"] / total if total else 0.0
    every = [c for mine in calls for c in mine]
    figures["agents"] = per_agent
    figures["calls"] = total
    figures["answered_in_time"] = sum(each["answered_in_time"] for each in per_agent)
    figures["last_answer_s"] = max((c.ended for c in every), default=began) - began
    figures["longest_wait_s"] = max(each["longest_wait_s"] for each in per_agent)
    figures["errors"] = [
        f"agent {number} ({each['model']}) {error}"
        for number, each in enumerate(per_agent)
        for error in each["errors"]
    ]
    return figures


def met(scenario: Scenario, figures: dict[str, Any], straight: dict[str, Any]) -> dict[str, bool]:
    """Each of ``scenario``'s targets, for one way's ``figures``."""
    targets = scenario.targets
    checks = {
        "share": min(each["share"] for each in figures["agents"]) >= targets.min_share,
        "wait": figures["longest_wait_s"] <= targets.max_wait,
        "calls": figures["calls"] >= targets.calls_over_straight * straight["calls"],
    }
    if targets.calls_per_load is not None:
        checks["loads"] = figures["loads"] * targets.calls_per_load <= figures["calls"]
    return checks


async def run(reactor: Any, quick: bool) -> dict[str, Any]:
    started = time.monotonic()
    results: dict[str, Any] = {
        "settings": {
            "tokens_per_second": TOKENS_PER_SECOND,
            "reply_tokens": REPLY_TOKENS,
            "answer_seconds": ANSWER_SECONDS,
            "max_loaded_models": 1,
            "start_interval_s": START_INTERVAL,
            "default_swap_grace": DEFAULT_SWAP_GRACE,
            "quick": quick,
            "fresh_data_dir": True,
            "ways": [attrs.asdict(way) for way in WAYS],
        },
        "scenarios": [],
    }
    for scenario in SCENARIOS:
        seconds = QUICK_SECONDS if quick else scenario.seconds
        figures: dict[str, Any] = {
            **attrs.asdict(scenario),
            "models": list(scenario.models),
            "ran_seconds": seconds,
        }
        for way in WAYS:
            figures[way.key] = await one_run(reactor, way, scenario, seconds)
        figures["met"] = {
            way.key: met(scenario, figures[way.key], figures["straight"]) for way in WAYS
        }
        results["scenarios"].append(figures)
    results["wall_seconds"] = time.monotonic() - started
    return results

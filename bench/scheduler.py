"""Scheduling: one mixed workload straight at a simulated Ollama and through foreman's queue.

Three measurements, each side by side in one run:

1. **Loads, makespan and latency under a mixed workload.** 48 non-streamed
   ``/api/chat`` calls over three chat models in a seeded random order, sent
   either closed loop (six callers, one call at a time each) or open loop
   (the same calls on a seeded Poisson schedule, not waiting for replies),
   while ``/api/embed`` calls (``all-minilm``) arrive open-loop at a fixed
   rate for as long as the chats last. The simulated Ollama makes a swap
   expensive at a smaller scale: every load takes 1 s (5-10 s on a laptop),
   tokens come at 100/s, replies are 20 tokens and each model serves one
   request at a time. The same workload runs once straight at the simulator
   (Ollama's own FIFO and eviction) and once through foreman (queue on,
   ``--embed-model all-minilm``), each time against a fresh simulator with
   nothing loaded. Each run first loads the embedding model (direct: one
   embed call, as an application starting up would; foreman: its own pin at
   first contact, waited for), then measures embeddings alone at the same
   rate (the "no generation load" baseline), then runs the mixed workload.
   Scenarios: see ``SCENARIOS``.

2. **What the queue itself adds.** A small non-streamed chat at
   concurrency 1, the model loaded, an unpaced simulator: foreman with the
   queue against foreman with ``--no-queue``, both in front of the same
   simulator, alternating A, B, A, B, ...

Why the simulator for part 1 runs inside this process: the figure that
matters most is the number of model loads, and Ollama has no counter for
it. Sampling ``/api/ps`` from outside misses a model loaded and evicted
between two samples, cannot tell a reload from a model that stayed, and
adds requests of its own. In this process ``SimulatedOllama`` (on a real
port, on the real reactor) counts every load and unload exactly, and a
fresh instance per run starts with nothing loaded. foreman still runs under
``twistd`` in its own process, as in production; it is started and stopped
from a thread so that this process's reactor keeps serving it meanwhile.

Part 2 uses a simulator in its own process, as ``bench/overhead.py`` does.

3. **Scheduling classes** (``bench/scheduler_classes.py``): three callers
   looping on one model and one more caller for another, and a batch of
   ``/jobs`` with people's calls arriving meanwhile (busy: a person every 2 s
   on average; calm: every 8 s); each straight at the simulator (Ollama's
   FIFO), through foreman with today's rule (one class, drain by model, no
   bound) and through foreman with the classes, its ``--max-wait`` scaled
   down to 5 s (default 60 s) and ``--batch-max-wait`` to 60 s (default
   30 min).

4. **Agents in closed loops** (``bench/_agents.py``, issue 17): two or three
   agents, each on its own model, each sending a sync ``/api/chat``, waiting
   for the whole answer, thinking a moment and sending the next, for 40-45 s;
   straight at a stand-in holding one model at a time (the simulator with
   ``max_loaded_models=1``), through foreman with today's rule
   (``--swap-rule fixed``), and through foreman with the new one (rent or
   buy and the quantum, its defaults) on a fresh data directory and on one
   that knows the models' load times; calls served, loads, each agent's
   share and longest wait, against the issue's targets.

5. **Keys served in turn** (``bench/_keys.py``, issue 21): two keys (100
   jobs over two models, then 10 on a third) and three keys (200 / 30 / 5,
   a model each), each batch a list sent to ``POST /jobs`` a second after
   the last, with a person's sync chat every few seconds; FIFO (straight at
   the simulator, one sequential sender in submission order), through
   foreman with every batch under the admin token (today's rule: one
   caller) and with a key per batch (keys in turn); each key's completion
   and median job wait, the person's wait, loads, makespan, worker
   utilisation.

Usage: ``python bench/scheduler.py [--quick] [--json FILE] [--seed N]
[--only mixed|overhead|classes|agents|keys ...]``
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Awaitable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import threads
from twisted.internet.interfaces import IListeningPort

from bench import _agents as agents
from bench import _keys as keys
from bench import scheduler_classes as classes
from bench._agents_report import report as agents_report
from bench._classes_report import report as classes_report
from bench._common import main as bench_main
from bench._keys_report import report as keys_report
from bench._processes import foreman, simulated_ollama
from bench._simulator import (
    BIG_MODELS,
    LOAD_SECONDS,
    MAC_GPU_MEMORY,
    NUM_PARALLEL,
    REPLY_TOKENS,
    SWAP_GRACE,
    TOKENS_PER_SECOND,
    make_simulator,
    wait_until,
)
from bench._workload import (
    ARRIVALS_PER_SECOND,
    EMBED_MODEL,
    FULL,
    QUICK,
    ChatSample,
    Client,
    Settings,
    chat_body,
    closed_loop,
    embed_body,
    embeddings_alone,
    mixed,
    open_loop,
    open_schedule,
    summary_ms,
    workload,
)
from foreman.testing import SimulatedOllama

SMALL_MODELS = ("llama3.2", "qwen3:8b", "gemma3:12b")


@attrs.frozen
class Scenario:
    name: str
    #: The chat models of the workload (all installed in the simulator).
    chat_models: tuple[str, ...]
    #: How many models the simulated Ollama keeps loaded.
    max_loaded_models: int
    #: GPU memory the loaded models share (``None``: only the count limits).
    memory_bytes: int | None
    #: Generations in progress share the token rate (one bandwidth-bound GPU).
    shared_bandwidth: bool
    #: "closed": the callers wait for each reply; "open": chats arrive on a schedule.
    arrivals: str


#: Part 1's scenarios. The first two are the design's Mac: one GPU whose
#: bandwidth concurrent generations share, three big models of which only one
#: fits beside the embedder. The last is the opposite case, where foreman's
#: one-worker-model rule costs more than it saves: three small models that
#: Ollama may keep side by side (its default of 3 loaded models per GPU),
#: each generating at full speed whatever else runs.
SCENARIOS = (
    Scenario(
        "the design's Mac (32 GB, big models), 6 closed-loop callers",
        tuple(m.name for m in BIG_MODELS),
        3,
        MAC_GPU_MEMORY,
        True,
        "closed",
    ),
    Scenario(
        "the design's Mac (32 GB, big models), open-loop arrivals",
        tuple(m.name for m in BIG_MODELS),
        3,
        MAC_GPU_MEMORY,
        True,
        "open",
    ),
    Scenario(
        "small models that fit together (room for 3), unshared, 6 closed-loop callers",
        SMALL_MODELS,
        3,
        None,
        False,
        "closed",
    ),
)


def _is_embedder(name: str) -> bool:
    return name.split(":")[0] == EMBED_MODEL


def swaps_in(history: list[str]) -> int:
    """Loads of a generation model made while another had been loaded before."""
    generation = [name for name in history if not _is_embedder(name)]
    return max(0, len(generation) - 1)


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
    sim = make_simulator(
        reactor,
        max_loaded_models=scenario.max_loaded_models,
        memory_bytes=scenario.memory_bytes,
        shared_bandwidth=scenario.shared_bandwidth,
    )
    port: IListeningPort = await sim.listen("tcp:0:interface=127.0.0.1", reactor)
    address: Any = port.getHost()
    sim_url = f"http://127.0.0.1:{address.port}"
    client = Client(reactor)
    process: AbstractContextManager[str] | None = None
    result: dict[str, Any] = {"path": "foreman" if through_foreman else "direct"}
    try:
        if through_foreman:
            process = foreman(sim_url, "--embed-model", EMBED_MODEL, "--swap-grace", SWAP_GRACE)
            # Started from a thread: _processes waits for /healthz with blocking
            # calls, and this reactor must keep serving the simulator meanwhile.
            url: str = await threads.deferToThread(process.__enter__)
            # foreman loads and pins its embedder at first contact.
            await wait_until(
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
            for model in scenario.chat_models
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


#: The parts of the run, in order; ``--only`` picks some.
PARTS = ("mixed", "overhead", "classes", "agents", "keys")


async def run(
    reactor: Any, settings: Settings, seed: int, quick: bool, parts: tuple[str, ...] = PARTS
) -> dict[str, Any]:
    started = time.monotonic()
    results: dict[str, Any] = {
        "settings": attrs.asdict(settings),
        "simulator": {
            "load_seconds": LOAD_SECONDS,
            "tokens_per_second": TOKENS_PER_SECOND,
            "reply_tokens": REPLY_TOKENS,
            "num_parallel": NUM_PARALLEL,
            "foreman_swap_grace": SWAP_GRACE,
            "open_loop_arrivals_per_second": ARRIVALS_PER_SECOND,
        },
        "seed": seed,
        "scenarios": [],
    }
    for scenario in SCENARIOS if "mixed" in parts else ():
        figures: dict[str, Any] = attrs.asdict(scenario)
        # The same draw for every scenario, over that scenario's models.
        plan = workload(settings, seed, scenario.chat_models)
        figures["plan"] = plan
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
    if "overhead" in parts:
        results["queue_overhead"] = await queue_overhead(reactor, settings)
    if "classes" in parts:
        class_settings = classes.QUICK_CLASSES if quick else classes.FULL_CLASSES
        results["classes"] = await classes.run(reactor, class_settings, seed)
    if "agents" in parts:
        results["agents"] = await agents.run(reactor, quick)
    if "keys" in parts:
        results["keys"] = await keys.run(reactor, quick, seed)
    results["wall_seconds"] = time.monotonic() - started
    return results


def _ms(figure: dict[str, float], key: str) -> str:
    return f"{figure[key]:,.0f} ms" if figure[key] >= 100 else f"{figure[key]:.1f} ms"


def _rows(
    direct: dict[str, Any], through: dict[str, Any], chat_models: list[str]
) -> Iterator[tuple[str, str, str, str]]:
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
    for model in chat_models:
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
            + (f", --memory {scenario['memory_bytes']}" if scenario["memory_bytes"] else "")
            + f"{', --shared-bandwidth' if scenario['shared_bandwidth'] else ''}):",
            "",
            "| measure | direct | through foreman | target |",
            "|---|---:|---:|---|",
        ]
        out += [
            f"| {a} | {b} | {c} | {d} |"
            for a, b, c, d in _rows(direct, through, scenario["chat_models"])
        ]
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
    if "queue_overhead" in results:
        out += _overhead_report(results["queue_overhead"])
    if "classes" in results:
        out += [classes_report(results["classes"]), ""]
    if "agents" in results:
        out += [agents_report(results["agents"]), ""]
    if "keys" in results:
        out += [keys_report(results["keys"]), ""]
    out.append(f"Wall time {results['wall_seconds']:.0f} s.")
    return "\n".join(out)


def _overhead_report(overhead: dict[str, Any]) -> list[str]:
    q, n = overhead["queue"], overhead["no_queue"]
    out = [
        f"Queue's own cost, small chat at concurrency 1 (n={q['count']:.0f} each):",
        "",
        "| | p50 | p99 |",
        "|---|---:|---:|",
        f"| foreman --no-queue | {n['p50_ms']:.2f} ms | {n['p99_ms']:.2f} ms |",
        f"| foreman, queue on | {q['p50_ms']:.2f} ms | {q['p99_ms']:.2f} ms |",
        f"| added by the queue (target p50 ≤ 5 ms) | {q['p50_ms'] - n['p50_ms']:.2f} ms "
        f"| {q['p99_ms'] - n['p99_ms']:.2f} ms |",
        "",
    ]
    out += [f"queue overhead error: {error}" for error in overhead["errors"][:5]]
    return out


def main() -> None:
    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--seed", type=int, default=2026, help="workload seed (default 2026)")
        parser.add_argument(
            "--only", nargs="+", choices=PARTS, default=PARTS, help="run only these parts"
        )

    bench_main(
        __doc__.splitlines()[0],
        "a shorter run (about 2 minutes)",
        lambda reactor, arguments: run(
            reactor,
            QUICK if arguments.quick else FULL,
            arguments.seed,
            arguments.quick,
            tuple(arguments.only),
        ),
        report,
        options,
    )


if __name__ == "__main__":
    main()

"""A fleet, part 2 (issue 19): one address for every client.

Part of ``bench/fleet.py`` (``--only agents`` runs just this part). Every box
is a foreman under ``twistd`` in front of its own simulated Ollama process
(``bench/_fleet_ollama.py``), the boxes of a fleet on a fresh database of the
benchmark's PostgreSQL. Measured:

1. **Agents in closed loops** on four models, one agent per model: a sync,
   non-streamed ``/api/chat``, wait for the whole answer, think 0.5 s, the
   next, for 40 s (the calls started by then are all answered). Every box's
   Ollama has all four models, one loaded at a time, loads of 1 to 2 s
   (``llama3.2`` 1 s, ``gemma3:12b`` 1.33 s, ``mistral-small3.2:24b`` 1.67 s,
   ``gemma3:27b`` 2 s), answers of 20 tokens at 40 tokens/s (0.5 s). Two ways:

   - **fleet of two, one address**: two boxes on PostgreSQL, every agent
     calling the first box; placement puts each call on the box where it
     starts soonest, and the first box relays it there;
   - **two boxes used separately**: two foremans on SQLite (no fleet), each
     in front of its own Ollama (the same as the fleet's), each agent pinned
     to one of them: the first two models' agents at the first, the other
     two's at the second (what a user with two boxes would do by hand).

   Calls answered, loads (each box's ``foreman_model_loads_total``, summed;
   the simulators' count beside it), each agent's longest wait (send to the
   whole answer), and how many calls each box ran (``X-Foreman-Box`` on the
   answer in the fleet; the pinned box otherwise).

2. **The added time to first token of a forwarded call**: a fleet of two,
   box A's Ollama with ``llama3.2`` only, box B's with ``gemma3:12b`` only,
   loaded (a warm-up call), both idle; streamed ``/api/chat`` for
   ``gemma3:12b`` at A (placed on B, relayed) and the same at B (local), in
   turn, one at a time, 50 of each; the time from sending the call to
   receiving the first NDJSON line. The Ollamas answer as fast as they are
   read (no token pacing), so the time is foreman's and the network's.

Target (issue 19): the added time to first token at p50 at most 3 ms on loopback.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

from bench._common import percentile
from bench._fleet_ollama import MODEL_NAMES
from bench._postgres import Postgres
from bench._processes import foreman_process, simulated_ollama
from bench._workload import HEADERS, Client, chat_body, sleep, summary_ms
from bench.fleet import FULL as BATCH
from bench.fleet import LOADS as LOADS_METRIC
from bench.fleet import fleet, until_fleet_ready
from foreman.relay.upstream import BytesBodyProducer
from foreman.wire.model_names import canonical_model_name

HERE = Path(__file__).resolve().parent
#: Every agent's Ollama: 20 tokens at 40 tokens/s, loads of 1 to 2 s.
TOKENS_PER_SECOND = 40.0
REPLY_TOKENS = 20
LOADS = dict(zip(MODEL_NAMES, (1.0, 1.33, 1.67, 2.0), strict=True))
AGENT_OLLAMA = (
    *("--tokens-per-second", str(TOKENS_PER_SECOND)),
    *("--reply-tokens", str(REPLY_TOKENS)),
    *("--max-loaded-models", "1"),
    *("--loads", ",".join(f"{model}={seconds}" for model, seconds in LOADS.items())),
)
#: The first-token probe's Ollamas: answers as fast as they are read.
TTFT_OLLAMA = ("--reply-tokens", "8", "--max-loaded-models", "1", "--load-seconds", "1")
#: The agents start this far apart, in order.
START_INTERVAL = 0.01
TARGET_ADDED_TTFT_P50_MS = 3.0
FLEET_NAMES = ("box-1", "box-2")


@dataclass(frozen=True)
class AgentSettings:
    seconds: float
    think: float
    ttft_samples: int
    models: tuple[str, ...] = MODEL_NAMES
    tokens_per_second: float = TOKENS_PER_SECOND
    reply_tokens: int = REPLY_TOKENS


FULL = AgentSettings(seconds=40.0, think=0.5, ttft_samples=50)
QUICK = AgentSettings(seconds=15.0, think=0.5, ttft_samples=15)


@dataclass(frozen=True)
class Call:
    started: float
    ended: float
    box: str
    error: str | None = None


# -- part 2, 1: agents -----------------------------------------------------------------


async def agent(
    reactor: Any,
    client: Client,
    url: str,
    pinned: str,
    number: int,
    model: str,
    think: float,
    until: float,
) -> list[Call]:
    """Call, wait for the whole answer, think, again, while before ``until``."""
    calls: list[Call] = []
    turn = 0
    while time.perf_counter() < until:
        started = time.perf_counter()
        text = f"agent {number}, turn {turn}: why is the sky blue?"
        try:
            reply = await client.post(url + "/api/chat", chat_body(model, text))
        except Exception as e:
            calls.append(Call(started, time.perf_counter(), "", f"{type(e).__name__}: {e}"))
            break
        error = None
        if reply.status != 200:
            error = f"{reply.status}: {reply.body[:200].decode(errors='replace')}"
        elif json.loads(reply.body).get("done") is not True:
            error = "reply not done"
        calls.append(Call(started, reply.ended, reply.headers.get("x-foreman-box", pinned), error))
        if error is not None:
            break
        turn += 1
        await sleep(reactor, think)
    return calls


async def until_models_known(reactor: Any, client: Client, url: str, models: list[str]) -> None:
    """foreman has read its Ollama's models (their sizes make its first estimates)."""
    wanted = {canonical_model_name(model) for model in models}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        reply = await client.get(url + "/api/foreman/queue")
        if reply.status == 200:
            known = {each.get("model") for each in json.loads(reply.body).get("models") or []}
            if wanted <= known:
                return
        await sleep(reactor, 0.05)


async def loads_of(client: Client, url: str) -> int:
    reply = await client.get(url + "/metrics")
    found = LOADS_METRIC.search(reply.body.decode())
    return int(float(found.group(1))) if found else 0


async def play(
    reactor: Any,
    client: Client,
    settings: AgentSettings,
    targets: list[tuple[str, str]],
    boxes: list[tuple[str, str, str]],
) -> dict[str, Any]:
    """The agents, agent ``i`` calling ``targets[i]`` (name, URL); ``boxes``:
    (name, foreman's URL, Ollama's URL) of every box, for their loads."""
    for _name, url, _ in boxes:
        await until_models_known(reactor, client, url, list(settings.models))
    before = {name: await loads_of(client, url) for name, url, _ in boxes}
    began = time.perf_counter()
    until = began + settings.seconds

    async def start(number: int, model: str) -> list[Call]:
        await sleep(reactor, number * START_INTERVAL)
        name, url = targets[number]
        return await agent(reactor, client, url, name, number, model, settings.think, until)

    running = [defer.ensureDeferred(start(n, m)) for n, m in enumerate(settings.models)]
    calls: list[list[Call]] = await defer.gatherResults(running, consumeErrors=True)
    end = began + settings.seconds
    per_agent: list[dict[str, Any]] = []
    for number, (model, mine) in enumerate(zip(settings.models, calls, strict=True)):
        ok = [c for c in mine if c.error is None]
        waits = [c.ended - c.started for c in ok]
        per_agent.append(
            {
                "model": model,
                "to": targets[number][0],
                "calls": len(ok),
                "answered_in_time": sum(1 for c in ok if c.ended <= end),
                "longest_wait_s": max(waits, default=float("nan")),
                "waits": summary_ms(waits),
                "ran_on": dict(Counter(c.box for c in ok)),
                "errors": [c.error for c in mine if c.error is not None],
            }
        )
    per_box = []
    for name, url, ollama in boxes:
        record = await client.get(ollama + "/bench/record")
        simulator = json.loads(record.body)
        per_box.append(
            {
                "name": name,
                "calls": sum(a["ran_on"].get(name, 0) for a in per_agent),
                "loads": await loads_of(client, url) - before[name],
                "simulator_loads": simulator["loads"],
                "load_history": simulator["load_history"],
            }
        )
    every = [c for mine in calls for c in mine if c.error is None]
    return {
        "calls": sum(a["calls"] for a in per_agent),
        "answered_in_time": sum(a["answered_in_time"] for a in per_agent),
        "loads": sum(b["loads"] for b in per_box),
        "simulator_loads": sum(b["simulator_loads"] for b in per_box),
        "longest_wait_s": max(a["longest_wait_s"] for a in per_agent),
        "last_answer_s": max((c.ended for c in every), default=began) - began,
        "agents": per_agent,
        "boxes": per_box,
    }


async def agents_in_fleet(
    reactor: Any, client: Client, server: Postgres, settings: AgentSettings, keep: Path | None
) -> dict[str, Any]:
    with fleet(server, "agents", [settings.models] * 2, BATCH, keep, AGENT_OLLAMA) as (_, boxes):
        await until_fleet_ready(client_http(client), reactor, boxes)
        targets = [(boxes[0].name, boxes[0].url)] * len(settings.models)
        every = [(box.name, box.url, box.ollama) for box in boxes]
        return await play(reactor, client, settings, targets, every)


async def agents_apart(reactor: Any, client: Client, settings: AgentSettings) -> dict[str, Any]:
    script = HERE / "_fleet_ollama.py"
    with ExitStack() as stack:
        boxes = []
        for name in FLEET_NAMES:
            ollama = stack.enter_context(simulated_ollama(*AGENT_OLLAMA, script=script))
            running = stack.enter_context(foreman_process(ollama))
            boxes.append((name, running.url, ollama))
        half = len(settings.models) // 2
        targets = [
            (boxes[0][0], boxes[0][1]) if n < half else (boxes[1][0], boxes[1][1])
            for n in range(len(settings.models))
        ]
        return await play(reactor, client, settings, targets, boxes)


def client_http(client: Client) -> HTTPClient:
    """``client``'s pool as the ``treq`` client ``bench/fleet.py``'s helpers take."""
    return HTTPClient(client.agent)


# -- part 2, 2: the added time to first token ------------------------------------------


class _FirstLine(Protocol):
    """Notes when the first line of a body arrived, and collects the whole."""

    def __init__(self) -> None:
        self.first_line: float | None = None
        self.done: defer.Deferred[bytes] = defer.Deferred()
        self._parts: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        if self.first_line is None and b"\n" in data:
            self.first_line = time.perf_counter()
        self._parts.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._parts))
        else:
            self.done.errback(reason)


async def first_token(client: Client, url: str, model: str, text: str) -> tuple[float, str]:
    """A streamed chat: seconds to its first NDJSON line, and the box that ran it."""
    document = {"model": model, "messages": [{"role": "user", "content": text}], "stream": True}
    sent = time.perf_counter()
    response: IResponse = await client.agent.request(
        b"POST",
        (url + "/api/chat").encode(),
        HEADERS,
        BytesBodyProducer(json.dumps(document).encode()),
    )
    reader = _FirstLine()
    response.deliverBody(reader)
    body = await reader.done
    if response.code != 200 or reader.first_line is None:
        raise RuntimeError(f"streamed chat at {url} answered {response.code}: {body[:200]!r}")
    boxes = response.headers.getRawHeaders(b"x-foreman-box") or [b""]
    return reader.first_line - sent, boxes[-1].decode()


async def added_first_token(
    reactor: Any, client: Client, server: Postgres, settings: AgentSettings, keep: Path | None
) -> dict[str, Any]:
    here, there = settings.models[0], settings.models[1]
    with fleet(server, "ttft", [(here,), (there,)], BATCH, keep, TTFT_OLLAMA) as (_, boxes):
        a, b = boxes
        await until_fleet_ready(client_http(client), reactor, boxes)
        for _ in range(3):  # the load, and a first connection each way
            await first_token(client, b.url, there, "warm-up")
            await first_token(client, a.url, there, "warm-up")
        samples: dict[str, list[float]] = {"forwarded": [], "local": []}
        ran_on: dict[str, Counter[str]] = {"forwarded": Counter(), "local": Counter()}
        for index in range(settings.ttft_samples):
            order = [("forwarded", a), ("local", b)]
            if index % 2:
                order.reverse()
            for way, box in order:
                seconds, box_name = await first_token(client, box.url, there, f"probe {index}")
                samples[way].append(seconds)
                ran_on[way][box_name] += 1
                await sleep(reactor, 0.05)
    forwarded, local = samples["forwarded"], samples["local"]
    return {
        "model": there,
        "at": a.name,
        "resident_on": b.name,
        "n": settings.ttft_samples,
        "forwarded": summary_ms(forwarded),
        "local": summary_ms(local),
        "ran_on": {way: dict(counted) for way, counted in ran_on.items()},
        "added_p50_ms": (percentile(forwarded, 0.5) - percentile(local, 0.5)) * 1e3,
        "added_p95_ms": (percentile(forwarded, 0.95) - percentile(local, 0.95)) * 1e3,
        "paired_added_p50_ms": percentile(
            [f - h for f, h in zip(forwarded, local, strict=True)], 0.5
        )
        * 1e3,
    }


# -- the whole part ----------------------------------------------------------------------


async def run(reactor: Any, server: Postgres, quick: bool, keep: Path | None) -> dict[str, Any]:
    settings = QUICK if quick else FULL
    client = Client(reactor)
    results: dict[str, Any] = {"settings": {**asdict(settings), "loads": LOADS}}
    try:
        print("agents, fleet of two, one address ...", file=sys.stderr, flush=True)
        results["fleet"] = await agents_in_fleet(reactor, client, server, settings, keep)
        await client.close()
        print("agents, two boxes apart ...", file=sys.stderr, flush=True)
        results["apart"] = await agents_apart(reactor, client, settings)
        await client.close()
        print("first token, forwarded and local ...", file=sys.stderr, flush=True)
        results["ttft"] = await added_first_token(reactor, client, server, settings, keep)
    finally:
        await client.close()
    added = results["ttft"]["added_p50_ms"]
    results["targets"] = {
        "added_ttft_p50_ms": {
            "measured": added,
            "target": TARGET_ADDED_TTFT_P50_MS,
            "met": added <= TARGET_ADDED_TTFT_P50_MS,
        }
    }
    return results


# -- the report --------------------------------------------------------------------------


def report(results: dict[str, Any]) -> str:
    settings, fleet, apart, ttft = (
        results["settings"],
        results["fleet"],
        results["apart"],
        results["ttft"],
    )
    loads = ", ".join(f"{m} {s:g} s" for m, s in settings["loads"].items())
    out = [
        f"Agents: one per model, {len(settings['models'])} models, sync non-streamed"
        f" `/api/chat`, {settings['think']:g} s between an answer and the next call,"
        f" {settings['seconds']:g} s; every Ollama has the four models, one loaded at a time"
        f" (loads: {loads}), answers of {settings['reply_tokens']} tokens at"
        f" {settings['tokens_per_second']:g}/s.",
        "",
        "| measure | fleet of two, one address | two boxes apart, agents pinned |",
        "|---|---:|---:|",
        f"| calls answered | {fleet['calls']} | {apart['calls']} |",
        f"| (answered within the {settings['seconds']:g} s) | {fleet['answered_in_time']}"
        f" | {apart['answered_in_time']} |",
        f"| model loads (foreman's metrics; simulators') | {fleet['loads']}"
        f" ({fleet['simulator_loads']}) | {apart['loads']} ({apart['simulator_loads']}) |",
        f"| calls per load | {fleet['calls'] / max(1, fleet['loads']):.1f}"
        f" | {apart['calls'] / max(1, apart['loads']):.1f} |",
        "| calls run by box-1 / box-2 | "
        + " / ".join(str(b["calls"]) for b in fleet["boxes"])
        + " | "
        + " / ".join(str(b["calls"]) for b in apart["boxes"])
        + " |",
        f"| longest wait, any agent | {fleet['longest_wait_s']:.1f} s"
        f" | {apart['longest_wait_s']:.1f} s |",
    ]
    for one, other in zip(fleet["agents"], apart["agents"], strict=True):
        out.append(
            f"| {one['model']}: calls, p50 wait, longest wait | {one['calls']},"
            f" {one['waits']['p50_ms'] / 1e3:.1f} s, {one['longest_wait_s']:.1f} s"
            f" | {other['calls']}, {other['waits']['p50_ms'] / 1e3:.1f} s,"
            f" {other['longest_wait_s']:.1f} s ({other['to']}) |"
        )
    out += ["", "Where each agent's calls ran in the fleet, and each box's loads in order:", ""]
    for one in fleet["agents"]:
        ran = ", ".join(f"{box} {n}" for box, n in sorted(one["ran_on"].items()))
        out.append(f"- {one['model']}: {ran}")
    for way, figures in (("fleet", fleet), ("apart", apart)):
        for box in figures["boxes"]:
            history = ", ".join(m.split(":")[0] if ":" not in m else m for m in box["load_history"])
            out.append(f"- {way}, {box['name']} loaded: {history or '—'}")
    errors = [e for f in (fleet, apart) for a in f["agents"] for e in a["errors"]]
    if errors:
        out += ["", "Errors: " + "; ".join(errors)]
    met = results["targets"]["added_ttft_p50_ms"]
    out += [
        "",
        f"Time to first token (first NDJSON line), streamed `/api/chat` for {ttft['model']},"
        f" loaded on idle {ttft['resident_on']}, {ttft['n']} of each, in turn:",
        "",
        "| call | ran on | p50 | p95 | max |",
        "|---|---|---:|---:|---:|",
    ]
    for way, title in (("forwarded", f"at {ttft['at']} (forwarded)"), ("local", "at it (local)")):
        s = ttft[way]
        ran = ", ".join(f"{box} {n}" for box, n in ttft["ran_on"][way].items())
        out.append(
            f"| {title} | {ran} | {s['p50_ms']:.2f} ms | {s['p95_ms']:.2f} ms"
            f" | {s['max_ms']:.2f} ms |"
        )
    out.append(f"| added | | {ttft['added_p50_ms']:.2f} ms | {ttft['added_p95_ms']:.2f} ms | |")
    out += [
        "",
        f"Added at p50 ≤ {met['target']:g} ms: {'**met**' if met['met'] else '**missed**'}"
        f" ({met['measured']:.2f} ms; the median of the pairs' differences:"
        f" {ttft['paired_added_p50_ms']:.2f} ms).",
    ]
    return "\n".join(out)

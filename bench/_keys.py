"""Keys served in turn (issue 21, ADR-0030): batches of very different sizes, three ways.

Part 5 of ``bench/scheduler.py`` (``--only keys``; tables in
``bench/_keys_report.py``). Each run has a fresh simulated Ollama set up as
the design's Mac (one big model at a time; loads 1 s, a job's reply 0.2 s),
in this process so that its loads are counted exactly; foreman runs under
``twistd`` in its own process, with a token.

**Scenarios.** Keys submit batches, each a seeded random order over its
models, a second apart, while a person sends a sync ``/api/chat`` for
``qwen3:14b`` (key a's model), reads the answer for ``PERSON_THINK`` s and
sends the next, for as long as the batches last. **two keys**: a sends 100
jobs over ``qwen3:14b`` and ``mistral-small3.2:24b``, b 10 on
``gemma3:27b``; **three keys**: a 200 on ``qwen3:14b``, b 30 on
``mistral-small3.2:24b``, c 5 on ``gemma3:27b``.

**Ways.** **FIFO**: straight at the simulator, first come first served: the
jobs are plain ``/api/chat`` calls sent one at a time by one sender in the
order they were submitted; the person calls the simulator beside it.
**today's rule**: through foreman, each batch a list sent to ``POST /jobs``
with the admin token, the person's calls too: one caller, the order before
keys. **keys in turn**: the same with a key per batch and one for the
person (``POST /api/foreman/keys``). foreman runs with ``--swap-grace
40ms`` (scaled with the loads, as in parts 1 and 3), defaults otherwise:
nothing here reaches ``--max-wait`` or ``--batch-max-wait``, so the two
foreman ways differ by the rounds alone.

**Figures.** A job's wait: its key's submission → the job finished
(foreman's ``finished_at``; FIFO: its reply); a key's completion: its
submission → its last job; the makespan: the first submission → the last
batch job; the person's wait: call sent → whole answer; utilisation:
seconds generating (``foreman_worker_seconds_total{activity="generating"}``;
FIFO: the simulator's replies x 0.2 s) over the makespan.
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import defer

from bench._simulator import JOB_SECONDS, SWAP_GRACE, foreman_in_front, listening, the_mac
from bench._workload import ChatSample, Client, chat_body, one_chat, sleep, summary_ms
from foreman.testing import SimulatedOllama
from foreman.wire.model_names import canonical_model_name

QWEN, MISTRAL, GEMMA = "qwen3:14b", "mistral-small3.2:24b", "gemma3:27b"
#: The person's model, key a's: people chat with the house model. Their first
#: call comes ``PERSON_START`` s after the first batch, then one every answer +
#: ``PERSON_THINK`` s.
PERSON_MODEL, PERSON_START, PERSON_THINK = QWEN, 2.0, 3.0
#: The admin token foreman is started with (a throwaway, on loopback).
ADMIN_TOKEN = "bench-admin-token-keys-part"
BATCH_SCOPES = ["generate", "embed", "jobs"]
#: How often the jobs' states are read (their ``finished_at`` is exact anyway).
POLL_SECONDS = 1.0
FINAL_STATES = frozenset({"done", "failed", "cancelled"})
#: How long foreman may take to read the simulator's models before the batches.
INVENTORY_SECONDS = 10.0


@attrs.frozen
class KeyLoad:
    name: str
    jobs: int
    models: tuple[str, ...]
    #: Seconds after the first key's submission.
    after: float


@attrs.frozen
class Scenario:
    key: str
    title: str
    keys: tuple[KeyLoad, ...]
    #: The sizes with ``--quick``, in the order of ``keys``.
    quick: tuple[int, ...]

    def sized(self, quick: bool) -> tuple[KeyLoad, ...]:
        if not quick:
            return self.keys
        return tuple(attrs.evolve(k, jobs=n) for k, n in zip(self.keys, self.quick, strict=True))


SCENARIOS = (
    Scenario(
        "two",
        "two keys",
        (KeyLoad("a", 100, (QWEN, MISTRAL), 0.0), KeyLoad("b", 10, (GEMMA,), 1.0)),
        (20, 4),
    ),
    Scenario(
        "three",
        "three keys",
        (
            KeyLoad("a", 200, (QWEN,), 0.0),
            KeyLoad("b", 30, (MISTRAL,), 1.0),
            KeyLoad("c", 5, (GEMMA,), 2.0),
        ),
        (30, 6, 2),
    ),
)


@attrs.frozen
class Way:
    key: str
    title: str
    foreman: bool
    #: Each batch (and the person) with a key of its own.
    keys: bool = False


WAYS = (
    Way("fifo", "FIFO", False),
    Way("today", "today's rule (one token)", True),
    Way("keys", "keys in turn", True, True),
)


def plans(keys: tuple[KeyLoad, ...], seed: int) -> dict[str, list[str]]:
    """Each key's models in submission order: seeded, the same every way."""
    rngs = [random.Random(seed + 20 + n) for n in range(len(keys))]
    return {
        k.name: [rng.choice(k.models) for _ in range(k.jobs)]
        for k, rng in zip(keys, rngs, strict=True)
    }


#: Every chat says whose it is: ``caller <n>, turn <i>: …`` (``one_chat``'s
#: words), n the key's place in the scenario, ``PERSON`` for the person.
PERSON = -1


def _text(number: int, turn: int) -> str:
    return f"caller {number}, turn {turn}: why is the sky blue?"


def served_order(sim: SimulatedOllama, names: list[str]) -> list[tuple[str, int]]:
    """The chats in the order the simulator received them (through foreman: the
    order they ran), as runs of (``model key``, count): ``("qwen3 a", 12)``."""
    runs: list[tuple[str, int]] = []
    for request in sim.requests:
        document = json.loads(request.body) if request.path == "/api/chat" else {}
        if not document.get("messages"):
            continue  # not a chat, or a load call
        number = int(document["messages"][-1]["content"].split()[1].rstrip(","))
        what = f"{document['model'].split(':')[0]} {names[number] if number >= 0 else 'person'}"
        if runs and runs[-1][0] == what:
            runs[-1] = (what, runs[-1][1] + 1)
        else:
            runs.append((what, 1))
    return runs


async def person(reactor: Any, client: Client, url: str, finished: list[bool]) -> list[ChatSample]:
    """Sync chats for ``PERSON_MODEL``, each ``PERSON_THINK`` after the last
    answer, from ``PERSON_START`` until ``finished[0]``."""
    await sleep(reactor, PERSON_START)
    calls: list[ChatSample] = []
    while not finished[0]:
        now = time.perf_counter()
        chat = await one_chat(client, url + "/api/chat", PERSON, len(calls), PERSON_MODEL, now)
        calls.append(chat)
        if chat.error is not None:
            break
        await sleep(reactor, PERSON_THINK)
    return calls


# -- FIFO: one sequential sender -------------------------------------------------------


async def fifo(
    reactor: Any, url: str, keys: tuple[KeyLoad, ...], plan: dict[str, list[str]]
) -> dict[str, Any]:
    """Every key's jobs as plain ``/api/chat`` calls, one at a time, in the
    order they were submitted; the person beside them."""
    sender, someone = Client(reactor), Client(reactor)
    finished = [False]
    began = time.perf_counter()
    people = defer.ensureDeferred(person(reactor, someone, url, finished))
    ends: dict[str, list[float]] = {k.name: [] for k in keys}
    errors: list[str] = []
    try:
        for number, k in enumerate(keys):  # in the order they submit
            await sleep(reactor, max(0.0, began + k.after - time.perf_counter()))
            for turn, model in enumerate(plan[k.name]):
                sample = await one_chat(sender, url + "/api/chat", number, turn, model, began)
                if sample.error is None:
                    ends[k.name].append(sample.ended - began)
                else:
                    errors.append(f"key {k.name} job {turn}: {sample.error}")
        finished[0] = True
        calls = await people
    finally:
        finished[0] = True
        await sender.close()
        await someone.close()
    return _figures(keys, {k.name: k.after for k in keys}, ends, calls, errors)


# -- through foreman -------------------------------------------------------------------


@asynccontextmanager
async def _foreman(sim_url: str) -> AsyncIterator[str]:
    """foreman with ``ADMIN_TOKEN`` in front of ``sim_url``."""
    with tempfile.TemporaryDirectory() as secrets:
        token_file = Path(secrets) / "token"
        token_file.write_text(ADMIN_TOKEN)
        arguments = ("--token-file", str(token_file), "--swap-grace", SWAP_GRACE)
        async with foreman_in_front(sim_url, *arguments) as url:
            yield url


async def make_key(admin: Client, url: str, name: str, scopes: list[str]) -> str:
    """A new key (``POST /api/foreman/keys``, docs/keys.md): its secret."""
    reply = await admin.post(url + "/api/foreman/keys", {"name": name, "scopes": scopes})
    if reply.status != 201:
        raise RuntimeError(f"POST /api/foreman/keys answered {reply.status}: {reply.body!r}")
    secret: str = json.loads(reply.body)["key"]
    return secret


async def _models_known(reactor: Any, admin: Client, url: str, models: set[str]) -> None:
    """Until foreman has read the simulator's models (or ``INVENTORY_SECONDS``)."""
    wanted = {canonical_model_name(m) for m in models}
    deadline = time.monotonic() + INVENTORY_SECONDS
    while time.monotonic() < deadline:
        reply = await admin.get(url + "/api/foreman/queue")
        known = json.loads(reply.body).get("models") if reply.status == 200 else None
        if wanted <= {m["model"] for m in known or []}:
            return
        await sleep(reactor, 0.05)


async def _submit(
    reactor: Any, client: Client, url: str, number: int, k: KeyLoad, plan: list[str], began: float
) -> tuple[float, list[str]]:
    """``k``'s batch, a list sent to ``POST /jobs`` at its time: when (epoch), the ids."""
    await sleep(reactor, max(0.0, began + k.after - time.time()))
    jobs = [chat_body(model, _text(number, turn)) for turn, model in enumerate(plan)]
    sent = time.time()
    reply = await client.post(url + "/jobs", jobs)
    if reply.status != 202:
        raise RuntimeError(f"key {k.name}: POST /jobs answered {reply.status}: {reply.body!r}")
    return sent, [each["job_id"] for each in json.loads(reply.body)["jobs"]]


async def _finished(
    reactor: Any, admin: Client, url: str, ids: set[str]
) -> dict[str, dict[str, Any]]:
    """The views of ``ids`` once every one has finished (``GET /jobs``, paged)."""
    while True:
        views: dict[str, dict[str, Any]] = {}
        following: str | None = ""
        while following is not None:
            page = url + "/jobs?limit=500" + (f"&before={following}" if following else "")
            reply = await admin.get(page)
            if reply.status != 200:
                raise RuntimeError(f"GET /jobs answered {reply.status}: {reply.body[:200]!r}")
            listing = json.loads(reply.body)
            views.update((v["job_id"], v) for v in listing["jobs"] if v["job_id"] in ids)
            following = listing["next"]
        if len(views) == len(ids) and all(v["state"] in FINAL_STATES for v in views.values()):
            return views
        await sleep(reactor, POLL_SECONDS)


def worker_seconds(metrics: str) -> dict[str, float]:
    """``foreman_worker_seconds_total`` in ``/metrics``, by activity."""
    prefix = 'foreman_worker_seconds_total{activity="'
    return {
        line[len(prefix) :].split('"')[0]: float(line.rsplit(" ", 1)[-1])
        for line in metrics.splitlines()
        if line.startswith(prefix)
    }


async def through_foreman(
    reactor: Any, url: str, way: Way, keys: tuple[KeyLoad, ...], plan: dict[str, list[str]]
) -> dict[str, Any]:
    """The batches as lists sent to ``POST /jobs``, each key's with its own key
    (``way.keys``) or all with the admin token; the person beside them."""
    admin = Client(reactor, ADMIN_TOKEN)
    clients: dict[str, Client] = {}
    finished = [False]
    try:
        for name in [k.name for k in keys] + ["person"]:
            scopes = ["generate"] if name == "person" else BATCH_SCOPES
            token = await make_key(admin, url, name, scopes) if way.keys else ADMIN_TOKEN
            clients[name] = Client(reactor, token)
        await _models_known(reactor, admin, url, {m for k in keys for m in k.models})
        began = time.time()
        people = defer.ensureDeferred(person(reactor, clients["person"], url, finished))
        sending = [
            _submit(reactor, clients[k.name], url, number, k, plan[k.name], began)
            for number, k in enumerate(keys)
        ]
        submitted = await defer.gatherResults(
            [defer.ensureDeferred(each) for each in sending], consumeErrors=True
        )
        owner = {job: k.name for k, (_, ids) in zip(keys, submitted, strict=True) for job in ids}
        views = await _finished(reactor, admin, url, set(owner))
        finished[0] = True
        metrics = await admin.get(url + "/metrics")
        usage = await admin.get(url + "/api/foreman/keys")
        calls = await people
    finally:
        finished[0] = True
        for client in [admin, *clients.values()]:
            await client.close()
    ends: dict[str, list[float]] = {k.name: [] for k in keys}
    errors = []
    for job, view in views.items():
        if view["state"] == "done":
            ends[owner[job]].append(datetime.fromisoformat(view["finished_at"]).timestamp() - began)
        else:
            errors.append(f"key {owner[job]} job {job}: {view['state']}: {view['error']}")
    sent = {k.name: at - began for k, (at, _) in zip(keys, submitted, strict=True)}
    figures = _figures(keys, sent, ends, calls, errors)
    if metrics.status == 200:
        figures["worker_seconds"] = worker_seconds(metrics.body.decode())
    if usage.status == 200:
        figures["usage"] = {k["name"]: k.get("usage") for k in json.loads(usage.body)["keys"]}
    return figures


# -- figures and the part --------------------------------------------------------------


def _figures(
    keys: tuple[KeyLoad, ...],
    submitted: dict[str, float],
    ends: dict[str, list[float]],
    calls: list[ChatSample],
    errors: list[str],
) -> dict[str, Any]:
    """A run's figures; ``submitted`` and ``ends`` in seconds after the first submission."""

    def key(name: str, jobs: int) -> dict[str, Any]:
        mine, at, nan = ends[name], submitted[name], float("nan")
        return {
            "submitted_s": at,
            "jobs": jobs,
            "done": len(mine),
            "completion_s": max(mine, default=nan) - at,
            "median_wait_s": statistics.median(mine) - at if mine else nan,
            "first_done_s": min(mine, default=nan) - at,
        }

    return {
        "keys": {k.name: key(k.name, k.jobs) for k in keys},
        "makespan_s": max((t for each in ends.values() for t in each), default=float("nan")),
        "person": summary_ms([c.ended - c.started for c in calls if c.error is None]),
        "errors": errors
        + [f"person call {c.turn}: {c.error}" for c in calls if c.error is not None],
    }


async def one_run(
    reactor: Any, way: Way, keys: tuple[KeyLoad, ...], plan: dict[str, list[str]]
) -> dict[str, Any]:
    """One scenario one way, against a fresh simulator."""
    sim = the_mac(reactor)
    async with listening(reactor, sim) as sim_url:
        if not way.foreman:
            figures = await fifo(reactor, sim_url, keys, plan)
            generating = sim.completed_generations * JOB_SECONDS
        else:
            async with _foreman(sim_url) as url:
                figures = await through_foreman(reactor, url, way, keys, plan)
            generating = figures.get("worker_seconds", {}).get("generating", float("nan"))
        figures["generating_s"] = generating
        figures["utilisation"] = generating / figures["makespan_s"]
        figures["loads"] = sim.loads
        figures["load_history"] = list(sim.load_history)
        figures["served_order"] = served_order(sim, [k.name for k in keys])
    return figures


async def run(reactor: Any, quick: bool, seed: int) -> dict[str, Any]:
    started = time.monotonic()
    results: dict[str, Any] = {
        "settings": {
            "quick": quick,
            "seed": seed,
            "swap_grace": SWAP_GRACE,
            "job_seconds": JOB_SECONDS,
            "person_model": PERSON_MODEL,
            "person_think_s": PERSON_THINK,
            "ways": [attrs.asdict(way) for way in WAYS],
        },
        "scenarios": [],
    }
    for scenario in SCENARIOS:
        keys = scenario.sized(quick)
        plan = plans(keys, seed)
        figures: dict[str, Any] = {"key": scenario.key, "name": scenario.title, "plan": plan}
        figures["key_loads"] = [attrs.asdict(k) for k in keys]
        for way in WAYS:
            figures[way.key] = await one_run(reactor, way, keys, plan)
        results["scenarios"].append(figures)
    results["wall_seconds"] = time.monotonic() - started
    return results

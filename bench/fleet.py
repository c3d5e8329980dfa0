"""A fleet: one batch of ``/jobs`` on 1, 2 and 3 boxes sharing one queue on PostgreSQL.

Every box is a foreman under ``twistd`` in front of its own simulated Ollama
(``bench/_fleet_ollama.py``, a process of its own: four chat models, one
loaded at a time, every load 1 s, 20-token answers at 50 tokens/s, so 0.4 s
a job), all boxes of a run on one fresh database of one PostgreSQL server
(``bench/_postgres.py``, started by the benchmark, ``pg_stat_statements`` on).
The boxes connect as a role of their own, so that what the benchmark itself
asks the database (it watches the jobs table to see the batch end) is not
counted as theirs. Measured:

1. **The batch** on 1, 2 and 3 boxes: 96 jobs (``priority: batch``) over the
   four models, interleaved (``llama3.2, gemma3:12b, mistral-small3.2:24b,
   gemma3:27b, llama3.2, ...``), submitted one after the other, in turn to
   each box. Makespan (the first submit to the last job's ``finished_at``),
   speed-up over one box, model loads (each box's
   ``foreman_model_loads_total``, checked against what the simulators
   counted) against the fewest possible (one per model) plus one per box,
   which box ran what, and the database statements per job:
   ``pg_stat_statements`` calls by the boxes' role over the batch, divided
   by the jobs (``BEGIN`` and ``COMMIT`` apart), beside what the same boxes
   ask while idle (heartbeats, the 1 s look at the fleet's queue), measured
   before the batch.

2. **Submit to start on an idle fleet** of 2 boxes, the first with two of
   the models, the second with the other two: single jobs, one at a time,
   each sent when the previous one is done and the fleet has been idle for
   1.5-2 s (longer than any hold of a model for its next call), in turn to
   each box, the models in turn, so that half of them must be taken by the
   box that did not receive them (told by the database's NOTIFY); the job's
   ``started_at`` (the wall-clock stamp its claim writes) minus the
   wall-clock time the benchmark sent it, on the same machine.

3. **Direct**, for reference: the same batch sent at once straight to one
   simulated Ollama (its own FIFO; no foreman, no queue).

Targets (issue 18): 2 boxes at least 1.8x faster than 1, 3 boxes at least
2.5x; loads no more than the minimum plus one per box; submit to start on
an idle fleet at most 50 ms at p50.

Part 2 (issue 19, ``bench/_fleet_agents.py``): one address for every client,
closed-loop agents on four models through one box of a fleet of two against
two boxes used separately, and the added time to first token of a call one
box forwards to another. ``--only batch`` runs the first part (1-3 above),
``--only agents`` the second.

Usage: ``python bench/fleet.py [--quick] [--only batch|agents] [--json FILE] [--keep-logs DIR]``
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import treq
from psycopg import sql
from treq.client import HTTPClient
from twisted.internet import task
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from bench._common import main as bench_main
from bench._common import percentile
from bench._fleet_ollama import MODEL_NAMES
from bench._postgres import Postgres
from bench._processes import foreman_process, simulated_ollama

HERE = Path(__file__).resolve().parent
#: Every box's Ollama: a load costs 1 s, an answer 0.4 s.
LOAD_SECONDS = 1.0
TOKENS_PER_SECOND = 50.0
REPLY_TOKENS = 20
JOB_SECONDS = REPLY_TOKENS / TOKENS_PER_SECOND
OLLAMA = (
    *("--load-seconds", str(LOAD_SECONDS)),
    *("--tokens-per-second", str(TOKENS_PER_SECOND)),
    *("--reply-tokens", str(REPLY_TOKENS)),
    *("--max-loaded-models", "1"),
)
#: The role the boxes connect as (the benchmark reads as the superuser).
BOX_ROLE = "box"
TARGET_SPEEDUP = {2: 1.8, 3: 2.5}
TARGET_SUBMIT_TO_START_MS = 50.0
TRANSACTION_CONTROL = frozenset({"BEGIN", "COMMIT", "ROLLBACK"})
WORKER_SECONDS = re.compile(
    r'^foreman_worker_seconds_total\{activity="(\w+)"\} ([0-9.e+-]+)$', re.MULTILINE
)
JSON = Headers({b"Content-Type": [b"application/json"]})
LOADS = re.compile(r"^foreman_model_loads_total ([0-9.e+-]+)$", re.MULTILINE)


@dataclass(frozen=True)
class Settings:
    jobs: int
    boxes: tuple[int, ...]
    idle_samples: int
    #: Seconds the fleet is watched idle, for its background statements.
    idle_window: float
    models: tuple[str, ...] = MODEL_NAMES
    load_seconds: float = LOAD_SECONDS
    job_seconds: float = JOB_SECONDS
    tokens_per_second: float = TOKENS_PER_SECOND
    reply_tokens: int = REPLY_TOKENS


FULL = Settings(jobs=96, boxes=(1, 2, 3), idle_samples=30, idle_window=10.0)
QUICK = Settings(jobs=32, boxes=(1, 2, 3), idle_samples=10, idle_window=5.0)


@dataclass(frozen=True)
class Box:
    name: str
    url: str
    ollama: str


# -- the database ------------------------------------------------------------------------


class Database:
    """One run's fresh database, and the statements its boxes ran."""

    def __init__(self, server: Postgres, name: str) -> None:
        self.server = server
        self.name = name
        with server.connect() as admin:
            admin.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(BOX_ROLE)
                )
            )
        self.box_url = server.url(name, BOX_ROLE)
        self._watch = server.connect(name)

    def close(self) -> None:
        self._watch.close()

    def statements(self) -> Counter[str]:
        """Calls of each statement the boxes ran here, since the server started."""
        return self.usage()[0]

    def usage(self) -> tuple[Counter[str], Counter[str]]:
        """Calls of each statement the boxes ran here, and the rows they returned
        or changed, since the server started."""
        with self.server.connect() as admin:
            rows = admin.execute(
                "SELECT s.query, s.calls, s.rows FROM pg_stat_statements s"
                " JOIN pg_database d ON d.oid = s.dbid JOIN pg_roles r ON r.oid = s.userid"
                " WHERE d.datname = %s AND r.rolname = %s",
                (self.name, BOX_ROLE),
            ).fetchall()
        calls: Counter[str] = Counter()
        touched: Counter[str] = Counter()
        for query, called, returned in rows:
            text = " ".join(str(query).split())
            calls[text] += int(called)
            touched[text] += int(returned)
        return calls, touched

    def finished(self) -> int:
        (count,) = self._row(
            "SELECT count(*) FROM jobs WHERE state IN ('done', 'failed', 'cancelled')"
        )
        return int(count)

    def job(self, job_id: str) -> dict[str, Any]:
        rows = self.jobs([job_id])
        return rows[0] if rows else {}

    def jobs(self, ids: list[str] | None = None) -> list[dict[str, Any]]:
        query = (
            "SELECT j.id, j.model, j.state, j.attempt, j.created_at, j.started_at,"
            " j.finished_at, b.name AS box FROM jobs j LEFT JOIN boxes b ON b.id = j.box"
        )
        cursor = self._watch.cursor()
        if ids is None:
            cursor.execute(query)
        else:
            cursor.execute(query + " WHERE j.id = ANY(%s)", (ids,))
        names = [column.name for column in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def _row(self, query: str) -> tuple[Any, ...]:
        row = self._watch.execute(query).fetchone()
        assert row is not None
        return tuple(row)


def statements_delta(after: Counter[str], before: Counter[str]) -> Counter[str]:
    return Counter({q: n - before.get(q, 0) for q, n in after.items() if n > before.get(q, 0)})


def split_control(counted: Counter[str]) -> tuple[int, int]:
    """(statements, BEGIN/COMMIT/ROLLBACK) among ``counted``."""
    control = sum(n for q, n in counted.items() if q.upper() in TRANSACTION_CONTROL)
    return sum(counted.values()) - control, control


# -- the fleet ---------------------------------------------------------------------------


@contextmanager
def fleet(
    server: Postgres,
    run: str,
    models: list[tuple[str, ...]],
    settings: Settings,
    keep_logs: Path | None,
    ollama_options: tuple[str, ...] = OLLAMA,
) -> Iterator[tuple[Database, list[Box]]]:
    """A box for each of ``models``, whose Ollama has those models (and
    ``ollama_options``), on a fresh database."""
    database = Database(server, f"fleet_{run}")
    script = HERE / "_fleet_ollama.py"
    with ExitStack() as stack:
        stack.callback(database.close)
        boxes = []
        for index, installed in enumerate(models):
            name = f"box-{index + 1}"
            only = ("--only", ",".join(installed))
            ollama = stack.enter_context(simulated_ollama(*ollama_options, *only, script=script))
            logs = None
            if keep_logs is not None:
                logs = keep_logs / f"{run}-{name}"
                logs.mkdir(parents=True, exist_ok=True)
            running = stack.enter_context(
                foreman_process(
                    ollama,
                    *("--database", database.box_url, "--box-name", name),
                    *("--max-queue", str(settings.jobs + 10)),
                    logfile="foreman.log" if logs else None,
                    keep_log=logs,
                )
            )
            boxes.append(Box(name, running.url, ollama))
        yield database, boxes


async def get_json(http: HTTPClient, url: str) -> Any:
    response = await http.get(url)
    return json.loads(await treq.content(response))


async def get_text(http: HTTPClient, url: str) -> str:
    response = await http.get(url)
    body: bytes = await treq.content(response)
    return body.decode()


async def post_json(http: HTTPClient, url: str, body: bytes) -> tuple[int, bytes]:
    response = await http.request("POST", url, data=body, headers=JSON)
    content: bytes = await treq.content(response)
    return response.code, content


async def sleep(reactor: Any, seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def until_fleet_ready(http: HTTPClient, reactor: Any, boxes: list[Box]) -> None:
    """Every box lists every box alive, with its models (heartbeats every 5 s)."""
    names = {box.name for box in boxes}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready = True
        for box in boxes:
            report = await get_json(http, box.url + "/api/foreman/queue")
            seen = {
                b["name"] for b in report.get("boxes", []) if b.get("alive") and b.get("models")
            }
            ready = ready and seen == names
        if ready:
            return
        await sleep(reactor, 0.25)
    raise RuntimeError(f"the fleet of {len(boxes)} did not see itself within 60 s")


def chat(model: str, text: str) -> bytes:
    document = {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "priority": "batch",
    }
    return json.dumps(document).encode()


async def submit(http: HTTPClient, box: Box, model: str, text: str) -> str:
    code, body = await post_json(http, box.url + "/jobs", chat(model, text))
    if code != 202:
        raise RuntimeError(f"POST /jobs at {box.name} answered {code}: {body!r}")
    job_id: str = json.loads(body)["job_id"]
    return job_id


async def box_metrics(http: HTTPClient, box: Box) -> dict[str, Any]:
    text = await get_text(http, box.url + "/metrics")
    loads = LOADS.search(text)
    return {
        "loads": int(float(loads.group(1))) if loads else 0,
        "worker_seconds": {a: round(float(s), 2) for a, s in WORKER_SECONDS.findall(text)},
    }


def runs_of(models: list[str]) -> str:
    """``["a", "a", "b"]`` as ``"a x2, b"``."""
    parts = []
    for model, group in itertools.groupby(models):
        n = len(list(group))
        parts.append(model if n == 1 else f"{model} x{n}")
    return ", ".join(parts) or "—"


async def background(reactor: Any, database: Database, seconds: float) -> tuple[float, float]:
    """What an idle fleet asks the database: statements, and BEGIN/COMMIT, per second."""
    before = database.statements()
    started = time.monotonic()
    await sleep(reactor, seconds)
    idle = statements_delta(database.statements(), before)
    elapsed = time.monotonic() - started
    statements, control = split_control(idle)
    return statements / elapsed, control / elapsed


# -- part 1: the batch -------------------------------------------------------------------


async def batch_run(
    reactor: Any,
    http: HTTPClient,
    database: Database,
    boxes: list[Box],
    settings: Settings,
) -> dict[str, Any]:
    await until_fleet_ready(http, reactor, boxes)
    await sleep(reactor, 1.0)
    idle_rate, idle_control_rate = await background(reactor, database, settings.idle_window)

    before, rows_before = database.usage()
    metrics_before = [await box_metrics(http, box) for box in boxes]
    first_sent = time.time()
    ids = []
    for index in range(settings.jobs):
        model = settings.models[index % len(settings.models)]
        ids.append(await submit(http, boxes[index % len(boxes)], model, f"job-{index}"))
    submitted = time.time() - first_sent
    deadline = time.monotonic() + 600
    while database.finished() < settings.jobs:
        if time.monotonic() > deadline:
            raise RuntimeError("the batch did not end within 600 s")
        await sleep(reactor, 0.05)
    after, rows_after = database.usage()
    used = statements_delta(after, before)
    touched = statements_delta(rows_after, rows_before)
    rows = database.jobs(ids)
    makespan = max(row["finished_at"] for row in rows) - first_sent
    statements, control = split_control(used)
    in_background = idle_rate * makespan

    per_box = []
    for box, earlier in zip(boxes, metrics_before, strict=True):
        record = await get_json(http, box.ollama + "/bench/record")
        metrics = await box_metrics(http, box)
        spent = {
            activity: round(seconds - earlier["worker_seconds"].get(activity, 0.0), 2)
            for activity, seconds in metrics["worker_seconds"].items()
        }
        mine = [row for row in rows if row["box"] == box.name]
        per_box.append(
            {
                "name": box.name,
                "jobs": len(mine),
                "loads": metrics["loads"] - earlier["loads"],
                "simulator_loads": record["loads"],
                "load_history": record["load_history"],
                "served": runs_of(record["chats"]),
                "last_done_s": max((r["finished_at"] for r in mine), default=first_sent)
                - first_sent,
                "worker_seconds": spent,
            }
        )
    loads = sum(box["loads"] for box in per_box)
    minimum = len(set(settings.models))
    work = settings.jobs * settings.job_seconds + loads * settings.load_seconds
    return {
        "boxes": len(boxes),
        "jobs": settings.jobs,
        "failed": sum(1 for row in rows if row["state"] != "done"),
        "retried": sum(1 for row in rows if row["attempt"] > 1),
        "submit_seconds": submitted,
        "makespan_s": makespan,
        "work_per_box_s": work / len(boxes),
        "loads": loads,
        "simulator_loads": sum(box["simulator_loads"] for box in per_box),
        "loads_allowed": minimum + len(boxes),
        "per_box": per_box,
        "statements": statements,
        "transaction_control": control,
        "statements_per_job": statements / settings.jobs,
        "round_trips_per_job": (statements + control) / settings.jobs,
        "idle_statements_per_second": idle_rate,
        "idle_round_trips_per_second": idle_rate + idle_control_rate,
        "background_statements_in_makespan": in_background,
        "statements_per_job_net": (statements - in_background) / settings.jobs,
        "rows_per_job": sum(touched.values()) / settings.jobs,
        "top_statements": [
            {
                "query": query[:160],
                "per_job": n / settings.jobs,
                "rows_per_job": touched.get(query, 0) / settings.jobs,
            }
            for query, n in used.most_common(12)
        ],
    }


# -- part 2: submit to start on an idle fleet --------------------------------------------


async def idle_starts(
    reactor: Any,
    http: HTTPClient,
    database: Database,
    boxes: list[Box],
    settings: Settings,
) -> dict[str, Any]:
    pace = random.Random(18)
    samples = []
    await until_fleet_ready(http, reactor, boxes)
    await sleep(reactor, 1.0)
    idle_rate, _ = await background(reactor, database, settings.idle_window)
    before = database.statements()
    started = time.monotonic()
    for index in range(settings.idle_samples):
        to = boxes[index % len(boxes)]
        model = settings.models[(index // len(boxes)) % len(settings.models)]
        sent = time.time()
        job_id = await submit(http, to, model, f"idle-{index}")
        accepted = time.time() - sent
        deadline = time.monotonic() + 60
        while True:
            row = database.job(job_id)
            if row.get("state") in ("done", "failed", "cancelled"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"idle job {index} did not end within 60 s")
            await sleep(reactor, 0.02)
        samples.append(
            {
                "to": to.name,
                "ran_on": row["box"],
                "model": model,
                "accepted_ms": accepted * 1e3,
                "start_ms": (row["started_at"] - sent) * 1e3,
            }
        )
        await sleep(reactor, 1.5 + 0.5 * pace.random())
    statements, _ = split_control(statements_delta(database.statements(), before))
    in_background = idle_rate * (time.monotonic() - started)

    def summary(chosen: list[dict[str, Any]]) -> dict[str, Any]:
        starts = [s["start_ms"] for s in chosen]
        return {
            "n": len(starts),
            "p50_ms": percentile(starts, 0.5),
            "p95_ms": percentile(starts, 0.95),
            "max_ms": max(starts, default=float("nan")),
        }

    return {
        "boxes": len(boxes),
        "submit_to_start": summary(samples),
        "same_box": summary([s for s in samples if s["ran_on"] == s["to"]]),
        "other_box": summary([s for s in samples if s["ran_on"] != s["to"]]),
        "submit_to_202": {
            "p50_ms": percentile([s["accepted_ms"] for s in samples], 0.5),
            "p95_ms": percentile([s["accepted_ms"] for s in samples], 0.95),
        },
        "statements_per_job": statements / len(samples),
        "statements_per_job_net": (statements - in_background) / len(samples),
        "samples": samples,
    }


# -- part 3: straight to one Ollama ------------------------------------------------------


async def direct_run(http: HTTPClient, settings: Settings) -> dict[str, Any]:
    with simulated_ollama(*OLLAMA, script=HERE / "_fleet_ollama.py") as ollama:

        async def one(index: int) -> float:
            model = settings.models[index % len(settings.models)]
            document = {
                "model": model,
                "messages": [{"role": "user", "content": f"job-{index}"}],
                "stream": False,
            }
            code, _ = await post_json(http, ollama + "/api/chat", json.dumps(document).encode())
            if code != 200:
                raise RuntimeError(f"direct chat answered {code}")
            return time.time()

        first_sent = time.time()
        ended = await gatherResults([ensureDeferred(one(i)) for i in range(settings.jobs)])
        record = await get_json(http, ollama + "/bench/record")
    return {
        "jobs": settings.jobs,
        "makespan_s": max(ended) - first_sent,
        "loads": record["loads"],
    }


# -- the whole -----------------------------------------------------------------------------


async def run(reactor: Any, arguments: argparse.Namespace) -> dict[str, Any]:
    settings = QUICK if arguments.quick else FULL
    keep_logs: Path | None = arguments.keep_logs
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 8
    http = HTTPClient(Agent(reactor, pool=pool))
    server = Postgres()
    results: dict[str, Any] = {"settings": asdict(settings), "runs": {}}
    parts = {"batch", "agents"} if arguments.only is None else {arguments.only}
    try:
        server.start()
        with server.connect() as admin:
            admin.execute("CREATE EXTENSION pg_stat_statements")
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(BOX_ROLE)))
        if "batch" in parts:
            await batch_part(reactor, http, pool, server, settings, keep_logs, results)
        if "agents" in parts:
            # Imported here: bench/_fleet_agents.py takes its helpers from this module.
            from bench import _fleet_agents

            results["agents"] = await _fleet_agents.run(reactor, server, arguments.quick, keep_logs)
    finally:
        await pool.closeCachedConnections()
        server.close()
    results["targets"] = targets(results)
    return results


async def batch_part(
    reactor: Any,
    http: HTTPClient,
    pool: HTTPConnectionPool,
    server: Postgres,
    settings: Settings,
    keep_logs: Path | None,
    results: dict[str, Any],
) -> None:
    """The first part: the batch on 1, 2 and 3 boxes, the idle fleet, direct."""
    for count in settings.boxes:
        print(f"{count} box(es) ...", file=sys.stderr, flush=True)
        every = [settings.models] * count
        with fleet(server, str(count), every, settings, keep_logs) as (database, boxes):
            results["runs"][str(count)] = await batch_run(reactor, http, database, boxes, settings)
        await pool.closeCachedConnections()
    print("idle fleet ...", file=sys.stderr, flush=True)
    half = len(settings.models) // 2
    split = [settings.models[:half], settings.models[half:]]
    with fleet(server, "idle", split, settings, keep_logs) as (database, boxes):
        results["idle"] = await idle_starts(reactor, http, database, boxes, settings)
    await pool.closeCachedConnections()
    print("direct ...", file=sys.stderr, flush=True)
    results["direct"] = await direct_run(http, settings)


def targets(results: dict[str, Any]) -> dict[str, Any]:
    runs = results["runs"]
    found: dict[str, Any] = {}
    if "agents" in results:
        found.update(results["agents"]["targets"])
    for count, wanted in TARGET_SPEEDUP.items():
        if str(count) in runs and "1" in runs:
            one = runs["1"]["makespan_s"]
            speedup = one / runs[str(count)]["makespan_s"]
            found[f"speedup_{count}"] = {"measured": speedup, "target": wanted}
            found[f"speedup_{count}"]["met"] = speedup >= wanted
    for count, run in runs.items():
        found[f"loads_{count}"] = {
            "measured": run["loads"],
            "target": run["loads_allowed"],
            "met": run["loads"] <= run["loads_allowed"],
        }
    if "idle" in results:
        p50 = results["idle"]["submit_to_start"]["p50_ms"]
        found["submit_to_start_p50_ms"] = {
            "measured": p50,
            "target": TARGET_SUBMIT_TO_START_MS,
            "met": p50 <= TARGET_SUBMIT_TO_START_MS,
        }
    return found


# -- the report ----------------------------------------------------------------------------


def _met(target: dict[str, Any]) -> str:
    return "**met**" if target["met"] else "**missed**"


def report(results: dict[str, Any]) -> str:
    parts = []
    if results["runs"]:
        parts.append(batch_report(results))
    if "agents" in results:
        from bench import _fleet_agents

        parts.append(_fleet_agents.report(results["agents"]))
    return "\n\n".join(parts)


def batch_report(results: dict[str, Any]) -> str:
    settings, runs, direct = results["settings"], results["runs"], results.get("direct")
    t = results["targets"]
    counts = sorted(runs, key=int)
    out = [
        f"Batch: {settings['jobs']} `/jobs` jobs (batch class) over {len(settings['models'])}"
        f" models ({', '.join(settings['models'])}), interleaved; every Ollama: loads"
        f" {settings['load_seconds']:g} s, {settings['reply_tokens']} tokens at"
        f" {settings['tokens_per_second']:g}/s ({settings['job_seconds']:g} s a job), one model"
        " loaded at a time.",
        "",
        "| measure | direct (one Ollama) | "
        + " | ".join(f"{c} box{'es' if c != '1' else ''}" for c in counts)
        + " | target |",
        "|---|---:|" + "---:|" * len(counts) + "---|",
    ]

    def row(name: str, direct_cell: str, cells: list[str], target: str = "") -> None:
        out.append(f"| {name} | {direct_cell} | " + " | ".join(cells) + f" | {target} |")

    row(
        "makespan (first submit → last done)",
        f"{direct['makespan_s']:.1f} s" if direct else "—",
        [f"{runs[c]['makespan_s']:.1f} s" for c in counts],
    )
    row(
        "(its work ÷ boxes: 0.4 s a job, 1 s a load)",
        "",
        [f"{runs[c]['work_per_box_s']:.1f} s" for c in counts],
    )
    speedups = [f"{runs['1']['makespan_s'] / runs[c]['makespan_s']:.2f}x" for c in counts]
    targets_text = ", ".join(
        f"{c} boxes ≥ {t[f'speedup_{c}']['target']:g}x: {_met(t[f'speedup_{c}'])}"
        for c in ("2", "3")
        if f"speedup_{c}" in t
    )
    row("speed-up over 1 box", "", speedups, targets_text)
    row(
        "model loads (foreman's metrics; simulators')",
        str(direct["loads"]) if direct else "—",
        [f"{runs[c]['loads']} ({runs[c]['simulator_loads']})" for c in counts],
        "≤ models + boxes: "
        + ", ".join(f"{runs[c]['loads_allowed']} {_met(t[f'loads_{c}'])}" for c in counts),
    )
    per_box = [" / ".join(str(b["jobs"]) for b in runs[c]["per_box"]) for c in counts]
    row("jobs per box", "", per_box)
    row(
        "each box's last job done at",
        "",
        [" / ".join(f"{b['last_done_s']:.1f} s" for b in runs[c]["per_box"]) for c in counts],
    )
    row(
        "DB statements per job (BEGIN/COMMIT apart)",
        "",
        [
            f"{runs[c]['statements_per_job']:.1f}"
            f" (+{runs[c]['transaction_control'] / runs[c]['jobs']:.1f})"
            for c in counts
        ],
    )
    row(
        "DB rows returned or written per job",
        "",
        [f"{runs[c]['rows_per_job']:.0f}" for c in counts],
    )
    row(
        "statements per job: the idle fleet's own over the makespan (heartbeats, polls)",
        "",
        [f"{runs[c]['background_statements_in_makespan'] / runs[c]['jobs']:.1f}" for c in counts],
    )
    row(
        "idle fleet: statements per second",
        "",
        [f"{runs[c]['idle_statements_per_second']:.1f}" for c in counts],
    )
    row(
        "failed / retried jobs",
        "",
        [f"{runs[c]['failed']} / {runs[c]['retried']}" for c in counts],
        "0 / 0",
    )
    out.append("")
    out.append("What each box served, in order, and how its worker spent the run:")
    out.append("")
    for c in counts:
        for box in runs[c]["per_box"]:
            spent = box["worker_seconds"]
            busy = ", ".join(
                f"{a} {spent[a]:.1f} s" for a in ("loading", "generating", "holding") if a in spent
            )
            out.append(f"- {c} box(es), {box['name']}: {box['served']} ({busy})")
    idle = results.get("idle")
    if idle is not None:
        s, same, other = idle["submit_to_start"], idle["same_box"], idle["other_box"]
        out += [
            "",
            f"Submit to start on an idle fleet of {idle['boxes']} boxes, each with two of the"
            " models (`started_at` minus the send time), one job at a time:",
            "",
            "| jobs | n | p50 | p95 | max | target |",
            "|---|---:|---:|---:|---:|---|",
            f"| all | {s['n']} | {s['p50_ms']:.1f} ms | {s['p95_ms']:.1f} ms"
            f" | {s['max_ms']:.1f} ms | p50 ≤ {TARGET_SUBMIT_TO_START_MS:g} ms:"
            f" {_met(t['submit_to_start_p50_ms'])} |",
            f"| run by the box that took the submit | {same['n']} | {same['p50_ms']:.1f} ms"
            f" | {same['p95_ms']:.1f} ms | {same['max_ms']:.1f} ms | |",
            f"| run by the other box | {other['n']} | {other['p50_ms']:.1f} ms"
            f" | {other['p95_ms']:.1f} ms | {other['max_ms']:.1f} ms | |",
            f"| (submit → 202) | {s['n']} | {idle['submit_to_202']['p50_ms']:.1f} ms"
            f" | {idle['submit_to_202']['p95_ms']:.1f} ms | | |",
            "",
            f"Database statements per job there: {idle['statements_per_job']:.1f}, of which"
            f" {idle['statements_per_job'] - idle['statements_per_job_net']:.1f} the idle"
            " fleet's own over the same time.",
        ]
    biggest = counts[-1]
    out += [
        "",
        f"Statements per job, {biggest} boxes, the most frequent"
        " (pg_stat_statements, the boxes' role, over the batch):",
        "",
        "| per job | rows per job | statement |",
        "|---:|---:|---|",
    ]
    for top in runs[biggest]["top_statements"]:
        query = top["query"].replace("|", "\\|")
        out.append(f"| {top['per_job']:.2f} | {top['rows_per_job']:.1f} | `{query[:110]}` |")
    return "\n".join(out)


def main() -> None:
    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--keep-logs", type=Path, help="keep every foreman's log in this directory"
        )
        parser.add_argument(
            "--only",
            choices=("batch", "agents"),
            help="run only the first part (the batch) or the second (agents, forwarding)",
        )

    bench_main(
        __doc__.splitlines()[0],
        f"{QUICK.jobs} jobs, {QUICK.idle_samples} idle samples",
        run,
        report,
        options,
    )


if __name__ == "__main__":
    main()

"""Batches: a 20,000-line OpenAI batch, and what the queue costs when deep (issue 20).

Runs the simulated Ollama (one model loaded at a time) and foreman under
``twistd`` (SQLite, the default) as separate processes; the caller is this
process, over HTTP.

1. **A batch.** A 20,000-line ``/v1/chat/completions`` input file, lines
   cycling over three models (the worst order for a client loop): time to
   upload it and to create the batch (accept), time until ``completed``,
   foreman's model loads (the minimum is three), foreman's peak RSS, and the
   output file checked line by line. Side by side, in the same run, the same
   first lines sent **straight to the simulated Ollama** by a client loop,
   one after another, and through foreman as a batch of their own.
2. **At depth.** A second foreman whose worker is held by an endless job,
   its queue filled with batch jobs (lists of ``/jobs``) to 1,000, 10,000 and
   100,000: at each depth, a submit and a cancel (so the depth stays put), a
   person's submit (``interactive``, near the front), its ``GET /jobs/{id}``
   with its position, the first page of ``GET /api/foreman/queue``, and
   foreman's RSS. And, in this process, the scheduler's own choice of the
   next job (pick and take) at each depth.

Usage: ``python bench/batches.py [--quick] [--json FILE]``
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import treq
from treq.client import HTTPClient
from twisted.internet import task
from twisted.web.client import Agent, HTTPConnectionPool

from bench._common import main as bench_main
from bench._common import percentile
from bench._processes import foreman_process, simulated_ollama
from foreman.queue.job import Job
from foreman.queue.scheduler import Scheduler
from foreman.wire.priority import Priority

MODELS = ("llama3.2", "qwen3:8b", "gemma3:12b")
CHAT = "/v1/chat/completions"
#: Answers at once; a load takes 0.1 s; one model at a time.
FAST_OLLAMA = ("--reply-tokens", "2", "--max-loaded-models", "1", "--load-seconds", "0.1")
#: Generates for ever, so that the first job holds the worker.
ENDLESS_OLLAMA = ("--reply-tokens", "1000000", "--tokens-per-second", "1")
LOADS = re.compile(r"^foreman_model_loads_total ([0-9.e+-]+)$", re.MULTILINE)
JSON = {"Content-Type": "application/json"}
SAMPLES = 50


def settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {"lines": 2_000, "direct_lines": 60, "depths": [1_000, 10_000]}
    return {"lines": 20_000, "direct_lines": 300, "depths": [1_000, 10_000, 100_000]}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def line(number: int) -> dict[str, Any]:
    body = {
        "model": MODELS[number % len(MODELS)],
        "messages": [{"role": "user", "content": f"ticket {number}: classify it"}],
    }
    return {"custom_id": f"req-{number}", "method": "POST", "url": CHAT, "body": body}


def input_file(count: int) -> bytes:
    return b"".join(json.dumps(line(n)).encode() + b"\n" for n in range(count))


def multipart(content: bytes) -> tuple[bytes, str]:
    boundary = "foreman-bench-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n',
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n'
        "Content-Type: application/jsonl\r\n\r\n",
    ]
    body = "".join(parts).encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


async def call(http: HTTPClient, method: str, url: str, body: Any = None, **headers: str) -> Any:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    sent: dict[bytes | str, bytes | str] = dict(headers.items() or JSON.items())
    response = await http.request(method, url, data=data, headers=sent)
    content = await treq.content(response)
    if response.code >= 300:
        raise RuntimeError(f"{method} {url} answered {response.code}: {content[:300]!r}")
    kind = response.headers.getRawHeaders(b"content-type", [b""])[0]
    return json.loads(content) if kind.split(b";")[0].strip() == b"application/json" else content


async def loads(http: HTTPClient, url: str) -> int:
    text = (await call(http, "GET", url + "/metrics")).decode()
    found = LOADS.search(text)
    return int(float(found.group(1))) if found else 0


async def run_batch(
    reactor: Any, http: HTTPClient, url: str, pid: int, count: int
) -> dict[str, Any]:
    """Upload, create, wait for ``completed``; what each step took."""
    loads_before = await loads(http, url)
    body, content_type = multipart(input_file(count))
    started = time.perf_counter()
    uploaded = await call(http, "POST", url + "/v1/files", body, **{"Content-Type": content_type})
    upload_seconds = time.perf_counter() - started
    started = time.perf_counter()
    batch = await call(
        http,
        "POST",
        url + "/v1/batches",
        {"input_file_id": uploaded["id"], "endpoint": CHAT, "completion_window": "24h"},
    )
    create_seconds = time.perf_counter() - started
    peak = rss_mb(pid)
    while batch["status"] not in ("completed", "cancelled", "failed"):
        await task.deferLater(reactor, 0.5, lambda: None)
        batch = await call(http, "GET", f"{url}/v1/batches/{batch['id']}")
        peak = max(peak, rss_mb(pid))
    run_seconds = time.perf_counter() - started - create_seconds
    output = await call(http, "GET", f"{url}/v1/files/{batch['output_file_id']}/content")
    answered = {json.loads(each)["custom_id"] for each in output.splitlines()}
    return {
        "lines": count,
        "upload_seconds": round(upload_seconds, 3),
        "create_seconds": round(create_seconds, 3),
        "run_seconds": round(run_seconds, 2),
        "lines_per_second": round(count / run_seconds, 1),
        "loads": await loads(http, url) - loads_before,
        "peak_rss_mb": round(peak, 1),
        "status": batch["status"],
        "every_line_answered_once": answered == {f"req-{n}" for n in range(count)},
    }


async def run_direct(http: HTTPClient, ollama: str, count: int) -> dict[str, Any]:
    """The same first ``count`` lines, straight to Ollama, one after another."""
    started = time.perf_counter()
    for number in range(count):
        await call(http, "POST", ollama + CHAT, line(number)["body"])
    seconds = time.perf_counter() - started
    switches = sum(1 for n in range(1, count) if n % len(MODELS) != (n - 1) % len(MODELS))
    return {"lines": count, "run_seconds": round(seconds, 2), "loads": switches + 1}


def job_document(text: str, priority: str = "batch") -> dict[str, Any]:
    body = {"model": "qwen3:8b", "messages": [{"role": "user", "content": text}]}
    return {**body, "priority": priority}


def timed_ms(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(samples, 0.5) * 1e3, 2),
        "p95_ms": round(percentile(samples, 0.95) * 1e3, 2),
    }


async def at_depth(http: HTTPClient, url: str, pid: int, depth: int) -> dict[str, Any]:
    submits, cancels, people, looks, reports = [], [], [], [], []
    for number in range(SAMPLES):
        started = time.perf_counter()
        made = await call(http, "POST", url + "/jobs", job_document(f"d{depth}-{number}"))
        submits.append(time.perf_counter() - started)
        started = time.perf_counter()
        await call(http, "POST", f"{url}/jobs/{made['job_id']}/cancel")
        cancels.append(time.perf_counter() - started)
        started = time.perf_counter()
        person = await call(
            http, "POST", url + "/jobs", job_document(f"p{depth}-{number}", "interactive")
        )
        people.append(time.perf_counter() - started)
        started = time.perf_counter()
        view = await call(http, "GET", f"{url}/jobs/{person['job_id']}")
        looks.append(time.perf_counter() - started)
        assert view["position"] is not None and view["position"] <= 3, view
        await call(http, "POST", f"{url}/jobs/{person['job_id']}/cancel")
        started = time.perf_counter()
        await call(http, "GET", url + "/api/foreman/queue")
        reports.append(time.perf_counter() - started)
    return {
        "depth": depth,
        "submit": timed_ms(submits),
        "cancel": timed_ms(cancels),
        "person_submit": timed_ms(people),
        "position": timed_ms(looks),
        "queue_page": timed_ms(reports),
        "rss_mb": round(rss_mb(pid), 1),
    }


def pick_at_depth(depth: int) -> dict[str, Any]:
    """The scheduler's choice of the next job with ``depth`` queued, in this process."""
    scheduler = Scheduler(10, max_batch_queue=depth + 10)
    for number in range(depth):
        job = Job(
            id=f"job-{number:07d}",
            model=MODELS[number % len(MODELS)],
            endpoint="chat",
            body=b"{}",
            sync=False,
            created_at=1000.0 + number / 1e4,
            updated_at=1000.0,
            priority=Priority.BATCH,
        )
        scheduler.add(job, reserved=False)
    samples = []
    now = 2000.0
    for _ in range(2_000):
        started = time.perf_counter()
        picked = scheduler.pick("qwen3:8b", now)
        assert picked is not None
        scheduler.take(picked, now)
        samples.append(time.perf_counter() - started)
        scheduler.add(picked, reserved=False)  # back at its place: the depth stays
    return {"depth": depth, "p50_us": round(percentile(samples, 0.5) * 1e6, 1)}


async def fill(http: HTTPClient, url: str, depth: int, have: int) -> None:
    chunk = 10_000
    while have < depth:
        size = min(chunk, depth - have)
        documents = [job_document(f"fill-{have + n}") for n in range(size)]
        await call(http, "POST", url + "/jobs", documents)
        have += size


async def run(reactor: Any, quick: bool) -> dict[str, Any]:
    chosen = settings(quick)
    pool = HTTPConnectionPool(reactor, persistent=True)
    http = HTTPClient(Agent(reactor, pool=pool))
    results: dict[str, Any] = {"settings": chosen}
    try:
        with simulated_ollama(*FAST_OLLAMA) as ollama, foreman_process(ollama) as running:
            print("a batch ...", file=sys.stderr, flush=True)
            results["batch"] = await run_batch(
                reactor, http, running.url, running.pid, chosen["lines"]
            )
            count = chosen["direct_lines"]
            print("the same first lines, straight and as a batch ...", file=sys.stderr, flush=True)
            results["direct"] = await run_direct(http, ollama, count)
            results["small_batch"] = await run_batch(reactor, http, running.url, running.pid, count)
        depth_options = (
            *("--max-batch-queue", str(max(chosen["depths"]) + 1_000)),
            *("--drain-timeout", "1s"),  # the endless job is cut at once on the way out
        )
        with (
            simulated_ollama(*ENDLESS_OLLAMA) as ollama,
            foreman_process(ollama, *depth_options) as running,
        ):
            endless = await call(http, "POST", running.url + "/jobs", job_document("endless"))
            while (await call(http, "GET", f"{running.url}/jobs/{endless['job_id']}"))[
                "state"
            ] != "working":
                await task.deferLater(reactor, 0.1, lambda: None)
            results["depths"] = []
            have = 0
            for depth in chosen["depths"]:
                print(f"at depth {depth} ...", file=sys.stderr, flush=True)
                await fill(http, running.url, depth, have)
                have = depth
                results["depths"].append(await at_depth(http, running.url, running.pid, depth))
        results["picks"] = [pick_at_depth(depth) for depth in chosen["depths"]]
    finally:
        await pool.closeCachedConnections()
    return results


def report(results: dict[str, Any]) -> str:
    batch, direct, small = results["batch"], results["direct"], results["small_batch"]
    out = [
        f"A {batch['lines']:,}-line batch over {len(MODELS)} models (lines cycling over them):",
        "",
        "| measure | through foreman |",
        "|---|---:|",
        f"| upload the input file | {batch['upload_seconds']:.2f} s |",
        f"| create the batch (accept) | {batch['create_seconds']:.2f} s |",
        f"| run to completed | {batch['run_seconds']:.1f} s"
        f" ({batch['lines_per_second']} lines/s) |",
        f"| model loads | {batch['loads']} |",
        f"| foreman's peak RSS | {batch['peak_rss_mb']} MB |",
        f"| every line answered once | {batch['every_line_answered_once']} |",
        "",
        f"The first {direct['lines']} lines, one after another straight to Ollama, and as a batch:",
        "",
        "| | straight, a client loop | through foreman, a batch |",
        "|---|---:|---:|",
        f"| time | {direct['run_seconds']:.1f} s | {small['run_seconds']:.1f} s |",
        f"| loads | {direct['loads']} | {small['loads']} |",
        "",
        "At depth (the worker held; batch jobs queued), p50 (p95):",
        "",
        "| queued | submit | cancel | a person's submit | its GET (position) | queue page | RSS |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for d in results["depths"]:
        cells = [
            f"{d[k]['p50_ms']:.2f} ({d[k]['p95_ms']:.2f}) ms"
            for k in ("submit", "cancel", "person_submit", "position", "queue_page")
        ]
        out.append(f"| {d['depth']:,} | " + " | ".join(cells) + f" | {d['rss_mb']} MB |")
    out += ["", "The scheduler's pick and take of the next job, in process, p50:", ""]
    out += [f"- {p['depth']:,} queued: {p['p50_us']} µs" for p in results["picks"]]
    return "\n".join(out)


def main() -> None:
    bench_main(
        __doc__.splitlines()[0],
        "2,000 lines, depths of 1,000 and 10,000",
        lambda reactor, arguments: run(reactor, arguments.quick),
        report,
    )


if __name__ == "__main__":
    main()

"""The /jobs surface under load: submit latency, and how soon a done event arrives.

Runs the simulated Ollama and foreman (under twistd, with a webhook secret) as
separate processes on this machine; a webhook receiver on 127.0.0.1 runs in
this process. Submits 1,000 jobs one after the other (the worker runs them
meanwhile, as it would), each with a ``state_webhook_url``, then waits until
every job's ``done`` event has arrived: four events a job. Prints, for two
simulated targets:

* submit latency p50/p99 (``POST /jobs`` to its ``202``, read whole),
* done-to-receipt p50/p99: the ``done`` event's arrival here minus its
  ``timestamp`` (the job's ``finished_at``, millisecond precision),
* throughput: jobs finished per second, events received.

``paced``: each generation takes 16 ms (8 tokens at 500/s), still a hundred
times quicker than a model on the Mac; the targets are for this one.
``flat out``: generations take no time, so foreman finishes jobs as fast as
it can and every submit competes with the whole pipeline (four events,
twelve store writes and a relayed call per job): the worst case.

Usage: ``python bench/jobs.py [--quick] [--json FILE]``
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import treq
from twisted.internet import defer
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import Site

from bench._common import main as bench_main
from bench._common import percentile
from bench._processes import foreman, simulated_ollama
from foreman.relay.upstream import BytesBodyProducer

JOBS = 1000
SCENARIOS = {
    "paced": ("--reply-tokens", "8", "--tokens-per-second", "500"),
    "flat out": ("--reply-tokens", "8"),
}
HEADERS = Headers({b"Content-Type": [b"application/json"]})


class Receiver(Resource):
    """Notes when each event arrives; answers 204 at once."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        #: job id -> arrival time of its first ``done`` event, and its timestamp.
        self.done: dict[str, tuple[float, str]] = {}
        self.events = 0
        self.finished: defer.Deferred[None] = defer.Deferred()
        self.expected = 0

    def render_POST(self, request: IRequest) -> bytes:
        arrived = time.time()
        self.events += 1
        event = json.loads(request.content.read())
        if event["state"] == "done" and event["job_id"] not in self.done:
            self.done[event["job_id"]] = (arrived, event["timestamp"])
            if len(self.done) == self.expected and not self.finished.called:
                self.finished.callback(None)
        request.setResponseCode(204)
        return b""


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def run(reactor: Any, quick: bool) -> dict[str, dict[str, Any]]:
    count = JOBS // 5 if quick else JOBS
    return {name: await scenario(reactor, count, sim) for name, sim in SCENARIOS.items()}


async def scenario(reactor: Any, count: int, sim_arguments: tuple[str, ...]) -> dict[str, Any]:
    receiver = Receiver()
    receiver.expected = count
    site = Site(receiver)
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    hook = f"http://127.0.0.1:{port.getHost().port}/hook"
    pool = HTTPConnectionPool(reactor, persistent=True)
    agent = Agent(reactor, pool=pool)
    latencies: list[float] = []
    with tempfile.NamedTemporaryFile("w", suffix=".secret") as secret:
        secret.write("bench secret")
        secret.flush()
        with (
            simulated_ollama(*sim_arguments) as sim,
            foreman(
                sim, "--max-queue", str(count + 10), "--webhook-secret-file", secret.name
            ) as url,
        ):
            submit = (url + "/jobs").encode()
            started = time.perf_counter()
            for index in range(count):
                body = {
                    "model": "llama3.2",
                    "messages": [{"role": "user", "content": f"job {index}"}],
                    "state_webhook_url": hook,
                }
                sent = time.perf_counter()
                response = await agent.request(
                    b"POST", submit, HEADERS, BytesBodyProducer(json.dumps(body).encode())
                )
                await treq.content(response)
                latencies.append(time.perf_counter() - sent)
                if response.code != 202:
                    raise RuntimeError(f"POST /jobs answered {response.code}")
            await receiver.finished.addTimeout(300, reactor)
            elapsed = time.perf_counter() - started
    await pool.closeCachedConnections()
    await port.stopListening()
    delays = [arrived - _seconds(stamp) for arrived, stamp in receiver.done.values()]
    return {
        "jobs": count,
        "submit_p50_ms": percentile(latencies, 0.5) * 1e3,
        "submit_p99_ms": percentile(latencies, 0.99) * 1e3,
        "done_to_webhook_p50_ms": percentile(delays, 0.5) * 1e3,
        "done_to_webhook_p99_ms": percentile(delays, 0.99) * 1e3,
        "jobs_per_second": count / elapsed,
        "events_received": receiver.events,
    }


def report(results: dict[str, dict[str, Any]]) -> str:
    paced, flat = results["paced"], results["flat out"]
    rows = [
        ("submit latency p50", "submit_p50_ms", "ms", "<= 5 ms"),
        ("submit latency p99", "submit_p99_ms", "ms", ""),
        ("done to webhook receipt p50", "done_to_webhook_p50_ms", "ms", "<= 20 ms"),
        ("done to webhook receipt p99", "done_to_webhook_p99_ms", "ms", ""),
        ("jobs finished per second", "jobs_per_second", "/s", ""),
    ]
    out = ["| measure | paced | flat out | target (paced) |", "|---|---:|---:|---|"]
    for name, key, unit, target in rows:
        out.append(f"| {name} | {paced[key]:.2f} {unit} | {flat[key]:.2f} {unit} | {target} |")
    out.append(
        f"\n{paced['jobs']} jobs each; events received: paced {paced['events_received']},"
        f" flat out {flat['events_received']}"
    )
    return "\n".join(out)


def main() -> None:
    bench_main(
        __doc__.splitlines()[0],
        "a fifth of the jobs",
        lambda reactor, arguments: run(reactor, arguments.quick),
        report,
    )


if __name__ == "__main__":
    main()

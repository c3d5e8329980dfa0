"""Soak: minutes of mixed, partly hostile load; does foreman leak or lose anything?

foreman runs under twistd in its own process (with a token, a webhook secret
and ``--embed-model all-minilm``) in front of the simulated Ollama in another
(20-token replies at 100 tokens/s, 0.3 s model loads), so that only foreman's
own memory and descriptors are measured. This process sends the load and
runs the webhook receivers:

* streamed ``/api/chat`` (NDJSON), ``/v1/chat/completions`` and ``/v1/messages``
  (SSE), each read to its end; ``/api/embed`` calls;
* hang-ups: streams cut after three lines, and chats cut 20 to 400 ms after they
  were sent (mostly while queued), half with a reset and half with a FIN;
* ``/jobs`` with state webhooks, steadily and in bursts of ten: 70 % to a
  receiver that answers 204, 15 % to one that answers 500, 15 % to a port
  nothing listens on; a tenth cancelled soon after;
* hostile calls (bad JSON, wrong types, huge model names, unknown paths, wrong
  methods, no or a wrong token, a garbage request line, a lying
  Content-Length, an oversized header), each of which must be refused 4xx;
* sixteen idle connections held open 20 to 90 s (most after a request, some before
  any) and then used, or closed by foreman's idle timeout; slow senders trickling a
  request's headers or body, which foreman must cut with 408 at its header or body
  timeout (the options are looked up in ``twistd foreman --help``; without them, the
  slow request must be answered).

Seeded Poisson arrivals; a warm-up with the same load comes first. Printed per
minute: foreman's RSS and open descriptors (``/proc``), its TCP connections,
queue depth, requests and errors (foreman's ``/metrics``), and calls that
ended on purpose (refusals, hang-ups) or unexpectedly. Then the targets:

* RSS grows by at most 20 MB over its value after the warm-up;
* open descriptors are back to that baseline once the load stops;
* no job lost: each ends as expected (done, or cancelled when its cancel said
  so), and a working receiver heard its final state; the outbox empties;
* no error not caused on purpose: no unexpected outcome here, no 5xx from
  foreman, no error or traceback in foreman's log.

Usage: ``python bench/soak.py [--minutes N] [--quick] [--seed N] [--json FILE]``
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import task
from twisted.web.server import Site

from bench._common import main as bench_main
from bench._processes import RunningForeman, foreman_process, free_port, simulated_ollama
from bench._soak_load import EMBED_MODEL, Http, JobRecord, Receivers, Tally, check_jobs
from bench._soak_mix import Context, Mix, Rates, front_door
from bench._soak_probe import (
    Metrics,
    ProcessSample,
    log_trouble,
    log_warnings,
    parse_metrics,
    pending_webhooks,
    sample_process,
)
from bench._soak_raw import FrontDoor
from bench._soak_report import report

LOG = "foreman.log"
SIMULATOR = ("--tokens-per-second", "100", "--reply-tokens", "20", "--load-seconds", "0.3")
SAMPLE_EVERY = 5.0
RSS_TARGET_MB = 20.0
#: foreman closes a pooled connection to Ollama idle this long (relay/upstream.py), plus 2 s.
UPSTREAM_IDLE_S = 62.0


@dataclass
class Sample:
    at: float
    phase: str
    process: ProcessSample
    metrics: Metrics


class Watcher:
    """Samples foreman's process and ``/metrics``, each sample labelled with a phase."""

    def __init__(self, reactor: Any, running: RunningForeman, upstream_port: int, token: str):
        self.reactor = reactor
        self.running = running
        self.upstream_port = upstream_port
        # One kept-alive connection of its own, part of every figure alike.
        self.http = Http(reactor, running.url, token, idle_seconds=30)
        self.http.pool.maxPersistentPerHost = 1
        self.samples: list[Sample] = []
        self.started = time.monotonic()

    def process(self) -> ProcessSample:
        r = self.running
        return sample_process(r.pid, r.port, self.upstream_port)

    async def metrics(self) -> Metrics:
        answer = await self.http.call("GET", "/metrics")
        if answer.status != 200:
            raise RuntimeError(f"/metrics answered {answer.status}")
        return parse_metrics(answer.body.decode())

    async def sample(self, phase: str) -> Sample:
        found = Sample(time.monotonic() - self.started, phase, self.process(), await self.metrics())
        self.samples.append(found)
        return found

    async def sample_for(self, phase: str, seconds: float) -> None:
        for _ in range(max(1, round(seconds / SAMPLE_EVERY))):
            await sleep(self.reactor, SAMPLE_EVERY)
            await self.sample(phase)


async def sleep(reactor: Any, seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def drain(watcher: Watcher, limit: float) -> float:
    """Wait until the queue is empty, the worker idle and the webhook outbox empty;
    the seconds it took (or ``limit``, having waited that long)."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        metrics = await watcher.metrics()
        idle = metrics.queue_depth == 0 and metrics.worker_busy == 0
        if idle and pending_webhooks(watcher.running.data_dir) == 0:
            return time.monotonic() - started
        await sleep(watcher.reactor, 1.0)
    return limit


async def settle(watcher: Watcher, limit: float, fds: int | None = None) -> float:
    """Wait until only the watcher's connection is open inbound and nothing outbound
    (webhooks); with ``fds``, also until no more descriptors than that are open. The
    seconds it took, or ``limit``. Connections to Ollama are left to foreman's pool."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        now = watcher.process()
        if now.inbound <= 1 and now.outbound == 0 and (fds is None or now.fds <= fds):
            return time.monotonic() - started
        await sleep(watcher.reactor, 1.0)
        await watcher.metrics()  # keeps the watcher's own connection open, as in the load
    return limit


def longest_stall(samples: list[Sample]) -> float:
    """The longest stretch (s) over which jobs stayed queued, the worker idle and no job
    was done, from one sample to the next: a worker that has stopped picking work."""
    longest, since = 0.0, None
    for before, after in itertools.pairwise(samples):
        m, done_before = after.metrics, before.metrics.jobs_finished.get("done")
        stuck = (
            m.queue_depth > 0 and m.worker_busy == 0 and m.jobs_finished.get("done") == done_before
        )
        if stuck:
            since = before.at if since is None else since
            longest = max(longest, after.at - since)
        else:
            since = None
    return longest


def minute_rows(samples: list[Sample], tally: Tally, minutes: int) -> list[dict[str, Any]]:
    rows = []
    previous = next(s for s in reversed(samples) if s.phase == "baseline")
    for minute in range(1, minutes + 1):
        inside = [s for s in samples if s.phase == str(minute)]
        last = inside[-1]
        rows.append(
            {
                "minute": minute,
                "cpu_percent": 100
                * (last.process.cpu_s - previous.process.cpu_s)
                / (last.at - previous.at),
                "rss_mb": last.process.rss_mb,
                "rss_peak_mb": max(s.process.rss_mb for s in inside),
                "fds_max": max(s.process.fds for s in inside),
                "fds_end": last.process.fds,
                "inbound_max": max(s.process.inbound for s in inside),
                "upstream_max": max(s.process.upstream for s in inside),
                "outbound_max": max(s.process.outbound for s in inside),
                "close_wait_max": max(s.process.close_wait for s in inside),
                "queue_max": max(s.metrics.queue_depth for s in inside),
                "requests": last.metrics.total - previous.metrics.total,
                "status_4xx": last.metrics.count(400, 499) - previous.metrics.count(400, 499),
                "status_5xx": last.metrics.count(500, 599) - previous.metrics.count(500, 599),
                "status_499": last.metrics.count(499, 499) - previous.metrics.count(499, 499),
                "foreman_connections_max": max(s.metrics.client_connections for s in inside),
                "ok": tally.count(str(minute), "ok"),
                "on_purpose": tally.count(str(minute), "on purpose"),
                "unexpected": tally.count(str(minute), "unexpected"),
            }
        )
        previous = last
    return rows


async def soak(
    reactor: Any,
    arguments: argparse.Namespace,
    running: RunningForeman,
    sim_port: int,
    front: FrontDoor,
    token: str,
    secret: str,
) -> dict[str, Any]:
    minutes: int = 1 if arguments.quick else arguments.minutes
    warm_up = 20.0 if arguments.quick else 60.0
    tally = Tally()
    jobs: dict[str, JobRecord] = {}
    receivers = Receivers(secret, tally, jobs)
    site = Site(receivers)
    site.noisy = False
    listening = reactor.listenTCP(0, site, interface="127.0.0.1")
    hook = f"http://127.0.0.1:{listening.getHost().port}"
    hooks = {"ok": hook + "/ok", "fail": hook + "/fail"}
    hooks["refused"] = f"http://127.0.0.1:{free_port()}/nobody-listens"
    idle = 240.0 if front.idle_timeout is None else front.idle_timeout / 2
    http = Http(reactor, running.url, token, idle_seconds=idle)
    watcher = Watcher(reactor, running, sim_port, token)
    rates = Rates()
    context = Context(reactor, http, running.port, token, tally, jobs, hooks, front)
    mix = Mix(context, rates, arguments.seed)
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    started_all = await watcher.sample("start")

    say(f"warm-up: {warm_up:.0f} s of the same load")
    mix.start()
    await watcher.sample_for("warm-up", warm_up)
    stopped = time.monotonic()
    await mix.stop()
    drained_warm_up = await drain(watcher, 180)
    await http.pool.closeCachedConnections()
    # foreman's pool closes a connection to Ollama left idle for 60 s (the ones its
    # inventory poll keeps using stay): the baseline is taken after that.
    while time.monotonic() - stopped < UPSTREAM_IDLE_S:
        await watcher.sample_for("settling", SAMPLE_EVERY)
    settled_warm_up = await settle(watcher, 90)
    baseline = await watcher.sample("baseline")
    say(
        f"baseline: RSS {baseline.process.rss_mb:.1f} MB, {baseline.process.fds} fds"
        f" (drained in {drained_warm_up:.0f} s, settled in {settled_warm_up:.0f} s)"
    )

    mix.start()
    for minute in range(1, minutes + 1):
        tally.phase = str(minute)
        await watcher.sample_for(str(minute), 60.0)
        row = minute_rows(watcher.samples, tally, minute)[-1]
        say(
            f"minute {minute}: RSS {row['rss_mb']:.1f} MB, fds max {row['fds_max']},"
            f" in {row['inbound_max']}, queue max {row['queue_max']:.0f},"
            f" {row['requests']:.0f} requests, {row['on_purpose']} on purpose,"
            f" {row['unexpected']} unexpected"
        )
    tally.phase = "drain"
    stopping = time.monotonic()
    await mix.stop()
    stopped_in = time.monotonic() - stopping
    drained_in = await drain(watcher, 240)
    await watcher.sample("drained")
    queue_answer = await http.call("GET", "/api/foreman/queue")
    queue_left = len(json.loads(queue_answer.body)["jobs"])
    final_states, lost = await check_jobs(http, jobs)
    await http.pool.closeCachedConnections()
    settled_in = await settle(watcher, 90, fds=baseline.process.fds)
    end = await watcher.sample("end")
    stall = longest_stall(watcher.samples)
    if stall >= 30:
        tally.unexpected("worker", f"idle for {stall:.0f} s with jobs queued, none finishing")
    if end.metrics.client_connections != end.process.inbound:
        counted, open_now = end.metrics.client_connections, end.process.inbound
        tally.unexpected("connections", f"foreman counts {counted:.0f}, /proc shows {open_now}")
    await watcher.http.pool.closeCachedConnections()
    await listening.stopListening()

    soak_samples = [s for s in watcher.samples if s.phase.isdigit()]
    rss_peak = max(s.process.rss_mb for s in soak_samples)
    foreman_5xx = end.metrics.count(500, 599) - started_all.metrics.count(500, 599)
    trouble = log_trouble(running.data_dir, LOG)
    soak_unexpected = sum(tally.count(str(m), "unexpected") for m in range(1, minutes + 1))
    all_unexpected = sum(c["unexpected"] for c in tally.by_phase.values())
    return {
        "settings": {
            "minutes": minutes,
            "warm_up_s": warm_up,
            "seed": arguments.seed,
            "rates": asdict(rates),
            "simulator": " ".join(SIMULATOR),
            "front_door": asdict(front),
            "calls_started": mix.started,
        },
        "baseline": asdict(baseline.process),
        "end": asdict(end.process),
        "minutes": minute_rows(watcher.samples, tally, minutes),
        "samples": [
            {
                "at": round(s.at, 1),
                "phase": s.phase,
                **asdict(s.process),
                "queue": s.metrics.queue_depth,
            }
            for s in watcher.samples
        ],
        "drain": {
            "calls_finished_in_s": stopped_in,
            "queue_and_outbox_empty_in_s": drained_in,
            "queue_jobs_left": queue_left,
            "settled_in_s": settled_in,
        },
        "worker_longest_stall_s": stall,
        "model_loads": end.metrics.model_loads - baseline.metrics.model_loads,
        "targets": {
            "rss_growth_peak_mb": rss_peak - baseline.process.rss_mb,
            "rss_growth_end_mb": end.process.rss_mb - baseline.process.rss_mb,
            "rss_target_mb": RSS_TARGET_MB,
            "fds_over_baseline": end.process.fds - baseline.process.fds,
            "jobs_submitted": len(jobs),
            "jobs_lost": len(lost),
            "unexpected_soak": soak_unexpected,
            "unexpected_all_phases": all_unexpected,
            "foreman_5xx": foreman_5xx,
            "log_errors": len(trouble),
        },
        "jobs_final_states": final_states,
        "jobs_lost": lost[:50],
        "outcomes": dict(sorted(tally.kinds.items())),
        "unexpected": tally.unexpected_log[:50],
        "webhooks": {
            "foreman": end.metrics.webhooks,
            "received": dict(receivers.received),
            "events_before_their_202": len(receivers.unknown),
        },
        "foreman_status_counts": {str(k): v for k, v in sorted(end.metrics.requests.items())},
        "connections": {
            "foreman_count_at_end": end.metrics.client_connections,
            "sockets_at_end": end.process.inbound,
            "limit": end.metrics.connections_limit,
            "closed_idle_at_cap": end.metrics.connections_closed_idle,
            "refused_at_cap": end.metrics.connections_refused,
        },
        "log_errors": trouble[:30],
        "log_warnings": log_warnings(running.data_dir, LOG),
    }


async def measure(reactor: Any, arguments: argparse.Namespace) -> dict[str, Any]:
    front, extra = front_door()
    token, secret = "soak-token", "soak-webhook-secret"
    with tempfile.TemporaryDirectory() as secrets, tempfile.TemporaryDirectory() as kept:
        token_file, secret_file = Path(secrets, "token"), Path(secrets, "secret")
        token_file.write_text(token)
        secret_file.write_text(secret)
        options = ["--embed-model", EMBED_MODEL, "--token-file", str(token_file)]
        options += ["--webhook-secret-file", str(secret_file), *extra]
        with (
            simulated_ollama(*SIMULATOR) as sim,
            foreman_process(sim, *options, logfile=LOG, keep_log=Path(kept)) as running,
        ):
            sim_port = int(sim.rsplit(":", 1)[1])
            figures = await soak(reactor, arguments, running, sim_port, front, token, secret)
        # Stopping can say what running did not (a failed service, say): read it all again.
        trouble = log_trouble(Path(kept), LOG)
        figures["log_errors"] = trouble[:30]
        figures["targets"]["log_errors"] = len(trouble)
        described = f"--embed-model {EMBED_MODEL}, a token, a webhook secret"
        figures["settings"]["foreman_options"] = " ".join([described, *extra])
        return figures


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=int, default=5, help="minutes of load (default 5)")
    parser.add_argument("--seed", type=int, default=2026, help="seed of the arrivals")


def main() -> None:
    bench_main(__doc__.splitlines()[0], "one minute of load", measure, report, options)


if __name__ == "__main__":
    main()

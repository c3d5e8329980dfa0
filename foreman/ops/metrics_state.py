"""The states ``GET /metrics`` reads at scrape time (:mod:`foreman.ops.metrics`).

Queue depth, the running job, residency and swaps, reachability and pauses,
webhook deliveries, connections: read off the live objects that hold them
whenever Prometheus scrapes, so nothing has to remember to update a gauge.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from foreman.http.connections import Connections
from foreman.queue.job import JobState
from foreman.wire.priority import Priority

if TYPE_CHECKING:
    from foreman.queue.worker import Worker
    from foreman.relay.inventory import Inventory


class StateCollector(Collector):
    """Gauges and counters read off live objects when Prometheus scrapes."""

    def __init__(self) -> None:
        self.inventory: Inventory | None = None
        self.worker: Worker | None = None
        self.outbox: Any = None
        self.connections: Connections | None = None
        #: Jobs that reached each terminal state since start (all kinds of job).
        self._finished = dict.fromkeys((s for s in JobState if s.terminal), 0)

    def job_moved(self, job: Any, previous: Any = None) -> None:
        state = getattr(job, "state", None)
        if isinstance(state, JobState) and state.terminal and previous is not state:
            self._finished[state] += 1

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self._upstream()
        yield from self._queue()
        yield from self._webhooks()
        yield from self._connections()

    def _connections(self) -> Iterator[Metric]:
        connections = self.connections
        if connections is None:
            return
        open_now = GaugeMetricFamily(
            "foreman_client_connections", "Client connections open now (the cap is the limit)."
        )
        open_now.add_metric([], float(connections.count))
        yield open_now
        limit = GaugeMetricFamily(
            "foreman_client_connections_limit", "The cap on open client connections."
        )
        limit.add_metric([], float(connections.limit))
        yield limit
        evicted = CounterMetricFamily(
            "foreman_client_connections_closed_idle",
            "Idle client connections closed to make room at the cap.",
        )
        evicted.add_metric([], float(connections.evicted))
        yield evicted
        refused = CounterMetricFamily(
            "foreman_client_connections_refused",
            "Connections refused with 503 at the cap, every connection being busy.",
        )
        refused.add_metric([], float(connections.refused))
        yield refused

    def _upstream(self) -> Iterator[Metric]:
        inventory = self.inventory
        if inventory is None:
            return
        reachable = GaugeMetricFamily(
            "foreman_upstream_reachable", "1 when the last poll of the target Ollama succeeded."
        )
        reachable.add_metric([], 1.0 if inventory.reachable else 0.0)
        yield reachable
        resident = GaugeMetricFamily(
            "foreman_resident_models",
            "Models loaded in the target Ollama (its /api/ps), 1 per model.",
            labels=["model"],
        )
        for model in inventory.resident:
            resident.add_metric([model], 1.0)
        yield resident

    def _queue(self) -> Iterator[Metric]:
        worker = self.worker
        if worker is None:
            return
        depth = GaugeMetricFamily("foreman_queue_depth", "Generation jobs waiting to run.")
        depth.add_metric([], float(worker.scheduler.depth))
        yield depth
        by_class = GaugeMetricFamily(
            "foreman_queued_jobs", "Generation jobs waiting to run, by class.", labels=["priority"]
        )
        people = worker.scheduler.interactive_depth
        waiting = {Priority.INTERACTIVE: people, Priority.BATCH: worker.scheduler.depth - people}
        for priority, count in waiting.items():
            by_class.add_metric([priority.value], float(count))
        yield by_class
        busy = GaugeMetricFamily(
            "foreman_worker_busy", "1 while the worker runs a job (loading or generating)."
        )
        busy.add_metric([], 0.0 if worker.current is None else 1.0)
        yield busy
        jobs = GaugeMetricFamily(
            "foreman_jobs", "Jobs queued or running now, by state.", labels=["state"]
        )
        now = dict.fromkeys((s for s in JobState if not s.terminal), 0)
        now[JobState.QUEUED] = worker.scheduler.depth
        if worker.current is not None and worker.current.state in now:
            now[worker.current.state] += 1
        for state, count in now.items():
            jobs.add_metric([state.value], float(count))
        yield jobs
        finished = CounterMetricFamily(
            "foreman_jobs_finished",
            "Jobs that reached a final state since foreman started, by state.",
            labels=["state"],
        )
        for state, count in self._finished.items():
            finished.add_metric([state.value], float(count))
        yield finished
        yield from self._faults(worker)
        yield from self._swaps(worker)
        residency = worker.residency
        loads = CounterMetricFamily(
            "foreman_model_loads", "Worker-model loads foreman asked the target for (swaps)."
        )
        loads.add_metric([], float(residency.loads))
        yield loads
        unloads = CounterMetricFamily(
            "foreman_model_unloads", "Model unloads foreman asked the target for before a swap."
        )
        unloads.add_metric([], float(residency.unloads))
        yield unloads

    def _swaps(self, worker: Worker) -> Iterator[Metric]:
        """What swaps cost, and how the worker spends its time (ADR-0024)."""
        spent = CounterMetricFamily(
            "foreman_worker_seconds",
            "Seconds the worker spent, by activity: idle, holding (the loaded model for its "
            "next call), loading (swaps), generating, paused (a fault).",
            labels=["activity"],
        )
        for activity, seconds in worker.activity.seconds().items():
            spent.add_metric([activity], seconds)
        yield spent
        load = GaugeMetricFamily(
            "foreman_model_load_seconds",
            "What a load of each model costs (a swap's unload included): measured and "
            "smoothed, or estimated from its size before the first load.",
            labels=["model", "measured"],
        )
        inventory = self.inventory
        names = {cost.model for cost in worker.costs.known()}
        if inventory is not None:
            names |= set(inventory.model_names)
        for name in sorted(names):
            cost = worker.costs.load_cost(name)
            load.add_metric([name, "true" if cost.samples else "false"], cost.seconds)
        yield load
        holds = CounterMetricFamily(
            "foreman_swap_holds",
            "Holds of the loaded model for its next call, by outcome (hit: the call came).",
            labels=["outcome"],
        )
        hold = worker.hold
        holds.add_metric(["hit"], float(hold.hits))
        holds.add_metric(["other"], float(max(0, hold.holds - hold.hits)))
        yield holds

    def _faults(self, worker: Worker) -> Iterator[Metric]:
        """What pauses the worker (ADR-0023), and what it cost callers."""
        paused = GaugeMetricFamily(
            "foreman_worker_paused",
            "1 while the worker takes no job because of a fault, by reason.",
            labels=["reason"],
        )
        paused.add_metric(["ollama_unreachable"], 1.0 if worker.outage.active else 0.0)
        paused.add_metric(["store_unwritable"], 1.0 if worker.journal.troubled else 0.0)
        yield paused
        outages = CounterMetricFamily(
            "foreman_ollama_outages", "Times the worker paused because Ollama did not answer."
        )
        outages.add_metric([], float(worker.outage.count))
        yield outages
        refused = CounterMetricFamily(
            "foreman_outage_refusals",
            "Sync callers answered 503 after waiting --outage-wait for Ollama.",
        )
        refused.add_metric([], float(worker.outage.callers_refused))
        yield refused
        writes = CounterMetricFamily(
            "foreman_store_write_failures", "Writes of the worker the store refused."
        )
        writes.add_metric([], float(worker.journal.refused))
        yield writes
        unrecorded = GaugeMetricFamily(
            "foreman_unrecorded_states", "Job states waiting for the store to take them."
        )
        unrecorded.add_metric([], float(worker.journal.kept))
        yield unrecorded

    def _webhooks(self) -> Iterator[Metric]:
        outbox = self.outbox
        if outbox is None:
            return
        deliveries = CounterMetricFamily(
            "foreman_webhook_deliveries",
            "State webhook delivery attempts, by outcome.",
            labels=["outcome"],
        )
        for outcome, attribute in (
            ("delivered", "delivered"),
            ("failed_attempt", "failed_attempts"),
            ("dropped", "dropped"),
        ):
            deliveries.add_metric([outcome], float(getattr(outbox, attribute, 0)))
        yield deliveries

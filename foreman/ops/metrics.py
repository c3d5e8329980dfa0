"""``GET /metrics``: what foreman is doing, in Prometheus's text format.

Two kinds of figures. Events are counted as they happen: every request
(by route and status, with its duration), and every generation Ollama
finished (time to first token and tokens per second, from the ``*_duration``
and ``*_count`` fields of Ollama's own final reply). States are read at
scrape time from the objects that hold them — queue depth, the running job,
resident models, reachability, model loads, webhook deliveries — so nothing
has to remember to update a gauge, and a scrape always sees the truth.

Each foreman has its own registry (tests run several in one process).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from foreman.http.connections import Connections
from foreman.ops.fleet_metrics import FleetCollector
from foreman.ops.key_metrics import KeyUsageCollector
from foreman.ops.metrics_state import StateCollector
from foreman.queue.job import JobState
from foreman.wire.priority import Priority

if TYPE_CHECKING:
    from foreman.queue.fleet.member import FleetMember
    from foreman.queue.worker import Worker
    from foreman.relay.inventory import Inventory

#: Routes are labels; anything with an id in it is folded into its pattern
#: so that the number of series stays small.
_ROUTE_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^/jobs/[^/]+/artifacts/[^/]+$"), "/jobs/{id}/artifacts/{name}"),
    (re.compile(r"^/jobs/[^/]+/cancel$"), "/jobs/{id}/cancel"),
    (re.compile(r"^/jobs/[^/]+$"), "/jobs/{id}"),
    (re.compile(r"^/api/blobs/[^/]+$"), "/api/blobs/{digest}"),
    (re.compile(r"^/ui(/.*)?$"), "/ui"),
    (re.compile(r"^/v1/models/[^/]+$"), "/v1/models/{model}"),
    (re.compile(r"^/v1/files/[^/]+/content$"), "/v1/files/{id}/content"),
    (re.compile(r"^/v1/files/[^/]+$"), "/v1/files/{id}"),
    (re.compile(r"^/v1/batches/[^/]+/cancel$"), "/v1/batches/{id}/cancel"),
    (re.compile(r"^/v1/batches/[^/]+$"), "/v1/batches/{id}"),
    # A key's name stays out of the label: names are the keys' own metrics' labels.
    (re.compile(r"^/api/foreman/keys/[^/]+$"), "/api/foreman/keys/{name}"),
)
_KNOWN_ROUTES = frozenset(
    {
        "/",
        "/healthz",
        "/metrics",
        "/jobs",
        "/api/version",
        "/api/tags",
        "/api/ps",
        "/api/show",
        "/api/chat",
        "/api/generate",
        "/api/embed",
        "/api/embeddings",
        "/api/pull",
        "/api/push",
        "/api/create",
        "/api/copy",
        "/api/delete",
        "/api/foreman/queue",
        "/api/foreman/keys",
        # The OpenAI and Anthropic dialects (docs/api.md).
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/responses",
        "/v1/embeddings",
        "/v1/audio/transcriptions",
        "/v1/models",
        "/v1/messages",
        # OpenAI's Files and Batch APIs, foreman's own (docs/batches.md).
        "/v1/files",
        "/v1/batches",
    }
)
EMBEDDING_ROUTES = frozenset({"/api/embed", "/api/embeddings", "/v1/embeddings"})
GENERATION_PATHS = frozenset({b"/api/chat", b"/api/generate"})

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_GENERATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
_RATE_BUCKETS = (1, 2, 5, 10, 15, 20, 30, 40, 60, 80, 100, 150, 200, 400)
#: Queue waits: a swap's seconds up to the batch class's half hour and beyond.
_WAIT_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)


def route_of(path: str) -> str:
    """The label for ``path``: itself if known, its pattern, or ``other``."""
    if path in _KNOWN_ROUTES:
        return path
    for pattern, route in _ROUTE_PATTERNS:
        if pattern.match(path):
            return route
    return "other"


class ForemanMetrics:
    """foreman's registry, the event metrics, and the scrape-time collector."""

    content_type = CONTENT_TYPE_LATEST.encode("ascii")

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "foreman_http_requests",
            "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "foreman_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.embedding_seconds = Histogram(
            "foreman_embedding_duration_seconds",
            "Embedding calls (/api/embed, /api/embeddings), arrival to last byte.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.first_token_seconds = Histogram(
            "foreman_generation_time_to_first_token_seconds",
            "Ollama's load_duration + prompt_eval_duration of finished generations.",
            ["model"],
            buckets=_GENERATION_BUCKETS,
            registry=self.registry,
        )
        self.tokens_per_second = Histogram(
            "foreman_generation_tokens_per_second",
            "Ollama's eval_count / eval_duration of finished generations.",
            ["model"],
            buckets=_RATE_BUCKETS,
            registry=self.registry,
        )
        self.generations = Counter(
            "foreman_generations",
            "Generations Ollama finished (its final reply was relayed), by model.",
            ["model"],
            registry=self.registry,
        )
        self.queue_wait_seconds = Histogram(
            "foreman_queue_wait_seconds",
            "Time from a job's arrival to its first start, by class (interactive, batch).",
            ["priority"],
            buckets=_WAIT_BUCKETS,
            registry=self.registry,
        )
        for priority in Priority:
            self.queue_wait_seconds.labels(priority.value)
        self._state = StateCollector()
        self.registry.register(self._state)
        self.registry.register(
            KeyUsageCollector(lambda: getattr(self._state.worker, "usage", None))
        )

    # -- wiring ------------------------------------------------------------------------

    def watch(
        self,
        *,
        inventory: Inventory | None = None,
        worker: Worker | None = None,
        outbox: Any = None,
    ) -> None:
        """Read these objects' state at every scrape (any may be left out)."""
        self._state.inventory = inventory
        self._state.worker = worker
        self._state.outbox = outbox
        if worker is not None:
            worker_transitions = getattr(worker, "on_transition", None)
            if worker_transitions is not None:
                worker_transitions(self._state.job_moved)
                worker_transitions(self.job_moved)

    def watch_fleet(self, fleet: FleetMember) -> None:
        """In a fleet: the boxes, at every scrape (:mod:`foreman.ops.fleet_metrics`)."""
        self.registry.register(FleetCollector(fleet))

    def watch_connections(self, connections: Connections) -> None:
        """Read the site's open client connections at every scrape."""
        self._state.connections = connections

    def job_moved(self, job: Any, previous: Any = None) -> None:
        """A job's first start ends its wait in the queue."""
        if job.state is JobState.LOADING and previous is JobState.QUEUED and job.attempt == 1:
            waited = max(0.0, job.updated_at - job.created_at)
            self.queue_wait_seconds.labels(job.priority.value).observe(waited)

    # -- events --------------------------------------------------------------------------

    def request_finished(self, path: str, method: str, status: int, seconds: float) -> None:
        route = route_of(path)
        self.requests.labels(route, method, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)
        if route in EMBEDDING_ROUTES and status == 200:
            self.embedding_seconds.observe(seconds)

    def reply_delivered(self, path: bytes, final: bytes) -> None:
        """A relay observer: Ollama's final reply of a generation carries its timings."""
        if path not in GENERATION_PATHS or b'"eval_count"' not in final:
            return
        try:
            document = json.loads(final)
        except ValueError:
            return
        if not isinstance(document, dict):
            return
        model = str(document.get("model") or "unknown")
        self.generations.labels(model).inc()
        load = _nanoseconds(document, "load_duration")
        prompt = _nanoseconds(document, "prompt_eval_duration")
        if load is not None or prompt is not None:
            self.first_token_seconds.labels(model).observe(((load or 0) + (prompt or 0)) / 1e9)
        count, duration = document.get("eval_count"), _nanoseconds(document, "eval_duration")
        if isinstance(count, int) and count > 0 and duration:
            self.tokens_per_second.labels(model).observe(count / (duration / 1e9))

    # -- exposition ----------------------------------------------------------------------

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _nanoseconds(document: dict[str, Any], key: str) -> int | None:
    value = document.get(key)
    return value if isinstance(value, int) and value >= 0 else None

"""``/metrics``' usage per key: this box's counts since start, labelled by key name.

Read at scrape time from the worker's :class:`~foreman.queue.usage.KeyUsage`
(its in-memory counts, never the store), so a scrape costs no query and a
store in trouble does not stop them. A fleet's totals are the sum over its
boxes' scrapes; the store's ``key_usage`` keeps them across restarts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from foreman.queue.usage import KeyUsage


class KeyUsageCollector(Collector):
    """``foreman_key_*_total{key}``: calls, tokens, worker seconds, loads, refusals."""

    def __init__(self, usage: Callable[[], KeyUsage | None]) -> None:
        self._usage = usage

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        usage = self._usage()
        if usage is None:
            return
        counted = sorted(usage.since_start().items())
        calls = CounterMetricFamily(
            "foreman_key_calls", "Calls taken into the queue, by key.", labels=["key"]
        )
        tokens = CounterMetricFamily(
            "foreman_key_tokens",
            "Tokens Ollama counted for replies delivered here, by key and kind (prompt, output).",
            labels=["key", "kind"],
        )
        seconds = CounterMetricFamily(
            "foreman_key_worker_seconds",
            "Seconds the worker spent on each key's jobs, loads included.",
            labels=["key"],
        )
        loads = CounterMetricFamily(
            "foreman_key_loads", "Runs that had to load their model first, by key.", labels=["key"]
        )
        refusals = CounterMetricFamily(
            "foreman_key_refusals",
            "Calls refused (a limit, a scope, a full queue), by key.",
            labels=["key"],
        )
        for name, each in counted:
            calls.add_metric([name], each.calls)
            tokens.add_metric([name, "prompt"], each.prompt_tokens)
            tokens.add_metric([name, "output"], each.output_tokens)
            seconds.add_metric([name], each.worker_seconds)
            loads.add_metric([name], each.loads)
            refusals.add_metric([name], each.refusals)
        yield from (calls, tokens, seconds, loads, refusals)

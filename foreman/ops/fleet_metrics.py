"""``/metrics`` in a fleet: the boxes as this box sees them (issue 18).

Registered only when foreman is a box of a fleet (its store is shared), and
read at scrape time from its :class:`~foreman.queue.fleet.member.FleetMember`,
as the other state metrics are (:mod:`foreman.ops.metrics`). Every box shows
the whole fleet: scrape one, or all and take any. Boxes are labelled by name
and id (two boxes may share a name).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from foreman.queue.fleet.member import FleetMember


class FleetCollector(Collector):
    def __init__(self, fleet: FleetMember) -> None:
        self._fleet = fleet

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        fleet = self._fleet
        boxes = fleet.report()
        states = GaugeMetricFamily(
            "foreman_fleet_boxes",
            "Boxes of the fleet the store knows, by state (alive: heartbeat within the lease).",
            labels=["state"],
        )
        alive = sum(1 for box in boxes if box["alive"])
        states.add_metric(["alive"], float(alive))
        states.add_metric(["gone"], float(len(boxes) - alive))
        yield states
        yield _per_box(
            boxes,
            "foreman_fleet_box_alive",
            "1 while the box's heartbeat is within its lease.",
            lambda box: 1.0 if box["alive"] else 0.0,
        )
        yield _per_box(
            boxes,
            "foreman_fleet_box_answering",
            "1 when the box's Ollama answered its last look.",
            lambda box: 1.0 if box["answering"] else 0.0,
        )
        yield _per_box(
            boxes,
            "foreman_fleet_box_busy",
            "1 while the box's worker runs a job.",
            lambda box: 0.0 if box["running"] is None else 1.0,
        )
        yield _per_box(
            boxes,
            "foreman_fleet_box_waiting",
            "Jobs waiting that the box may take, as it last published (a job several "
            "boxes may take counts at each).",
            lambda box: float(_waiting(box["waiting"])),
        )
        yield _per_box(
            boxes,
            "foreman_fleet_box_seen_seconds",
            "Seconds since the box's last heartbeat (0 for this box).",
            lambda box: float(box["seen_seconds_ago"]),
        )
        reachable = GaugeMetricFamily(
            "foreman_fleet_store_reachable",
            "1 while this box's heartbeats and looks at the fleet's queue reach the store.",
        )
        reachable.add_metric([], 1.0 if fleet.error is None else 0.0)
        yield reachable
        failures = CounterMetricFamily(
            "foreman_fleet_heartbeat_failures",
            "Heartbeats of this box that failed (the store could not be reached).",
        )
        failures.add_metric([], float(fleet.heartbeat_failures))
        yield failures


def _per_box(
    boxes: list[dict[str, Any]], name: str, text: str, value: Callable[[dict[str, Any]], float]
) -> Metric:
    gauge = GaugeMetricFamily(name, text, labels=["box", "box_id"])
    for box in boxes:
        gauge.add_metric([str(box["name"]), str(box["id"])], value(box))
    return gauge


def _waiting(waiting: Any) -> int:
    if not isinstance(waiting, dict):
        return 0
    return sum(count for count in waiting.values() if isinstance(count, int))

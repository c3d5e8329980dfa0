"""The fleet in view (issue 18): ``/healthz``'s ``fleet``, ``/metrics``, ``foreman ps``
and each box's lane on the timeline, from a box's :class:`FleetMember` in simulated
time (its store a SQLite file: what the views read is the same on PostgreSQL).

The same views over a real PostgreSQL and two foremans: tests/test_status_page.py,
tests/test_status_page_browser.py and tests/test_fleet.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.internet.defer import Deferred, ensureDeferred, fail

from foreman.client import output
from foreman.ops.health import health_report, queue_report
from foreman.ops.metrics import ForemanMetrics
from foreman.ops.timeline import Timeline
from foreman.queue.boxes import BoxRecord
from foreman.queue.fleet.identity import BoxIdentity
from foreman.queue.fleet.member import FleetMember
from foreman.queue.fleet.share import summary
from foreman.relay.upstream import Target
from tests.test_timeline import SLOW, START, submit, working
from tests.worker_rig import WorkerRig, fired, make_worker_rig

LEASE = 15.0
A = BoxIdentity("01JA0000000000000000000000", "a", "http://a.example:11434")
B = BoxIdentity("01JB0000000000000000000000", "b", "http://b.example:11434")
#: Box b's clock is an hour ahead of a's: the boxes' clocks may differ.
SKEW = 3600.0


def member_of(rig: WorkerRig, identity: BoxIdentity) -> FleetMember:
    """A box's part in a fleet, not started: its heartbeats are the test's."""
    return FleetMember(
        rig.store, rig.worker, identity, rig.clock, lease=LEASE, wall=rig.clock.seconds
    )


def beat(member: FleetMember) -> None:
    fired(ensureDeferred(member.beat()))


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[WorkerRig]:
    (tmp_path / "a").mkdir()
    made = make_worker_rig(tmp_path / "a", start_at=START, **SLOW)
    yield made
    made.stop()


@pytest.fixture
def other(tmp_path: Path) -> Iterator[WorkerRig]:
    """Box b: its own store, Ollama and clock (each job generates for 100 s)."""
    (tmp_path / "b").mkdir()
    made = make_worker_rig(
        tmp_path / "b",
        start_at=START + SKEW,
        load_seconds=5.0,
        tokens_per_second=0.1,
        reply_tokens=10,
    )
    yield made
    made.stop()


def record_of(member: FleetMember, **changes: Any) -> BoxRecord:
    """What ``member`` publishes, as another box reads it back."""
    return attrs.evolve(member.record(), **changes)


# -- /healthz ------------------------------------------------------------------------


def test_healthz_names_the_box_counts_the_fleet_and_is_degraded_without_its_store(
    rig: WorkerRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    member = member_of(rig, A)
    target = Target("http://ollama.test")

    def health() -> dict[str, Any]:
        return health_report(
            rig.inventory, target, simulated=False, worker=rig.worker, fleet=member
        )

    # Not in a fleet: no section at all.
    alone = health_report(rig.inventory, target, simulated=False, worker=rig.worker)
    assert "fleet" not in alone

    beat(member)
    # Another box publishes; this one's next heartbeat reads both.
    fired(rig.store.publish_box(record_of(member, id=B.id, name=B.name)))
    beat(member)
    report = health()
    assert report["status"] == "ok", report
    fleet = report["fleet"]
    assert (fleet["box"], fleet["box_id"], fleet["url"]) == (A.name, A.id, A.url)
    assert (fleet["boxes_alive"], fleet["boxes_gone"]) == (2, 0)
    assert fleet["lease_seconds"] == LEASE
    assert (fleet["store_reachable"], fleet["error"], fleet["heartbeat_failures"]) == (
        True,
        None,
        0,
    )
    assert datetime.fromisoformat(fleet["last_heartbeat_at"]).timestamp() == pytest.approx(START)

    # The store goes away: the heartbeat fails, and says why.
    def refused(record: BoxRecord) -> Deferred[None]:
        return fail(sqlite3.OperationalError("the database is gone"))

    monkeypatch.setattr(rig.store, "publish_box", refused)
    rig.clock.advance(LEASE / 3)
    beat(member)
    beat(member)
    report = health()
    assert (report["status"], report["degraded"]) == ("degraded", True)
    fleet = report["fleet"]
    assert (fleet["store_reachable"], fleet["error"]) == (False, "the database is gone")
    assert fleet["heartbeat_failures"] == 2
    # The last heartbeat that went through is still the one shown.
    assert datetime.fromisoformat(fleet["last_heartbeat_at"]).timestamp() == pytest.approx(START)
    # Long enough without a heartbeat, the other box is no longer known alive.
    rig.clock.advance(LEASE)
    assert (health()["fleet"]["boxes_alive"], health()["fleet"]["boxes_gone"]) == (1, 1)

    monkeypatch.undo()
    beat(member)
    report = health()
    assert report["status"] == "ok" and report["fleet"]["error"] is None


# -- /metrics ------------------------------------------------------------------------


def samples(metrics: ForemanMetrics) -> dict[str, float]:
    """Every sample of the ``foreman_fleet_`` families, by its line's name and labels."""
    found = {}
    for line in metrics.render().decode().splitlines():
        if line.startswith("foreman_fleet_"):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


def test_metrics_show_the_boxes_only_in_a_fleet(rig: WorkerRig) -> None:
    alone = ForemanMetrics()
    alone.watch(inventory=rig.inventory, worker=rig.worker)
    assert samples(alone) == {}

    member = member_of(rig, A)
    metrics = ForemanMetrics()
    metrics.watch(inventory=rig.inventory, worker=rig.worker)
    metrics.watch_fleet(member)
    submit(rig, "llama3.2")
    submit(rig, "qwen3:8b")
    submit(rig, "qwen3:8b")
    busy = {"id": "01JOB", "model": "gemma3:12b", "state": "working"}
    member.boxes = [
        record_of(member),
        record_of(
            member,
            id=B.id,
            name=B.name,
            answering=False,
            report={"running": busy, "waiting": {"gemma3:12b": 4}},
            seen_seconds_ago=2.5,
        ),
        record_of(member, id="01JC", name="c", report=None, alive=False, seen_seconds_ago=40.0),
    ]
    member.read_at = rig.clock.seconds()
    member.heartbeat_failures = 3
    member.error = "server closed the connection unexpectedly"

    shown = samples(metrics)
    a, b, c = (f'box="a",box_id="{A.id}"', f'box="b",box_id="{B.id}"', 'box="c",box_id="01JC"')
    assert shown['foreman_fleet_boxes{state="alive"}'] == 2.0
    assert shown['foreman_fleet_boxes{state="gone"}'] == 1.0
    assert shown[f"foreman_fleet_box_waiting{{{a}}}"] == 3.0
    assert shown[f"foreman_fleet_box_waiting{{{b}}}"] == 4.0
    assert shown[f"foreman_fleet_box_waiting{{{c}}}"] == 0.0
    assert [shown[f"foreman_fleet_box_alive{{{box}}}"] for box in (a, b, c)] == [1.0, 1.0, 0.0]
    assert [shown[f"foreman_fleet_box_answering{{{box}}}"] for box in (a, b)] == [1.0, 0.0]
    assert [shown[f"foreman_fleet_box_busy{{{box}}}"] for box in (a, b, c)] == [0.0, 1.0, 0.0]
    assert shown[f"foreman_fleet_box_seen_seconds{{{a}}}"] == 0.0
    assert shown[f"foreman_fleet_box_seen_seconds{{{b}}}"] == 2.5
    assert shown["foreman_fleet_store_reachable"] == 0.0
    assert shown["foreman_fleet_heartbeat_failures_total"] == 3.0


# -- the queue report and foreman ps ---------------------------------------------------


def test_foreman_ps_shows_every_box_of_the_queue_report(rig: WorkerRig) -> None:
    member = member_of(rig, A)
    first = submit(rig, "llama3.2")
    rig.worker.startService()
    rig.run_until(lambda: working(rig))
    submit(rig, "qwen3:8b")
    submit(rig, "qwen3:8b")
    member.boxes = [
        record_of(member),
        record_of(
            member,
            id=B.id,
            name=B.name,
            resident="gemma3:12b",
            report={"running": None, "waiting": {}, "activity": "idle"},
            seen_seconds_ago=3.0,
        ),
        record_of(member, id="01JC", name="c", answering=False, alive=False, seen_seconds_ago=95),
    ]
    member.read_at = rig.clock.seconds()
    report = queue_report(rig.worker, rig.inventory, rig.clock.seconds(), member)
    assert report["box"] == "a"
    (a, b, _) = report["boxes"]
    assert (a["this"], a["running"]["id"], a["waiting"]) == (True, first.id, {"qwen3:8b": 2})
    assert (b["this"], b["resident"], b["seen_seconds_ago"]) == (False, "gemma3:12b", 3.0)

    shown = output.ps_report({"models": []}, report, rig.clock.seconds()).splitlines()
    at = shown.index("fleet: 2 of 3 boxes alive")
    rows = shown[at + 1 :]
    assert rows[0].split() == ["BOX", "STATE", "RESIDENT", "RUNNING", "WAITING", "SEEN"]
    assert rows[1].split() == [
        *["a", "*", "alive", "llama3.2:latest", first.id, "(llama3.2,", "working)"],
        *["2", "(qwen3:8b", "2)", "now"],
    ]
    assert rows[2].split() == ["b", "alive", "gemma3:12b", "-", "0", "3s", "ago"]
    assert rows[3].split()[:2] == ["c", "gone"] and rows[3].endswith("1m ago")
    # A foreman alone: no fleet in its report, none in ps.
    alone = queue_report(rig.worker, rig.inventory, rig.clock.seconds())
    assert "boxes" not in alone
    assert "fleet:" not in output.ps_report({"models": []}, alone, rig.clock.seconds())
    # A box whose report is not what this client knows shows dashes.
    odd = output.boxes_report([{"name": "d", "alive": True, "waiting": "lots", "running": 7}])
    assert odd.splitlines()[-1].split() == ["d", "alive", "-", "-", "-", "-"]


# -- the timeline: each box's lane ---------------------------------------------------


def test_each_box_publishes_its_runs_and_the_timeline_draws_a_lane_per_box(
    rig: WorkerRig, other: WorkerRig
) -> None:
    mine = member_of(rig, A)
    timeline = Timeline(rig.worker, rig.clock, fleet=mine)
    theirs = member_of(other, B)
    their_timeline = Timeline(other.worker, other.clock, fleet=theirs)
    # b runs two jobs: the first is done, the second generates (for 100 s).
    done = submit(other, "qwen3:8b")
    other.worker.startService()
    other.run_until(lambda: [run.outcome for run in their_timeline.runs()] == ["done"])
    running = submit(other, "qwen3:8b")
    other.run_until(lambda: working(other))
    other.clock.advance(20.0)
    submit(other, "llama3.2")

    published = theirs.record()
    assert published.report is not None
    runs = published.report["runs"]
    assert [run["job_id"] for run in runs] == [done.id, running.id]
    assert runs[0]["outcome"] == "done" and runs[1]["outcome"] is None
    assert runs[1]["ended_ago"] is None and runs[1]["started_ago"] == pytest.approx(20.0, abs=1)
    assert published.report["waiting"] == {"llama3.2:latest": 1}
    # Ages, not stamps: b's clock is an hour off a's.
    assert all(run["started_ago"] < 600 for run in runs)

    # a read b's heartbeat 4 s after b published it, and looks 1 s later.
    mine.boxes = [record_of(mine), attrs.evolve(published, seen_seconds_ago=4.0)]
    mine.read_at = rig.clock.seconds()
    rig.clock.advance(1.0)
    report = timeline.report()
    now = rig.clock.seconds()
    this, lane = report["boxes"]
    assert (this["name"], this["this"], this["runs"]) == ("a", True, None)
    assert this["doing"] == "idle"
    assert (lane["name"], lane["this"], lane["alive"]) == ("b", False, True)
    assert lane["seen_seconds_ago"] == pytest.approx(5.0)
    assert lane["running"]["id"] == running.id
    assert lane["waiting"] == {"llama3.2:latest": 1}
    placed = lane["runs"]
    # Each as this box's own runs are shown.
    assert set(placed[0]) == set(their_timeline.runs()[0].view())
    assert [run["job_id"] for run in placed] == [done.id, running.id]
    # Placed on a's clock: b published 5 s ago; its job had started 20 s before that.
    started = datetime.fromisoformat(placed[1]["started_at"]).timestamp()
    assert started == pytest.approx(now - 5.0 - runs[1]["started_ago"], abs=0.01)
    assert placed[1]["ended_at"] is None and placed[1]["outcome"] is None
    assert placed[0]["outcome"] == "done" and placed[0]["load"] == "load"

    # b goes away mid-run: its run ends where the picture does, outcome unknown.
    mine.boxes[1] = attrs.evolve(published, alive=False, seen_seconds_ago=30.0)
    gone = timeline.report()["boxes"][1]
    assert gone["alive"] is False
    ended = datetime.fromisoformat(gone["runs"][1]["ended_at"]).timestamp()
    assert ended == pytest.approx(now - 31.0, abs=0.01)  # seen 30 s before a's read, 1 s ago
    assert gone["runs"][1]["outcome"] == "unknown"
    # Gone for longer than the timeline's window: no lane.
    mine.boxes[1] = attrs.evolve(published, alive=False, seen_seconds_ago=timeline.window + 1)
    assert [box["name"] for box in timeline.report()["boxes"]] == ["a"]
    # A box that publishes something else (another version): its runs are left out.
    strange = {**summary(other.worker), "runs": [{"job_id": "x"}, "y", None]}
    mine.boxes[1] = attrs.evolve(published, report=strange, seen_seconds_ago=1.0)
    assert timeline.report()["boxes"][1]["runs"] == []
    # Alone, the timeline has no lanes.
    assert "boxes" not in Timeline(rig.worker, rig.clock).report()

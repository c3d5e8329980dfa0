"""The fleet on the status page, ``/healthz`` and ``/metrics`` (issue 18): two foremans
in-process, each in front of its own simulated Ollama, sharing one queue on a real
PostgreSQL; the page's data, and the page itself in a real headless Chromium
(the driver is tests/test_status_page_browser.py's).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from treq.client import HTTPClient

from tests.conftest import RunningForeman, StartForeman, StartSimulator
from tests.fault_helpers import until
from tests.test_status_page_browser import CHROMIUM, Page, count, visible
from tests.test_status_page_browser import page as page  # the fixture

pytestmark = pytest.mark.postgres

#: Heartbeats every half second: the boxes see each other at once.
LEASE = 1.5


@attrs.frozen
class TwoBoxes:
    a: RunningForeman
    b: RunningForeman


def chat_body(model: str, marker: str) -> bytes:
    message = {"role": "user", "content": marker}
    return json.dumps({"model": model, "messages": [message], "stream": False}).encode()


async def get_json(http: HTTPClient, url: str) -> Any:
    response = await http.get(url)
    assert response.code == 200, url
    return await response.json()


@pytest_twisted.async_yield_fixture
async def fleet(
    start_simulator: StartSimulator,
    start_foreman: StartForeman,
    postgres_url: str,
    tmp_path: Path,
    http: HTTPClient,
    reactor: Any,
) -> AsyncIterator[TwoBoxes]:
    """Boxes a and b, each having run one native call (which stays on its box)."""
    running = []
    for name in ("a", "b"):
        sim = await start_simulator()
        box = await start_foreman(
            sim.url, database=postgres_url, data_dir=tmp_path / name, box_name=name, box_lease=LEASE
        )
        answered = await http.post(box.url + "/api/chat", data=chat_body("llama3.2", name))
        assert answered.code == 200, await answered.text()
        running.append(box)
    boxes = TwoBoxes(*running)

    async def both_seen_with_their_runs() -> bool:
        timeline = (await get_json(http, boxes.a.url + "/ui/status.json"))["timeline"]
        lanes = {lane["name"]: lane for lane in timeline["boxes"]}
        return set(lanes) == {"a", "b"} and len(lanes["b"]["runs"]) == 1

    await until(reactor, both_seen_with_their_runs, "a to see b and its run", 10)
    yield boxes


@pytest_twisted.ensureDeferred
async def test_every_view_of_a_box_shows_the_fleet(
    fleet: TwoBoxes, http: HTTPClient, reactor: Any
) -> None:
    a, b = fleet.a, fleet.b
    document = await get_json(http, a.url + "/ui/status.json")
    queue = document["queue"]
    assert queue["box"] == "a"
    shown = {box["name"]: box for box in queue["boxes"]}
    assert set(shown) == {"a", "b"}
    assert shown["a"]["this"] is True and shown["b"]["this"] is False
    for box in shown.values():
        assert box["alive"] and box["answering"], box
        assert "llama3.2:latest" in box["models"]
        assert box["resident"] == "llama3.2:latest"
        assert (box["running"], box["waiting"]) == (None, {})

    timeline = document["timeline"]
    this, other = timeline["boxes"]
    assert (this["name"], this["this"], this["runs"]) == ("a", True, None)
    assert [run["model"] for run in timeline["runs"]] == ["llama3.2:latest"]
    (run,) = other["runs"]
    assert (run["model"], run["outcome"], run["load"], run["sync"]) == (
        "llama3.2:latest",
        "done",
        "load",
        True,
    )
    assert run["started_at"] <= run["working_at"] <= run["ended_at"] <= timeline["now"]

    health = document["health"]
    assert health["status"] == "ok"
    member = a.foreman.queue.member if a.foreman.queue else None
    assert member is not None
    assert health["fleet"]["box"] == "a" and health["fleet"]["box_id"] == member.identity.id
    assert (health["fleet"]["boxes_alive"], health["fleet"]["error"]) == (2, None)
    assert (await get_json(http, a.url + "/healthz"))["fleet"]["boxes_alive"] == 2

    metrics = (await (await http.get(a.url + "/metrics")).content()).decode()
    assert 'foreman_fleet_boxes{state="alive"} 2.0' in metrics
    assert "foreman_fleet_store_reachable 1.0" in metrics

    # b stops beating: after its lease, a shows it gone.
    b_member = b.foreman.queue.member if b.foreman.queue else None
    assert b_member is not None
    b_member.stopService()

    async def b_gone() -> bool:
        health = await get_json(http, a.url + "/healthz")
        return bool(health["fleet"]["boxes_gone"] == 1)

    await until(reactor, b_gone, "b to be gone", 10)
    metrics = (await (await http.get(a.url + "/metrics")).content()).decode()
    assert 'foreman_fleet_boxes{state="gone"} 1.0' in metrics


def row(box: str, *texts: str) -> str:
    """A condition: the fleet table's row of ``box`` shows every one of ``texts``."""
    wanted = json.dumps(list(texts))
    return f"""() => [...document.querySelectorAll('#fleet tbody tr')].some(
        (row) => row.cells[0].innerText === {json.dumps(box)}
            && {wanted}.every((text) => row.innerText.includes(text)))"""


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium to drive")
@pytest_twisted.ensureDeferred
async def test_the_page_shows_the_boxes_and_a_lane_for_each(fleet: TwoBoxes, page: Page) -> None:
    await page.goto(fleet.a.url + "/ui")
    await page.wait_for(visible("#fleet-section", "Fleet", "box a"), "the fleet section")
    await page.wait_for(
        visible("#fleet tbody tr", "a (this box)", "alive", "answering", "llama3.2:latest"),
        "this box's row",
    )
    await page.wait_for(row("b", "alive", "answering", "llama3.2:latest", "s ago"), "b's row")
    await page.wait_for(f"() => {count('#timeline .tl-lane-label')} === 2", "two lanes")
    labels = await page.evaluate(
        "[...document.querySelectorAll('#timeline .tl-lane-label')].map((t) => t.textContent)"
    )
    assert labels[0].startswith("a (this box): ") and labels[1].startswith("b: "), labels
    await page.wait_for(f"() => {count('#timeline .tl-run')} === 2", "a run in each lane")
    assert await page.evaluate(count('#timeline .tl-run[data-box="b"]')) == 1
    summary = await page.evaluate("document.querySelector('#timeline-summary').innerText")
    assert "2 runs on 2 boxes" in summary, summary
    assert await page.evaluate("window.__violations") == []

    # b stops beating: the page shows it gone, in the table and on its lane.
    member = fleet.b.foreman.queue.member if fleet.b.foreman.queue else None
    assert member is not None
    member.stopService()
    await page.wait_for(row("b", "gone"), "b gone")
    await page.wait_for(
        """() => [...document.querySelectorAll('#timeline .tl-lane-gone')].some(
            (label) => label.textContent.startsWith('b: gone, last seen'))""",
        "b's lane, gone",
    )

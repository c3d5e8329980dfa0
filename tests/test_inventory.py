"""The inventory poller in simulated time, over an in-memory simulated Ollama."""

from __future__ import annotations

from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from foreman.relay.inventory import Inventory
from foreman.relay.upstream import Target
from foreman.testing import SimulatedOllama


class Switchable(Resource):
    """Serves the simulator, or fails every request while ``down``."""

    isLeaf = True

    def __init__(self, inner: IResource) -> None:
        super().__init__()
        self.inner = inner
        self.down = False
        self.paths: list[bytes] = []

    def render(self, request: Any) -> Any:
        self.paths.append(request.path)
        if self.down:
            request.setResponseCode(503)
            return b"unavailable"
        return self.inner.render(request)


def make(clock: Clock) -> tuple[Inventory, Switchable, StubTreq]:
    sim = SimulatedOllama(clock, check_host=False)
    upstream = Switchable(sim.resource())
    stub = StubTreq(upstream)
    inventory = Inventory(stub, Target("http://ollama.test"), clock)  # type: ignore[arg-type]
    return inventory, upstream, stub


def settle(stub: StubTreq, d: Deferred[Any]) -> Any:
    stub.flush()
    assert d.called
    return d.result


def test_polls_every_interval_and_reports_what_the_target_has() -> None:
    clock = Clock()
    inventory, upstream, stub = make(clock)
    poller = inventory.poller(30.0)
    poller.startService()
    stub.flush()
    assert inventory.reachable is True
    assert "llama3.2:latest" in inventory.model_names
    assert inventory.ollama_version == "0.13.0"
    assert inventory.tags_body is not None and b"llama3.2" in inventory.tags_body
    first = len(upstream.paths)
    clock.advance(29.9)
    stub.flush()
    assert len(upstream.paths) == first
    clock.advance(0.1)
    stub.flush()
    assert upstream.paths[first:] == [b"/api/tags", b"/api/ps", b"/api/version"]
    poller.stopService()


def test_failed_poll_keeps_the_last_view_and_recovery_is_announced() -> None:
    clock = Clock()
    inventory, upstream, stub = make(clock)
    recoveries: list[None] = []
    inventory.on_reachable(lambda: recoveries.append(None))
    settle(stub, inventory.refresh())
    assert recoveries == [None]  # first contact counts
    recoveries.clear()
    known = inventory.model_names

    upstream.down = True
    settle(stub, inventory.refresh())
    assert inventory.degraded
    assert inventory.model_names == known
    assert inventory.last_error
    assert recoveries == []

    upstream.down = False
    settle(stub, inventory.refresh())
    assert not inventory.degraded
    assert recoveries == [None]


def test_unknown_model_triggers_exactly_one_fresh_look() -> None:
    clock = Clock()
    inventory, upstream, stub = make(clock)
    settle(stub, inventory.refresh())
    before = len(upstream.paths)
    assert settle(stub, inventory.knows_model("Llama3.2")) is True
    assert len(upstream.paths) == before  # a known model costs no call
    assert settle(stub, inventory.knows_model("missing")) is False
    assert upstream.paths[before:] == [b"/api/tags", b"/api/ps", b"/api/version"]


def test_unknown_while_unreachable_is_undecided() -> None:
    clock = Clock()
    inventory, upstream, stub = make(clock)
    upstream.down = True
    assert settle(stub, inventory.knows_model("llama3.2")) is None


class Hanging(Resource):
    """An Ollama that accepts calls and never answers them."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def render(self, request: Any) -> int:
        self.calls += 1
        return NOT_DONE_YET


def test_concurrent_refreshes_share_one_poll() -> None:
    clock = Clock()
    hanging = Hanging()
    stub = StubTreq(hanging)
    inventory = Inventory(stub, Target("http://ollama.test"), clock, timeout=10.0)  # type: ignore[arg-type]
    first, second = inventory.refresh(), inventory.refresh()
    stub.flush()
    assert hanging.calls == 1
    clock.advance(10.0)
    stub.flush()
    assert first.called and second.called


def test_a_hung_poll_times_out_in_simulated_time() -> None:
    clock = Clock()
    stub = StubTreq(Hanging())
    inventory = Inventory(stub, Target("http://ollama.test"), clock, timeout=10.0)  # type: ignore[arg-type]
    d = inventory.refresh()
    stub.flush()
    assert not d.called
    clock.advance(9.9)
    stub.flush()
    assert not d.called
    clock.advance(0.1)
    stub.flush()
    assert d.called
    assert inventory.degraded


class TagsOnly(Resource):
    """A minimal stand-in Ollama that only knows /api/tags."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        if request.path == b"/api/tags":
            return b'{"models": [{"model": "tiny:1b"}]}'
        request.setResponseCode(404)
        return b"404 page not found"


def test_a_target_without_ps_or_version_is_still_reachable() -> None:
    clock = Clock()
    stub = StubTreq(TagsOnly())
    inventory = Inventory(stub, Target("http://ollama.test"), clock)  # type: ignore[arg-type]
    settle(stub, inventory.refresh())
    assert inventory.reachable is True
    assert inventory.model_names == frozenset({"tiny:1b"})
    assert inventory.resident == ()
    assert inventory.ollama_version is None

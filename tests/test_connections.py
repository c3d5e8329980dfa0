"""The connection cap and the open-files limit, as pure logic."""

from __future__ import annotations

import resource
from typing import Any

import attrs
import pytest

from foreman.http.connections import Connections
from foreman.ops.open_files import OpenFiles, raise_open_files_limit


@attrs.define(eq=False)
class FakeChannel:
    idle_since: float | None
    closed: bool = False

    def loseConnection(self) -> None:
        self.closed = True


def test_below_the_cap_everyone_is_let_in() -> None:
    connections = Connections(3)
    channels = [FakeChannel(None) for _ in range(2)]
    for channel in channels:
        assert connections.make_room()
        connections.opened(channel)
    assert connections.make_room() and not any(c.closed for c in channels)
    assert connections.count == 2


def test_at_the_cap_the_longest_idle_connection_is_closed() -> None:
    connections = Connections(3)
    busy, idle_long, idle_short = FakeChannel(None), FakeChannel(10.0), FakeChannel(20.0)
    for channel in (busy, idle_long, idle_short):
        connections.opened(channel)
    assert connections.make_room()
    assert idle_long.closed and not idle_short.closed and not busy.closed
    assert connections.count == 2 and connections.evicted == 1
    # Its own closing later counts it out only once.
    connections.closed(idle_long)
    assert connections.count == 2


def test_at_the_cap_with_every_connection_busy_a_newcomer_is_refused() -> None:
    connections = Connections(2)
    channels = [FakeChannel(None), FakeChannel(None)]
    for channel in channels:
        connections.opened(channel)
    assert not connections.make_room()
    assert connections.refused == 1 and not any(c.closed for c in channels)


@pytest.mark.parametrize(
    ("usable", "cap"),
    [(256, 92), (1024, 768), (4096, 3072), (10240, 7680), (100, 8)],
)
def test_the_cap_leaves_a_reserve_for_foremans_own_files(usable: int, cap: int) -> None:
    assert OpenFiles(usable, usable, usable, usable).connection_cap() == cap


class FakeLimits:
    def __init__(self, soft: int, hard: int, *, refuse: bool = False) -> None:
        self.soft, self.hard, self.refuse = soft, hard, refuse

    def getrlimit(self, which: int) -> tuple[int, int]:
        return self.soft, self.hard

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        if self.refuse:
            raise ValueError("not allowed")
        self.soft, self.hard = limits


@pytest.mark.parametrize(
    ("soft", "hard", "refuse", "select", "expected"),
    [
        (256, 4096, False, False, (4096, 4096, 256, 4096)),
        (256, resource.RLIM_INFINITY, False, False, (10240, 10240, 256, 10240)),
        (256, 256, False, False, (256, 256, 256, 256)),
        (20000, 20000, False, False, (20000, 20000, 20000, 20000)),  # already more
        (256, 4096, True, False, (256, 4096, 256, 256)),  # the system says no
        (256, 4096, False, True, (4096, 4096, 256, 1024)),  # select() sees 1024 at most
    ],
)
def test_the_soft_limit_is_raised_towards_the_hard_one(
    monkeypatch: Any,
    soft: int,
    hard: int,
    refuse: bool,
    select: bool,
    expected: tuple[int, int, int, int],
) -> None:
    limits = FakeLimits(soft, hard, refuse=refuse)
    monkeypatch.setattr(resource, "getrlimit", limits.getrlimit)
    monkeypatch.setattr(resource, "setrlimit", limits.setrlimit)
    got = raise_open_files_limit(select_reactor=select)
    assert (got.soft, got.hard, got.before, got.usable) == expected

"""``bench/soak.py``'s mixed load: what arrives how often, and the driver that sends it.

Each kind of call arrives as a seeded Poisson process of its own; ``/jobs``
also comes in bursts (which is what makes a queue to hang up in), idle
connections are held in a fixed number of slots, and slow senders start at a
steady pace. Whatever has started is waited for when the load stops.
"""

from __future__ import annotations

import random
import re
import subprocess
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, task
from twisted.python.failure import Failure

from bench import _soak_load as load
from bench import _soak_raw as raw
from bench._processes import BIN


@dataclass(frozen=True)
class Rates:
    """Arrivals per second of each kind of call, and the other knobs of the mix."""

    native_streams: float = 0.8
    openai_streams: float = 0.4
    anthropic_streams: float = 0.2
    hang_ups_mid_stream: float = 0.4
    hang_ups_mid_queue: float = 0.4
    jobs: float = 0.5
    embeds: float = 4.0
    hostile: float = 1.5
    raw_hostile: float = 0.3
    #: A job, once accepted, is cancelled 0 to 1.5 s later this often.
    cancel_share: float = 0.1
    #: This many batch jobs at once, every ``burst_every`` seconds.
    burst: int = 10
    burst_every: float = 45.0
    idle_connections: int = 16
    slow_sender_every: float = 12.0


@dataclass
class Context:
    reactor: Any
    http: load.Http
    port: int
    token: str
    tally: load.Tally
    jobs: dict[str, load.JobRecord]
    hooks: dict[str, str]
    front: raw.FrontDoor


class Mix:
    """Sends the mixed load from :meth:`start` until :meth:`stop`."""

    def __init__(self, context: Context, rates: Rates, seed: int) -> None:
        self.c = context
        self.rates = rates
        self.seed = seed
        self.stop_signal = raw.Stop()
        self._loops: list[defer.Deferred[None]] = []
        self._inflight: set[defer.Deferred[None]] = set()
        self.started = 0
        self._starts = 0

    def start(self) -> None:
        c, r = self.c, self.rates
        self.stop_signal = raw.Stop()
        kinds: list[tuple[float, Callable[[random.Random, int], Coroutine[Any, Any, None]]]] = [
            (r.native_streams, lambda g, n: load.stream(c.http, c.tally, g, n, "native")),
            (r.openai_streams, lambda g, n: load.stream(c.http, c.tally, g, n, "openai")),
            (r.anthropic_streams, lambda g, n: load.stream(c.http, c.tally, g, n, "anthropic")),
            (
                r.hang_ups_mid_stream,
                lambda g, n: raw.hang_up_mid_stream(c.reactor, c.port, c.token, c.tally, g, n),
            ),
            (
                r.hang_ups_mid_queue,
                lambda g, n: raw.hang_up_mid_queue(c.reactor, c.port, c.token, c.tally, g, n),
            ),
            (r.jobs, self._job),
            (r.embeds, lambda g, n: load.embed(c.http, c.tally, n)),
            (r.hostile, lambda g, n: load.hostile(c.http, c.tally, n)),
            (r.raw_hostile, lambda g, n: raw.raw_hostile(c.reactor, c.port, c.token, c.tally, n)),
        ]
        # A new seed each time the load starts, so the warm-up and the soak differ.
        self._starts += 1
        base = self.seed * 1000 + self._starts * 200
        for index, (rate, fire) in enumerate(kinds):
            self._loop(self._poisson(rate, fire, random.Random(base + index)))
        self._loop(self._bursts(random.Random(base + 50)))
        self._loop(self._slow_senders(random.Random(base + 60)))
        for slot in range(r.idle_connections):
            self._loop(self._idle_slot(random.Random(base + 100 + slot)))

    async def stop(self) -> None:
        """No more arrivals; every call under way is seen through."""
        self.stop_signal.fire()
        loops, self._loops = self._loops, []
        await defer.gatherResults(loops)
        while self._inflight:
            await defer.gatherResults(list(self._inflight))

    # -- arrivals ------------------------------------------------------------------

    def _loop(self, coroutine: Coroutine[Any, Any, None]) -> None:
        self._loops.append(defer.ensureDeferred(coroutine))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        self.started += 1
        running = defer.ensureDeferred(coroutine)
        self._inflight.add(running)

        def ended(result: Failure | None) -> None:
            self._inflight.discard(running)
            if isinstance(result, Failure):  # a bug in the load itself: say so
                self.c.tally.unexpected("load generator", result.getTraceback()[-600:])

        running.addBoth(ended)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, or less if the load stops meanwhile."""
        sleeping = task.deferLater(self.c.reactor, seconds, lambda: None)
        waiting = [sleeping, self.stop_signal.wait()]
        await defer.DeferredList(waiting, fireOnOneCallback=True, consumeErrors=True)
        sleeping.cancel()  # a no-op once it has fired

    async def _poisson(
        self,
        rate: float,
        fire: Callable[[random.Random, int], Coroutine[Any, Any, None]],
        rng: random.Random,
    ) -> None:
        n = 0
        while rate > 0:
            await self._sleep(rng.expovariate(rate))
            if self.stop_signal.stopped:
                return
            self._spawn(fire(rng, n))
            n += 1

    async def _job(self, rng: random.Random, n: int) -> None:
        c = self.c
        await load.job(c.http, c.tally, rng, n, c.jobs, c.hooks, self.rates.cancel_share)

    async def _bursts(self, rng: random.Random) -> None:
        n = 100_000
        while True:
            await self._sleep(self.rates.burst_every * rng.uniform(0.8, 1.2))
            if self.stop_signal.stopped:
                return
            for _ in range(self.rates.burst):
                self._spawn(self._job(rng, n))
                n += 1

    async def _slow_senders(self, rng: random.Random) -> None:
        c, n = self.c, 0
        while True:
            await self._sleep(self.rates.slow_sender_every * rng.uniform(0.5, 1.5))
            if self.stop_signal.stopped:
                return
            self._spawn(raw.slow_sender(c.reactor, c.port, c.token, c.tally, rng, n, c.front))
            n += 1

    async def _idle_slot(self, rng: random.Random) -> None:
        c = self.c
        await self._sleep(rng.uniform(0, 5))
        while not self.stop_signal.stopped:
            await raw.idle_holder(
                c.reactor, c.port, c.token, c.tally, rng, c.front, self.stop_signal
            )


# -- the front door's own limits, if this foreman has them ---------------------------------

_OPTION = re.compile(r"^\s*--(?P<name>[\w-]+)=?(?P<text>.*?)(?=^\s*--|\Z)", re.S | re.M)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}

#: What to set an option to when this foreman has it but it is off by default.
_IF_OFF = {"header": "10s", "body": "10s", "idle": "60s"}


def _seconds(text: str) -> float | None:
    parts = _DURATION.findall(text)
    total = sum(float(number) * _UNITS[unit or None] for number, unit in parts)
    return total if parts and total > 0 else None


def front_door() -> tuple[raw.FrontDoor, list[str]]:
    """The front door's timeouts and connection cap as ``twistd foreman --help`` lists
    them (looked for by name, as they are being added while this is written), and
    the options to pass to turn on any that are off by default."""
    found = subprocess.run(
        [str(BIN / "twistd"), "foreman", "--help"], capture_output=True, text=True, check=True
    ).stdout
    # Without options of its own, foreman has Twisted's idle timeout (HTTPChannel.timeOut,
    # 60 s): a connection with nothing under way, before or between requests, is closed.
    front, extra = raw.FrontDoor(idle_timeout=60.0), []
    for match in _OPTION.finditer(found):
        name = match["name"]
        text = " ".join(match["text"].split())
        default = re.search(r"\[default:\s*([^\]]*)\]", text)
        value = _seconds(default[1]) if default else None
        words = set(name.split("-"))
        if {"timeout", "connections"} & words and "connect" not in words:
            front.options.append(f"--{name} ({default[1] if default else 'no default'})")
        if "timeout" in words and words & set(_IF_OFF) and "connect" not in words:
            which = next(iter(words & set(_IF_OFF)))
            if value is None:
                extra.append(f"--{name}={_IF_OFF[which]}")
                value = _seconds(_IF_OFF[which])
            setattr(front, f"{which}_timeout", value)
        elif "connections" in words and "max" in words and value:
            front.max_connections = int(value)
    return front, extra

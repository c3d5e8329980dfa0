"""A stop that drains: what runs may finish, nothing ends looking whole (ADR-0023).

launchd stops foreman with SIGTERM on ``launchctl kickstart -k``, an upgrade
or a log-out, and kills it ``ExitTimeOut`` seconds later. Between the two,
foreman:

1. stops listening (new connections are refused) and answers any request
   still arriving on an open connection with ``503`` + ``Retry-After`` in its
   dialect; idle connections close at once, busy ones once answered;
2. lets the running job and every stream in progress go on, for up to
   ``--drain-timeout``; sync callers still waiting in the queue get ``503``
   at once, asynchronous jobs stay queued in the store for the next start;
3. when the time is up, cuts what is left: a stream gets its dialect's
   broken-stream ending (``{"error": …}``, an SSE error event), a call
   not yet answered gets ``503``, and a running asynchronous job goes back
   to the queue with its attempt given back.

Only then do the worker, the outbox and the store stop
(:meth:`foreman.service.ForemanService.stopService`).
"""

from __future__ import annotations

import math

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from foreman.http.site import STOPPING_MESSAGE, ForemanSite
from foreman.queue.worker import Worker
from foreman.relay.forward import Relay

log = Logger()

#: How often the drain looks whether everything has finished.
TICK = 0.05
#: After the cut, how long the answers it ended may take to go out.
CUT_GRACE = 2.0


class Drain:
    def __init__(
        self,
        site: ForemanSite,
        relay: Relay,
        worker: Worker | None,
        clock: IReactorTime,
        *,
        limit: float,
    ) -> None:
        self._site = site
        self._relay = relay
        self._worker = worker
        self._clock = clock
        self.limit = limit

    def _finished(self) -> bool:
        worker_idle = self._worker is None or self._worker.current is None
        return worker_idle and self._site.busy == 0 and self._relay.in_flight == 0

    async def run(self) -> None:
        """Drain, then cut what is left; fires when foreman may stop its parts."""
        started = self._clock.seconds()
        self._site.drain()
        running = self._worker.current if self._worker is not None else None
        if self._worker is not None:
            self._worker.drain()
        if self._finished():
            return
        log.info(
            "Stopping: {busy} call(s) in progress{job}; they have {limit:g} s to finish",
            busy=self._site.busy,
            job=f", job {running.id} running" if running is not None else "",
            limit=self.limit,
        )
        if await self._until_finished(started + self.limit):
            log.info(
                "Drained in {seconds:.1f} s: everything in progress finished",
                seconds=self._clock.seconds() - started,
            )
            return
        self._cut()
        # The endings written, the callers' answers finish (their jobs'
        # last states are stored first); whatever still hangs is closed.
        if not await self._until_finished(self._clock.seconds() + CUT_GRACE):
            self._site.connections.close_all()

    async def _until_finished(self, deadline: float) -> bool:
        while not self._finished():
            left = deadline - self._clock.seconds()
            if left <= 0:
                return False
            await deferLater(self._clock, min(TICK, left))
        return True

    def _cut(self) -> None:
        if self._worker is not None:
            # First, so that what the cut ends counts as stopped, not failed.
            self._worker.cut()
        cut = self._relay.cut_all(STOPPING_MESSAGE)
        log.warn(
            "Stopping: {limit} s were not enough; cut {cut} call(s) to Ollama with an "
            "explicit error, closing {busy} connection(s)",
            limit=math.ceil(self.limit),
            cut=cut,
            busy=self._site.busy,
        )

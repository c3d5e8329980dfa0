"""An Ollama that does not answer pauses the worker; it never fails jobs (ADR-0023).

Ollama goes away every day on a Mac: an app update, ``brew services
restart``, a laptop waking. While it does not answer, no attempt at a job
could succeed, so none is spent: the worker stops taking jobs, asks the
target again with backoff (:class:`Outage`), and goes on in the queue's
order once it answers. The job that met the outage goes back to its place
with its attempt given back. Attempts are spent only on failures that happen
while the target answers (a reply cut short by a crash the target has
already recovered from, a load that never ends).

A sync caller waiting in the queue keeps waiting, for up to ``caller_wait``
seconds counted from when the outage began or it arrived, whichever came
later; then, unless one more look finds the target back, it gets ``503``
with ``Retry-After`` in its dialect. Asynchronous jobs wait for as long as
it takes.
"""

from __future__ import annotations

import math

from twisted.logger import Logger

from foreman.relay.inventory import Inventory

log = Logger()

#: The first probe of a target that stopped answering, and the longest gap
#: between two: a probe is three small GETs, and Ollama restarts in seconds.
FIRST_PROBE = 0.5
PROBE_CAP = 5.0
#: How long a sync caller waits in the queue for a target that does not answer.
DEFAULT_CALLER_WAIT = 30.0
#: What a caller refused during an outage is told to wait before trying again.
RETRY_AFTER = 5


class Outage:
    """Whether the worker waits for the target, since when, and when to ask it next.

    Times are on the reactor's clock.
    """

    def __init__(
        self,
        inventory: Inventory,
        *,
        caller_wait: float = DEFAULT_CALLER_WAIT,
        first_probe: float = FIRST_PROBE,
        probe_cap: float = PROBE_CAP,
    ) -> None:
        self._inventory = inventory
        self.caller_wait = caller_wait
        self._first_probe = first_probe
        self._probe_cap = probe_cap
        #: When the target stopped answering; ``None`` while it answers.
        self.since: float | None = None
        self.next_probe_at = 0.0
        self._gap = first_probe
        #: Outages seen since start, and callers refused because of them.
        self.count = 0
        self.callers_refused = 0

    @property
    def active(self) -> bool:
        return self.since is not None

    @property
    def target_silent(self) -> bool:
        """What the last look at the target found: no answer at all."""
        return self._inventory.answering is False

    @property
    def reason(self) -> str:
        return self._inventory.last_error or "it does not answer"

    def begin(self, now: float) -> None:
        """The target stopped answering at ``now`` (nothing happens if known)."""
        if self.since is not None:
            return
        self.since = now
        self.count += 1
        self._gap = self._first_probe
        self.next_probe_at = now + self._gap
        log.warn(
            "Ollama does not answer ({reason}): the worker waits for it; no job fails for this",
            reason=self.reason,
        )

    async def probe(self, now: float) -> bool:
        """Ask the target now; whether it answers. Schedules the next probe."""
        self._gap = min(self._probe_cap, self._gap * 2)
        self.next_probe_at = now + self._gap
        await self._inventory.refresh()
        return not self.target_silent

    def end(self, now: float) -> None:
        if self.since is None:
            return
        log.info(
            "Ollama answers again after {seconds:.1f} s: the worker goes on",
            seconds=now - self.since,
        )
        self.since = None

    def caller_deadline(self, arrived: float) -> float:
        """Until when a sync caller that arrived at ``arrived`` waits in this outage."""
        assert self.since is not None
        return max(self.since, arrived) + self.caller_wait

    def refusal(self) -> str:
        """What a sync caller is told when its wait runs out."""
        assert self.since is not None
        waited = math.ceil(self.caller_wait)
        url = self._inventory.target.base_url
        return (
            f"foreman: cannot reach Ollama at {url} ({self.reason}); "
            f"the call waited {waited} s for it. Try again shortly"
        )

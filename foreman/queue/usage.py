"""What each key used: calls, tokens, worker time, loads, refusals (issue 21, ADR-0030).

:class:`KeyUsage` counts on the reactor thread, in memory, per key name, and
writes what it counted to the ``key_usage`` table every half minute while
there is something to write, and once more at a stop. Each box of a fleet
writes rows of its own (``box``: its id; ``local`` for a foreman alone), adding
to them with one upsert, and a listing sums the boxes. A write the store
refuses is kept and added to the next one: a fault delays the counts, never
loses them (ADR-0023); only a store that still refuses when foreman stops
loses what it could not take, and the log says how much.

What is counted, and where:

- a **call**: each job stored as a new one (a sync call of any dialect, a
  ``/jobs`` submit, each line of a batch), when it is stored
  (:meth:`KeyUsage.job_moved`, a transition listener the worker plugs in);
- **tokens**: Ollama's own counts, read from the end of the reply of a job that
  ran here (:func:`reply_tokens`; :mod:`foreman.wire.token_counts` for each dialect);
- **worker seconds**: from a job's start on the worker to its end, every run
  of it (a retry runs again);
- **loads**: the runs that had to load their model first;
- **refusals**: whatever refused a key's call says so with :meth:`KeyUsage.refused`.

A call sent with no key (the admin token, or no keys at all) counts under
:data:`NO_KEY`, a name no key can have.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from foreman.queue.engines import Connection
from foreman.queue.job import Job, JobState
from foreman.queue.store import JobStore
from foreman.relay.forward import Attempt, Outcome
from foreman.wire.clocks import Clocks
from foreman.wire.token_counts import TokenCounts, counts_in_reply, counts_in_stream

log = Logger()

#: The name calls with no key are counted under: the admin token's, or any
#: call while there are no keys. Parentheses keep it apart from key names.
NO_KEY = "(no key)"
#: The box a foreman alone writes its rows as (a fleet's boxes write their ids).
LOCAL_BOX = "local"
#: Seconds between two writes while there is something to write.
FLUSH_SECONDS = 30.0
#: The longest wait between two tries of a write the store refused.
RETRY_CAP = 60.0

_COUNTS = ("calls", "prompt_tokens", "output_tokens", "worker_seconds", "loads", "refusals")


@attrs.frozen
class UsageTotals:
    """What one key used (on one box, or summed over the boxes)."""

    calls: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    worker_seconds: float = 0.0
    loads: int = 0
    refusals: int = 0

    def __add__(self, other: UsageTotals) -> UsageTotals:
        return UsageTotals(
            calls=self.calls + other.calls,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            worker_seconds=self.worker_seconds + other.worker_seconds,
            loads=self.loads + other.loads,
            refusals=self.refusals + other.refusals,
        )

    def as_json(self) -> dict[str, int | float]:
        """The counts as JSON: worker seconds to the millisecond."""
        counts = attrs.asdict(self)
        counts["worker_seconds"] = round(self.worker_seconds, 3)
        return counts


_NOTHING = UsageTotals()


def added(
    into: Mapping[str, UsageTotals], more: Mapping[str, UsageTotals]
) -> dict[str, UsageTotals]:
    """``into`` and ``more`` summed, key by key."""
    summed = dict(into)
    for name, counts in more.items():
        summed[name] = summed.get(name, _NOTHING) + counts
    return summed


def reply_tokens(attempt: Attempt) -> TokenCounts | None:
    """The tokens Ollama counted for a delivered reply: from a relayed
    stream's end (and start), or the whole body."""
    if attempt.outcome is not Outcome.DELIVERED:
        return None
    if attempt.tail is not None:
        return counts_in_stream(attempt.tail, attempt.head or b"")
    if attempt.body:
        return counts_in_reply(attempt.body)
    return None


class KeyUsage(Service):
    """This box's counts per key name, written to the store as they come."""

    def __init__(
        self,
        store: JobStore,
        clock: IReactorTime,
        *,
        clocks: Clocks | None = None,
        box: str | None = None,
        interval: float = FLUSH_SECONDS,
        retry_cap: float = RETRY_CAP,
    ) -> None:
        self._store = store
        self._clock = clock
        self._clocks = clocks or Clocks(clock)
        #: The rows this box writes: its id in a fleet.
        self.box = box or store.box or LOCAL_BOX
        self._interval = interval
        self._retry_cap = retry_cap
        #: Counted, not yet handed to the store.
        self._pending: dict[str, UsageTotals] = {}
        #: Handed to the store, not yet known to be written.
        self._writing: dict[str, UsageTotals] = {}
        #: Everything counted since start (this box): ``/metrics``' counters.
        self._since_start: dict[str, UsageTotals] = {}
        self._timer: IDelayedCall | None = None
        #: A write is under way; ``_idle`` fire when it ends.
        self._busy = False
        self._idle: list[Deferred[None]] = []
        self._gap = interval
        #: Why the last write failed; ``None`` once one succeeds.
        self.error: str | None = None
        #: Writes the store refused since start.
        self.refused_writes = 0
        #: Whether the store is known to refuse writes now (the worker's
        #: journal says so): a timed write waits rather than hold the store's
        #: one thread for its busy timeout ahead of the jobs' own writes.
        self.paused: Callable[[], bool] = lambda: False

    # -- counting (reactor thread) -----------------------------------------------------

    def called(self, name: str | None) -> None:
        """A call of ``name``'s was taken (stored as a job)."""
        self._add(name, UsageTotals(calls=1))

    def tokens(self, name: str | None, prompt: int, output: int) -> None:
        """Ollama read ``prompt`` tokens and generated ``output`` for ``name``."""
        if prompt > 0 or output > 0:
            self._add(name, UsageTotals(prompt_tokens=max(0, prompt), output_tokens=max(0, output)))

    def worked(self, name: str | None, seconds: float) -> None:
        """The worker spent ``seconds`` on a job of ``name``'s."""
        if math.isfinite(seconds) and seconds > 0:
            self._add(name, UsageTotals(worker_seconds=seconds))

    def loaded(self, name: str | None) -> None:
        """A job of ``name``'s had its model loaded first."""
        self._add(name, UsageTotals(loads=1))

    def refused(self, name: str | None) -> None:
        """A call of ``name``'s was refused (a limit, a scope, a full queue)."""
        self._add(name, UsageTotals(refusals=1))

    def job_moved(self, job: Job, previous: JobState | None) -> None:
        """A transition listener: a job stored for the first time is a call."""
        if previous is None and job.state is JobState.QUEUED:
            self.called(job.caller)

    def _add(self, name: str | None, counts: UsageTotals) -> None:
        key = NO_KEY if name is None else name
        self._pending[key] = self._pending.get(key, _NOTHING) + counts
        self._since_start[key] = self._since_start.get(key, _NOTHING) + counts
        self._write_soon(self._interval)

    # -- reading -----------------------------------------------------------------------

    def since_start(self) -> dict[str, UsageTotals]:
        """What this box counted since it started, per key name."""
        return dict(self._since_start)

    @property
    def unwritten(self) -> dict[str, UsageTotals]:
        """This box's counts the store does not hold yet."""
        return added(self._writing, self._pending)

    async def totals(self) -> dict[str, UsageTotals]:
        """Every key's usage, summed over the boxes: what the store holds and
        what this box has not written yet. Fails as the store's read fails."""
        stored = await self._store.read(_read_totals)
        # Read now, after the store answered: a write the store finished
        # before this read has left ``_writing`` by now (the store's thread
        # answers in order), and one it had not finished is still there.
        return added(stored, self.unwritten)

    # -- writing -----------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self._pending:
            self._write_soon(self._interval)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.flush().addCallback(self._stopped)

    def _stopped(self, written: bool) -> None:
        if not written:
            log.error(
                "The usage of {count} key(s) could not be written before stopping ({error})",
                count=len(self.unwritten),
                error=self.error,
            )

    def flush(self) -> Deferred[bool]:
        """Write what was counted, now (after a write under way); fires with
        whether the store took it. A refused write is kept for the next; this
        never fails."""
        return ensureDeferred(self._flush())

    async def _flush(self) -> bool:
        self._cancel_timer()
        while self._busy:
            idle: Deferred[None] = Deferred()
            self._idle.append(idle)
            await idle
        if not self._pending:
            return True
        writing, self._pending = self._pending, {}
        self._writing = writing
        rows = _rows(writing, self.box, self._clocks.wall())
        self._busy = True
        try:
            await self._store.transact(lambda db: _upsert(db, rows))
        except Exception as e:
            self._refused(e)
            return False
        else:
            self._writing = {}
            self.error = None
            self._gap = self._interval
            return True
        finally:
            self._busy = False
            idle_now, self._idle = self._idle, []
            for each in idle_now:
                each.callback(None)

    def _refused(self, error: Exception) -> None:
        # The refused counts go back in front of what came since.
        self._pending = added(self._writing, self._pending)
        self._writing = {}
        self.refused_writes += 1
        if self.error is None:
            log.warn("Could not write the usage per key ({error}); kept for later", error=error)
        self.error = str(error) or type(error).__name__
        self._cancel_timer()
        self._write_soon(self._gap)
        self._gap = min(self._retry_cap, self._gap * 2)

    def _write_soon(self, delay: float) -> None:
        if self._timer is None and self.running:
            self._timer = self._clock.callLater(delay, self._timed)

    def _timed(self) -> None:
        self._timer = None
        if self.paused():
            self._write_soon(self._interval)
            return
        self.flush()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None


def _rows(counts: Mapping[str, UsageTotals], box: str, stamp: float) -> list[tuple[object, ...]]:
    return [
        (name, box, *(getattr(each, column) for column in _COUNTS), stamp)
        for name, each in sorted(counts.items())
    ]


_UPSERT = (
    "INSERT INTO key_usage (name, box, calls, prompt_tokens, output_tokens, worker_seconds,"
    " loads, refusals, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (name, box) DO UPDATE SET "
    + ", ".join(f"{column} = key_usage.{column} + excluded.{column}" for column in _COUNTS)
    + ", updated_at = excluded.updated_at"
)


def _upsert(db: Connection, rows: Iterable[tuple[object, ...]]) -> None:
    db.executemany(_UPSERT, rows)


def _read_totals(db: Connection) -> dict[str, UsageTotals]:
    sums = ", ".join(f"SUM({column})" for column in _COUNTS)
    rows = db.execute(f"SELECT name, {sums} FROM key_usage GROUP BY name").fetchall()
    return {
        str(row[0]): UsageTotals(
            int(row[1]), int(row[2]), int(row[3]), float(row[4]), int(row[5]), int(row[6])
        )
        for row in rows
    }

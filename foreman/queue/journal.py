"""The worker's writes to the store, and what happens when the store refuses one (ADR-0023).

Every state a job enters is stored, with what its recorders write, in one
transaction (:mod:`foreman.queue.transitions`), before anyone hears of it.
The store can refuse a write: a full disk, a file another program holds
locked, an I/O error. Then nothing of the transition is stored, and the
worker must not go on as if it were:

- :meth:`Journal.save` raises :class:`StoreUnavailable`, so the worker can
  put back what it was about to do (a job it was about to start stays queued);
- a state that cannot be taken back (the job ran: its result, its failure,
  its cancellation) is *kept* (:meth:`Journal.keep`) and written again, in
  order, with backoff, until the store takes it;
- while the store is troubled the worker starts nothing: nothing is generated
  that cannot be recorded. :meth:`Journal.recover` waits until the kept
  writes are in and a test write succeeds.

A new job's row is written without the journal (its caller hears ``503``
when it is refused), but the refusal is the journal's trouble all the same
(:meth:`Journal.refused_elsewhere`). ``/healthz`` reports the trouble
(:attr:`Journal.error`) until it is over.
"""

from __future__ import annotations

from twisted.logger import Logger

from foreman.queue.job import Job, JobState
from foreman.queue.leases import Fenced
from foreman.queue.store import JobStore
from foreman.queue.transitions import Transition, Transitions

log = Logger()

#: The first retry of a refused write, and the longest gap between two.
FIRST_RETRY = 0.5
RETRY_CAP = 5.0


class StoreUnavailable(Exception):
    """The store refused a write; nothing of it was stored."""


class Journal:
    def __init__(
        self,
        store: JobStore,
        transitions: Transitions,
        *,
        first_retry: float = FIRST_RETRY,
        retry_cap: float = RETRY_CAP,
    ) -> None:
        self._store = store
        self._transitions = transitions
        self._first_retry = first_retry
        self._retry_cap = retry_cap
        #: Transitions the store refused, oldest first, to be written again.
        self._kept: list[Transition] = []
        #: Why the store cannot be written now; ``None`` while it can.
        self.error: str | None = None
        #: When the trouble began, on the reactor's clock.
        self.since: float | None = None
        self.gap = first_retry
        #: When the worker tries the store again, on the reactor's clock.
        self.next_try_at = 0.0
        #: Writes refused since start.
        self.refused = 0

    @property
    def troubled(self) -> bool:
        return self.error is not None

    @property
    def kept(self) -> int:
        return len(self._kept)

    def holds(self, job_id: str) -> Job | None:
        """The newest state of ``job_id`` waiting to be written, if any."""
        for transition in reversed(self._kept):
            if transition.job.id == job_id:
                return transition.job
        return None

    async def save(self, job: Job, previous: JobState | None, now: float) -> None:
        """Store ``job``'s new state (it left ``previous``), after anything kept.

        Raises :class:`StoreUnavailable` when the store refuses: then neither
        this state nor anything after it was stored.
        """
        await self._write(self._transitions.begin(job, previous), now)

    async def claim(self, job: Job, now: float, *, lease: float) -> Job | None:
        """Take ``job`` (it is about to leave ``queued`` for ``loading``) for
        this box, in one statement, if no other box took it first: the job as
        stored, or ``None`` when it is taken, cancelled or gone (a fleet,
        ADR-0026). Raises :class:`StoreUnavailable` as :meth:`save` does."""
        await self._flush(now)
        transition = self._transitions.begin(job, JobState.QUEUED)
        write = transition.write
        try:
            claimed = await self._store.claim(
                [job.id],
                lease=lease,
                now=job.updated_at,
                recorder=None if write is None else lambda db, _job, _previous: write(db),
            )
        except Exception as e:
            self._refused(e, now)
            raise StoreUnavailable(self.error) from e
        if claimed is not None:
            transition.stored()
        return claimed

    async def save_or_keep(self, job: Job, previous: JobState | None, now: float) -> bool:
        """Store ``job``'s new state, or keep it to be written later; whether it
        is stored. A write fenced off (the job is no longer this box's) is
        dropped: the fleet's record of the job wins."""
        transition = self._transitions.begin(job, previous)
        try:
            await self._write(transition, now)
        except Fenced:
            _log_fenced(job)
            return False
        except StoreUnavailable:
            self._kept.append(transition)
            log.warn(
                "Job {job_id} is {state}, but the store refused to record it; "
                "foreman writes it again once the store takes writes",
                job_id=job.id,
                state=job.state.value,
            )
            return False
        return True

    async def _write(self, transition: Transition, now: float) -> None:
        await self._flush(now)
        try:
            await self._store.update(transition.job, transition.write)
        except Fenced:
            raise  # the job is no longer this box's: nothing to keep
        except Exception as e:
            self._refused(e, now)
            raise StoreUnavailable(self.error) from e
        transition.stored()

    async def _flush(self, now: float) -> None:
        """Write what was kept, in order; raises at the first refusal."""
        while self._kept:
            transition = self._kept[0]
            try:
                await self._store.update(transition.job, transition.write)
            except Fenced:
                # Kept while the store was away, and meanwhile the job's lease
                # ran out (another box has it now) or it was cancelled: the
                # fleet's record wins.
                self._kept.pop(0)
                _log_fenced(transition.job)
                continue
            except Exception as e:
                self._refused(e, now)
                raise StoreUnavailable(self.error) from e
            self._kept.pop(0)
            transition.stored()

    async def recover(self, now: float) -> bool:
        """One try: write what was kept, then a test write. Whether the store
        takes writes again (then the trouble is over)."""
        try:
            await self._flush(now)
            await self._store.check_writable()
        except StoreUnavailable:
            return False
        except Exception as e:
            self._refused(e, now)
            return False
        if self.since is not None:
            log.info(
                "The store takes writes again after {seconds:.1f} s; the worker goes on",
                seconds=now - self.since,
            )
        self.error = None
        self.since = None
        self.gap = self._first_retry
        return True

    def refused_elsewhere(self, error: Exception, now: float) -> None:
        """A write made without the journal (a new job's row) was refused at
        ``now``: the store is troubled all the same, until :meth:`recover`."""
        self._refused(error, now)

    def schedule_retry(self, now: float) -> None:
        """A :meth:`recover` failed at ``now``: the next one waits twice as long."""
        self.gap = min(self._retry_cap, self.gap * 2)
        self.next_try_at = now + self.gap

    def _refused(self, error: Exception, now: float) -> None:
        self.refused += 1
        reason = describe_store_error(error)
        if self.error is None:
            self.since = now
            self.gap = self._first_retry
            self.next_try_at = now + self.gap
            log.error(
                "The store cannot be written ({reason}): the worker pauses until it can",
                reason=reason,
            )
        self.error = reason


def _log_fenced(job: Job) -> None:
    log.warn(
        "Job {job_id} was taken from this box (its lease ran out, or it was cancelled) "
        "before its state {state} could be written: the store keeps what the fleet did",
        job_id=job.id,
        state=job.state.value,
    )


def describe_store_error(error: Exception) -> str:
    """A store failure in a sentence: SQLite's own words are one already."""
    text = str(error).strip()
    return text or type(error).__name__

"""A job's state transitions: what is written with each one, and who hears of it.

The worker records every state change through :meth:`Transitions.begin`,
which asks two kinds of parties what the change means:

- *Recorders* add rows to the very SQLite transaction that stores the job's
  new state (the webhook events of ``/jobs`` jobs, ADR-0005). The state and
  what it implies are committed together or not at all, so a crash (kill -9,
  power loss) can never leave a state whose event was not stored: there is no
  window between two writes because there is no second write. After the
  commit a recorder is told (:meth:`Record.committed`) so it can act on what
  it wrote, in memory only (the outbox schedules the row). Should the process
  die before that, the rows are in the file and the next start finds them.
- *Listeners* are called after the state is stored (metrics, tests). A
  listener runs on the reactor thread and must return quickly; it cannot
  change the job, and its failure is logged, never passed on.

A recorder renders what it will write before the transaction starts, on the
reactor thread, so the store's thread only runs SQL. Its failure to render is
logged and it writes nothing, as a listener's failure would be. Its write,
though, belongs to the transaction: should it fail, the job's state is not
stored either (both live in one SQLite file, so in practice they fail
together), and nobody is told of a state that was not stored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from foreman.queue.engines import Connection
from foreman.queue.job import Job, JobState

log = Logger()

TransitionListener = Callable[[Job, JobState | None], object]


class Record(Protocol):
    """What one recorder writes with one transition."""

    def write(self, db: Connection) -> None:
        """Add rows inside the transaction that stores the state (store thread)."""

    def committed(self) -> None:
        """The transaction committed; act on what was written (reactor thread)."""


#: ``recorder(job, previous)``: what to write with ``job`` entering its state, if anything.
TransitionRecorder = Callable[[Job, JobState | None], Record | None]


@attrs.frozen
class Transition:
    """One state change on its way into the store: begun, written, stored."""

    job: Job
    previous: JobState | None
    records: tuple[Record, ...]
    #: The registry's own list: whoever listens when the state is stored hears it.
    listeners: list[TransitionListener]

    @property
    def write(self) -> Callable[[Connection], None] | None:
        """The work to run in the store's transaction; ``None`` when there is
        none, so a sync job's save stays one plain statement."""
        return self._write if self.records else None

    def _write(self, db: Connection) -> None:
        for record in self.records:
            record.write(db)

    def stored(self) -> None:
        """The state (and what the recorders wrote) is committed: tell everyone."""
        for record in self.records:
            try:
                record.committed()
            except Exception:
                _log_failure(Failure(), self.job)
        for listener in self.listeners:
            try:
                outcome = listener(self.job, self.previous)
            except Exception:
                _log_failure(Failure(), self.job)
                continue
            if isinstance(outcome, Deferred):
                # Nobody waits for a listener's work; its failure is only logged.
                outcome.addErrback(_log_failure, self.job)


class Transitions:
    def __init__(self) -> None:
        self._listeners: list[TransitionListener] = []
        self._recorders: list[TransitionRecorder] = []

    def add(self, listener: TransitionListener) -> None:
        self._listeners.append(listener)

    def add_recorder(self, recorder: TransitionRecorder) -> None:
        self._recorders.append(recorder)

    def begin(self, job: Job, previous: JobState | None) -> Transition:
        """``job`` is about to be stored in its state, having left ``previous``."""
        records: list[Record] = []
        for recorder in self._recorders:
            try:
                record = recorder(job, previous)
            except Exception:
                _log_failure(Failure(), job)
                continue
            if record is not None:
                records.append(record)
        return Transition(job, previous, tuple(records), self._listeners)


def _log_failure(failure: Failure, job: Job) -> None:
    log.failure(
        "A transition's recorder or listener failed on job {job_id} becoming {state}",
        failure,
        job_id=job.id,
        state=job.state.value,
    )

"""The job store's calls for a fleet: several foremans sharing one store (issue 18).

:class:`FleetStore` is a part of :class:`~foreman.queue.store.JobStore`: claims,
leases, the lease reaper, cancelling from any box, the boxes' heartbeats and
what a worker needs to follow the fleet's queue. Their SQL is in
:mod:`foreman.queue.leases` and :mod:`foreman.queue.boxes`. On SQLite they
do the same for one box; what differs between the engines (locking rows,
the database's clock, notifications) is the engine's.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from twisted.internet.defer import Deferred

from foreman.queue import boxes, leases
from foreman.queue.boxes import BoxRecord
from foreman.queue.engines import Connection, Engine
from foreman.queue.job import Job, JobState
from foreman.queue.leases import Owner, Recorder
from foreman.queue.runners import Runner

T = TypeVar("T")


class FleetStore:
    """Calls of :class:`~foreman.queue.store.JobStore`, which gives them its
    engine, box id, runner and connection."""

    engine: Engine
    #: This store's box id; ``None``: one foreman alone (nothing fenced).
    box: str | None
    _run: Runner[Any]

    @property
    def _db(self) -> Connection:
        raise NotImplementedError

    def _transaction(self) -> AbstractContextManager[Connection]:
        raise NotImplementedError

    @property
    def _owner(self) -> Owner:
        return Owner(self.engine, self.box)

    def _in_transaction(self, work: Callable[[Connection], T]) -> Deferred[T]:
        def run() -> T:
            with self._transaction() as db:
                return work(db)

        return self._run(run)

    # -- jobs ----------------------------------------------------------------------

    def claim(
        self,
        candidates: Sequence[str],
        *,
        lease: float,
        now: float,
        recorder: Recorder | None = None,
    ) -> Deferred[Job | None]:
        """Claim the first of ``candidates`` (job ids, in the order wanted) that
        is still queued and nobody's (or this box's): whether it is due is the
        worker's to say, on its own clock (ADR-0023). It is
        stored ``loading``, one attempt more, owned by this box for ``lease``
        seconds of the database's clock, and returned; ``None`` when none is
        left. ``recorder(connection, job, JobState.QUEUED)`` writes what the
        move implies in the same transaction."""
        owner = self._owner

        def claim(db: Connection) -> Job | None:
            claimed = leases.claim(db, owner, candidates, lease=lease, now=now)
            if claimed is not None and recorder is not None:
                recorder(db, claimed, JobState.QUEUED)
            return claimed

        if recorder is None:
            # One statement, its own transaction.
            return self._run(lambda: claim(self._db))
        return self._in_transaction(claim)

    def renew_leases(self, *, lease: float) -> Deferred[int]:
        """This box's running jobs and held webhook deliveries are its for
        ``lease`` seconds more; how many jobs."""
        owner = self._owner
        return self._in_transaction(lambda db: leases.renew(db, owner, lease))

    def reap_expired(
        self, *, now: float, requeued: Recorder | None = None
    ) -> Deferred[list[tuple[Job, JobState]]]:
        """Take back every running job whose lease ran out, whichever box held
        it (this one too): asynchronous ones back in the queue, nobody's, the
        attempt kept (``requeued(connection, job, previous)`` with each, in the
        same transaction); sync ones failed, as at start-up. Each as now stored,
        with the state it left. Webhook deliveries whose lease ran out are let go."""
        owner = self._owner
        return self._in_transaction(lambda db: leases.reap(db, owner, now, requeued))

    def cancel(
        self, job_id: str, *, now: float, also: Recorder | None = None
    ) -> Deferred[Job | None]:
        """Cancel ``job_id`` whichever box runs it: the job as now stored, or
        ``None`` when it is finished or unknown. ``also(connection, job,
        previous)`` writes what the cancel implies in the same transaction.
        The owner's later writes are :class:`~foreman.queue.leases.Fenced`."""
        owner = self._owner
        return self._in_transaction(lambda db: leases.cancel(db, owner, job_id, now, also))

    def fleet_queue(
        self, models: Collection[str] | None = None, *, bodies: bool = True
    ) -> Deferred[list[Job]]:
        """The asynchronous jobs waiting for any box, oldest first (ties by id);
        only for ``models`` (any name Ollama takes for each) when given. Without
        ``bodies`` they come without ``body`` and ``result``, for a summary."""
        return self._run(lambda: leases.fleet_queue(self._db, models, bodies=bodies))

    def states(self, ids: Collection[str]) -> Deferred[dict[str, tuple[JobState, str | None]]]:
        """The state and owning box of each of ``ids`` still in the store."""
        return self._run(lambda: leases.states(self._db, ids))

    def running(self) -> Deferred[list[tuple[str | None, str]]]:
        """The box and model of every job loading or generating now, on any box."""
        return self._run(lambda: leases.running(self._db))

    def db_now(self) -> Deferred[float]:
        """The database's clock now, in seconds since the epoch."""
        return self._run(lambda: leases.db_now(self._db, self.engine))

    # -- boxes -----------------------------------------------------------------------

    def publish_box(self, record: BoxRecord) -> Deferred[None]:
        """Insert or replace ``record`` (by its id), its heartbeat stamped now
        on the database's clock."""
        return self._run(lambda: boxes.publish(self._db, self.engine, record))

    def fleet_secret(self) -> str:
        """The fleet's shared secret (blocking: for start-up)."""
        return boxes.fleet_secret(self._db)

    def boxes(self, *, lease: float) -> Deferred[list[BoxRecord]]:
        """Every box that published, by name; alive while its heartbeat is at
        most ``lease`` seconds old."""
        return self._run(lambda: boxes.every(self._db, self.engine, lease))

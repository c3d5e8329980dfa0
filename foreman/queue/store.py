"""The durable job store (ADR-0008): by default one SQLite file in the data
directory, or a PostgreSQL database (``--database postgresql://...``).

Every call goes through a *runner* (:mod:`foreman.queue.runners`) that
decides which thread touches the database. What differs between databases
(connecting, migrating, their errors) is an *engine*'s
(:mod:`foreman.queue.engines`); the SQL here is written once, for both. The
tables and their migrations are in :mod:`foreman.queue.schema`.

Writes that record a job's state take ``also``: work of another module (the
webhook outbox's row for the state's event) run in the same transaction, so
the state and what it implies are committed together or not at all
(:mod:`foreman.queue.transitions`). Without it, a write stays one plain statement.

Several foremans can share one store (issue 18): each is a *box* with an id
(``box``), and what that changes (claims, leases, fenced writes, start-up
recovery of a box's own jobs) is :class:`~foreman.queue.fleet_store.FleetStore`'s
and :mod:`foreman.queue.leases`'.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from foreman.queue import leases, schema
from foreman.queue.engines import Connection, Engine, SQLiteEngine
from foreman.queue.fleet_store import FleetStore
from foreman.queue.job import Job, JobState
from foreman.queue.leases import Fenced, Recovery
from foreman.queue.rows import COLUMNS as _COLUMNS
from foreman.queue.rows import job_to_row as _job_to_row
from foreman.queue.rows import row_to_job as _row_to_job
from foreman.queue.runners import Runner, inline_runner
from foreman.wire.model_names import canonical_model_name

log = Logger()

T = TypeVar("T")
#: Work run inside a write's transaction, on the store's thread.
Also = Callable[[Connection], object]
#: Called by start-up recovery, in its transaction, for each job it puts back
#: in the queue: the job as now stored, and the running state it left.
Requeued = Callable[[Connection, Job, JobState], object]

__all__ = ["Also", "Fenced", "JobStore", "Recovery", "Requeued"]


def _by_idempotency_key(db: Connection, key: str) -> Job | None:
    row = db.execute("SELECT * FROM jobs WHERE idempotency_key = ?", (key,)).fetchone()
    return None if row is None else _row_to_job(row)


class JobStore(FleetStore):
    def __init__(
        self,
        database: Path | Engine,
        run: Runner[Any] = inline_runner,
        *,
        box: str | None = None,
    ) -> None:
        """The store in ``database``: a SQLite file's path, or an engine; ``box``:
        this foreman's id among those sharing it (``None``: it is alone)."""
        self.engine: Engine = SQLiteEngine(database) if isinstance(database, Path) else database
        self.box = box
        self._run = run
        self._connection: Connection | None = None

    @property
    def path(self) -> Path:
        """The SQLite file the store is in (a SQLite store's only)."""
        path = getattr(self.engine, "path", None)
        if not isinstance(path, Path):
            raise AttributeError(f"the {self.engine.name} store has no file")
        return path

    @property
    def description(self) -> str:
        """Where the store is, for messages (never a password)."""
        return self.engine.description

    # -- lifecycle -------------------------------------------------------------

    def open(self) -> Deferred[None]:
        return self._run(self._open)

    def _open(self) -> None:
        connection = self.engine.connect()
        try:
            # Refuses a newer schema before changing anything.
            self.engine.migrate(connection)
        except BaseException:
            connection.close()
            raise
        self._connection = connection

    def startup(self, now: float, requeued: Requeued | None = None) -> tuple[Recovery, list[Job]]:
        """Open, migrate, recover and list unfinished jobs, all at once.

        Blocking: meant for start-up, before the reactor runs, so the queue
        is whole before the first request can arrive. A job recovery puts
        back in the queue makes a transition too: ``requeued`` writes what
        it implies (its ``queued`` event) in recovery's own transaction.
        """
        self._open()
        recovery = self._recover(now, requeued)
        return recovery, self._unfinished()

    def close(self) -> Deferred[None]:
        def close() -> None:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

        return self._run(close)

    @property
    def schema_version(self) -> int:
        return schema.version()

    # -- writes ----------------------------------------------------------------

    def insert(self, job: Job, also: Also | None = None) -> Deferred[Job]:
        """Store a new job; ``also(connection)`` in the same transaction. On a
        box, a sync job is the box's from the start, an asynchronous one
        nobody's (and the other boxes are told of it): the job as stored."""
        owner = self._owner
        job = leases.owned(owner, job)
        row = _job_to_row(job)
        names = ", ".join(row)
        marks = ", ".join(f":{name}" for name in row)

        def insert() -> Job:
            if also is None:
                self._db.execute(f"INSERT INTO jobs ({names}) VALUES ({marks})", row)
            else:
                with self._transaction() as db:
                    db.execute(f"INSERT INTO jobs ({names}) VALUES ({marks})", row)
                    also(db)
            leases.tell_the_fleet(self._db, owner, job)
            return job

        return self._run(insert)

    def insert_many(self, jobs: Sequence[Job], also: Also | None = None) -> Deferred[list[Job]]:
        """Store new jobs all at once (a batch): one transaction with
        ``also(connection)``, so either every job is stored or none."""
        owner = self._owner
        owned = [leases.owned(owner, job) for job in jobs]
        rows = [_job_to_row(job) for job in owned]
        if not rows:
            return succeed([])
        names = ", ".join(rows[0])
        marks = ", ".join(f":{name}" for name in rows[0])

        def insert() -> list[Job]:
            with self._transaction() as db:
                db.executemany(f"INSERT INTO jobs ({names}) VALUES ({marks})", rows)
                if also is not None:
                    also(db)
            # One hint wakes the listening boxes; each then reads the queue.
            waiting = next((job for job in owned if not job.box), None)
            if waiting is not None:
                leases.tell_the_fleet(self._db, owner, waiting)
            return owned

        return self._run(insert)

    def update(
        self, job: Job, also: Also | None = None, *, attempt: int | None = None
    ) -> Deferred[Job]:
        """Store ``job`` as it is now (never its lease); ``also(connection)`` in
        the same transaction. On a box the write is fenced: it fails with
        :class:`Fenced`, changing nothing, unless the job is still this box's
        and unfinished (and, with ``attempt``, still at that attempt). A job
        going back to the queue stops being the box's (a sync job stays): the
        job as stored."""
        owner = self._owner
        job = leases.owned(owner, job)

        def update() -> Job:
            if also is None:
                # The hot path (every sync job): one statement, its own transaction.
                leases.update(self._db, owner, job, attempt)
            else:
                with self._transaction() as db:
                    leases.update(db, owner, job, attempt)
                    also(db)
            if owner.box is not None:
                leases.tell_the_fleet(self._db, owner, job)
            return job

        return self._run(update)

    def insert_unless_known(self, job: Job, also: Also | None = None) -> Deferred[Job]:
        """Insert ``job``, unless a job with its idempotency key exists: then
        that one, unchanged. One transaction, so two submits racing with the
        same key still make one job (the unique index backs this up).
        ``also(connection)`` runs in it only when ``job`` is inserted."""
        owner = self._owner
        job = leases.owned(owner, job)
        row = _job_to_row(job)
        names = ", ".join(row)
        marks = ", ".join(f":{name}" for name in row)

        key = job.idempotency_key

        def insert() -> Job:
            try:
                with self._transaction() as db:
                    if key is not None:
                        known = _by_idempotency_key(db, key)
                        if known is not None:
                            return known
                    db.execute(f"INSERT INTO jobs ({names}) VALUES ({marks})", row)
                    if also is not None:
                        also(db)
                leases.tell_the_fleet(self._db, owner, job)
                return job
            except self.engine.IntegrityError:
                # Another process sharing the database (PostgreSQL) inserted
                # the key between the look and the insert: its job is the one.
                known = None if key is None else _by_idempotency_key(self._db, key)
                if known is None:
                    raise
                return known

        return self._run(insert)

    def recover(self, now: float) -> Deferred[Recovery]:
        """Make the jobs of a process that died consistent again (ADR-0008).

        Asynchronous jobs that were running go back to the queue; the
        interrupted attempt stays counted. Sync jobs cannot be answered any more: their
        callers' connections died with the process, so they fail. On a box,
        only its own jobs (and those nobody owns): the others' are theirs.
        """
        return self._run(lambda: self._recover(now))

    def _recover(self, now: float, requeued: Requeued | None = None) -> Recovery:
        with self._transaction() as db:
            return leases.recover(db, self._owner, now, requeued)

    def check_writable(self) -> Deferred[None]:
        """One small write, to learn whether the store takes writes again."""

        def check() -> None:
            with self._transaction() as db:
                self.engine.probe_write(db)

        return self._run(check)

    def known_load_costs(self) -> dict[str, tuple[float, int]]:
        """Each model's measured load time and how many loads made it.

        Blocking: for start-up, before the reactor runs (as :meth:`startup`).
        """
        rows = self._db.execute("SELECT model, load_seconds, loads FROM model_costs").fetchall()
        return {row[0]: (float(row[1]), int(row[2])) for row in rows}

    def remember_load_cost(
        self, model: str, seconds: float, loads: int, stamp: float
    ) -> Deferred[None]:
        """Keep ``model``'s smoothed load time for the next start."""

        def remember() -> None:
            self._db.execute(
                "INSERT INTO model_costs (model, load_seconds, loads, updated_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (model) DO UPDATE SET"
                " load_seconds = excluded.load_seconds, loads = excluded.loads,"
                " updated_at = excluded.updated_at",
                (model, seconds, loads, stamp),
            )

        return self._run(remember)

    def sweep(self, finished_before: float) -> Deferred[int]:
        """Delete terminal jobs that finished before ``finished_before``."""

        def sweep() -> int:
            deleted: int = self._db.execute(
                "DELETE FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?",
                (finished_before,),
            ).rowcount
            return deleted

        return self._run(sweep)

    def transact(self, work: Callable[[Connection], T]) -> Deferred[T]:
        """Run ``work(connection)`` in one transaction on the store's thread.

        For modules that keep tables of their own in this database (artifacts,
        the webhook outbox): their SQL stays with them, the threading here.
        """

        def transact() -> T:
            with self._transaction() as db:
                return work(db)

        return self._run(transact)

    # -- reads -----------------------------------------------------------------

    def read(self, work: Callable[[Connection], T]) -> Deferred[T]:
        """Run ``work(connection)`` on the store's thread, outside a write
        transaction: for reads that come often (a poll, a page), which must
        not wait for the write lock while another program holds it."""
        return self._run(lambda: work(self._db))

    def get(self, job_id: str) -> Deferred[Job | None]:
        def get() -> Job | None:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return None if row is None else _row_to_job(row)

        return self._run(get)

    def find_by_idempotency_key(self, key: str) -> Deferred[Job | None]:
        return self._run(lambda: _by_idempotency_key(self._db, key))

    def listing(
        self,
        *,
        limit: int,
        state: JobState | None = None,
        model: str | None = None,
        before: str | None = None,
        owner: str | None = None,
    ) -> Deferred[list[Job]]:
        """Asynchronous jobs, newest first, ids below ``before``, at most ``limit``.

        ``model`` matches every name Ollama takes for the same model;
        ``owner``: only the jobs of the key of that name (``caller``). The
        jobs come without ``body`` and ``result``: a page is a summary,
        and those two can be large.
        """
        conditions: list[str] = ["sync = 0"]
        parameters: list[object] = []
        if owner is not None:
            conditions.append("caller = ?")
            parameters.append(owner)
        if state is not None:
            conditions.append("state = ?")
            parameters.append(state.value)
        if before is not None:
            conditions.append("id < ?")
            parameters.append(before)
        columns = ", ".join(name for name in _COLUMNS if name not in ("body", "result"))

        def listing() -> list[Job]:
            db = self._db
            where = conditions
            if model is not None:
                # The names stored for the same model, found here rather than
                # by a function in SQL: every engine can run what is left.
                wanted = canonical_model_name(model)
                names = [
                    name
                    for (name,) in db.execute("SELECT DISTINCT model FROM jobs").fetchall()
                    if canonical_model_name(name) == wanted
                ]
                if not names:
                    return []
                where = [*conditions, f"model IN ({', '.join('?' * len(names))})"]
            else:
                names = []
            query = (
                f"SELECT {columns} FROM jobs WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?"
            )
            rows = db.execute(query, (*parameters, *names, limit)).fetchall()
            return [_row_to_job(row, body=b"", result=None) for row in rows]

        return self._run(listing)

    def unfinished(self) -> Deferred[list[Job]]:
        """Every job that is queued or running, oldest first; on a box, those it
        owns and those waiting for any box."""

        return self._run(self._unfinished)

    def _unfinished(self) -> list[Job]:
        return leases.unfinished(self._db, self._owner)

    def count_by_state(self) -> Deferred[dict[JobState, int]]:
        def count() -> dict[JobState, int]:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
            counts = dict.fromkeys(JobState, 0)
            counts.update({JobState(state): number for state, number in rows})
            return counts

        return self._run(count)

    # -- plumbing --------------------------------------------------------------

    @property
    def _db(self) -> Connection:
        if self._connection is None:
            raise RuntimeError("the job store is not open")
        return self._connection

    def _transaction(self) -> AbstractContextManager[Connection]:
        return self._db.transaction()

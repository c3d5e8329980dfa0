"""The durable job store: one SQLite file in the data directory (ADR-0008).

Every call goes through a *runner* (:mod:`foreman.queue.runners`) that
decides which thread touches the database. The tables and their migrations
are in :mod:`foreman.queue.schema`.

Writes that record a job's state take ``also``: work of another module (the
webhook outbox's row for the state's event) run in the same transaction, so
the state and what it implies are committed together or not at all
(:mod:`foreman.queue.transitions`). Without it, a write stays one plain statement.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from foreman.queue import schema
from foreman.queue.job import Job, JobState
from foreman.queue.runners import Runner, inline_runner
from foreman.wire.model_names import canonical_model_name
from foreman.wire.priority import Priority

log = Logger()

T = TypeVar("T")
#: Work run inside a write's transaction, on the store's thread.
Also = Callable[[sqlite3.Connection], object]
#: Called by start-up recovery, in its transaction, for each job it puts back
#: in the queue: the job as now stored, and the running state it left.
Requeued = Callable[[sqlite3.Connection, Job, JobState], object]


@attrs.frozen
class Recovery:
    """What start-up recovery did with the jobs a previous process left."""

    requeued: int
    abandoned: int


_COLUMNS = tuple(field.name for field in attrs.fields(Job))


def _row_to_job(row: sqlite3.Row, **missing: object) -> Job:
    values = dict(zip(row.keys(), row, strict=True))
    values.update(missing)
    values["state"] = JobState(values["state"])
    values["sync"] = bool(values["sync"])
    values["priority"] = Priority(values["priority"])
    return Job(**values)


def _by_idempotency_key(db: sqlite3.Connection, key: str) -> Job | None:
    row = db.execute("SELECT * FROM jobs WHERE idempotency_key = ?", (key,)).fetchone()
    return None if row is None else _row_to_job(row)


def _job_to_row(job: Job) -> dict[str, Any]:
    row = attrs.asdict(job, recurse=False)
    row["state"] = job.state.value
    row["sync"] = int(job.sync)
    row["priority"] = job.priority.value
    return row


class JobStore:
    def __init__(self, path: Path, run: Runner[Any] = inline_runner) -> None:
        self.path = path
        self._run = run
        self._connection: sqlite3.Connection | None = None

    # -- lifecycle -------------------------------------------------------------

    def open(self) -> Deferred[None]:
        return self._run(self._open)

    def _open(self) -> None:
        if self.path.is_file() and self.path.stat().st_size == 0:
            # What a disk that filled up as the file was made leaves behind,
            # or a `touch`: SQLite reads it as an empty database.
            log.info("The store {path} is an empty file: starting a fresh store", path=self.path)
        connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            connection.row_factory = sqlite3.Row
            connection.execute("PRAGMA busy_timeout=5000")
            # Artifacts are deleted with their job (ON DELETE CASCADE).
            connection.execute("PRAGMA foreign_keys=ON")
            # Refuse a newer schema before changing anything in the file.
            schema.check_version(connection)
            # WAL lets readers (a backup, sqlite3 on the command line) look
            # while foreman writes; NORMAL sync is durable across a crash of
            # foreman, which is what the queue promises.
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            schema.migrate(connection)
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
        row = _job_to_row(job)
        names = ", ".join(row)
        marks = ", ".join(f":{name}" for name in row)

        def insert() -> Job:
            if also is None:
                self._db.execute(f"INSERT INTO jobs ({names}) VALUES ({marks})", row)
                return job
            with self._transaction() as db:
                db.execute(f"INSERT INTO jobs ({names}) VALUES ({marks})", row)
                also(db)
            return job

        return self._run(insert)

    def update(self, job: Job, also: Also | None = None) -> Deferred[Job]:
        """Store ``job`` as it is now; ``also(connection)`` in the same transaction."""
        row = _job_to_row(job)
        assignments = ", ".join(f"{name} = :{name}" for name in row if name != "id")
        statement = f"UPDATE jobs SET {assignments} WHERE id = :id"

        def update() -> Job:
            if also is None:
                # The hot path (every sync job): one statement, its own transaction.
                self._db.execute(statement, row)
                return job
            with self._transaction() as db:
                db.execute(statement, row)
                also(db)
            return job

        return self._run(update)

    def insert_unless_known(self, job: Job, also: Also | None = None) -> Deferred[Job]:
        """Insert ``job``, unless a job with its idempotency key exists: then
        that one, unchanged. One transaction, so two submits racing with the
        same key still make one job (the unique index backs this up).
        ``also(connection)`` runs in it only when ``job`` is inserted."""
        row = _job_to_row(job)
        names = ", ".join(row)
        marks = ", ".join(f":{name}" for name in row)

        def insert(db: sqlite3.Connection) -> Job:
            if job.idempotency_key is not None:
                known = _by_idempotency_key(db, job.idempotency_key)
                if known is not None:
                    return known
            db.execute(f"INSERT INTO jobs ({names}) VALUES ({marks})", row)
            if also is not None:
                also(db)
            return job

        return self.transact(insert)

    def recover(self, now: float) -> Deferred[Recovery]:
        """Make the jobs of a process that died consistent again (ADR-0008).

        Asynchronous jobs that were running go back to the queue; the
        interrupted attempt stays counted. Sync jobs cannot be answered any more: their
        callers' connections died with the process, so they fail.
        """
        return self._run(lambda: self._recover(now))

    def _recover(self, now: float, requeued: Requeued | None = None) -> Recovery:
        with self._transaction() as db:
            running: list[Job] = []
            if requeued is not None:
                running = [
                    _row_to_job(row)
                    for row in db.execute(
                        "SELECT * FROM jobs WHERE sync = 0 AND state IN ('loading', 'working')"
                        " ORDER BY created_at, id"
                    )
                ]
            count = db.execute(
                # The interrupted attempt was counted when it started.
                "UPDATE jobs SET state = 'queued', updated_at = ?,"
                " not_before = 0 WHERE sync = 0 AND state IN ('loading', 'working')",
                (now,),
            ).rowcount
            if requeued is not None:
                for job in running:
                    # The job exactly as the UPDATE just left it.
                    requeued(db, job.moved(JobState.QUEUED, now, not_before=0.0), job.state)
            abandoned = db.execute(
                "UPDATE jobs SET state = 'failed', updated_at = ?, finished_at = ?,"
                " last_error = 'the caller was gone after foreman restarted',"
                " error_status = 499"
                " WHERE sync = 1 AND state IN ('queued', 'loading', 'working')",
                (now, now),
            ).rowcount
        return Recovery(requeued=count, abandoned=abandoned)

    def check_writable(self) -> Deferred[None]:
        """One small write, to learn whether the store takes writes again."""

        def check() -> None:
            with self._transaction() as db:
                (version,) = db.execute("PRAGMA user_version").fetchone()
                db.execute(f"PRAGMA user_version = {int(version)}")

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

    def transact(self, work: Callable[[sqlite3.Connection], T]) -> Deferred[T]:
        """Run ``work(connection)`` in one transaction on the store's thread.

        For modules that keep tables of their own in this file (artifacts,
        the webhook outbox): their SQL stays with them, the threading here.
        """

        def transact() -> T:
            with self._transaction() as db:
                return work(db)

        return self._run(transact)

    # -- reads -----------------------------------------------------------------

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
    ) -> Deferred[list[Job]]:
        """Asynchronous jobs, newest first, ids below ``before``, at most ``limit``.

        ``model`` matches every name Ollama takes for the same model. The
        jobs come without ``body`` and ``result``: a page is a summary,
        and those two can be large.
        """
        conditions: list[str] = ["sync = 0"]
        parameters: list[object] = []
        if state is not None:
            conditions.append("state = ?")
            parameters.append(state.value)
        if model is not None:
            conditions.append("foreman_model(model) = ?")
            parameters.append(canonical_model_name(model))
        if before is not None:
            conditions.append("id < ?")
            parameters.append(before)
        columns = ", ".join(name for name in _COLUMNS if name not in ("body", "result"))
        query = (
            f"SELECT {columns} FROM jobs WHERE {' AND '.join(conditions)} ORDER BY id DESC LIMIT ?"
        )

        def listing() -> list[Job]:
            db = self._db
            db.create_function("foreman_model", 1, canonical_model_name, deterministic=True)
            rows = db.execute(query, (*parameters, limit)).fetchall()
            return [_row_to_job(row, body=b"", result=None) for row in rows]

        return self._run(listing)

    def unfinished(self) -> Deferred[list[Job]]:
        """Every job that is queued or running, oldest first."""

        return self._run(self._unfinished)

    def _unfinished(self) -> list[Job]:
        rows = self._db.execute(
            "SELECT * FROM jobs WHERE state IN ('queued', 'loading', 'working')"
            " ORDER BY created_at, id"
        ).fetchall()
        return [_row_to_job(row) for row in rows]

    def count_by_state(self) -> Deferred[dict[JobState, int]]:
        def count() -> dict[JobState, int]:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
            counts = dict.fromkeys(JobState, 0)
            counts.update({JobState(state): number for state, number in rows})
            return counts

        return self._run(count)

    # -- plumbing --------------------------------------------------------------

    @property
    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            raise RuntimeError("the job store is not open")
        return self._connection

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def __enter__(self) -> sqlite3.Connection:
        self._connection.execute("BEGIN IMMEDIATE")
        return self._connection

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        if kind is not None:
            self._rollback()
            return
        try:
            self._connection.execute("COMMIT")
        except BaseException:
            # A COMMIT refused (a full disk, a lock held elsewhere) may leave
            # the transaction open; the next BEGIN would then fail for ever.
            self._rollback()
            raise

    def _rollback(self) -> None:
        if self._connection.in_transaction:
            try:
                self._connection.execute("ROLLBACK")
            except sqlite3.Error:
                log.failure("Could not roll back a transaction of the store")

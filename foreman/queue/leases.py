"""Who owns a job when several foremans share one store (issue 18): claims,
leases, fenced writes, the lease reaper, start-up recovery, and cancelling
from any box. The SQL of :class:`~foreman.queue.fleet_store.FleetStore`, run
on the store's thread with its connection.

A *box* is one foreman (with its Ollama). An asynchronous job waits in the
queue owned by nobody (``box`` NULL); a box takes it with :func:`claim`, one
statement that locks the row it picks and skips those other boxes hold
(``FOR UPDATE SKIP LOCKED``), and owns it while it runs, under a lease on the
database's clock that its heartbeat renews (:func:`renew`). A box whose lease
ran out is taken for dead: whichever box looks next puts its jobs back in the
queue (:func:`reap`). Every write of a box about a job it runs is *fenced*:
it changes the row only while the row is still that box's and unfinished, so
a late write of a box thought dead, or of a run cancelled from another box,
changes nothing and raises :class:`Fenced`. A sync job belongs to the box its
caller waits on from its insert to its end.

A store without a box id (``box`` ``None``) is one foreman alone, as before
fleets: its writes are not fenced, and every job is its own.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import attrs
from twisted.logger import Logger

from foreman.queue.engines import Connection, Engine
from foreman.queue.job import Job, JobState
from foreman.queue.rows import COLUMNS, job_to_row, row_to_job
from foreman.queue.settlement import CANCELLED_QUEUED, CANCELLED_RUNNING
from foreman.wire.model_names import canonical_model_name

log = Logger()

#: The channel on which a box hears that a job changed (``NOTIFY``): the
#: payload is ``"<state> <job id>"`` (``queued`` when one waits for a box,
#: ``cancelled`` when one was cancelled). A hint only: the store is the truth.
JOBS_CHANNEL = "foreman_jobs"

UNFINISHED = "('queued', 'loading', 'working')"
RUNNING = "('loading', 'working')"
#: Why a sync job fails when the box its caller waited on went away.
CALLER_GONE = "the caller was gone after foreman restarted"

#: ``recorder(connection, job, previous)``: writes what the job's move from
#: ``previous`` to its stored state implies, in the same transaction.
Recorder = Callable[[Connection, Job, JobState], object]


class Fenced(Exception):
    """A write about a job this box no longer owns changed nothing: the job
    was put back in the queue by a lease's end, claimed by another box,
    cancelled, or finished."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} is no longer this box's to write")
        self.job_id = job_id


@attrs.frozen
class Recovery:
    """What start-up recovery did with the jobs a previous process left."""

    requeued: int
    abandoned: int


@attrs.frozen
class Owner:
    """One store's side of the SQL: its engine and its box id."""

    engine: Engine
    box: str | None

    @property
    def mine(self) -> str:
        """A condition on a row of ``jobs`` or ``deliveries``: this box's."""
        return "box IS NULL" if self.box is None else "box = :me"

    @property
    def now(self) -> str:
        return self.engine.now_sql

    def notify(self, db: Connection, state: JobState, job_id: str) -> None:
        self.engine.notify(db, JOBS_CHANNEL, f"{state.value} {job_id}")


def tell_the_fleet(db: Connection, owner: Owner, job: Job) -> None:
    """After a write has committed: tell the boxes listening that ``job`` waits
    for any box, if it does. A hint only: a failure is logged, never raised
    (what was written stays written, and the boxes also look by themselves)."""
    if not owner.engine.notifies or job.sync or job.state is not JobState.QUEUED or job.box:
        return
    try:
        owner.notify(db, job.state, job.id)
    except owner.engine.Error:
        log.failure("Could not tell the other boxes of job {job_id}", job_id=job.id)


# -- writes of the owner ---------------------------------------------------------


def owned(owner: Owner, job: Job) -> Job:
    """``job`` as this store writes it: on a box, a sync job is the box's; an
    asynchronous job is the box's unless it goes back to the queue, where it
    is nobody's."""
    if owner.box is None:
        return job
    box = None if job.state is JobState.QUEUED and not job.sync else owner.box
    return job if job.box == box else attrs.evolve(job, box=box)


def update(db: Connection, owner: Owner, job: Job, attempt: int | None) -> None:
    """Write ``job`` (every field, never its lease) over its row, fenced on a
    box: only while the row is this box's and unfinished, and, when
    ``attempt`` is given, still at that attempt. :class:`Fenced` when not."""
    row = job_to_row(job)
    assignments = ", ".join(f"{name} = :{name}" for name in row if name != "id")
    where = "id = :id"
    if owner.box is not None:
        where += f" AND box = :me AND state IN {UNFINISHED}"
        row["me"] = owner.box
    if attempt is not None:
        where += " AND attempt = :fence_attempt"
        row["fence_attempt"] = attempt
    changed = db.execute(f"UPDATE jobs SET {assignments} WHERE {where}", row).rowcount
    if changed == 0 and where != "id = :id":
        raise Fenced(job.id)


def claim(
    db: Connection,
    owner: Owner,
    candidates: Sequence[str],
    *,
    lease: float,
    now: float,
) -> Job | None:
    """Take the first of ``candidates`` still queued and nobody's (or
    this box's): moved to ``loading`` as a run starts it (one attempt more),
    owned by this box under a lease of ``lease`` seconds. ``None`` when every
    candidate is taken, cancelled or gone. One statement.

    A job this box already holds ``loading`` is taken again as it is (its
    attempt unchanged): a run claimed it, then the store refused the run's
    next write, so the job went back to the worker's queue while the store
    still says ``loading`` (ADR-0023)."""
    if not candidates:
        return None
    parameters: dict[str, object] = {f"c{index}": each for index, each in enumerate(candidates)}
    marks = ", ".join(f":c{index}" for index in range(len(candidates)))
    order = " ".join(f"WHEN :c{index} THEN {index}" for index in range(len(candidates)))
    claimable = "box IS NULL" if owner.box is None else "(box IS NULL OR box = :me)"
    held = "box IS NULL" if owner.box is None else "box = :me"
    parameters.update(me=owner.box, lease=lease, now=now)
    row = db.execute(
        "UPDATE jobs SET attempt = CASE WHEN state = 'loading' THEN attempt ELSE attempt + 1 END,"
        " state = 'loading', box = :me,"
        f" lease_until = {owner.now} + :lease, started_at = COALESCE(started_at, :now),"
        " updated_at = :now, finished_at = NULL"
        f" WHERE id = (SELECT id FROM jobs WHERE id IN ({marks})"
        f" AND ((state = 'queued' AND {claimable}) OR (state = 'loading' AND {held}))"
        f" ORDER BY CASE id {order} END"
        f" LIMIT 1{owner.engine.skip_locked}) RETURNING *",
        parameters,
    ).fetchone()
    return None if row is None else row_to_job(row)


def renew(db: Connection, owner: Owner, lease: float) -> int:
    """Extend the lease of this box's running jobs (and, on a box, of the
    webhook deliveries it holds) to ``lease`` seconds from now; how many jobs."""
    parameters = {"me": owner.box, "lease": lease}
    renewed = db.execute(
        f"UPDATE jobs SET lease_until = {owner.now} + :lease"
        f" WHERE {owner.mine} AND state IN {RUNNING}",
        parameters,
    ).rowcount
    if owner.box is not None:
        db.execute(
            f"UPDATE deliveries SET lease_until = {owner.now} + :lease WHERE box = :me",
            parameters,
        )
    return int(renewed)


def cancel(
    db: Connection, owner: Owner, job_id: str, now: float, recorder: Recorder | None
) -> Job | None:
    """Cancel ``job_id`` whichever box owns it, if it is unfinished: the job as
    now stored, or ``None``. Its owner's next write is fenced (by state)."""
    row = db.execute(
        f"SELECT * FROM jobs WHERE id = ? AND state IN {UNFINISHED}{owner.engine.for_update}",
        (job_id,),
    ).fetchone()
    if row is None:
        return None
    job = row_to_job(row)
    why = CANCELLED_QUEUED if job.state is JobState.QUEUED else CANCELLED_RUNNING
    cancelled = job.moved(JobState.CANCELLED, now, last_error=why)
    db.execute(
        "UPDATE jobs SET state = 'cancelled', updated_at = ?, finished_at = ?,"
        " last_error = ?, lease_until = NULL WHERE id = ?",
        (now, now, why, job_id),
    )
    if recorder is not None:
        recorder(db, cancelled, job.state)
    owner.notify(db, JobState.CANCELLED, job_id)
    return cancelled


# -- when a box is gone ------------------------------------------------------------


def reap(
    db: Connection, owner: Owner, now: float, requeued: Recorder | None
) -> list[tuple[Job, JobState]]:
    """Take back the jobs whose lease ran out, whichever box held them:
    asynchronous ones go back to the queue (their attempt stays counted), sync
    ones fail (their caller waited on the box that is gone). Each as now
    stored, with the state it left; ``requeued`` writes with each return to
    the queue. Webhook deliveries whose lease ran out are let go too."""
    rows = db.execute(
        f"SELECT * FROM jobs WHERE state IN {RUNNING} AND lease_until < {owner.now}"
        f" ORDER BY created_at, id{owner.engine.skip_locked}"
    ).fetchall()
    reaped: list[tuple[Job, JobState]] = []
    back: list[str] = []
    failed: list[str] = []
    for row in rows:
        job = row_to_job(row)
        if job.sync:
            moved = job.moved(JobState.FAILED, now, last_error=CALLER_GONE, error_status=499)
            failed.append(job.id)
        else:
            moved = job.moved(JobState.QUEUED, now, not_before=0.0, box=None)
            back.append(job.id)
        reaped.append((moved, job.state))
    if back:
        db.execute(
            "UPDATE jobs SET state = 'queued', updated_at = ?, not_before = 0, box = NULL,"
            f" lease_until = NULL WHERE id IN ({', '.join('?' * len(back))})",
            (now, *back),
        )
    if failed:
        db.execute(
            "UPDATE jobs SET state = 'failed', updated_at = ?, finished_at = ?,"
            " last_error = ?, error_status = 499, lease_until = NULL"
            f" WHERE id IN ({', '.join('?' * len(failed))})",
            (now, now, CALLER_GONE, *failed),
        )
    for job, previous in reaped:
        if job.state is JobState.QUEUED:
            if requeued is not None:
                requeued(db, job, previous)
            owner.notify(db, JobState.QUEUED, job.id)
    db.execute(
        "UPDATE deliveries SET box = NULL, lease_until = NULL"
        f" WHERE box IS NOT NULL AND lease_until < {owner.now}"
    )
    return reaped


def recover(db: Connection, owner: Owner, now: float, requeued: Recorder | None) -> Recovery:
    """Start-up recovery of this box's jobs (and of jobs nobody owns, as a
    store from before fleets has): running asynchronous ones go back to the
    queue, the interrupted attempt kept; sync ones fail (their callers'
    connections died with the process). Other boxes' jobs are left alone."""
    mine = "" if owner.box is None else " AND (box = :me OR box IS NULL)"
    parameters = {"me": owner.box, "now": now, "why": CALLER_GONE}
    running = [
        row_to_job(row)
        for row in db.execute(
            f"SELECT * FROM jobs WHERE sync = 0 AND state IN {RUNNING}{mine}"
            " ORDER BY created_at, id",
            parameters,
        )
    ]
    count = db.execute(
        # The interrupted attempt was counted when it started.
        "UPDATE jobs SET state = 'queued', updated_at = :now, not_before = 0, box = NULL,"
        f" lease_until = NULL WHERE sync = 0 AND state IN {RUNNING}{mine}",
        parameters,
    ).rowcount
    for job in running:
        # The job exactly as the UPDATE just left it.
        moved = job.moved(JobState.QUEUED, now, not_before=0.0, box=None)
        if requeued is not None:
            requeued(db, moved, job.state)
        owner.notify(db, JobState.QUEUED, job.id)
    abandoned = db.execute(
        "UPDATE jobs SET state = 'failed', updated_at = :now, finished_at = :now,"
        " last_error = :why, error_status = 499, lease_until = NULL"
        f" WHERE sync = 1 AND state IN {UNFINISHED}{mine}",
        parameters,
    ).rowcount
    return Recovery(requeued=count, abandoned=abandoned)


# -- reads -------------------------------------------------------------------------


def unfinished(db: Connection, owner: Owner) -> list[Job]:
    """Every job queued or running, oldest first; on a box, only those it
    owns and those waiting for any box."""
    mine = "" if owner.box is None else " AND (box = :me OR box IS NULL)"
    rows = db.execute(
        f"SELECT * FROM jobs WHERE state IN {UNFINISHED}{mine} ORDER BY created_at, id",
        {"me": owner.box},
    ).fetchall()
    return [row_to_job(row) for row in rows]


def fleet_queue(db: Connection, models: Collection[str] | None, *, bodies: bool) -> list[Job]:
    """The asynchronous jobs waiting for any box, oldest first (ties by id);
    only those for ``models`` (any name Ollama takes for them) when given."""
    waiting = "state = 'queued' AND sync = 0 AND box IS NULL"
    names: list[str] = []
    if models is not None:
        wanted = {canonical_model_name(model) for model in models}
        names = [
            name
            for (name,) in db.execute(f"SELECT DISTINCT model FROM jobs WHERE {waiting}")
            if canonical_model_name(name) in wanted
        ]
        if not names:
            return []
        waiting += f" AND model IN ({', '.join('?' * len(names))})"
    columns = "*" if bodies else ", ".join(c for c in COLUMNS if c not in ("body", "result"))
    rows = db.execute(
        f"SELECT {columns} FROM jobs WHERE {waiting} ORDER BY created_at, id", names
    ).fetchall()
    if bodies:
        return [row_to_job(row) for row in rows]
    return [row_to_job(row, body=b"", result=None) for row in rows]


#: Ids asked about in one statement, at most (far below either engine's limit).
_CHUNK = 500


def states(db: Connection, ids: Collection[str]) -> dict[str, tuple[JobState, str | None]]:
    """The state and owner of each of ``ids`` still in the store."""
    wanted = list(dict.fromkeys(ids))
    found: dict[str, tuple[JobState, str | None]] = {}
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        rows = db.execute(
            f"SELECT id, state, box FROM jobs WHERE id IN ({', '.join('?' * len(chunk))})",
            chunk,
        )
        for job_id, state, box in rows:
            found[job_id] = (JobState(state), box)
    return found


def running(db: Connection) -> list[tuple[str | None, str]]:
    """The box and model of every job loading or generating now."""
    rows = db.execute(f"SELECT DISTINCT box, model FROM jobs WHERE state IN {RUNNING}")
    return [(box, model) for box, model in rows]


def db_now(db: Connection, engine: Engine) -> float:
    (now,) = db.execute(f"SELECT {engine.now_sql}").fetchone()
    return float(now)

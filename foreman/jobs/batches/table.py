"""The ``batches`` and ``files`` tables: their SQL, for either engine (ADR-0029).

A batch is a row of ``batches`` and one job per line in ``jobs`` (``batch_id``,
``custom_id``). Its counts move in the transaction that stores each line's
last state (:mod:`foreman.jobs.batches.progress`): the row always agrees with
its jobs, and the write that ends the last line also moves the batch to
``finalizing``. Files are whole in ``files.content``: what a caller uploads,
and the output and error files a finished batch's answers are gathered into
(``batch_id`` set), so that they outlive the jobs' own TTL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from foreman.queue.engines import Connection

#: The states a batch is still running in.
RUNNING = ("in_progress", "cancelling")
#: The states it ends in.
ENDED = ("completed", "cancelled", "failed", "expired")


@attrs.frozen
class FileRow:
    id: str
    purpose: str
    filename: str
    bytes: int
    created_at: float
    batch_id: str | None = None
    #: The name of the key that uploaded it, or whose batch made it (docs/keys.md).
    caller: str | None = None


_FILE_COLUMNS = "id, purpose, filename, bytes, created_at, batch_id, caller"


@attrs.frozen
class BatchRow:
    id: str
    #: ``openai`` (``/v1/batches``) or ``jobs`` (a list sent to ``POST /jobs``).
    kind: str
    state: str
    total: int
    created_at: float
    endpoint: str | None = None
    input_file_id: str | None = None
    completion_window: str | None = None
    #: The caller's metadata, as JSON text.
    metadata: str | None = None
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    in_progress_at: float | None = None
    finalizing_at: float | None = None
    completed_at: float | None = None
    cancelling_at: float | None = None
    cancelled_at: float | None = None
    expires_at: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    webhook_url: str | None = None
    idempotency_key: str | None = None
    finished_at: float | None = None
    #: The name of the key that made it; its lines are that key's jobs (docs/keys.md).
    caller: str | None = None

    @property
    def ended(self) -> bool:
        return self.state in ENDED


_BATCH_FIELDS = tuple(field.name for field in attrs.fields(BatchRow))
_BATCH_COLUMNS = ", ".join(_BATCH_FIELDS)


def _batch(row: Sequence[Any]) -> BatchRow:
    return BatchRow(**dict(zip(_BATCH_FIELDS, row, strict=True)))


def _file(row: Sequence[Any]) -> FileRow:
    return FileRow(*row)


# -- files ----------------------------------------------------------------------------


def insert_file(db: Connection, file: FileRow, content: bytes) -> None:
    db.execute(
        f"INSERT INTO files ({_FILE_COLUMNS}, content) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (*attrs.astuple(file), content),
    )


def get_file(db: Connection, file_id: str) -> FileRow | None:
    row = db.execute(f"SELECT {_FILE_COLUMNS} FROM files WHERE id = ?", (file_id,)).fetchone()
    return None if row is None else _file(row)


def file_content(db: Connection, file_id: str) -> bytes | None:
    row = db.execute("SELECT content FROM files WHERE id = ?", (file_id,)).fetchone()
    return None if row is None else bytes(row[0])


def list_files(
    db: Connection,
    *,
    purpose: str | None,
    after: str | None,
    limit: int,
    newest_first: bool,
    owner: str | None = None,
) -> list[FileRow]:
    """A page of files by id (ids sort by creation), after the cursor ``after``;
    ``owner``: only the files of the key of that name."""
    where, parameters = [], []
    if owner is not None:
        where.append("caller = ?")
        parameters.append(owner)
    if purpose is not None:
        where.append("purpose = ?")
        parameters.append(purpose)
    if after is not None:
        where.append("id < ?" if newest_first else "id > ?")
        parameters.append(after)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    order = "DESC" if newest_first else "ASC"
    rows = db.execute(
        f"SELECT {_FILE_COLUMNS} FROM files{clause} ORDER BY id {order} LIMIT ?",
        (*parameters, limit),
    ).fetchall()
    return [_file(row) for row in rows]


def delete_file(db: Connection, file_id: str) -> bool:
    return bool(db.execute("DELETE FROM files WHERE id = ?", (file_id,)).rowcount)


def file_in_use(db: Connection, file_id: str) -> bool:
    """Whether a running batch reads ``file_id``."""
    row = db.execute(
        f"SELECT 1 FROM batches WHERE input_file_id = ? AND state IN {RUNNING}", (file_id,)
    ).fetchone()
    return row is not None


# -- batches ----------------------------------------------------------------------------


def insert_batch(db: Connection, batch: BatchRow) -> None:
    marks = ", ".join("?" for _ in _BATCH_FIELDS)
    db.execute(f"INSERT INTO batches ({_BATCH_COLUMNS}) VALUES ({marks})", attrs.astuple(batch))


def get_batch(db: Connection, batch_id: str) -> BatchRow | None:
    row = db.execute(f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id = ?", (batch_id,)).fetchone()
    return None if row is None else _batch(row)


def batch_by_idempotency_key(db: Connection, key: str) -> BatchRow | None:
    row = db.execute(
        f"SELECT {_BATCH_COLUMNS} FROM batches WHERE idempotency_key = ?", (key,)
    ).fetchone()
    return None if row is None else _batch(row)


def list_batches(
    db: Connection, *, kind: str, after: str | None, limit: int, owner: str | None = None
) -> list[BatchRow]:
    """A page of batches, newest first, after the cursor ``after``; ``owner``:
    only the batches of the key of that name."""
    clause, parameters = "kind = ?", [kind]
    if owner is not None:
        clause += " AND caller = ?"
        parameters.append(owner)
    if after is not None:
        clause += " AND id < ?"
        parameters.append(after)
    rows = db.execute(
        f"SELECT {_BATCH_COLUMNS} FROM batches WHERE {clause} ORDER BY id DESC LIMIT ?",
        (*parameters, limit),
    ).fetchall()
    return [_batch(row) for row in rows]


def batches_in(db: Connection, state: str) -> list[str]:
    rows = db.execute("SELECT id FROM batches WHERE state = ?", (state,)).fetchall()
    return [row[0] for row in rows]


def batch_job_ids(db: Connection, batch_id: str) -> list[str]:
    rows = db.execute("SELECT id FROM jobs WHERE batch_id = ? ORDER BY id", (batch_id,)).fetchall()
    return [row[0] for row in rows]


def count_ended(
    db: Connection, batch_id: str, *, completed: int, failed: int, cancelled: int, now: float
) -> bool:
    """Count lines of ``batch_id`` that ended; whether that ended the last one
    (the batch is then ``finalizing``, in this same transaction)."""
    db.execute(
        "UPDATE batches SET completed = completed + ?, failed = failed + ?,"
        " cancelled = cancelled + ? WHERE id = ?",
        (completed, failed, cancelled, batch_id),
    )
    finalizing = db.execute(
        "UPDATE batches SET state = 'finalizing', finalizing_at = ?"
        f" WHERE id = ? AND state IN {RUNNING} AND completed + failed + cancelled >= total",
        (now, batch_id),
    ).rowcount
    return bool(finalizing)


def start_cancel(db: Connection, batch_id: str, now: float) -> bool:
    """``in_progress`` → ``cancelling``; whether it moved."""
    moved = db.execute(
        "UPDATE batches SET state = 'cancelling', cancelling_at = ?"
        " WHERE id = ? AND state = 'in_progress'",
        (now, batch_id),
    ).rowcount
    return bool(moved)


def cancel_queued_lines(db: Connection, batch_id: str, now: float, why: str) -> list[str]:
    """Cancel the lines of ``batch_id`` still queued (whatever box holds them
    in memory: none has claimed them); their ids."""
    rows = db.execute(
        "UPDATE jobs SET state = 'cancelled', updated_at = ?, finished_at = ?, last_error = ?"
        " WHERE batch_id = ? AND state = 'queued' RETURNING id",
        (now, now, why, batch_id),
    ).fetchall()
    return [row[0] for row in rows]


def lines(db: Connection, batch_id: str) -> list[tuple[str, str | None, str, Any, Any, Any]]:
    """Each line's job: id, custom_id, state, result, error status, error."""
    rows = db.execute(
        "SELECT id, custom_id, state, result, error_status, last_error FROM jobs"
        " WHERE batch_id = ? ORDER BY id",
        (batch_id,),
    ).fetchall()
    return [tuple(row) for row in rows]


def end_batch(
    db: Connection,
    batch_id: str,
    *,
    state: str,
    now: float,
    output_file_id: str | None,
    error_file_id: str | None,
) -> bool:
    """``finalizing`` → ``state`` (``completed`` or ``cancelled``), with its
    files; whether it moved (another box may have ended it first)."""
    stamp = "completed_at" if state == "completed" else "cancelled_at"
    moved = db.execute(
        f"UPDATE batches SET state = ?, {stamp} = ?, finished_at = ?, output_file_id = ?,"
        " error_file_id = ? WHERE id = ? AND state = 'finalizing'",
        (state, now, now, output_file_id, error_file_id, batch_id),
    ).rowcount
    return bool(moved)


def prune(db: Connection, finished_before: float) -> int:
    """Delete batches that ended before ``finished_before``, with the files
    made for them, and uploaded files as old that no running batch reads."""
    ended = [
        row[0]
        for row in db.execute(
            "SELECT id FROM batches WHERE finished_at IS NOT NULL AND finished_at < ?",
            (finished_before,),
        ).fetchall()
    ]
    for batch_id in ended:
        db.execute("DELETE FROM files WHERE batch_id = ?", (batch_id,))
        db.execute("DELETE FROM batches WHERE id = ?", (batch_id,))
    db.execute(
        "DELETE FROM files WHERE batch_id IS NULL AND created_at < ? AND id NOT IN"
        f" (SELECT input_file_id FROM batches WHERE state IN {RUNNING}"
        " AND input_file_id IS NOT NULL)",
        (finished_before,),
    )
    return len(ended)

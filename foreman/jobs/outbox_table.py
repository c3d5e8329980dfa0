"""The webhook outbox's table, ``deliveries``: its SQL, for each engine.

One row per event on its way (:mod:`foreman.jobs.outbox`). When several
foremans share the store (issue 18) a row is *claimed* before each attempt,
as a job is: the box that attempts it owns it (``box``) under a lease on the
database's clock (``lease_until``), so one box at a time sends an event, and
the event still leaves, at least once, whichever box wrote it and whichever
box dies. A failed attempt lets the row go for its next one; a delivered or
dropped one is deleted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from foreman.queue.engines import Connection, Engine

#: The columns a delivery is read with, in :class:`DeliveryRow`'s order.
_COLUMNS = "id, job_id, url, body, attempt, next_at, last_error"


@attrs.frozen
class DeliveryRow:
    id: int
    job_id: str
    url: str
    body: bytes
    attempt: int
    next_at: float
    last_error: str | None


@attrs.frozen
class StoredEvent:
    """A row :func:`store_event` wrote, for :meth:`WebhookOutbox.schedule`."""

    id: int
    job_id: str
    url: str
    body: bytes
    next_at: float


def store_event(db: Connection, job_id: str, url: str, body: bytes, now: float) -> StoredEvent:
    """Add an event to the outbox, due at ``now``, in the caller's transaction."""
    delivery_id = db.insert_returning_id(
        "INSERT INTO deliveries (job_id, url, body, attempt, next_at, created_at)"
        " VALUES (?, ?, ?, 0, ?, ?)",
        (job_id, url, body, now, now),
    )
    return StoredEvent(delivery_id, job_id, url, body, now)


def _rows(rows: Sequence[Any]) -> list[DeliveryRow]:
    return [
        DeliveryRow(row[0], row[1], row[2], bytes(row[3]), row[4], row[5], row[6]) for row in rows
    ]


def pending(db: Connection, box: str | None, engine: Engine) -> list[DeliveryRow]:
    """The rows to pick up at start, by when they are due: every row for a
    foreman alone; on a box, those nobody holds (or whose lease ran out) and
    its own."""
    held = ""
    if box is not None:
        held = f" WHERE box IS NULL OR box = :me OR lease_until < {engine.now_sql}"
    rows = db.execute(
        f"SELECT {_COLUMNS} FROM deliveries{held} ORDER BY next_at, id", {"me": box}
    ).fetchall()
    return _rows(rows)


def claim_due(
    db: Connection, engine: Engine, box: str, *, now: float, lease: float, limit: int
) -> list[DeliveryRow]:
    """Claim for ``box`` up to ``limit`` rows due at ``now`` that nobody holds
    (or whose holder's lease ran out), by when they are due; one statement."""
    rows = db.execute(
        f"UPDATE deliveries SET box = :me, lease_until = {engine.now_sql} + :lease"
        " WHERE id IN (SELECT id FROM deliveries WHERE next_at <= :now"
        f" AND (box IS NULL OR lease_until < {engine.now_sql})"
        f" ORDER BY next_at, id LIMIT :limit{engine.skip_locked})"
        f" RETURNING {_COLUMNS}",
        {"me": box, "lease": lease, "now": now, "limit": limit},
    ).fetchall()
    return sorted(_rows(rows), key=lambda row: (row.next_at, row.id))


def claim(
    db: Connection, engine: Engine, box: str, delivery_id: int, *, attempt: int, lease: float
) -> bool:
    """Claim one row for ``box`` before its next attempt, if it is still as
    the box last left it (``attempt`` attempts made) and nobody else holds
    it: whether it did."""
    changed = db.execute(
        f"UPDATE deliveries SET box = :me, lease_until = {engine.now_sql} + :lease"
        " WHERE id = :id AND attempt = :attempt"
        f" AND (box IS NULL OR box = :me OR lease_until < {engine.now_sql})",
        {"me": box, "lease": lease, "id": delivery_id, "attempt": attempt},
    ).rowcount
    return bool(changed)


def forget(db: Connection, delivery_id: int) -> None:
    """A delivered or dropped event: its row goes."""
    db.execute("DELETE FROM deliveries WHERE id = ?", (delivery_id,))


def record_failure(
    db: Connection,
    delivery_id: int,
    box: str | None,
    *,
    attempt: int,
    next_at: float,
    last_error: str | None,
) -> bool:
    """A failed attempt: its count, when the next is due and why; on a box,
    the row is let go (unless another box took it over meanwhile: then
    nothing changes). Whether the row was written."""
    if box is None:
        db.execute(
            "UPDATE deliveries SET attempt = ?, next_at = ?, last_error = ? WHERE id = ?",
            (attempt, next_at, last_error, delivery_id),
        )
        return True
    changed = db.execute(
        "UPDATE deliveries SET attempt = ?, next_at = ?, last_error = ?, box = NULL,"
        " lease_until = NULL WHERE id = ? AND box = ?",
        (attempt, next_at, last_error, delivery_id, box),
    ).rowcount
    return bool(changed)

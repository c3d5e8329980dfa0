"""The boxes of a fleet as the store knows them (issue 18): each foreman
sharing the store publishes, with a heartbeat, who it is, where other boxes
reach it, the models its Ollama has and the one resident, and whether its
Ollama answers. A box is alive while its heartbeat, stamped on the
database's clock, is younger than the lease.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import attrs

from foreman.queue.engines import Connection, Engine, Row


@attrs.frozen
class BoxRecord:
    """One box. The last three fields are the store's, read back: what a box
    publishes leaves them as they are."""

    id: str
    name: str
    #: Where other boxes reach its foreman (``--advertise-url``), if anywhere.
    url: str | None
    #: The models its Ollama has.
    models: tuple[str, ...]
    #: The worker's model resident now.
    resident: str | None
    #: Whether its Ollama answered the last look.
    answering: bool
    #: Its queue in summary, for the fleet's views (JSON).
    report: dict[str, Any] | None
    #: When its process started (its own wall clock).
    started_at: float
    #: Its last heartbeat, on the database's clock.
    heartbeat_at: float = 0.0
    alive: bool = True
    seen_seconds_ago: float = 0.0


def publish(db: Connection, engine: Engine, record: BoxRecord) -> None:
    """Insert or replace ``record``, its heartbeat stamped now."""
    db.execute(
        "INSERT INTO boxes (id, name, url, models, resident, answering, report,"
        " started_at, heartbeat_at)"
        f" VALUES (:id, :name, :url, :models, :resident, :answering, :report, :started_at,"
        f" {engine.now_sql})"
        " ON CONFLICT (id) DO UPDATE SET name = excluded.name, url = excluded.url,"
        " models = excluded.models, resident = excluded.resident,"
        " answering = excluded.answering, report = excluded.report,"
        " started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at",
        {
            "id": record.id,
            "name": record.name,
            "url": record.url,
            "models": json.dumps(list(record.models)),
            "resident": record.resident,
            "answering": int(record.answering),
            "report": None if record.report is None else json.dumps(record.report),
            "started_at": record.started_at,
        },
    )


def fleet_secret(db: Connection) -> str:
    """The secret the boxes present to each other (made by the first to ask)."""
    db.execute(
        "INSERT INTO fleet (name, value) VALUES ('secret', ?) ON CONFLICT (name) DO NOTHING",
        (secrets.token_urlsafe(32),),
    )
    (value,) = db.execute("SELECT value FROM fleet WHERE name = 'secret'").fetchone()
    return str(value)


def every(db: Connection, engine: Engine, lease: float) -> list[BoxRecord]:
    """Every box that ever published, by name (ties by id); alive while its
    heartbeat is at most ``lease`` seconds old."""
    rows = db.execute(
        f"SELECT *, heartbeat_at >= {engine.now_sql} - :lease AS alive,"
        f" {engine.now_sql} - heartbeat_at AS seen FROM boxes ORDER BY name, id",
        {"lease": lease},
    ).fetchall()
    return [_record(row) for row in rows]


def _record(row: Row) -> BoxRecord:
    report = row["report"]
    return BoxRecord(
        id=row["id"],
        name=row["name"],
        url=row["url"],
        models=tuple(json.loads(row["models"])),
        resident=row["resident"],
        answering=bool(row["answering"]),
        report=None if report is None else json.loads(report),
        started_at=float(row["started_at"]),
        heartbeat_at=float(row["heartbeat_at"]),
        alive=bool(row["alive"]),
        seen_seconds_ago=max(0.0, float(row["seen"])),
    )

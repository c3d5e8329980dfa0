"""The job store's tables, and how a file written by an older foreman is upgraded.

The schema's version is SQLite's ``user_version``: migration *n* brings a
file from version *n - 1* to *n*, in one transaction. A file from a newer
foreman is refused before anything in it changes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

DATABASE_NAME = "foreman.sqlite3"

#: Each entry upgrades the schema by one version; never edit a released one.
MIGRATIONS: Sequence[str] = (
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        body BLOB NOT NULL,
        sync INTEGER NOT NULL,
        state TEXT NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        error_status INTEGER,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        not_before REAL NOT NULL DEFAULT 0,
        webhook_url TEXT,
        metadata BLOB,
        result BLOB
    );
    CREATE INDEX jobs_by_state ON jobs (state, created_at, id);
    CREATE INDEX jobs_by_finish ON jobs (finished_at) WHERE finished_at IS NOT NULL;
    """,
    # 2: the /jobs surface. A retried submit finds its job by idempotency key;
    # artifacts live and die with their job; webhook deliveries wait in an
    # outbox that outlives a restart (and the job's own TTL).
    """
    ALTER TABLE jobs ADD COLUMN idempotency_key TEXT;
    CREATE UNIQUE INDEX jobs_by_idempotency_key ON jobs (idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE INDEX jobs_by_model ON jobs (model, id);
    CREATE TABLE artifacts (
        job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        content_type TEXT NOT NULL,
        body BLOB NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (job_id, name)
    );
    CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL,
        url TEXT NOT NULL,
        body BLOB NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 0,
        next_at REAL NOT NULL,
        created_at REAL NOT NULL,
        last_error TEXT
    );
    CREATE INDEX deliveries_by_due ON deliveries (next_at, id);
    """,
    # 3: classes of work (ADR-0021). Jobs written before them keep the class
    # they would have had: sync calls interactive, /jobs batch.
    """
    ALTER TABLE jobs ADD COLUMN priority TEXT NOT NULL DEFAULT 'interactive';
    UPDATE jobs SET priority = 'batch' WHERE sync = 0;
    """,
    # 4: what each model's load costs, as measured, so that a restart does
    # not forget it (ADR-0024).
    """
    CREATE TABLE model_costs (
        model TEXT PRIMARY KEY,
        load_seconds REAL NOT NULL,
        loads INTEGER NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
)


def version() -> int:
    """The schema version this foreman writes."""
    return len(MIGRATIONS)


def check_version(connection: sqlite3.Connection) -> None:
    """Refuse a file written by a newer foreman."""
    found: int = connection.execute("PRAGMA user_version").fetchone()[0]
    if found > len(MIGRATIONS):
        raise RuntimeError(
            f"the job store was written by a newer foreman (schema {found}); "
            "upgrade foreman or move the file aside"
        )


def migrate(connection: sqlite3.Connection) -> None:
    """Apply, each in its own transaction, the migrations the file lacks."""
    found: int = connection.execute("PRAGMA user_version").fetchone()[0]
    for number, script in enumerate(MIGRATIONS[found:], start=found + 1):
        connection.executescript(f"BEGIN; {script}; PRAGMA user_version={number}; COMMIT;")

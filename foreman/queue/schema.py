"""The job store's tables, for each engine, and how an older database is upgraded.

Each engine has its own list of migrations, in its own dialect, one entry per
schema version: migration *n* brings a database from version *n - 1* to *n*.
The lists are the same schema, version for version, so a version number means
the same tables whichever engine holds them. Where the version is kept, and
how a newer one is refused before anything changes, is each engine's
(:mod:`foreman.queue.engines`).
"""

from __future__ import annotations

from collections.abc import Sequence

DATABASE_NAME = "foreman.sqlite3"

#: SQLite's migrations. Each entry upgrades the schema by one version; never
#: edit a released one.
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
    # 5: a fleet (issue 18): the boxes sharing the queue, and who owns each
    # job and webhook delivery, until when (a lease on the database's clock).
    """
    CREATE TABLE boxes (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        url TEXT,
        models TEXT NOT NULL,
        resident TEXT,
        answering INTEGER NOT NULL,
        report TEXT,
        started_at REAL NOT NULL,
        heartbeat_at REAL NOT NULL
    );
    ALTER TABLE jobs ADD COLUMN box TEXT;
    ALTER TABLE jobs ADD COLUMN lease_until REAL;
    CREATE INDEX jobs_by_box ON jobs (box, state) WHERE box IS NOT NULL;
    ALTER TABLE deliveries ADD COLUMN box TEXT;
    ALTER TABLE deliveries ADD COLUMN lease_until REAL;
    """,
    # 6: what a fleet's boxes share beyond the queue: the secret one box
    # presents to another when it forwards a call (ADR-0027), made by the
    # first box that needs it.
    """
    CREATE TABLE fleet (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # 7: batches (issue 20, ADR-0029): the files callers upload and the files
    # a batch's answers are gathered into, the batches, and which batch and
    # line (``custom_id``) each of a batch's jobs is.
    """
    ALTER TABLE jobs ADD COLUMN batch_id TEXT;
    ALTER TABLE jobs ADD COLUMN custom_id TEXT;
    CREATE INDEX jobs_by_batch ON jobs (batch_id, state) WHERE batch_id IS NOT NULL;
    CREATE TABLE batches (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        endpoint TEXT,
        input_file_id TEXT,
        completion_window TEXT,
        metadata TEXT,
        state TEXT NOT NULL,
        total INTEGER NOT NULL,
        completed INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        cancelled INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        in_progress_at REAL,
        finalizing_at REAL,
        completed_at REAL,
        cancelling_at REAL,
        cancelled_at REAL,
        expires_at REAL,
        output_file_id TEXT,
        error_file_id TEXT,
        webhook_url TEXT,
        idempotency_key TEXT,
        finished_at REAL
    );
    CREATE UNIQUE INDEX batches_by_idempotency_key ON batches (idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE INDEX batches_by_state ON batches (state);
    CREATE TABLE files (
        id TEXT PRIMARY KEY,
        purpose TEXT NOT NULL,
        filename TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        created_at REAL NOT NULL,
        content BLOB NOT NULL,
        batch_id TEXT
    );
    CREATE INDEX files_by_batch ON files (batch_id) WHERE batch_id IS NOT NULL;
    """,
    # 8: keys (issue 21, ADR-0030): a key per caller, kept as a hash, its
    # scopes and share; what each key used, per box (a fleet sums the
    # boxes); and whose each job, batch and file is.
    """
    CREATE TABLE keys (
        name TEXT PRIMARY KEY,
        digest TEXT NOT NULL UNIQUE,
        scopes TEXT NOT NULL,
        weight REAL NOT NULL DEFAULT 1,
        max_waiting INTEGER,
        created_at REAL NOT NULL,
        last_used_at REAL,
        revoked_at REAL
    );
    CREATE TABLE key_usage (
        name TEXT NOT NULL,
        box TEXT NOT NULL,
        calls INTEGER NOT NULL DEFAULT 0,
        prompt_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        worker_seconds REAL NOT NULL DEFAULT 0,
        loads INTEGER NOT NULL DEFAULT 0,
        refusals INTEGER NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL,
        PRIMARY KEY (name, box)
    );
    ALTER TABLE jobs ADD COLUMN caller TEXT;
    CREATE INDEX jobs_by_caller ON jobs (caller, id) WHERE caller IS NOT NULL;
    ALTER TABLE batches ADD COLUMN caller TEXT;
    ALTER TABLE files ADD COLUMN caller TEXT;
    """,
)


#: PostgreSQL's migrations: the same schema as :data:`MIGRATIONS`, version for
#: version. ``BYTEA`` for ``BLOB``, ``DOUBLE PRECISION`` for ``REAL``, an identity
#: column for ``AUTOINCREMENT``; ``sync`` stays an ``INTEGER`` (0 or 1), as the
#: SQL foreman writes compares it. Ids sort byte by byte (``COLLATE "C"``), as
#: SQLite's do, whatever the database's collation: pages and ties go by id.
POSTGRES_MIGRATIONS: Sequence[str] = (
    """
    CREATE TABLE jobs (
        id TEXT COLLATE "C" PRIMARY KEY,
        model TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        body BYTEA NOT NULL,
        sync INTEGER NOT NULL,
        state TEXT NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        error_status INTEGER,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION,
        not_before DOUBLE PRECISION NOT NULL DEFAULT 0,
        webhook_url TEXT,
        metadata BYTEA,
        result BYTEA
    );
    CREATE INDEX jobs_by_state ON jobs (state, created_at, id);
    CREATE INDEX jobs_by_finish ON jobs (finished_at) WHERE finished_at IS NOT NULL;
    """,
    """
    ALTER TABLE jobs ADD COLUMN idempotency_key TEXT;
    CREATE UNIQUE INDEX jobs_by_idempotency_key ON jobs (idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE INDEX jobs_by_model ON jobs (model, id);
    CREATE TABLE artifacts (
        job_id TEXT COLLATE "C" NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        content_type TEXT NOT NULL,
        body BYTEA NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (job_id, name)
    );
    CREATE TABLE deliveries (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        job_id TEXT COLLATE "C" NOT NULL,
        url TEXT NOT NULL,
        body BYTEA NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 0,
        next_at DOUBLE PRECISION NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        last_error TEXT
    );
    CREATE INDEX deliveries_by_due ON deliveries (next_at, id);
    """,
    """
    ALTER TABLE jobs ADD COLUMN priority TEXT NOT NULL DEFAULT 'interactive';
    UPDATE jobs SET priority = 'batch' WHERE sync = 0;
    """,
    """
    CREATE TABLE model_costs (
        model TEXT PRIMARY KEY,
        load_seconds DOUBLE PRECISION NOT NULL,
        loads INTEGER NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    """,
    """
    CREATE TABLE boxes (
        id TEXT COLLATE "C" PRIMARY KEY,
        name TEXT NOT NULL,
        url TEXT,
        models TEXT NOT NULL,
        resident TEXT,
        answering INTEGER NOT NULL,
        report TEXT,
        started_at DOUBLE PRECISION NOT NULL,
        heartbeat_at DOUBLE PRECISION NOT NULL
    );
    ALTER TABLE jobs ADD COLUMN box TEXT COLLATE "C";
    ALTER TABLE jobs ADD COLUMN lease_until DOUBLE PRECISION;
    CREATE INDEX jobs_by_box ON jobs (box, state) WHERE box IS NOT NULL;
    ALTER TABLE deliveries ADD COLUMN box TEXT COLLATE "C";
    ALTER TABLE deliveries ADD COLUMN lease_until DOUBLE PRECISION;
    """,
    # 6: what a fleet's boxes share beyond the queue: the secret one box
    # presents to another when it forwards a call (ADR-0027), made by the
    # first box that needs it.
    """
    CREATE TABLE fleet (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # 7: batches (issue 20, ADR-0029).
    """
    ALTER TABLE jobs ADD COLUMN batch_id TEXT COLLATE "C";
    ALTER TABLE jobs ADD COLUMN custom_id TEXT;
    CREATE INDEX jobs_by_batch ON jobs (batch_id, state) WHERE batch_id IS NOT NULL;
    CREATE TABLE batches (
        id TEXT COLLATE "C" PRIMARY KEY,
        kind TEXT NOT NULL,
        endpoint TEXT,
        input_file_id TEXT COLLATE "C",
        completion_window TEXT,
        metadata TEXT,
        state TEXT NOT NULL,
        total INTEGER NOT NULL,
        completed INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        cancelled INTEGER NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL,
        in_progress_at DOUBLE PRECISION,
        finalizing_at DOUBLE PRECISION,
        completed_at DOUBLE PRECISION,
        cancelling_at DOUBLE PRECISION,
        cancelled_at DOUBLE PRECISION,
        expires_at DOUBLE PRECISION,
        output_file_id TEXT COLLATE "C",
        error_file_id TEXT COLLATE "C",
        webhook_url TEXT,
        idempotency_key TEXT,
        finished_at DOUBLE PRECISION
    );
    CREATE UNIQUE INDEX batches_by_idempotency_key ON batches (idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE INDEX batches_by_state ON batches (state);
    CREATE TABLE files (
        id TEXT COLLATE "C" PRIMARY KEY,
        purpose TEXT NOT NULL,
        filename TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        content BYTEA NOT NULL,
        batch_id TEXT COLLATE "C"
    );
    CREATE INDEX files_by_batch ON files (batch_id) WHERE batch_id IS NOT NULL;
    """,
    # 8: keys (issue 21, ADR-0030).
    """
    CREATE TABLE keys (
        name TEXT PRIMARY KEY,
        digest TEXT NOT NULL UNIQUE,
        scopes TEXT NOT NULL,
        weight DOUBLE PRECISION NOT NULL DEFAULT 1,
        max_waiting INTEGER,
        created_at DOUBLE PRECISION NOT NULL,
        last_used_at DOUBLE PRECISION,
        revoked_at DOUBLE PRECISION
    );
    CREATE TABLE key_usage (
        name TEXT NOT NULL,
        box TEXT COLLATE "C" NOT NULL,
        calls INTEGER NOT NULL DEFAULT 0,
        prompt_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        worker_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
        loads INTEGER NOT NULL DEFAULT 0,
        refusals INTEGER NOT NULL DEFAULT 0,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (name, box)
    );
    ALTER TABLE jobs ADD COLUMN caller TEXT;
    CREATE INDEX jobs_by_caller ON jobs (caller, id) WHERE caller IS NOT NULL;
    ALTER TABLE batches ADD COLUMN caller TEXT;
    ALTER TABLE files ADD COLUMN caller TEXT;
    """,
)


def version() -> int:
    """The schema version this foreman writes."""
    return len(MIGRATIONS)

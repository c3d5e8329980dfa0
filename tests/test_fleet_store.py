"""The store for a fleet (issue 18), on each engine: claims, fenced writes, leases
and their reaper, cancelling from any box, start-up recovery of a box's own jobs.

Two stores with different box ids on one database play two boxes (on SQLite,
two connections to one file: what one box does there, it does alone). Leases
are given in seconds of the database's clock; a negative one has run out at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import attrs
import pytest

from foreman.queue.engines import Connection, Engine
from foreman.queue.job import Job, JobState
from foreman.queue.leases import CALLER_GONE, Fenced
from foreman.queue.settlement import CANCELLED_QUEUED, CANCELLED_RUNNING
from foreman.queue.store import JobStore, Recovery
from tests.store_engines import migrate_to, side
from tests.test_store import failure_of, job, result_of

NOW = 1_800_000_000.0
LEASE = 60.0
EXPIRED = -1.0


@pytest.fixture
def boxes(store_engine: Engine) -> Iterator[tuple[JobStore, JobStore]]:
    """Box A and box B on one database."""
    stores = (JobStore(store_engine, box="A"), JobStore(store_engine, box="B"))
    for each in stores:
        result_of(each.open())
    yield stores
    for each in stores:
        result_of(each.close())


def lease_of(engine: Engine, job_id: str) -> tuple[str | None, float | None]:
    with side(engine) as db:
        box, lease = db.execute(
            "SELECT box, lease_until FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        return box, lease


@pytest.fixture
def store(store_engine: Engine) -> Iterator[JobStore]:
    """A store without a box id: one foreman alone."""
    opened = JobStore(store_engine)
    result_of(opened.open())
    yield opened
    result_of(opened.close())


def insert(store: JobStore, *jobs: Job) -> None:
    for each in jobs:
        result_of(store.insert(each))


# -- the schema ---------------------------------------------------------------------------


def test_the_schema_has_boxes_and_owners(
    boxes: tuple[JobStore, JobStore], store_engine: Engine
) -> None:
    a, _ = boxes
    with side(store_engine) as db:
        for table, columns in {
            "boxes": "id, name, url, models, resident, answering, report, started_at, heartbeat_at",
            "jobs": "box, lease_until",
            "deliveries": "box, lease_until",
        }.items():
            db.execute(f"SELECT {columns} FROM {table}").fetchall()
    assert a.schema_version >= 6


def test_a_store_from_before_fleets_keeps_its_jobs_nobodys(store_engine: Engine) -> None:
    migrate_to(store_engine, 4)
    with side(store_engine) as db:
        db.execute(
            "INSERT INTO jobs (id, model, endpoint, body, sync, state, created_at, updated_at)"
            " VALUES ('old', 'llama3.2', 'chat', ?, 0, 'working', ?, ?)",
            (b"", NOW, NOW),
        )
    store = JobStore(store_engine, box="A")
    recovery, unfinished = store.startup(NOW + 1)
    try:
        assert recovery == Recovery(requeued=1, abandoned=0)
        assert [(each.id, each.state, each.box) for each in unfinished] == [
            ("old", JobState.QUEUED, None)
        ]
        assert lease_of(store_engine, "old") == (None, None)
    finally:
        result_of(store.close())


# -- inserting ----------------------------------------------------------------------------


def test_a_sync_job_is_its_box_from_the_start_an_async_one_nobodys(
    boxes: tuple[JobStore, JobStore], store_engine: Engine
) -> None:
    a, _ = boxes
    assert result_of(a.insert(job("sync", sync=True))).box == "A"
    assert result_of(a.insert(job("async", box="A"))).box is None
    assert result_of(a.insert_unless_known(job("keyed", idempotency_key="k"))).box is None
    assert lease_of(store_engine, "sync") == ("A", None)
    assert lease_of(store_engine, "async") == (None, None)
    stored = result_of(a.get("sync"))
    assert stored is not None and stored.box == "A"


def test_a_store_without_a_box_writes_jobs_as_they_are(store: JobStore) -> None:
    insert(store, job("sync", sync=True), job("mine", box="X"))
    assert result_of(store.get("sync")) == job("sync", sync=True)
    assert result_of(store.get("mine")) == job("mine", box="X")
    # Nothing is fenced: a job that is not there is not written, and that is all.
    result_of(store.update(job("missing", state=JobState.DONE)))
    assert result_of(store.get("missing")) is None


# -- claiming -----------------------------------------------------------------------------


def test_a_claim_takes_the_first_candidate_still_queued_in_the_order_given(
    boxes: tuple[JobStore, JobStore], store_engine: Engine
) -> None:
    a, b = boxes
    insert(
        a,
        job("1"),
        job("2", attempt=2, started_at=NOW - 50, last_error="unreachable"),
        job("3"),
        job("later", not_before=NOW + 30),
        job("running", state=JobState.WORKING),
        job("done", state=JobState.DONE),
    )
    insert(b, job("b-sync", sync=True))
    # Whether a job is due is the worker's to say, on its own clock (a
    # backoff survives a step of the wall clock): a claim does not ask.
    candidates = ["running", "done", "b-sync", "missing", "2", "3", "1", "later"]

    claimed = result_of(a.claim(candidates, lease=LEASE, now=NOW))
    before = job("2", attempt=2, started_at=NOW - 50, last_error="unreachable")
    # As a run moves a job to loading: one attempt more; its first start kept.
    assert claimed == before.moved(JobState.LOADING, NOW, attempt=3, box="A")
    assert result_of(a.get("2")) == claimed
    box, lease = lease_of(store_engine, "2")
    db_now = result_of(a.db_now())
    assert box == "A" and lease is not None and db_now < lease <= db_now + LEASE

    # A box's own job in ``loading`` is its to claim again (the store refused
    # the run's next write); the others' are not. The worker never offers the
    # job it runs: each claimed job leaves the candidates here.
    again = result_of(a.claim(["2"], lease=LEASE, now=NOW + 2))
    assert again is not None and again.attempt == 3  # the same attempt
    assert result_of(b.claim(["2"], lease=LEASE, now=NOW + 2)) is None
    candidates.remove("2")
    assert result_of(b.claim(candidates, lease=LEASE, now=NOW)) == job("b-sync", sync=True).moved(
        JobState.LOADING, NOW, attempt=1, box="B"
    )
    candidates.remove("b-sync")
    third = result_of(a.claim(candidates, lease=LEASE, now=NOW + 1))
    assert third is not None and (third.id, third.started_at) == ("3", NOW + 1)
    candidates.remove("3")
    fourth = result_of(a.claim(candidates, lease=LEASE, now=NOW))
    assert fourth is not None and fourth.id == "1"
    candidates.remove("1")
    last = result_of(a.claim(candidates, lease=LEASE, now=NOW))
    assert last is not None and last.id == "later"
    candidates.remove("later")
    assert result_of(a.claim(candidates, lease=LEASE, now=NOW)) is None
    assert result_of(a.claim([], lease=LEASE, now=NOW)) is None


def test_a_sync_job_is_claimed_only_by_its_own_box(boxes: tuple[JobStore, JobStore]) -> None:
    a, b = boxes
    insert(a, job("sync", sync=True))
    assert result_of(b.claim(["sync"], lease=LEASE, now=NOW)) is None
    claimed = result_of(a.claim(["sync"], lease=LEASE, now=NOW))
    assert claimed is not None and claimed.box == "A"


def test_a_claim_writes_what_its_recorder_writes_in_its_transaction(
    boxes: tuple[JobStore, JobStore], store_engine: Engine
) -> None:
    a, b = boxes
    insert(a, job("1"))
    with side(store_engine) as db:
        db.execute("CREATE TABLE marks (job_id TEXT, previous TEXT)")
    told: list[Job] = []

    def recorder(db: Connection, claimed: Job, previous: JobState) -> None:
        assert db.in_transaction
        assert db.execute("SELECT state FROM jobs WHERE id = ?", (claimed.id,)).fetchone()[0] == (
            "loading"
        )
        db.execute("INSERT INTO marks VALUES (?, ?)", (claimed.id, previous.value))
        told.append(claimed)

    claimed = result_of(a.claim(["1"], lease=LEASE, now=NOW, recorder=recorder))
    assert told == [claimed]
    # Another box finds it taken: its recorder writes nothing.
    assert result_of(b.claim(["1"], lease=LEASE, now=NOW, recorder=recorder)) is None
    assert len(told) == 1

    def failing(db: Connection, claimed: Job, previous: JobState) -> None:
        raise RuntimeError("the recorder broke")

    insert(a, job("2"))
    assert failure_of(a.claim(["2"], lease=LEASE, now=NOW, recorder=failing)).check(RuntimeError)
    assert result_of(a.get("2")) == job("2")  # nothing of the claim was stored
    with side(store_engine) as db:
        rows = db.execute("SELECT job_id, previous FROM marks").fetchall()
        assert [tuple(row) for row in rows] == [("1", "queued")]


def test_boxes_claiming_at_once_never_take_a_job_twice(store_engine: Engine) -> None:
    count = 60
    ids = [f"job-{index:03}" for index in range(count)]
    first = JobStore(store_engine, box="box-0")
    result_of(first.open())
    insert(first, *(job(job_id) for job_id in ids))
    result_of(first.close())
    claimed: dict[str, list[str]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def box(name: str) -> None:
        store = JobStore(store_engine, box=name)
        result_of(store.open())
        mine = claimed.setdefault(name, [])
        # A box's own ``loading`` jobs are its to claim again (a write
        # refused after the claim), so a box stops offering what it holds.
        candidates = list(ids)
        try:
            start.wait()
            while True:
                got = result_of(store.claim(candidates, lease=LEASE, now=NOW))
                if got is None:
                    return
                assert got.box == name
                mine.append(got.id)
                candidates.remove(got.id)
        except BaseException as e:  # reported below
            errors.append(e)
        finally:
            result_of(store.close())

    threads = [threading.Thread(target=box, args=(f"box-{n}",), daemon=True) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a box kept claiming"
    assert errors == []
    taken = [job_id for each in claimed.values() for job_id in each]
    assert sorted(taken) == ids  # each once
    assert all(each == sorted(each) for each in claimed.values())  # each box in order


# -- fencing ------------------------------------------------------------------------------


def claimed_by(store: JobStore, job_id: str, lease: float = LEASE) -> Job:
    got = result_of(store.claim([job_id], lease=lease, now=NOW))
    assert got is not None
    return got


def test_a_write_for_a_job_reaped_then_claimed_elsewhere_is_fenced(
    boxes: tuple[JobStore, JobStore],
) -> None:
    a, b = boxes
    insert(a, job("1"))
    loading = claimed_by(a, "1", lease=EXPIRED)
    ((back, previous),) = result_of(b.reap_expired(now=NOW + 5))
    assert previous is JobState.LOADING and back.state is JobState.QUEUED and back.box is None
    # The late write of the box taken for dead changes nothing.
    working = loading.moved(JobState.WORKING, NOW + 6)
    assert failure_of(a.update(working)).check(Fenced)
    assert result_of(a.get("1")) == back
    # Nor once B has it.
    claimed = claimed_by(b, "1")
    assert claimed.attempt == 2
    done = working.moved(JobState.DONE, NOW + 7, result=b"{}")
    failure = failure_of(a.update(done, lambda db: pytest.fail("not to be run")))
    assert isinstance(failure.value, Fenced) and failure.value.job_id == "1"
    assert result_of(a.get("1")) == claimed
    # B's own writes go through.
    finished = claimed.moved(JobState.DONE, NOW + 8, result=b"{}")
    assert result_of(b.update(finished)) == finished
    assert result_of(b.get("1")) == finished
    # And a finished job takes no write at all, even its owner's.
    assert failure_of(b.update(attrs.evolve(finished, result=b"again"))).check(Fenced)


def test_a_job_cancelled_by_another_box_refuses_its_owners_writes(
    boxes: tuple[JobStore, JobStore],
) -> None:
    a, b = boxes
    insert(a, job("1"), job("2"))
    working = claimed_by(a, "1").moved(JobState.WORKING, NOW + 1)
    result_of(a.update(working))
    told: list[tuple[Job, JobState]] = []
    cancelled = result_of(
        b.cancel("1", now=NOW + 2, also=lambda db, each, previous: told.append((each, previous)))
    )
    assert cancelled == working.moved(JobState.CANCELLED, NOW + 2, last_error=CANCELLED_RUNNING)
    assert told == [(cancelled, JobState.WORKING)]
    assert result_of(a.get("1")) == cancelled
    assert failure_of(a.update(working.moved(JobState.DONE, NOW + 3))).check(Fenced)
    assert result_of(a.get("1")) == cancelled
    # A queued job; a finished or unknown one is left as it is.
    queued = result_of(b.cancel("2", now=NOW + 4))
    assert queued == job("2").moved(JobState.CANCELLED, NOW + 4, last_error=CANCELLED_QUEUED)
    assert result_of(a.cancel("1", now=NOW + 5)) is None
    assert result_of(a.cancel("missing", now=NOW + 5)) is None
    assert result_of(a.get("1")) == cancelled


def test_a_write_for_an_earlier_attempt_is_fenced_when_asked(
    boxes: tuple[JobStore, JobStore],
) -> None:
    a, b = boxes
    insert(a, job("1"))
    first = claimed_by(a, "1", lease=EXPIRED)
    result_of(b.reap_expired(now=NOW))
    second = claimed_by(a, "1")  # the same box, again
    late = first.moved(JobState.DONE, NOW + 1)
    assert failure_of(a.update(late, attempt=first.attempt)).check(Fenced)
    done = second.moved(JobState.DONE, NOW + 2)
    assert result_of(a.update(done, attempt=second.attempt)) == done


def test_a_job_back_in_the_queue_is_nobodys_a_sync_one_stays_its_boxs(
    boxes: tuple[JobStore, JobStore], store_engine: Engine
) -> None:
    a, b = boxes
    insert(a, job("async"), job("sync", sync=True))
    for job_id in ("async", "sync"):
        running = claimed_by(a, job_id)
        back = running.moved(JobState.QUEUED, NOW + 1, not_before=NOW + 2)
        stored = result_of(a.update(back))
        assert stored.box == (None if job_id == "async" else "A")
        assert result_of(a.get(job_id)) == stored
    # The async job is anyone's now: A's next write about it is fenced, B claims it.
    assert failure_of(a.update(job("async", state=JobState.CANCELLED))).check(Fenced)
    taken = result_of(b.claim(["sync", "async"], lease=LEASE, now=NOW + 2))
    assert taken is not None and (taken.id, taken.box, taken.attempt) == ("async", "B", 2)
    assert lease_of(store_engine, "async")[0] == "B"
    assert lease_of(store_engine, "sync")[0] == "A"


# -- leases -------------------------------------------------------------------------------


def test_renewed_leases_are_not_reaped(boxes: tuple[JobStore, JobStore]) -> None:
    a, b = boxes
    insert(a, job("1"), job("2"), job("3"))
    claimed_by(a, "1", lease=EXPIRED)
    claimed_by(a, "2", lease=EXPIRED)
    claimed_by(b, "3", lease=EXPIRED)
    assert result_of(a.renew_leases(lease=LEASE)) == 2
    reaped = result_of(a.reap_expired(now=NOW + 1))
    assert [(each.id, previous) for each, previous in reaped] == [("3", JobState.LOADING)]
    assert result_of(a.states(["1", "2", "3"])) == {
        "1": (JobState.LOADING, "A"),
        "2": (JobState.LOADING, "A"),
        "3": (JobState.QUEUED, None),
    }


def test_reaping_requeues_async_jobs_and_fails_sync_ones_of_any_box(
    boxes: tuple[JobStore, JobStore], store_engine: Engine
) -> None:
    a, b = boxes
    insert(a, job("a-async", created_at=NOW), job("a-sync", sync=True, created_at=NOW + 1))
    insert(b, job("b-async", created_at=NOW + 2), job("b-fresh", created_at=NOW + 3))
    a_async = claimed_by(a, "a-async", lease=EXPIRED)
    a_sync = claimed_by(a, "a-sync", lease=EXPIRED)
    result_of(b.update(claimed_by(b, "b-async", lease=EXPIRED).moved(JobState.WORKING, NOW + 4)))
    claimed_by(b, "b-fresh")  # its lease still holds
    with side(store_engine) as db:
        db.execute("CREATE TABLE marks (job_id TEXT)")
    told: list[tuple[Job, JobState]] = []

    def requeued(db: Connection, back: Job, previous: JobState) -> None:
        assert db.execute("SELECT state FROM jobs WHERE id = ?", (back.id,)).fetchone()[0] == (
            "queued"
        )
        db.execute("INSERT INTO marks VALUES (?)", (back.id,))
        told.append((back, previous))

    reaped = result_of(b.reap_expired(now=NOW + 10, requeued=requeued))
    assert [(each.id, each.state, previous) for each, previous in reaped] == [
        ("a-async", JobState.QUEUED, JobState.LOADING),
        ("a-sync", JobState.FAILED, JobState.LOADING),
        ("b-async", JobState.QUEUED, JobState.WORKING),
    ]
    assert told == [reaped[0], reaped[2]]
    # What it tells is the job as stored: back in the queue, nobody's, the attempt kept.
    for each, _ in reaped:
        assert result_of(a.get(each.id)) == each
    assert reaped[0][0] == a_async.moved(JobState.QUEUED, NOW + 10, not_before=0.0, box=None)
    assert reaped[1][0] == a_sync.moved(
        JobState.FAILED, NOW + 10, last_error=CALLER_GONE, error_status=499
    )
    assert lease_of(store_engine, "a-async") == (None, None)
    assert result_of(a.states(["b-fresh"])) == {"b-fresh": (JobState.LOADING, "B")}
    assert result_of(a.reap_expired(now=NOW + 11)) == []
    with side(store_engine) as db:
        marks = db.execute("SELECT job_id FROM marks ORDER BY job_id").fetchall()
        assert [row[0] for row in marks] == ["a-async", "b-async"]


def test_start_up_recovery_touches_only_the_boxs_own_jobs(
    boxes: tuple[JobStore, JobStore], store_engine: Engine
) -> None:
    a, b = boxes
    insert(
        a,
        job("a-queued", created_at=NOW),
        job("a-sync", sync=True, created_at=NOW + 1),
        job("legacy-working", state=JobState.WORKING, attempt=1, created_at=NOW + 2),
        job("legacy-sync", state=JobState.LOADING, created_at=NOW + 3, sync=True),
    )
    insert(b, job("b-sync", sync=True, created_at=NOW + 4), job("b-async", created_at=NOW + 5))
    with side(store_engine) as db:  # as a store from before fleets left them
        db.execute("UPDATE jobs SET box = NULL WHERE id LIKE 'legacy-%'")
    a_running = claimed_by(a, "a-queued")
    claimed_by(b, "b-async")
    claimed_by(b, "b-sync")
    result_of(a.close())

    again = JobStore(store_engine, box="A")
    told: list[tuple[str, JobState]] = []
    recovery, unfinished = again.startup(NOW + 10, lambda db, each, p: told.append((each.id, p)))
    try:
        assert recovery == Recovery(requeued=2, abandoned=2)
        assert told == [("a-queued", JobState.LOADING), ("legacy-working", JobState.WORKING)]
        assert result_of(again.get("a-queued")) == a_running.moved(
            JobState.QUEUED, NOW + 10, not_before=0.0, box=None
        )
        assert lease_of(store_engine, "a-queued") == (None, None)
        states = result_of(again.states(["a-sync", "legacy-sync", "b-sync", "b-async"]))
        assert states == {
            "a-sync": (JobState.FAILED, "A"),
            "legacy-sync": (JobState.FAILED, None),
            "b-sync": (JobState.LOADING, "B"),
            "b-async": (JobState.LOADING, "B"),
        }
        # What it lists is its own and what waits for any box: not B's.
        assert [each.id for each in unfinished] == ["a-queued", "legacy-working"]
    finally:
        result_of(again.close())
        result_of(a.open())  # for the fixture to close


def test_the_fleets_queue_is_the_async_jobs_nobody_owns(boxes: tuple[JobStore, JobStore]) -> None:
    a, b = boxes
    insert(
        a,
        job("3", created_at=NOW + 1, model="qwen3:8b"),
        job("2", created_at=NOW + 1, model="llama3.2:latest"),
        job("1", created_at=NOW + 2, model="library/llama3.2"),
        job("0", created_at=NOW, model="gemma3"),
        job("sync", sync=True),
        job("done", state=JobState.DONE),
        job("running"),
    )
    claimed_by(b, "running")
    assert [each.id for each in result_of(a.fleet_queue())] == ["0", "2", "3", "1"]
    llama = result_of(b.fleet_queue(["registry.ollama.ai/library/llama3.2:latest", "gemma3"]))
    assert [each.id for each in llama] == ["0", "2", "1"]
    assert llama[0] == job("0", created_at=NOW, model="gemma3")
    assert result_of(a.fleet_queue(["mistral"])) == []
    assert result_of(a.fleet_queue([])) == []
    (summary,) = result_of(a.fleet_queue(["qwen3:8b"], bodies=False))
    assert (summary.id, summary.body, summary.result) == ("3", b"", None)


def test_states_and_the_databases_clock(boxes: tuple[JobStore, JobStore]) -> None:
    a, _ = boxes
    insert(a, job("1"), job("2", sync=True))
    many = [f"missing-{n}" for n in range(1200)]
    assert result_of(a.states(["1", "2", "1", *many])) == {
        "1": (JobState.QUEUED, None),
        "2": (JobState.QUEUED, "A"),
    }
    assert result_of(a.states([])) == {}
    first = result_of(a.db_now())
    assert abs(first - time.time()) < 5
    assert result_of(a.db_now()) >= first

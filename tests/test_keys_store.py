"""Keys in the job store and the key book that holds them in memory (docs/keys.md),
on both engines: what is stored (a digest, never the key), the first-key rule,
revocation refused at once here and, on PostgreSQL, heard by another book."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.internet.task import Clock
from twisted.web.iweb import IRequest
from twisted.web.test.requesthelper import DummyRequest

from foreman.http.auth import BearerTokenGuard, Scope
from foreman.queue import keys
from foreman.queue.engines import Engine, SQLiteEngine
from foreman.queue.key_book import KeyBook
from foreman.queue.keys import AdminFirst, KeyRefused, NameTaken
from foreman.queue.store import JobStore
from tests.http_helpers import eventually
from tests.store_engines import side
from tests.test_store import failure_of, result_of

NOW = 1_800_000_000.0
ADMIN = frozenset({Scope.ADMIN})
GENERATE = frozenset({Scope.GENERATE})


Opened = Callable[[Engine], JobStore]


@pytest.fixture
def opened() -> Iterator[Opened]:
    """Open stores on an engine; each closed afterwards."""
    made: list[JobStore] = []

    def open_store(engine: Engine) -> JobStore:
        store = JobStore(engine)
        made.append(store)
        store.startup(NOW)
        return store

    yield open_store
    for store in made:
        result_of(store.close())


def book_on(store: JobStore, *, token: bool = False, **options: Any) -> tuple[KeyBook, Clock]:
    clock = Clock()
    book = KeyBook(store, clock, token=token, wall=lambda: NOW, **options)
    book.load_now()
    return book, clock


def test_a_key_is_fk_and_32_random_bytes_and_only_its_digest_is_stored(
    store_engine: Engine, opened: Opened
) -> None:
    store = opened(store_engine)
    book, _ = book_on(store)
    secret, row = result_of(book.add("root", ADMIN))
    assert re.fullmatch(r"fk-[A-Za-z0-9_-]{43}", secret)
    assert row.digest == keys.digest_of(secret) and len(row.digest) == 64
    with side(store_engine) as db:
        stored = db.execute("SELECT * FROM keys").fetchall()
    assert len(stored) == 1
    assert secret not in repr([tuple(r) for r in stored])
    assert stored[0]["digest"] == row.digest and stored[0]["scopes"] == "admin"
    assert book.caller(secret) == row.caller()
    assert book.caller(secret + "x") is None and book.caller("") is None
    assert book.named("root") == row.caller()


def test_the_first_key_must_be_an_admin_unless_the_token_is_set(
    store_engine: Engine, opened: Opened
) -> None:
    store = opened(store_engine)
    book, _ = book_on(store)
    refused = failure_of(book.add("alice", GENERATE))
    assert refused.check(AdminFirst) and "admin" in str(refused.value)
    result_of(book.add("root", ADMIN))
    result_of(book.add("alice", GENERATE))
    # With the admin key revoked, no admin credential is left: admin first again.
    result_of(book.revoke("root"))
    assert failure_of(book.add("bob", GENERATE)).check(AdminFirst)
    with_token, _ = book_on(opened(store_engine), token=True)
    result_of(with_token.add("bob", GENERATE))


def test_names_are_checked_and_a_revoked_name_stays_taken(
    store_engine: Engine, opened: Opened
) -> None:
    store = opened(store_engine)
    book, _ = book_on(store)
    result_of(book.add("root", ADMIN))
    for bad in ["", "a b", "x" * 65, "ü", "a/b"]:
        with pytest.raises(KeyRefused):
            keys.check_name(bad)
    assert keys.check_name("A-z_0.9") == "A-z_0.9"
    assert failure_of(book.add("root", ADMIN)).check(NameTaken)
    result_of(book.revoke("root"))
    taken = failure_of(book.add("root", ADMIN))
    assert taken.check(NameTaken) and "revoked" in str(taken.value)


def test_a_key_revoked_here_is_refused_at_once(store_engine: Engine, opened: Opened) -> None:
    store = opened(store_engine)
    book, _ = book_on(store)
    secret, _ = result_of(book.add("root", ADMIN))
    other, _ = result_of(book.add("alice", GENERATE))
    revoked = result_of(book.revoke("alice"))
    assert revoked is not None and revoked.revoked_at == NOW and not revoked.active
    assert book.caller(other) is None and book.named("alice") is None
    assert book.caller(secret) is not None
    assert result_of(book.revoke("nobody")) is None
    again = result_of(book.revoke("alice"))
    assert again is not None and again.revoked_at == NOW
    listed = {row.name: row for row in result_of(book.listing())}
    assert set(listed) == {"root", "alice"} and listed["alice"].revoked_at == NOW
    assert listed["root"].scopes == ADMIN and listed["alice"].scopes == GENERATE


def test_a_read_begun_before_a_revoke_does_not_bring_the_key_back(
    store_engine: Engine, opened: Opened
) -> None:
    store = opened(store_engine)
    book, _ = book_on(store)
    result_of(book.add("root", ADMIN))
    secret, _ = result_of(book.add("alice", GENERATE))
    # What a read begun just before the revoke would find: alice still active.
    stale = keys.active_keys(store._db)
    result_of(book.revoke("alice"))
    book._apply((99, 0), stale)
    assert book.caller(secret) is None


def test_another_writer_is_seen_at_the_next_look(store_engine: Engine, opened: Opened) -> None:
    store = opened(store_engine)
    book, clock = book_on(store, poll=1.0)
    book.startService()
    try:
        assert book.loaded and not book.any_keys
        elsewhere, _ = book_on(opened(store_engine))
        secret, _ = result_of(elsewhere.add("root", ADMIN))
        assert book.caller(secret) is None
        clock.advance(1.0)
        assert book.caller(secret) is not None and book.any_keys
        result_of(elsewhere.revoke("root"))
        clock.advance(1.0)
        assert book.caller(secret) is None and not book.any_keys
    finally:
        book.stopService()


def test_last_used_is_written_at_most_once_a_minute(store_engine: Engine, opened: Opened) -> None:
    store = opened(store_engine)
    stamps = iter([NOW, NOW + 10, NOW + 61, NOW + 62])
    clock = Clock()
    book = KeyBook(store, clock, token=False, wall=lambda: next(stamps))
    book.load_now()
    secret, _ = result_of(book.add("root", ADMIN))

    def last_used() -> float | None:
        return next(r for r in result_of(book.listing()) if r.name == "root").last_used_at

    assert last_used() is None
    book.caller(secret)
    assert last_used() == NOW + 10
    clock.advance(30)
    book.caller(secret)
    assert last_used() == NOW + 10, "not again within the minute"
    clock.advance(31)
    book.caller(secret)
    assert last_used() == NOW + 61


def test_keys_that_cannot_be_read_at_start_fail_closed(tmp_path: Path) -> None:
    unreadable = JobStore(SQLiteEngine(tmp_path / "no" / "such" / "dir" / "foreman.db"))
    book, _ = book_on(unreadable)
    assert not book.loaded and book.any_keys and book.error
    assert book.health() == {"loaded": False, "error": book.error}
    assert book.caller(keys.new_secret()) is None
    request = tags_request()
    guard = BearerTokenGuard(None, keys=book)
    assert guard.enabled and guard.check(cast(IRequest, request)) is not None
    assert request.responseCode == 401
    # The token still opens.
    token = BearerTokenGuard("t0ken", keys=book)
    request = tags_request()
    request.requestHeaders.setRawHeaders(b"authorization", [b"Bearer t0ken"])
    assert token.check(cast(IRequest, request)) is None


def tags_request() -> DummyRequest:
    request = DummyRequest([b"api", b"tags"])
    request.path = b"/api/tags"  # type: ignore[attr-defined]
    return request


@pytest.mark.postgres
@pytest_twisted.ensureDeferred
async def test_a_book_hears_a_revoke_at_another_book_through_notify(
    postgres_url: str, reactor: Any, opened: Opened
) -> None:
    """PostgreSQL's NOTIFY alone (the poll set to an hour): a revoke at one
    box is refused at the other well within a second."""
    from foreman.queue.engines.postgres import PostgresEngine

    here = opened(PostgresEngine(postgres_url))
    there = opened(PostgresEngine(postgres_url))
    listening = KeyBook(there, reactor, token=False, poll=3600.0, threads=reactor)
    listening.load_now()
    listening.startService()
    try:
        book, _ = book_on(here)
        secret, _ = result_of(book.add("root", ADMIN))
        await eventually(lambda: listening.caller(secret) is not None, reactor)
        result_of(book.revoke("root"))
        revoked_at = time.monotonic()
        await eventually(lambda: listening.caller(secret) is None, reactor, seconds=5.0)
        assert time.monotonic() - revoked_at < 1.0
    finally:
        listening.stopService()

"""The key book: the active keys, in memory, for the guard to read at once
(issue 21, docs/keys.md).

The guard (:class:`foreman.http.auth.BearerTokenGuard`) asks it on every
request, synchronously, as a :class:`~foreman.http.auth.KeyLookup`; the fair
share asks it each key's weight and waiting limit (``weight``,
``max_waiting``). It is read from the ``keys`` table (:mod:`foreman.queue.keys`)
at start, and again whenever the keys change:

* on this box, at once, by its own adds and revokes: a key revoked here is
  refused on its next call;
* on the other boxes of a fleet, when PostgreSQL's ``NOTIFY`` on
  :data:`~foreman.queue.keys.KEYS_CHANNEL` arrives, and, should it not, by a
  look every ``poll`` seconds at a mark that moves with every add and
  revoke (:func:`~foreman.queue.keys.keys_mark`): within about a second.

Until the keys have been read once (the store could not be reached at
start), it fails closed: :attr:`KeyBook.any_keys` is true and no key is
known, so only the token opens anything; ``/healthz`` says so. A store that
cannot be reached later leaves the last keys read in force.

A key's ``last_used_at`` is written at most once every ``touch_every``
seconds per key, beside the request, never in its way.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredLock, ensureDeferred
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from foreman.http.auth import Caller, Scope
from foreman.queue import keys
from foreman.queue.engines import Connection
from foreman.queue.keys import KEYS_CHANNEL, KeyRow, NameTaken
from foreman.queue.store import JobStore

log = Logger()

#: How often the book looks for keys changed at another box.
POLL_SECONDS = 1.0
#: A key's ``last_used_at`` is written at most this often.
TOUCH_SECONDS = 60.0

_Mark = tuple[int, int]


class KeyBook(Service):
    """The active keys by digest and by name, kept as the store changes."""

    def __init__(
        self,
        store: JobStore,
        clock: IReactorTime,
        *,
        token: bool,
        wall: Callable[[], float] = time.time,
        poll: float = POLL_SECONDS,
        touch_every: float = TOUCH_SECONDS,
        threads: IReactorThreads | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        #: Whether the admin token is set (the first-key rule, :func:`keys.add_key`).
        self._token = token
        self._wall = wall
        self._poll = poll
        self._touch_every = touch_every
        self._threads = threads
        self._by_digest: dict[str, Caller] = {}
        self._by_name: dict[str, Caller] = {}
        self._mark: _Mark | None = None
        #: Keys revoked by this box: refused whatever a read begun before says.
        self._revoked_here: set[str] = set()
        self._touched: dict[str, float] = {}
        self._lock = DeferredLock()
        self._polling = LoopingCall(self._look)
        self._polling.clock = clock
        self._stop_listening = threading.Event()
        #: Whether the keys have been read at least once.
        self.loaded = False
        #: Why the last read failed; ``None`` once one succeeds.
        self.error: str | None = None

    # -- what the guard asks --------------------------------------------------------

    @property
    def any_keys(self) -> bool:
        return not self.loaded or bool(self._by_digest)

    def caller(self, secret: str) -> Caller | None:
        # Found by its digest: what a lookup's time could tell is how much of
        # a SHA-256 digest matched, which says nothing of any key.
        found = self._by_digest.get(keys.digest_of(secret))
        if found is None:
            return None
        assert found.name is not None
        self._used(found.name)
        return found

    def named(self, name: str) -> Caller | None:
        return self._by_name.get(name)

    # -- what the fair share asks (foreman.queue.shares.Shares) -----------------------

    def weight(self, caller: str | None) -> float:
        found = None if caller is None else self._by_name.get(caller)
        return 1.0 if found is None else found.weight

    def max_waiting(self, caller: str | None) -> int | None:
        found = None if caller is None else self._by_name.get(caller)
        return None if found is None else found.max_waiting

    # -- reading the keys -------------------------------------------------------------

    def load_now(self) -> None:
        """Read the keys on a connection of its own, blocking: at start, before
        the reactor runs, so that the first request finds them. A failure is
        logged and kept (``error``): the book stays shut until a look succeeds."""
        try:
            connection = self._store.engine.connect()
        except Exception as e:
            self._failed(e)
            return
        try:
            with connection.transaction() as db:
                mark, rows = _read(db, None)
            self._apply(mark, rows)
        except Exception as e:
            self._failed(e)
        finally:
            connection.close()

    def refresh(self, *, force: bool = False) -> Deferred[None]:
        """Read the keys again if they changed (``force``: whatever the mark
        says); one read at a time, each begun after the one before ended."""
        return ensureDeferred(self._refresh(force))

    async def _refresh(self, force: bool) -> None:
        await self._lock.acquire()
        try:
            known = None if force or not self.loaded else self._mark
            mark, rows = await self._store.read(lambda db: _read(db, known))
            self._apply(mark, rows)
        except Exception as e:
            self._failed(e)
        finally:
            self._lock.release()

    def _apply(self, mark: _Mark, rows: list[KeyRow] | None) -> None:
        if self.error is not None:
            log.info("The keys can be read again")
        self.error = None
        self._mark = mark
        self.loaded = True
        if rows is None:
            return  # unchanged
        active = [row for row in rows if row.name not in self._revoked_here]
        self._by_digest = {row.digest: row.caller() for row in active}
        self._by_name = {row.name: row.caller() for row in active}

    def _failed(self, error: Exception) -> None:
        text = str(error).strip() or type(error).__name__
        if text != self.error:
            log.warn(
                "Could not read the keys from the job store: {error}{closed}",
                error=text,
                closed="" if self.loaded else "; until they are read, only the token is accepted",
            )
        self.error = text

    def _look(self) -> None:
        if not self._lock.locked:
            self.refresh()

    def _notified(self, payload: str) -> None:
        # On the listener's thread: a hint, acted on in the reactor.
        if self._threads is not None:
            self._threads.callFromThread(self.refresh, force=True)

    # -- the service -------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stop_listening.clear()
        self._polling.start(self._poll, now=not self.loaded)
        engine = self._store.engine
        if self._threads is not None and engine.notifies:
            self._threads.callInThread(
                engine.listen, KEYS_CHANNEL, self._notified, self._stop_listening
            )

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self._stop_listening.set()
        if self._polling.running:
            self._polling.stop()
        return None

    # -- changing the keys -------------------------------------------------------------

    def add(
        self,
        name: str,
        scopes: frozenset[Scope],
        *,
        weight: float = 1.0,
        max_waiting: int | None = None,
    ) -> Deferred[tuple[str, KeyRow]]:
        """Make a key: the key itself (shown once, kept nowhere) and its row.
        Fails with :class:`~foreman.queue.keys.KeyRefused` (a name in use,
        the first-key rule)."""
        return ensureDeferred(self._add(name, scopes, weight, max_waiting))

    async def _add(
        self, name: str, scopes: frozenset[Scope], weight: float, max_waiting: int | None
    ) -> tuple[str, KeyRow]:
        secret = keys.new_secret()
        row = KeyRow(
            name=keys.check_name(name),
            scopes=scopes,
            created_at=self._wall(),
            weight=weight,
            max_waiting=max_waiting,
            digest=keys.digest_of(secret),
        )
        engine = self._store.engine

        def add(db: Connection) -> None:
            keys.add_key(db, row, token=self._token)
            engine.notify(db, KEYS_CHANNEL, f"added {name}")

        try:
            await self._store.transact(add)
        except engine.IntegrityError:
            # Another box made a key of that name between the look and the insert.
            raise NameTaken(name) from None
        await self.refresh(force=True)
        return secret, row

    def revoke(self, name: str) -> Deferred[KeyRow | None]:
        """Revoke the key ``name``: refused here from now on, and at the other
        boxes as soon as they hear. The key as now stored; ``None``: no such key."""
        return ensureDeferred(self._revoke(name))

    async def _revoke(self, name: str) -> KeyRow | None:
        engine = self._store.engine
        now = self._wall()

        def revoke(db: Connection) -> KeyRow | None:
            revoked = keys.revoke_key(db, name, now)
            if revoked is not None:
                engine.notify(db, KEYS_CHANNEL, f"revoked {name}")
            return revoked

        revoked = await self._store.transact(revoke)
        if revoked is not None:
            self._revoked_here.add(name)
            self._forget(name)
        await self.refresh(force=True)
        return revoked

    def listing(self) -> Deferred[list[KeyRow]]:
        """Every key, revoked ones too (for ``GET /api/foreman/keys``)."""
        return self._store.read(keys.list_keys)

    def _forget(self, name: str) -> None:
        self._by_name.pop(name, None)
        self._by_digest = {d: c for d, c in self._by_digest.items() if c.name != name}

    # -- last used ---------------------------------------------------------------------

    def _used(self, name: str) -> None:
        now = self._clock.seconds()
        if now - self._touched.get(name, -math.inf) < self._touch_every:
            return
        self._touched[name] = now
        stamp = self._wall()
        written = self._store.transact(lambda db: keys.touch(db, name, stamp))
        written.addErrback(self._touch_failed, name)

    def _touch_failed(self, failure: Any, name: str) -> None:
        # Tried again at the key's next use after ``touch_every``; only noted.
        log.info(
            "Could not note when the key {name} was last used: {error}",
            name=name,
            error=failure.getErrorMessage(),
        )

    def is_unavailable(self, error: Exception) -> bool:
        """Whether ``error`` means the store cannot be reached now (a 503, not a 500)."""
        return self._store.engine.is_unavailable(error)

    def health(self) -> dict[str, Any]:
        """For ``/healthz``: whether the keys are known, and why not."""
        return {"loaded": self.loaded, "error": self.error}


def _read(db: Connection, known: _Mark | None) -> tuple[_Mark, list[KeyRow] | None]:
    """The mark, and the active keys unless the mark is still ``known``."""
    mark = keys.keys_mark(db)
    if mark == known:
        return mark, None
    return mark, keys.active_keys(db)

"""The ``keys`` table: its SQL, for either engine (issue 21, docs/keys.md).

A key is ``fk-`` and 32 random bytes (URL-safe base64), shown once when it is
made; the table keeps only its SHA-256 digest (hex), with its name, scopes,
share of the queue (``weight``, ``max_waiting``) and times. A revoked key
keeps its row, and its name stays taken: what ran in that name stays its.
Rows live in the job store, so every box of a fleet knows the same keys;
:class:`foreman.queue.key_book.KeyBook` keeps the active ones in memory.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from foreman.http.auth import Caller, Scope
from foreman.queue.engines import Connection

#: Where the boxes of a fleet hear that a key was added or revoked.
KEYS_CHANNEL = "foreman_keys"
SECRET_PREFIX = "fk-"
NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
#: What a key may do when its maker does not say.
DEFAULT_SCOPES = frozenset({Scope.GENERATE, Scope.EMBED, Scope.JOBS})


class KeyRefused(Exception):
    """A key that cannot be made or revoked as asked; ``status`` for HTTP."""

    status = 400


class NameTaken(KeyRefused):
    status = 409

    def __init__(self, name: str) -> None:
        super().__init__(f"a key named {name!r} exists already (a revoked key's name stays taken)")


class AdminFirst(KeyRefused):
    def __init__(self) -> None:
        super().__init__(
            "the first key must have the admin scope: with no token (FOREMAN_TOKEN) and no"
            " admin key, a key without it would shut everyone out of managing keys"
        )


def new_secret() -> str:
    """A new key: ``fk-`` and 32 random bytes."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def digest_of(secret: str) -> str:
    """What the table keeps of a key: its SHA-256, in hex."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def check_name(name: object) -> str:
    if not isinstance(name, str) or NAME_PATTERN.fullmatch(name) is None:
        raise KeyRefused("a key's name is 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-'")
    return name


def parse_scopes(names: Iterable[object]) -> frozenset[Scope]:
    """Scopes by name; :class:`KeyRefused` for one foreman does not know."""
    scopes = set()
    for name in names:
        try:
            scopes.add(Scope(name))
        except ValueError:
            known = ", ".join(scope.value for scope in Scope)
            raise KeyRefused(f"unknown scope {name!r}; the scopes are {known}") from None
    if not scopes:
        raise KeyRefused("a key needs at least one scope")
    return frozenset(scopes)


def scope_names(scopes: Iterable[Scope]) -> list[str]:
    """Scopes as names, in the order of :class:`Scope` (``admin`` last)."""
    return [scope.value for scope in Scope if scope in set(scopes)]


def _stored_scopes(text: str) -> frozenset[Scope]:
    # A scope a newer foreman wrote, unknown here, grants nothing here.
    known = {scope.value: scope for scope in Scope}
    return frozenset(known[name] for name in text.split() if name in known)


@attrs.frozen
class KeyRow:
    name: str
    scopes: frozenset[Scope]
    created_at: float
    weight: float = 1.0
    max_waiting: int | None = None
    last_used_at: float | None = None
    revoked_at: float | None = None
    digest: str = attrs.field(default="", repr=False)

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def caller(self) -> Caller:
        return Caller(self.name, self.scopes, self.weight, self.max_waiting)


_COLUMNS = "name, scopes, created_at, weight, max_waiting, last_used_at, revoked_at, digest"


def _row(row: Sequence[Any]) -> KeyRow:
    return KeyRow(
        name=row[0],
        scopes=_stored_scopes(row[1]),
        created_at=float(row[2]),
        weight=float(row[3]),
        max_waiting=None if row[4] is None else int(row[4]),
        last_used_at=None if row[5] is None else float(row[5]),
        revoked_at=None if row[6] is None else float(row[6]),
        digest=row[7],
    )


def add_key(db: Connection, key: KeyRow, *, token: bool) -> None:
    """Store a new key (its digest, never the key). ``token``: whether the
    admin token is set; without it, while no active key is an admin, only
    an admin key may be added (:class:`AdminFirst`)."""
    taken = db.execute("SELECT 1 FROM keys WHERE name = ?", (key.name,)).fetchone()
    if taken is not None:
        raise NameTaken(key.name)
    if not token and Scope.ADMIN not in key.scopes and not _an_admin_is_active(db):
        raise AdminFirst()
    db.execute(
        f"INSERT INTO keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            key.name,
            " ".join(scope_names(key.scopes)),
            key.created_at,
            key.weight,
            key.max_waiting,
            None,
            None,
            key.digest,
        ),
    )


def _an_admin_is_active(db: Connection) -> bool:
    rows = db.execute("SELECT scopes FROM keys WHERE revoked_at IS NULL").fetchall()
    return any(Scope.ADMIN in _stored_scopes(row[0]) for row in rows)


def get_key(db: Connection, name: str) -> KeyRow | None:
    row = db.execute(f"SELECT {_COLUMNS} FROM keys WHERE name = ?", (name,)).fetchone()
    return None if row is None else _row(row)


def list_keys(db: Connection) -> list[KeyRow]:
    """Every key, revoked ones too, by name."""
    rows = db.execute(f"SELECT {_COLUMNS} FROM keys ORDER BY name").fetchall()
    return [_row(row) for row in rows]


def active_keys(db: Connection) -> list[KeyRow]:
    rows = db.execute(f"SELECT {_COLUMNS} FROM keys WHERE revoked_at IS NULL").fetchall()
    return [_row(row) for row in rows]


def revoke_key(db: Connection, name: str, now: float) -> KeyRow | None:
    """Revoke the key ``name`` (a revoked one stays as it was); the key as
    now stored, or ``None`` if there is none of that name."""
    db.execute("UPDATE keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (now, name))
    return get_key(db, name)


def keys_mark(db: Connection) -> tuple[int, int]:
    """What changes whenever a key is added or revoked, and only then (keys
    are never deleted, nor brought back): how many, and how many revoked.
    Cheap enough to ask every second."""
    row = db.execute("SELECT COUNT(*), COUNT(revoked_at) FROM keys").fetchone()
    return int(row[0]), int(row[1])


def touch(db: Connection, name: str, now: float) -> None:
    """Note that ``name`` was used at ``now`` (never moving it back)."""
    db.execute(
        "UPDATE keys SET last_used_at = ? WHERE name = ?"
        " AND (last_used_at IS NULL OR last_used_at < ?)",
        (now, name, now),
    )

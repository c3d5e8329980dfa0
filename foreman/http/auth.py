"""Who is calling, and whether they may (ADR-0010, docs/keys.md).

A caller presents a credential the way its SDK sends one: ``Authorization:
Bearer`` (Ollama's clients, go-llm, the OpenAI SDKs, the Anthropic SDK given
an auth token) or ``x-api-key`` (the Anthropic SDK's default). Either is
accepted, and both are always looked at. A credential is one of:

* the token (``FOREMAN_TOKEN`` / ``--token-file``): an admin key without a name;
* a key (``foreman keys add``), found by the digest of what was sent in the
  :class:`KeyLookup` (the key book, in memory), with its name and scopes;
* the fleet's secret, which another box of a fleet presents when it forwards
  a call (ADR-0027), with the name of the original caller's key in
  :data:`CALLER_HEADER` (ignored without the secret).

With no token and no keys, a listener on loopback is open to all, as before
keys. What each path needs is :func:`foreman.http.scopes.scope_for`'s; a
wrong or revoked key is a 401 and a missing scope a 403, each in the
caller's dialect. The guard puts the :class:`Caller` on the request
(:func:`caller_of`) for what comes after: the queue records whose each job
is, and ``/jobs`` shows a key only its own. Credentials are never forwarded
to Ollama (:mod:`foreman.relay.upstream` drops both headers) nor logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Protocol

import attrs
from twisted.web.iweb import IRequest

from foreman.http.dialects import dialect_of, error_document
from foreman.http.errors import error_content_type
from foreman.http.scopes import ANY_KEY, Scope, scope_for

__all__ = [
    "CALLER_HEADER",
    "OPEN_PATHS",
    "TOKEN_CALLER",
    "BearerTokenGuard",
    "Caller",
    "KeyLookup",
    "Scope",
    "caller_of",
]

#: Paths that never need a credential: liveness checks must work without secrets.
OPEN_PATHS = frozenset({b"/healthz"})

#: The name of the original caller's key, on a call one box of a fleet
#: forwards to another; believed only beside the fleet's secret.
CALLER_HEADER = b"X-Foreman-Caller"


@attrs.frozen
class Caller:
    """Who a request comes from: a key's name (``None`` for the token, or
    when no credential is needed), its scopes, and its share of the queue."""

    name: str | None
    scopes: frozenset[Scope]
    weight: float = 1.0
    max_waiting: int | None = None

    def __attrs_post_init__(self) -> None:
        if self.name is None and not self.admin:
            raise ValueError("only an admin caller may be without a name")

    @property
    def admin(self) -> bool:
        return Scope.ADMIN in self.scopes

    def may(self, scope: Scope | None) -> bool:
        """Whether this caller may do what needs ``scope`` (``None``: any key)."""
        return scope is ANY_KEY or self.admin or scope in self.scopes

    def sees(self, owner: str | None) -> bool:
        """Whether work recorded as ``owner``'s (a key's name, or ``None``)
        is this caller's to see: admin sees all, a key only its own."""
        return self.admin or owner == self.name

    @property
    def only(self) -> str | None:
        """The owner whose work alone this caller sees; ``None``: everyone's."""
        return None if self.admin else self.name


#: The token's caller, and everyone's where no credential is needed.
TOKEN_CALLER = Caller(None, frozenset({Scope.ADMIN}))


class KeyLookup(Protocol):
    """The keys the guard knows, read synchronously from memory (the key book)."""

    @property
    def any_keys(self) -> bool:
        """Whether a key is needed: some key is active, or the keys are not
        known (the store could not be read: they fail closed)."""
        ...

    def caller(self, secret: str) -> Caller | None:
        """The active key ``secret`` is, as a caller; ``None`` if it is none."""
        ...

    def named(self, name: str) -> Caller | None:
        """The active key called ``name``, as a caller (its share), or ``None``."""
        ...


def caller_of(request: IRequest) -> Caller | None:
    """The caller the guard found for ``request``; ``None`` where no guard
    stands in front (an app mounted alone, in a test), which means everyone's."""
    caller = getattr(request, "caller", None)
    return caller if isinstance(caller, Caller) else None


class BearerTokenGuard:
    """Finds the caller of each request and refuses what it may not do.

    ``open_when_keyless``: whether, with no token and no key, a request
    needs no credential at all (a listener on loopback, or one started with
    ``--allow-unauthenticated``). Elsewhere the guard stays shut then: the
    last key revoked never opens a public listener. ``refused(name)`` hears
    of each call a key made without the scope it needs (usage per key).
    """

    def __init__(
        self,
        token: str | None,
        *,
        open_paths: frozenset[bytes] = OPEN_PATHS,
        fleet: str | None = None,
        keys: KeyLookup | None = None,
        open_when_keyless: bool = True,
        refused: Callable[[str | None], object] | None = None,
    ) -> None:
        self._expected = b"Bearer " + token.encode("utf-8") if token else None
        self._open_paths = open_paths
        #: What another box of a fleet presents when it forwards a call (ADR-0027).
        self._fleet = b"Bearer " + fleet.encode("utf-8") if fleet else None
        self._keys = keys
        self._open_when_keyless = open_when_keyless
        self._refused = refused

    @property
    def enabled(self) -> bool:
        """Whether a request needs a credential now."""
        if self._expected is not None or not self._open_when_keyless:
            return True
        return self._keys is not None and self._keys.any_keys

    def identify(self, request: IRequest) -> Caller | None:
        """The caller ``request``'s credentials name; ``None`` when they name
        nobody (none sent, a wrong one, a revoked key).

        Every credential sent is looked at, whichever matches: the time taken
        tells nothing of which one did. The token and the fleet's secret are
        compared in constant time; a key is found by the SHA-256 digest of
        what was sent (the key book keeps only digests), so what a lookup's
        time could reveal is part of a digest, which says nothing of a key.
        """
        raw = request.getHeader(b"authorization") or b""
        # The scheme is case-insensitive; the credential is not.
        bearer = raw[7:].strip() if raw[:7].lower() == b"bearer " else None
        presented = raw if bearer is None else b"Bearer " + bearer
        api_key = (request.getHeader(b"x-api-key") or b"").strip()
        expected = self._expected or b""
        by_header = hmac.compare_digest(presented, expected) and bool(expected)
        by_api_key = hmac.compare_digest(b"Bearer " + api_key, expected) and bool(expected)
        fleet = self._fleet or b""
        by_fleet = hmac.compare_digest(presented, fleet) and bool(fleet)
        key_by_header = self._key(bearer)
        key_by_api_key = self._key(api_key)
        if by_header or by_api_key:
            return TOKEN_CALLER
        if by_fleet:
            return self._forwarded(request)
        return key_by_header or key_by_api_key

    def _key(self, secret: bytes | None) -> Caller | None:
        if not secret or self._keys is None:
            return None
        try:
            text = secret.decode("ascii")
        except UnicodeDecodeError:
            return None  # keys are ASCII: this is none of them
        return self._keys.caller(text)

    def _forwarded(self, request: IRequest) -> Caller:
        """A call another box forwarded: an admin's, in the name of the key
        it came with there (that box checked its scope), with its share."""
        raw = request.getHeader(CALLER_HEADER)
        name = raw.decode("utf-8", "replace").strip() if raw else ""
        if not name:
            return TOKEN_CALLER
        known = None if self._keys is None else self._keys.named(name)
        if known is None:
            return Caller(name, TOKEN_CALLER.scopes)
        return attrs.evolve(known, scopes=known.scopes | TOKEN_CALLER.scopes)

    def check(self, request: IRequest) -> bytes | None:
        """Admit ``request`` or refuse it: ``None`` and ``request.caller`` set,
        or the body of the refusal (401 or 403, in the caller's dialect)."""
        if request.path in self._open_paths:
            return None
        caller = self.identify(request)
        if caller is None:
            if self.enabled:
                return self._refuse(request, 401, _unknown_message(request))
            caller = TOKEN_CALLER
        needed = scope_for(request.method, request.path)
        if not caller.may(needed):
            assert needed is not None
            if self._refused is not None:
                self._refused(caller.name)
            return self._refuse(request, 403, _missing_scope_message(caller, needed))
        request.caller = caller  # type: ignore[attr-defined]
        return None

    def allows(self, request: IRequest) -> bool:
        """Whether ``request`` may do anything at all: it names an admin, or
        no credential is needed (the status page's data, its sign-in)."""
        if request.path in self._open_paths:
            return True
        caller = self.identify(request)
        if caller is None:
            return not self.enabled
        return caller.admin

    def admits(self, name: str | None) -> bool:
        """Whether an admin known as ``name`` (a key's; ``None``: the token's)
        still is one: a revoked key's sign-ins end with it."""
        if name is None:
            return True
        known = None if self._keys is None else self._keys.named(name)
        return known is not None and known.admin

    def refuse(self, request: IRequest) -> bytes:
        """A 401 for ``request``, in its dialect."""
        return self._refuse(request, 401, _unknown_message(request))

    @staticmethod
    def _refuse(request: IRequest, status: int, message: str) -> bytes:
        """A refusal in the caller's dialect. OpenAI's error keeps the
        ``type`` Ollama's middleware writes for the status (``api_error``), as
        every answer of foreman's does, and names OpenAI's ``code``."""
        dialect = dialect_of(request.path or b"")
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", error_content_type(dialect))
        if status == 401:
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="foreman"')
            code = "invalid_api_key"
        else:
            code = "insufficient_permissions"
        return error_document(dialect, status, message, code=code)


def _unknown_message(request: IRequest) -> str:
    how = "Authorization: Bearer, or x-api-key"
    if request.getHeader(b"authorization") or request.getHeader(b"x-api-key"):
        return f"unauthorized: foreman knows no such token or key, or it was revoked ({how})"
    return f"unauthorized: a token or API key is required ({how})"


def _missing_scope_message(caller: Caller, needed: Scope) -> str:
    who = "this key" if caller.name is None else f"the key {caller.name!r}"
    return f"forbidden: {who} may not do this; it needs the {needed.value} scope"

"""``/api/foreman/keys``: making, listing and revoking keys over HTTP (docs/keys.md).

A Klein app of its own, mounted by :class:`foreman.front.api.ForemanAPI`
beside the queue report; the guard lets only admins in
(:mod:`foreman.http.scopes`). ``foreman keys`` is its command line.

* ``GET`` lists every key, revoked ones too, with what each used (``usage``,
  from the usage totals when they are plugged in; ``{}`` until then);
* ``POST`` ``{"name", "scopes"?, "weight"?, "max_waiting"?}`` makes a key and
  answers 201 with it, once: only its digest is kept;
* ``DELETE /{name}`` revokes it, here at once and at every box of a fleet
  within about a second.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from klein import Klein
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from foreman.http import routing
from foreman.http.errors import write_json_error
from foreman.http.routing import BadRequest, json_answer, read_json
from foreman.queue.key_book import KeyBook
from foreman.queue.keys import (
    DEFAULT_SCOPES,
    KeyRefused,
    KeyRow,
    check_name,
    parse_scopes,
    scope_names,
)
from foreman.wire.timestamps import timestamp


class Usage(Protocol):
    """What one key used (:class:`foreman.queue.usage.UsageTotals`)."""

    def as_json(self) -> Mapping[str, int | float]: ...


#: What each key used, by its name: an async read of the usage totals.
UsageRead = Callable[[], Awaitable[Mapping[str, Usage]]]

NO_STORE = "foreman: keys live in the job store, and this foreman runs with --no-queue"


class _NoStore(Exception):
    """Keys need the job store (``--no-queue`` has none)."""


def key_view(key: KeyRow, usage: Usage | None = None) -> dict[str, Any]:
    """A key as the API shows it: never its digest."""
    return {
        "name": key.name,
        "scopes": scope_names(key.scopes),
        "weight": key.weight,
        "max_waiting": key.max_waiting,
        "created_at": timestamp(key.created_at),
        "last_used_at": timestamp(key.last_used_at),
        "revoked_at": timestamp(key.revoked_at),
        "usage": {} if usage is None else dict(usage.as_json()),
    }


class KeysAPI:
    app = Klein()

    def __init__(self, book: KeyBook | None, *, usage: UsageRead | None = None) -> None:
        #: The key book (``None``: no job store, no keys); ``/healthz`` reads it too.
        self.book = book
        self._usage = usage

    def _keys(self) -> KeyBook:
        if self.book is None:
            raise _NoStore()
        return self.book

    @app.route("/", methods=["GET", "HEAD"])
    async def listing(self, request: IRequest) -> bytes:
        rows = await self._keys().listing()
        totals = {} if self._usage is None else await self._usage()
        request.setHeader(b"Cache-Control", b"no-store")
        return json_answer(request, {"keys": [key_view(row, totals.get(row.name)) for row in rows]})

    @app.route("/", methods=["POST"])
    async def add(self, request: IRequest) -> bytes:
        book = self._keys()
        _, document = read_json(request)
        if not isinstance(document, dict):
            raise BadRequest('a key is made from a JSON object: {"name": …, "scopes": […]}')
        scopes = document.get("scopes")
        if scopes is not None and not isinstance(scopes, list):
            raise BadRequest('scopes is a list of names, such as ["generate", "embed"]')
        secret, row = await book.add(
            check_name(document.get("name")),
            DEFAULT_SCOPES if scopes is None else parse_scopes(scopes),
            weight=_weight(document.get("weight", 1.0)),
            max_waiting=_max_waiting(document.get("max_waiting")),
        )
        request.setHeader(b"Cache-Control", b"no-store")
        return json_answer(request, {**key_view(row), "key": secret}, 201)

    @app.route("/<name>", methods=["DELETE"])
    async def revoke(self, request: IRequest, name: str) -> bytes:
        row = await self._keys().revoke(name)
        if row is None:
            return write_json_error(request, 404, f"no key named {name!r}")
        return json_answer(request, key_view(row))

    # -- errors ----------------------------------------------------------------------

    @app.handle_errors(KeyRefused)
    def refused(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, KeyRefused)
        return write_json_error(request, error.status, str(error))

    @app.handle_errors(_NoStore)
    def no_store(self, request: IRequest, failure: Failure) -> bytes:
        return write_json_error(request, 501, NO_STORE)

    def _failed(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        book = self.book
        if book is not None and isinstance(error, Exception) and book.is_unavailable(error):
            message = f"foreman: the job store cannot be reached now ({error}); try again"
            return write_json_error(request, 503, message, {b"Retry-After": b"5"})
        return routing.unexpected(request, failure)

    routing.answer_routing_errors(app, _failed)


def _weight(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise BadRequest("weight is a number above 0 (1: an equal share)")
    return float(value)


def _max_waiting(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest("max_waiting is a whole number above 0, or null for no limit")
    return value

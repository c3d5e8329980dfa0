"""What each path needs a key to be allowed (issue 21, docs/keys.md).

One table for all of foreman: the guard (:mod:`foreman.http.auth`) asks
:func:`scope_for` before any route is matched. A generation call in any
dialect needs ``generate``; an embedding, ``embed``; foreman's own job
surfaces (``/jobs``, ``/v1/files``, ``/v1/batches``), ``jobs``; reading what
models there are, any valid key. Everything else needs ``admin``: foreman's
views and key management (``/api/foreman/…``), ``/metrics``, the status page's
data, Ollama's management calls (pull, push, create, copy, delete, blobs)
and any path foreman does not know, which it relays to Ollama as it is (a
newer Ollama's endpoint could do anything).

The path is read as the router reads it, percent-escapes decoded
(``/api/%63hat`` is ``/api/chat``), and the method must be the one the route
takes: a known path with another method is relayed to Ollama as an unknown
call, so it needs ``admin`` too.
"""

from __future__ import annotations

import enum
from urllib.parse import unquote_to_bytes

__all__ = ["ANY_KEY", "Scope", "scope_for"]


class Scope(enum.Enum):
    """What a key may do; ``admin`` implies every other scope."""

    GENERATE = "generate"
    EMBED = "embed"
    JOBS = "jobs"
    ADMIN = "admin"


#: What :func:`scope_for` answers for a path that any valid key may call.
ANY_KEY = None

_POST = frozenset({b"POST"})
_READ = frozenset({b"GET", b"HEAD"})

#: Exact paths: the methods foreman routes for them, and the scope they need.
_EXACT: dict[bytes, tuple[frozenset[bytes], Scope | None]] = {
    # Generation, in every dialect: queued (docs/api.md).
    b"/api/chat": (_POST, Scope.GENERATE),
    b"/api/generate": (_POST, Scope.GENERATE),
    b"/v1/chat/completions": (_POST, Scope.GENERATE),
    b"/v1/completions": (_POST, Scope.GENERATE),
    b"/v1/responses": (_POST, Scope.GENERATE),
    b"/v1/messages": (_POST, Scope.GENERATE),
    b"/v1/audio/transcriptions": (_POST, Scope.GENERATE),
    # Embeddings: relayed at once, beside the queue (ADR-0013).
    b"/api/embed": (_POST, Scope.EMBED),
    b"/api/embeddings": (_POST, Scope.EMBED),
    b"/v1/embeddings": (_POST, Scope.EMBED),
    # What models there are, and foreman itself: read-only, any key.
    b"/": (_READ, ANY_KEY),
    b"/api/tags": (_READ, ANY_KEY),
    b"/api/ps": (_READ, ANY_KEY),
    b"/api/version": (_READ, ANY_KEY),
    b"/api/show": (_POST, ANY_KEY),
    b"/v1/models": (_READ, ANY_KEY),
}

#: foreman's own job surfaces: the path itself and everything below it, any
#: method (their apps answer a wrong one with 405).
_JOBS_ROOTS = (b"/jobs", b"/v1/files", b"/v1/batches")

_ONE_MODEL = b"/v1/models/"


def scope_for(method: bytes, path: bytes) -> Scope | None:
    """The scope a call to ``path`` with ``method`` needs; :data:`ANY_KEY`
    (``None``) when any valid key may make it."""
    decoded = unquote_to_bytes(path)
    known = _EXACT.get(decoded)
    if known is not None:
        methods, scope = known
        return scope if method in methods else Scope.ADMIN
    for root in _JOBS_ROOTS:
        if decoded == root or decoded.startswith(root + b"/"):
            return Scope.JOBS
    if decoded.startswith(_ONE_MODEL) and method in _READ:
        model = decoded[len(_ONE_MODEL) :]
        if model and b"/" not in model:
            return ANY_KEY
    return Scope.ADMIN

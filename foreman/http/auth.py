"""The optional Bearer token in front of everything but ``/healthz`` (ADR-0010)."""

from __future__ import annotations

import hmac

from twisted.web.iweb import IRequest

from foreman.http.errors import write_json_error

#: Paths that never need a token: liveness checks must work without secrets.
OPEN_PATHS = frozenset({b"/healthz"})


class BearerTokenGuard:
    """Checks ``Authorization: Bearer <token>`` in constant time."""

    def __init__(self, token: str | None, *, open_paths: frozenset[bytes] = OPEN_PATHS) -> None:
        self._expected = b"Bearer " + token.encode("utf-8") if token else None
        self._open_paths = open_paths

    @property
    def enabled(self) -> bool:
        return self._expected is not None

    def allows(self, request: IRequest) -> bool:
        if self._expected is None or request.path in self._open_paths:
            return True
        presented = request.getHeader(b"authorization") or b""
        # The scheme is case-insensitive; the token is not.
        if presented[:7].lower() == b"bearer ":
            presented = b"Bearer " + presented[7:].strip()
        return hmac.compare_digest(presented, self._expected)

    def refuse(self, request: IRequest) -> bytes:
        message = "unauthorized: a valid Bearer token is required"
        return write_json_error(
            request, 401, message, {b"WWW-Authenticate": b'Bearer realm="foreman"'}
        )

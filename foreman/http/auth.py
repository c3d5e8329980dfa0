"""The optional token in front of everything but ``/healthz`` (ADR-0010).

Each SDK sends it its own way: ``Authorization: Bearer`` (Ollama's clients,
go-llm, the OpenAI SDKs, the Anthropic SDK given an auth token) or
``x-api-key`` (the Anthropic SDK's default). Either one is accepted; neither
is ever forwarded to Ollama.
"""

from __future__ import annotations

import hmac

from twisted.web.iweb import IRequest

from foreman.http.errors import write_json_error

#: Paths that never need a token: liveness checks must work without secrets.
OPEN_PATHS = frozenset({b"/healthz"})


class BearerTokenGuard:
    """Checks ``Authorization: Bearer <token>`` in constant time."""

    def __init__(
        self,
        token: str | None,
        *,
        open_paths: frozenset[bytes] = OPEN_PATHS,
        fleet: str | None = None,
    ) -> None:
        self._expected = b"Bearer " + token.encode("utf-8") if token else None
        self._open_paths = open_paths
        #: What another box of a fleet presents when it forwards a call (ADR-0027).
        self._fleet = b"Bearer " + fleet.encode("utf-8") if fleet else None

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
        api_key = b"Bearer " + (request.getHeader(b"x-api-key") or b"").strip()
        # Both compared, always, so the time taken tells nothing.
        by_header = hmac.compare_digest(presented, self._expected)
        by_api_key = hmac.compare_digest(api_key, self._expected)
        by_fleet = self._fleet is not None and hmac.compare_digest(presented, self._fleet)
        return by_header or by_api_key or by_fleet

    def refuse(self, request: IRequest) -> bytes:
        message = "unauthorized: a valid Bearer token (or x-api-key) is required"
        return write_json_error(
            request, 401, message, {b"WWW-Authenticate": b'Bearer realm="foreman"'}
        )

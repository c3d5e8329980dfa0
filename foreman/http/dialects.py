"""The three dialects Ollama speaks, and foreman's own answers in each.

A caller's dialect follows from the path it called, as in Ollama: the
Anthropic Messages API at ``/v1/messages``, the OpenAI-compatible API
everywhere else under ``/v1``, the native API anywhere else. Whatever
foreman answers itself (401, 404, 413, 503, 502 ...) is shaped the way that
dialect's SDKs parse errors, with the ``type`` values Ollama itself writes,
so ``openai.NotFoundError`` or ``anthropic.AuthenticationError`` is raised
exactly where Ollama would cause it.
"""

from __future__ import annotations

import json
import secrets

from foreman.wire import gojson
from foreman.wire.endpoints import Dialect, dialect_of

__all__ = [
    "DIALECT_JSON",
    "Dialect",
    "broken_stream_event",
    "dialect_of",
    "error_document",
    "request_id",
    "retry_after",
]

#: What Ollama's dialect writers send (the native API adds a charset).
DIALECT_JSON = b"application/json"

#: Both SDKs honour ``Retry-After`` only up to a minute (the Anthropic SDK,
#: and OpenAI's before 2.52) and otherwise back off on their own schedule,
#: within seconds; a longer hint is cut to this so their retry waits.
SDK_RETRY_AFTER_LIMIT = 60


def _openai_type(status: int) -> str:
    # Ollama's OpenAI middleware names only these two; everything else,
    # 401 and 503 included, is an api_error.
    if status == 400:
        return "invalid_request_error"
    if status == 404:
        return "not_found_error"
    return "api_error"


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def request_id() -> str:
    """An Anthropic-style request id: ``req_`` and 24 hex digits."""
    return "req_" + secrets.token_hex(12)


def error_document(
    dialect: Dialect,
    status: int,
    message: str,
    *,
    code: str | None = None,
) -> bytes:
    """The JSON of an error answer in ``dialect``.

    ``code`` names an OpenAI error's ``code`` where OpenAI's own API has one
    that Ollama never writes (a refused key: ``invalid_api_key``).
    """
    if dialect is Dialect.OPENAI:
        error = {
            "message": message,
            "type": _openai_type(status),
            "param": None,
            "code": code,
        }
        return json.dumps({"error": error}, separators=(",", ":")).encode() + b"\n"
    if dialect is Dialect.ANTHROPIC:
        envelope = {
            "type": "error",
            "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message},
            "request_id": request_id(),
        }
        return json.dumps(envelope, separators=(",", ":")).encode() + b"\n"
    # The bytes gin writes: compact and HTML-safe, no newline.
    return gojson.dumps({"error": message}).encode("utf-8")


def broken_stream_event(dialect: Dialect, message: str) -> bytes:
    """The last thing written to a stream that broke after its status was sent.

    Native: one ``{"error"}`` line, which every Ollama client raises. OpenAI:
    a ``data:`` event holding an error object, which the SDK raises as
    ``APIError``. Anthropic: an ``error`` event with the error envelope.
    """
    if dialect is Dialect.OPENAI:
        return b"data: " + error_document(dialect, 500, message).rstrip(b"\n") + b"\n\n"
    if dialect is Dialect.ANTHROPIC:
        body = error_document(dialect, 500, message).rstrip(b"\n")
        return b"event: error\ndata: " + body + b"\n\n"
    return error_document(dialect, 500, message) + b"\n"


def retry_after(dialect: Dialect, seconds: bytes) -> bytes:
    """A ``Retry-After`` value the dialect's SDKs will wait for."""
    if dialect is Dialect.OLLAMA:
        return seconds
    try:
        value = int(seconds)
    except ValueError:
        return seconds
    return b"%d" % min(value, SDK_RETRY_AFTER_LIMIT)

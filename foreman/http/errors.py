"""Answers in Ollama's own error shapes, in the caller's dialect.

Callers are Ollama clients: native ones parse ``{"error": "..."}`` bodies
and raise with the status; OpenAI and Anthropic SDKs parse their own error
objects (:mod:`foreman.http.dialects`). Whatever foreman refuses itself must
look the same as Ollama's own refusals on that path.
"""

from __future__ import annotations

import json

from twisted.web.iweb import IRequest

from foreman.http.dialects import (
    DIALECT_JSON,
    Dialect,
    broken_stream_event,
    dialect_of,
    error_document,
    retry_after,
)

JSON_CONTENT_TYPE = b"application/json; charset=utf-8"
TEXT_CONTENT_TYPE = b"text/plain"

#: Ollama's own text for a full queue (two spaces, as in Ollama).
SERVER_BUSY = "server busy, please try again.  maximum pending requests exceeded"


def error_line(message: str, path: bytes = b"") -> bytes:
    """The end of a stream that broke after bytes were sent, in the dialect of ``path``."""
    return broken_stream_event(dialect_of(path), message)


def error_content_type(dialect: Dialect) -> bytes:
    return JSON_CONTENT_TYPE if dialect is Dialect.OLLAMA else DIALECT_JSON


def write_json_error(
    request: IRequest,
    status: int,
    message: str,
    headers: dict[bytes, bytes] | None = None,
) -> bytes:
    """Set status and headers for an Ollama-shaped error; return the body.

    The body is returned rather than written so Klein (or the caller)
    finishes the request exactly once.
    """
    dialect = dialect_of(request.path or b"")
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", error_content_type(dialect))
    for name, value in (headers or {}).items():
        if name.lower() == b"retry-after":
            value = retry_after(dialect, value)
        request.setHeader(name, value)
    return error_document(dialect, status, message)


def answer_with_error(
    request: IRequest,
    status: int,
    message: str,
    headers: dict[bytes, bytes] | None = None,
) -> None:
    """Write a whole Ollama-shaped error where nothing else was written yet."""
    body = write_json_error(request, status, message, headers)
    request.setHeader(b"Content-Length", b"%d" % len(body))
    request.write(body)


def model_not_found(model: str) -> str:
    """Ollama's message for a chat or generate call naming an unknown model."""
    return f"model '{model}' not found"


def embedding_model_not_found(model: str) -> str:
    """Ollama's message for ``/api/embed`` and ``/api/embeddings`` (Go's ``%q``)."""
    return f"model {json.dumps(model, ensure_ascii=False)} not found, try pulling it first"

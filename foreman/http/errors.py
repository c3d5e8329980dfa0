"""Answers in Ollama's own error shapes.

Callers are Ollama clients: they parse ``{"error": "..."}`` bodies and raise
with the status. Whatever foreman refuses itself must look the same.
"""

from __future__ import annotations

import json

from twisted.web.iweb import IRequest

from foreman.wire import gojson

JSON_CONTENT_TYPE = b"application/json; charset=utf-8"
TEXT_CONTENT_TYPE = b"text/plain"

#: Ollama's own text for a full queue (two spaces, as in Ollama).
SERVER_BUSY = "server busy, please try again.  maximum pending requests exceeded"


def error_body(message: str) -> bytes:
    """``{"error": …}`` in the bytes gin writes: compact, HTML-safe."""
    return gojson.dumps({"error": message}).encode("utf-8")


def error_line(message: str) -> bytes:
    """The last NDJSON line of a stream that broke after bytes were sent."""
    return error_body(message) + b"\n"


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
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", JSON_CONTENT_TYPE)
    for name, value in (headers or {}).items():
        request.setHeader(name, value)
    return error_body(message)


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

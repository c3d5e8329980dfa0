"""Writing responses the way gin writes them."""

from __future__ import annotations

from twisted.web.server import Request

from foreman.wire.gojson import dumps

JSON_UTF8 = b"application/json; charset=utf-8"
NDJSON = b"application/x-ndjson"


def json_body(
    request: Request, status: int, value: object, content_type: bytes = JSON_UTF8
) -> bytes:
    """gin's ``c.JSON``: status, content type, compact HTML-safe JSON."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", content_type)
    return dumps(value).encode("utf-8")


def error_body(
    request: Request, status: int, message: str, content_type: bytes = JSON_UTF8
) -> bytes:
    return json_body(request, status, {"error": message}, content_type)


def text_body(
    request: Request, status: int, text: str, content_type: bytes = b"text/plain; charset=utf-8"
) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", content_type)
    return text.encode("utf-8")


def empty_body(request: Request, status: int = 200) -> bytes:
    request.setResponseCode(status)
    return b""


def is_over(request: Request) -> bool:
    """Finished, or the client left (``getattr``: test doubles lack the flag)."""
    return bool(getattr(request, "_disconnected", False) or request.finished)


def write_and_finish(request: Request, body: bytes) -> None:
    """Finish an asynchronous response, unless the client already left."""
    if is_over(request):
        return
    request.setHeader(b"content-length", b"%d" % len(body))
    request.write(body)
    request.finish()


def go_quote(text: str) -> str:
    """Go's ``%q`` for ordinary strings."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

"""What every Klein app of foreman's answers alike: gin's 404 and 405, Go's
decoder errors for a body, and no traceback for a bug.

foreman's HTTP surface is more than one Klein app (the native API, ``/jobs``);
an unknown path or a wrong method must look the same in all of them, as the
Ollama (gin) router answers it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from foreman.http.encoding import BodyTooLarge, UndecodableBody, decode_body
from foreman.http.errors import JSON_CONTENT_TYPE, TEXT_CONTENT_TYPE, write_json_error
from foreman.wire import gojson

log = Logger()


class BadRequest(Exception):
    """A body foreman must read and cannot: a 400 with the message."""


def read_body(request: IRequest) -> bytes:
    """The whole body (buffered by the site), zstd decompressed."""
    try:
        decode_body(request)
    except UndecodableBody as e:
        raise BadRequest(str(e)) from None
    request.content.seek(0)
    raw: bytes = request.content.read()
    return raw


def read_json(request: IRequest) -> tuple[bytes, Any]:
    """The raw body and its value, decoded with the leniency and wording of Go.

    Nesting deeper than foreman reads (``gojson.MAX_READ_DEPTH``) is a 400 of
    foreman's own; past Go's limit it is Go's (and Ollama's) own 400.
    """
    raw = read_body(request)
    try:
        return raw, gojson.loads(raw)
    except gojson.EmptyBody:
        raise BadRequest("missing request body") from None
    except gojson.TooDeep as e:
        raise BadRequest(f"foreman: {e}") from None
    except gojson.GoJSONError as e:
        raise BadRequest(str(e)) from None


def json_answer(request: IRequest, value: object, status: int = 200) -> bytes:
    """A JSON answer of foreman's own, with its length."""
    body = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", JSON_CONTENT_TYPE)
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def page_not_found(request: IRequest) -> bytes:
    request.setResponseCode(404)
    request.setHeader(b"Content-Type", TEXT_CONTENT_TYPE)
    return b"404 page not found"


def method_not_allowed(request: IRequest) -> bytes:
    request.setResponseCode(405)
    request.setHeader(b"Content-Type", TEXT_CONTENT_TYPE)
    return b"405 method not allowed"


def bad_request(request: IRequest, failure: Failure) -> bytes:
    return write_json_error(request, 400, str(failure.value))


def unexpected(request: IRequest, failure: Failure) -> bytes:
    if failure.check(HTTPException):
        # Werkzeug's own answers, e.g. the redirect for a trailing slash.
        exception = failure.value
        assert isinstance(exception, HTTPException)
        response = exception.get_response({})
        request.setResponseCode(exception.code or 500)
        for name, value in response.headers:
            request.setHeader(name.encode(), value.encode())
        return b"".join(response.iter_encoded())
    log.failure("Unexpected error answering {path}", failure, path=request.path)
    return write_json_error(request, 500, "foreman: internal error (see foreman's log)")


#: An app's own answer to a failure that is not a routing one (its dialect's 500).
Fallback = Callable[[Any, IRequest, Failure], bytes]


def answer_routing_errors(app: Klein, fallback: Fallback | None = None) -> None:
    """Give ``app`` the handlers every foreman app shares, in Klein's order.

    Call it in the class body after the app's own handlers: the catch-all
    for ``Exception`` must come last. ``fallback(self, request, failure)``
    answers what no handler took, in the app's own words; routing's own
    refusals (an unknown path, a wrong method) are answered here either way.
    """

    @app.handle_errors(NotFound)
    def not_found(self: object, request: IRequest, failure: Failure) -> bytes:
        return page_not_found(request)

    @app.handle_errors(MethodNotAllowed)
    def wrong_method(self: object, request: IRequest, failure: Failure) -> bytes:
        return method_not_allowed(request)

    @app.handle_errors(BodyTooLarge)
    def too_large(self: object, request: IRequest, failure: Failure) -> bytes:
        return write_json_error(request, 413, str(failure.value))

    @app.handle_errors(BadRequest)
    def unreadable(self: object, request: IRequest, failure: Failure) -> bytes:
        return bad_request(request, failure)

    @app.handle_errors(Exception)
    def anything_else(self: object, request: IRequest, failure: Failure) -> bytes:
        if fallback is not None and not failure.check(HTTPException):
            return fallback(self, request, failure)
        return unexpected(request, failure)

"""What foreman's OpenAI-shaped apps share (``/v1/files``, ``/v1/batches``, ADR-0029):
OpenAI's error objects, its list pages and their arguments, and what both apps work with.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from foreman.http import routing
from foreman.http.dialects import DIALECT_JSON
from foreman.http.routing import BadRequest, json_answer
from foreman.jobs.batches.progress import BatchProgress
from foreman.jobs.events import Outbox
from foreman.queue.store import JobStore
from foreman.queue.worker import Worker

log = Logger()


class ApiError(Exception):
    """An OpenAI error object to answer with."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        line: int | None = None,
        headers: dict[bytes, bytes] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.line = line
        self.headers = headers or {}


def error_answer(request: IRequest, failure: Failure) -> bytes:
    error = failure.value
    if isinstance(error, BadRequest):
        error = ApiError(400, str(error))
    assert isinstance(error, ApiError)
    kind = "invalid_request_error" if error.status < 500 else "server_error"
    value: dict[str, Any] = {
        "message": error.message,
        "type": kind,
        "param": error.param,
        "code": error.code,
    }
    if error.line is not None:
        value["line"] = error.line
    body = json.dumps({"error": value}, separators=(",", ":")).encode() + b"\n"
    request.setResponseCode(error.status)
    request.setHeader(b"Content-Type", DIALECT_JSON)
    for name, header in error.headers.items():
        request.setHeader(name, header)
    return body


def unexpected_answer(request: IRequest, failure: Failure, store: JobStore) -> bytes:
    """A fault, not a refusal: the store cannot answer now (503), else a 500; never a traceback."""
    if isinstance(failure.value, Exception) and store.engine.is_unavailable(failure.value):
        error = ApiError(
            503,
            f"foreman: the job store cannot be reached now ({failure.value}); try again",
            headers={b"Retry-After": b"5"},
        )
    else:
        log.failure("The batch API failed", failure)
        error = ApiError(500, "foreman: the request failed; see its log")
    return error_answer(request, Failure(error))


def page(request: IRequest, objects: list[dict[str, Any]], more: bool) -> bytes:
    return json_answer(
        request,
        {
            "object": "list",
            "data": objects,
            "first_id": objects[0]["id"] if objects else None,
            "last_id": objects[-1]["id"] if objects else None,
            "has_more": more,
        },
    )


def argument(request: IRequest, name: str) -> str | None:
    values = request.args.get(name.encode())
    return None if not values else bytes(values[-1]).decode("utf-8", "replace") or None


def page_limit(request: IRequest, default: int, most: int) -> int:
    text = argument(request, "limit")
    if text is None:
        return default
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if not 1 <= limit <= most:
        raise ApiError(400, f"limit must be a whole number from 1 to {most}", param="limit")
    return limit


class Surface:
    """What both apps share: the store, the worker and the time."""

    def __init__(
        self,
        store: JobStore,
        worker: Worker,
        wall: Callable[[], float],
        *,
        knows_model: Callable[[str], Deferred[bool | None]],
        outbox: Outbox,
        progress: BatchProgress,
    ) -> None:
        self.store = store
        self.worker = worker
        self.wall = wall
        self.knows_model = knows_model
        self.outbox = outbox
        self.progress = progress


def answer_errors(app: Klein) -> None:
    """Give one of these apps its error answers, in OpenAI's shape: refusals
    as they are, a store that cannot answer now as ``503``, anything else as
    a ``500`` (logged); routing's own (an unknown path, a wrong method) as
    every foreman app answers them. The app's instance holds a ``Surface`` as ``_s``."""

    @app.handle_errors(ApiError, BadRequest)
    def refused(self: object, request: IRequest, failure: Failure) -> bytes:
        return error_answer(request, failure)

    def failed(self: Any, request: IRequest, failure: Failure) -> bytes:
        return unexpected_answer(request, failure, self._s.store)

    routing.answer_routing_errors(app, fallback=failed)


def no_file(file_id: str) -> ApiError:
    return ApiError(404, f"No such File object: {file_id}", param="id")

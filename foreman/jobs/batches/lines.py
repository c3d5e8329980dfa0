"""A batch's input file read line by line, and refused whole on the first bad line (ADR-0029).

Each line is OpenAI's request object: ``{"custom_id", "method": "POST", "url",
"body"}``. Its body is checked as a ``/jobs`` body for that endpoint is
(:func:`foreman.jobs.requests.parse_submission`): what Ollama would refuse is
refused before anything is stored, with the line's number, so that a batch
is either whole or not made at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import attrs

from foreman.http.routing import BadRequest
from foreman.jobs.requests import EXTENSION_FIELDS, Submission, parse_submission

#: The endpoints a batch may name, as OpenAI's ``endpoint`` field does.
BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings")
#: OpenAI's: at most 50,000 requests in one batch.
MAX_LINES = 50_000


@attrs.frozen
class LineError(Exception):
    """The input cannot make a batch: OpenAI's error fields."""

    message: str
    code: str
    param: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = "" if self.line is None else f" (line {self.line})"
        return self.message + where


@attrs.frozen
class Line:
    number: int
    custom_id: str
    submission: Submission


def read_lines(content: bytes, endpoint: str, max_lines: int = MAX_LINES) -> list[Line]:
    """Every request of the input file ``content`` for a batch on
    ``endpoint``; :class:`LineError` for the first that cannot be one."""
    read: list[Line] = []
    seen: set[str] = set()
    for number, raw in _numbered(content.splitlines()):
        if len(read) >= max_lines:
            raise LineError(
                f"The input file has more than {max_lines} requests.",
                "too_many_requests",
                line=number,
            )
        line = _line(number, raw, endpoint)
        if line.custom_id in seen:
            raise LineError(
                f"The custom_id {line.custom_id!r} is used by more than one request;"
                " each must be unique.",
                "duplicate_custom_id",
                "custom_id",
                number,
            )
        seen.add(line.custom_id)
        read.append(line)
    if not read:
        raise LineError("The input file has no requests.", "empty_file")
    return read


def _numbered(raw_lines: Iterable[bytes]) -> Iterable[tuple[int, bytes]]:
    for number, raw in enumerate(raw_lines, start=1):
        if raw.strip():
            yield number, raw


def _line(number: int, raw: bytes, endpoint: str) -> Line:
    try:
        request: Any = json.loads(raw)
    except ValueError:
        raise LineError("This line is not valid JSON.", "invalid_json_line", line=number) from None
    if not isinstance(request, dict):
        raise LineError("Each line must be a JSON object.", "invalid_json_line", line=number)
    custom_id = request.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise LineError(
            "Each request needs a custom_id (a non-empty string).",
            "missing_required_parameter",
            "custom_id",
            number,
        )
    method = request.get("method", "POST")
    if method != "POST":
        raise LineError("method must be POST.", "invalid_method", "method", number)
    url = request.get("url")
    if url != endpoint:
        raise LineError(
            f"The url {url!r} is not the batch's endpoint {endpoint!r}: a batch's"
            " requests all go to its endpoint.",
            "mismatched_endpoint",
            "url",
            number,
        )
    body = request.get("body")
    if not isinstance(body, dict):
        raise LineError(
            "Each request needs a body (a JSON object).",
            "missing_required_parameter",
            "body",
            number,
        )
    # foreman's /jobs fields are not a line's to set: the batch sets them.
    document = {key: value for key, value in body.items() if key not in EXTENSION_FIELDS}
    document["endpoint"] = endpoint
    try:
        submission = parse_submission(document)
    except BadRequest as e:
        raise LineError(str(e), "invalid_request", "body", number) from None
    return Line(number, custom_id, submission)

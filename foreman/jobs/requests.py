"""Reading a ``POST /jobs`` body: a generation body plus foreman's extensions.

The extension fields (``state_webhook_url``, ``endpoint``, ``metadata``,
``priority``) are foreman's and never reach Ollama. The rest is the body of the job's
call, made non-streamed: a job has no caller to stream to, and its result
is the whole reply (ADR-0004). ``endpoint`` names the call: ``chat`` (the
default) or ``generate``, or any JSON generation endpoint by its path, in
any dialect (``/v1/chat/completions``, ``/v1/messages`` ...). Refusals use
Ollama's words where Ollama has words for them.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import attrs

from foreman.http.routing import BadRequest
from foreman.queue.job import Job
from foreman.wire.endpoints import BY_PATH, ENDPOINTS
from foreman.wire.priority import Priority, UnknownPriority, parse_priority

EXTENSION_FIELDS = frozenset({"state_webhook_url", "endpoint", "metadata", "priority"})

#: Go's names for JSON kinds, as its decoder's errors print them.
_KINDS: dict[type, str] = {bool: "bool", str: "string", dict: "object", list: "array"}

#: Longest ``Idempotency-Key`` kept: it is an index key, not a payload.
MAX_IDEMPOTENCY_KEY = 255


@attrs.frozen
class Submission:
    #: The endpoint's name, as a job stores it.
    endpoint: str
    model: str
    #: The body for Ollama: extensions removed, ``stream`` false.
    body: bytes
    webhook_url: str | None
    metadata: bytes | None
    #: ``batch`` unless the caller asked for ``interactive`` (ADR-0021).
    priority: Priority = Priority.BATCH

    def job(self, job_id: str, now: float, idempotency_key: str | None) -> Job:
        return Job(
            id=job_id,
            model=self.model,
            endpoint=self.endpoint,
            body=self.body,
            sync=False,
            created_at=now,
            updated_at=now,
            webhook_url=self.webhook_url,
            metadata=self.metadata,
            idempotency_key=idempotency_key,
            priority=self.priority,
        )

    def same_request(self, job: Job) -> bool:
        """Whether ``job`` was made from a submission equal to this one."""
        return (
            job.endpoint,
            job.model,
            job.body,
            job.webhook_url,
            job.metadata,
            job.priority,
        ) == (
            self.endpoint,
            self.model,
            self.body,
            self.webhook_url,
            self.metadata,
            self.priority,
        )


#: The dialects' endpoints ``endpoint`` may name, for the refusal's message.
_ENDPOINT_PATHS = ", ".join(
    f'"{name}"' for name, route in ENDPOINTS.items() if route.json_body and name.startswith("/")
)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return _KINDS.get(type(value), "number")


def _compact(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def parse_submission(document: Any) -> Submission:
    """The submission in a decoded ``POST /jobs`` body; :class:`BadRequest` if none."""
    if document is None:
        document = {}  # Go decodes ``null`` into an empty request
    if not isinstance(document, dict):
        raise BadRequest(
            f"json: cannot unmarshal {_kind(document)} into Go value of type api.ChatRequest"
        )
    named = document.get("endpoint", "chat")
    if named is None:
        named = "chat"
    route = (ENDPOINTS.get(named) or BY_PATH.get(named)) if isinstance(named, str) else None
    if route is None or not route.json_body:
        raise BadRequest(f'endpoint must be "chat" or "generate" (or one of {_ENDPOINT_PATHS})')
    endpoint = route.name
    struct = "GenerateRequest" if endpoint == "generate" else "ChatRequest"
    model = document.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest(
            f"json: cannot unmarshal {_kind(model)} into Go struct field "
            f"{struct}.model of type string"
        )
    if not model:
        raise BadRequest("model is required")
    webhook_url = document.get("state_webhook_url")
    if webhook_url is not None and not _is_http_url(webhook_url):
        raise BadRequest("state_webhook_url must be an absolute http:// or https:// URL")
    metadata = document.get("metadata")
    try:
        priority = parse_priority(document.get("priority"), Priority.BATCH)
    except UnknownPriority as e:
        raise BadRequest(str(e)) from None
    # Go matches field names without regard to case: any spelling of
    # ``stream`` would reach Ollama's decoder, so all of them go.
    call = {
        key: value
        for key, value in document.items()
        if key not in EXTENSION_FIELDS and key.lower() != "stream"
    }
    call["stream"] = False
    return Submission(
        endpoint=endpoint,
        model=model,
        body=_compact(call),
        webhook_url=webhook_url,
        metadata=None if metadata is None else _compact(metadata),
        priority=priority,
    )


def _is_http_url(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
        port = parts.port  # a malformed port raises here
    except ValueError:
        return False
    del port
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def idempotency_key(header: bytes | None) -> str | None:
    """The ``Idempotency-Key`` header's value; :class:`BadRequest` if unusable."""
    if header is None:
        return None
    key = header.decode("latin-1").strip()
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY or not (key.isascii() and key.isprintable()):
        raise BadRequest(
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters"
        )
    return key

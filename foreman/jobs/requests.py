"""Reading a ``POST /jobs`` body: a generation body plus foreman's extensions.

The extension fields (``state_webhook_url``, ``endpoint``, ``metadata``,
``priority``) are foreman's and never reach Ollama. The rest is the body of the job's
call, made non-streamed: a job has no caller to stream to, and its result
is the whole reply (ADR-0004). ``endpoint`` names the call: ``chat`` (the
default) or ``generate``, or any JSON generation endpoint by its path, in
any dialect (``/v1/chat/completions``, ``/v1/messages`` ...). Refusals use
Ollama's words where Ollama has words for them.

What Ollama would refuse is refused here, before a job exists: for the
native endpoints, every field Ollama types strictly (``model``, ``stream``,
``options`` and the options in it, ``messages``, ``keep_alive``, ``format``)
is bound as Ollama binds it (:mod:`foreman.wire.native_requests`); for the
other dialects, whose bodies Ollama translates, ``model`` and ``stream``.
Everything else is Ollama's to judge when the job runs.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import attrs

from foreman.http.routing import BadRequest
from foreman.queue.job import Job
from foreman.wire.endpoints import BY_PATH, ENDPOINTS, Dialect, Endpoint
from foreman.wire.gotypes import BOOL, STRING, RequestError, Struct, decode_document, go_struct
from foreman.wire.native_requests import CHAT, GENERATE, check_options, format_error
from foreman.wire.priority import Priority, UnknownPriority, parse_priority

EXTENSION_FIELDS = frozenset({"state_webhook_url", "endpoint", "metadata", "priority"})

#: Go's names for JSON kinds, as its decoder's errors print them.
_KINDS: dict[type, str] = {bool: "bool", str: "string", dict: "object", list: "array"}

#: The fields of a native call checked at submit: those Ollama types strictly.
CHECKED_FIELDS = ("model", "stream", "options", "messages", "keep_alive", "format")

#: What each endpoint's body is bound to (the Go package, the struct): a
#: native call's checked fields; the translated dialects' model and stream.
_CHECKED: dict[str, tuple[str, Struct]] = {
    "chat": ("api", CHAT.only(*CHECKED_FIELDS)),
    "generate": ("api", GENERATE.only(*(f for f in CHECKED_FIELDS if f != "messages"))),
    "/v1/chat/completions": (
        "openai",
        go_struct("ChatCompletionRequest", model=STRING, stream=BOOL),
    ),
    "/v1/completions": ("openai", go_struct("CompletionRequest", model=STRING, stream=BOOL)),
    "/v1/responses": ("openai", go_struct("ResponsesRequest", model=STRING, stream=BOOL)),
    "/v1/messages": ("anthropic", go_struct("MessagesRequest", model=STRING, stream=BOOL)),
    "/v1/embeddings": ("openai", go_struct("EmbedRequest", model=STRING)),
}

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
    model = _checked(route, document).get("model")
    if not model:
        raise BadRequest("model is required")
    webhook_url = document.get("state_webhook_url")
    if webhook_url is not None and not is_http_url(webhook_url):
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


def _checked(route: Endpoint, document: dict[str, Any]) -> dict[str, Any]:
    """The call's checked fields, bound as Ollama binds them; :class:`BadRequest` if refused.

    Ollama refuses a mistyped known option, and a ``format`` that is neither
    ``"json"`` nor a schema, only once the model runs, with a 500; a job is
    refused them at once, with a 400 and the same words.
    """
    package, struct = _CHECKED[route.name]
    try:
        fields = decode_document(document, struct, package=package)
        if route.dialect is Dialect.OLLAMA:
            check_options(fields.get("options"))
            if (problem := format_error(fields.get("format"))) is not None:
                raise BadRequest(problem)
    except RequestError as e:
        raise BadRequest(e.message) from None
    return fields


def is_http_url(value: object) -> bool:
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

"""Decoding request bodies into Ollama's request structs, with Go's errors.

The Go-struct binding itself (:mod:`foreman.wire.gotypes`) and the native
generation requests (:mod:`foreman.wire.native_requests`) are shared with
foreman's ``/jobs``; this module adds the other native requests and
:func:`decode`, which reads a body as gin's ``ShouldBindJSON`` does.
"""

from __future__ import annotations

import json
from typing import Any

from foreman.wire.gojson import GoJSONError, TooDeep, loads
from foreman.wire.goscan import GO_MAX_DEPTH
from foreman.wire.gotypes import (
    ANY,
    BOOL,
    FLOAT,
    INT,
    KEEP_ALIVE,
    MAP,
    STRING,
    STRING_MAP,
    GoType,
    RequestError,
    SliceOf,
    Struct,
    decode_document,
    go_struct,
    not_a_struct,
)
from foreman.wire.native_requests import (
    CHAT,
    GENERATE,
    MESSAGE,
    TOOL,
    TOOL_CALL,
    check_options,
)

__all__ = [
    "ANY",
    "BOOL",
    "CHAT",
    "COPY",
    "CREATE",
    "DELETE",
    "EMBED",
    "EMBEDDINGS",
    "FLOAT",
    "GENERATE",
    "INT",
    "MAP",
    "MESSAGE",
    "PULL",
    "PUSH",
    "SHOW",
    "STRING",
    "TOOL",
    "TOOL_CALL",
    "GoType",
    "RequestError",
    "SliceOf",
    "Struct",
    "check_options",
    "decode",
    "go_struct",
    "loads_text",
]

EMBED = go_struct(
    "EmbedRequest",
    model=STRING,
    input=ANY,
    keep_alive=KEEP_ALIVE,
    truncate=BOOL,
    dimensions=INT,
    options=MAP,
)
EMBEDDINGS = go_struct(
    "EmbeddingRequest", model=STRING, prompt=STRING, keep_alive=KEEP_ALIVE, options=MAP
)
SHOW = go_struct(
    "ShowRequest",
    model=STRING,
    system=STRING,
    template=STRING,
    verbose=BOOL,
    options=MAP,
    name=STRING,
)
PULL = go_struct(
    "PullRequest",
    model=STRING,
    insecure=BOOL,
    username=STRING,
    password=STRING,
    stream=BOOL,
    name=STRING,
)
PUSH = go_struct(
    "PushRequest",
    model=STRING,
    insecure=BOOL,
    username=STRING,
    password=STRING,
    stream=BOOL,
    name=STRING,
)
CREATE = go_struct(
    "CreateRequest",
    model=STRING,
    stream=BOOL,
    quantize=STRING,
    from_=STRING,
    files=STRING_MAP,
    adapters=STRING_MAP,
    template=STRING,
    license=ANY,
    system=STRING,
    parameters=MAP,
    messages=SliceOf("[]api.Message", lambda v: True, element=MESSAGE),
    info=MAP,
    name=STRING,
)
DELETE = go_struct("DeleteRequest", model=STRING, name=STRING)
COPY = go_struct("CopyRequest", source=STRING, destination=STRING)


def too_deep(error: TooDeep) -> str:
    """The simulator's refusal of JSON Go reads but it cannot (a divergence from Ollama)."""
    return f"simulated Ollama: {error} (Ollama reads up to {GO_MAX_DEPTH})"


def loads_text(text: str) -> Any:
    """JSON held in a string field (tool-call arguments), as ``json.Unmarshal`` reads it.

    :class:`ValueError` if it is not JSON; :class:`RequestError` (400) if it
    nests deeper than the simulator reads, never a ``RecursionError``.
    """
    try:
        return json.loads(text)
    except RecursionError:
        try:
            return loads(text.encode("utf-8"))  # Go's own error, or TooDeep
        except TooDeep as e:
            if e.kind == "array":
                # Arguments must be an object: Go refuses any array the same way,
                # whatever is in it, and so do the callers, given one.
                return []
            raise RequestError(400, too_deep(e)) from None


def decode(
    body: bytes,
    struct: Struct,
    *,
    package: str = "api",
    empty_body: str = "missing request body",
) -> dict[str, Any]:
    """Bind ``body`` to ``struct`` as gin's ``ShouldBindJSON`` would.

    Raises :class:`RequestError` (400) with Ollama's message on failure.
    ``package`` names the Go package of ``struct`` in messages; an empty
    body is ``empty_body`` (the native handlers' wording; the ``/v1``
    middlewares pass on Go's bare ``EOF``).
    """
    try:
        value = loads(body)
    except TooDeep as e:
        # Go reads it (it nests no deeper than Go's limit, or Go's own error
        # would be raised instead); the simulator cannot. What Go says of
        # an outer array does not depend on what is inside it.
        if e.kind != "object":
            raise RequestError(400, not_a_struct(e.kind, struct, package)) from None
        raise RequestError(400, too_deep(e)) from None
    except GoJSONError as e:
        if str(e) == "EOF":
            raise RequestError(400, empty_body) from None
        raise RequestError(400, str(e)) from None
    return decode_document(value, struct, package=package)

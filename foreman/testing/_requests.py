"""Decoding request bodies into Ollama's request structs, with Go's errors.

Ollama binds each body to a Go struct with ``encoding/json``: field names
match case-insensitively, unknown fields are ignored, ``null`` leaves a
field unset, and a value of the wrong JSON type is refused with
``json: cannot unmarshal string into Go struct field ChatRequest.model of
type string``-style messages. :func:`decode` reproduces that for the
fields the simulator cares about and returns a plain dict keyed by the
canonical JSON field names.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from foreman.wire.durations import DurationError, parse_keep_alive
from foreman.wire.gojson import GoJSONError, format_float, loads


class RequestError(Exception):
    """A request Ollama refuses before doing any work."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --- Go types ---------------------------------------------------------------


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


class _CustomError(Exception):
    """An ``UnmarshalJSON`` error: Go returns it as is and stops decoding."""


class _TypeMismatch(Exception):
    def __init__(self, kind: str, path: list[str], go_type: str) -> None:
        super().__init__(kind)
        self.kind = kind
        self.path = path
        self.go_type = go_type


@attrs.frozen
class GoType:
    """A Go type: its name for error messages and how JSON values map onto it."""

    name: str
    accepts: Callable[[object], bool]
    convert: Callable[[object], object] = lambda value: value

    def decode(self, value: object, path: list[str], errors: list[_TypeMismatch | str]) -> object:
        if value is None:
            return None
        if not self.accepts(value):
            kind = _json_kind(value)
            if self.name == "int" and isinstance(value, float):
                kind = f"number {format_float(value)}"
            errors.append(_TypeMismatch(kind, path, self.name))
            return None
        return self.convert(value)


def _scalar(name: str, check: Callable[[object], bool]) -> GoType:
    return GoType(name, check)


STRING = _scalar("string", lambda v: isinstance(v, str))
BOOL = _scalar("bool", lambda v: isinstance(v, bool))
INT = _scalar("int", lambda v: isinstance(v, int) and not isinstance(v, bool))
ANY = _scalar("interface {}", lambda v: True)
MAP = _scalar("map[string]interface {}", lambda v: isinstance(v, dict))
FLOAT = _scalar("float64", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))
STRING_MAP = _scalar(
    "map[string]string",
    lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
)


@attrs.frozen
class SliceOf(GoType):
    element: GoType = STRING

    def decode(self, value: object, path: list[str], errors: list[_TypeMismatch | str]) -> object:
        if value is None:
            return None
        if not isinstance(value, list):
            errors.append(_TypeMismatch(_json_kind(value), path, self.name))
            return None
        return [self.element.decode(item, path, errors) for item in value]


@attrs.frozen
class Struct(GoType):
    fields: Mapping[str, GoType] = attrs.field(factory=dict)

    def decode(self, value: object, path: list[str], errors: list[_TypeMismatch | str]) -> object:
        if value is None:
            return None
        if not isinstance(value, dict):
            errors.append(_TypeMismatch(_json_kind(value), path, self.name))
            return None
        return decode_fields(self.fields, value, path, errors)


def decode_fields(
    fields: Mapping[str, GoType],
    obj: dict[str, Any],
    path: list[str],
    errors: list[_TypeMismatch | str],
) -> dict[str, Any]:
    folded = {name.casefold(): name for name in fields}
    result: dict[str, Any] = {}
    for key, value in obj.items():
        name = key if key in fields else folded.get(key.casefold())
        if name is None:
            continue  # Go ignores unknown fields
        if value is None:
            continue  # null leaves a Go field at its zero value
        result[name] = fields[name].decode(value, [*path, name], errors)
    return result


def _struct(go_name: str, /, **fields: GoType) -> Struct:
    # A trailing underscore lets a field be named like a Python keyword ("from_").
    renamed = {key.rstrip("_"): value for key, value in fields.items()}
    return Struct(go_name, lambda v: isinstance(v, dict), fields=renamed)


# --- custom unmarshalers -------------------------------------------------------

_GO_ANY_TYPES = {"bool": "bool", "list": "[]interface {}", "dict": "map[string]interface {}"}


def _keep_alive(value: object) -> float:
    """``api.Duration.UnmarshalJSON``: seconds, or ``inf`` for forever."""
    if isinstance(value, (bool, list, dict)):
        raise _CustomError(f"Unsupported type: '{_GO_ANY_TYPES[type(value).__name__]}'")
    try:
        return parse_keep_alive(value)
    except DurationError as e:
        raise _CustomError(str(e)) from None


def _think(value: object) -> bool | str:
    """``api.ThinkValue.UnmarshalJSON``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value not in ("high", "medium", "low", "max"):
            raise _CustomError(
                f'invalid think value: "{value}" (must be "high", "medium", "low", "max", '
                "true, or false)"
            )
        return value
    raise _CustomError(
        'think must be a boolean or string ("high", "medium", "low", "max", true, or false)'
    )


_BASE64 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


@attrs.frozen
class Base64Bytes(GoType):
    """``[]byte`` fields: a base64 string, whose decoding errors Go records like type errors."""

    def decode(self, value: object, path: list[str], errors: list[_TypeMismatch | str]) -> object:
        if value is None:
            return None
        if not isinstance(value, str):
            errors.append(_TypeMismatch(_json_kind(value), path, self.name))
            return None
        compact = value.replace("\r", "").replace("\n", "")
        try:
            base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError):
            position = next((i for i, c in enumerate(compact) if c not in _BASE64), len(compact))
            errors.append(f"illegal base64 data at input byte {position}")
            return None
        return value


@attrs.frozen
class Custom(GoType):
    """A type with its own ``UnmarshalJSON``: its errors are not type errors."""

    def decode(self, value: object, path: list[str], errors: list[_TypeMismatch | str]) -> object:
        if value is None:
            return None
        return self.convert(value)


KEEP_ALIVE = Custom("api.Duration", lambda v: True, _keep_alive)
THINK = Custom("api.ThinkValue", lambda v: True, _think)
IMAGE = Base64Bytes("api.ImageData", lambda v: isinstance(v, str))


# --- the request structs --------------------------------------------------------

TOOL_CALL = _struct(
    "api.ToolCall",
    id=STRING,
    function=_struct("api.ToolCallFunction", index=INT, name=STRING, arguments=MAP),
)
MESSAGE = _struct(
    "api.Message",
    role=STRING,
    content=STRING,
    thinking=STRING,
    images=SliceOf("[]api.ImageData", lambda v: True, element=IMAGE),
    tool_calls=SliceOf("[]api.ToolCall", lambda v: True, element=TOOL_CALL),
    tool_name=STRING,
    tool_call_id=STRING,
)
TOOL = _struct(
    "api.Tool",
    type=STRING,
    items=ANY,
    function=_struct(
        "api.ToolFunction",
        name=STRING,
        description=STRING,
        parameters=_struct(
            "api.ToolFunctionParameters",
            type=STRING,
            items=ANY,
            required=SliceOf("[]string", lambda v: True, element=STRING),
            properties=ANY,
        ),
    ),
)
_GENERATION_COMMON: dict[str, GoType] = {
    "model": STRING,
    "stream": BOOL,
    "format": ANY,
    "keep_alive": KEEP_ALIVE,
    "options": MAP,
    "think": THINK,
    "truncate": BOOL,
    "shift": BOOL,
    "_debug_render_only": BOOL,
    "logprobs": BOOL,
    "top_logprobs": INT,
}
CHAT = _struct(
    "ChatRequest",
    messages=SliceOf("[]api.Message", lambda v: True, element=MESSAGE),
    tools=SliceOf("api.Tools", lambda v: True, element=TOOL),
    **_GENERATION_COMMON,
)
GENERATE = _struct(
    "GenerateRequest",
    prompt=STRING,
    suffix=STRING,
    system=STRING,
    template=STRING,
    context=SliceOf("[]int", lambda v: True, element=INT),
    raw=BOOL,
    images=SliceOf("[]api.ImageData", lambda v: True, element=IMAGE),
    **_GENERATION_COMMON,
)
EMBED = _struct(
    "EmbedRequest",
    model=STRING,
    input=ANY,
    keep_alive=KEEP_ALIVE,
    truncate=BOOL,
    dimensions=INT,
    options=MAP,
)
EMBEDDINGS = _struct(
    "EmbeddingRequest", model=STRING, prompt=STRING, keep_alive=KEEP_ALIVE, options=MAP
)
SHOW = _struct(
    "ShowRequest",
    model=STRING,
    system=STRING,
    template=STRING,
    verbose=BOOL,
    options=MAP,
    name=STRING,
)
PULL = _struct(
    "PullRequest",
    model=STRING,
    insecure=BOOL,
    username=STRING,
    password=STRING,
    stream=BOOL,
    name=STRING,
)
PUSH = _struct(
    "PushRequest",
    model=STRING,
    insecure=BOOL,
    username=STRING,
    password=STRING,
    stream=BOOL,
    name=STRING,
)
CREATE = _struct(
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
DELETE = _struct("DeleteRequest", model=STRING, name=STRING)
COPY = _struct("CopyRequest", source=STRING, destination=STRING)


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
    except GoJSONError as e:
        if str(e) == "EOF":
            raise RequestError(400, empty_body) from None
        raise RequestError(400, str(e)) from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        target = f"{package}.{struct.name}"
        kind = _json_kind(value)
        raise RequestError(400, f"json: cannot unmarshal {kind} into Go value of type {target}")
    errors: list[_TypeMismatch | str] = []
    try:
        result = decode_fields(struct.fields, value, [], errors)
    except _CustomError as e:
        raise RequestError(400, str(e)) from None
    if errors:
        first = errors[0]
        if isinstance(first, str):
            raise RequestError(400, first)
        raise RequestError(
            400,
            f"json: cannot unmarshal {first.kind} into Go struct field "
            f"{struct.name}.{'.'.join(first.path)} of type {first.go_type}",
        )
    return result


# --- options -----------------------------------------------------------------------

_INT_OPTIONS = {
    "num_keep",
    "seed",
    "num_predict",
    "top_k",
    "repeat_last_n",
    "num_ctx",
    "num_batch",
    "num_gpu",
    "main_gpu",
    "num_thread",
    "draft_num_predict",
}
_FLOAT_OPTIONS = {
    "top_p",
    "min_p",
    "typical_p",
    "temperature",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
}
_BOOL_OPTIONS = {"use_mmap"}


def check_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``api.Options.FromMap``: Ollama refuses mistyped known options with a 500."""
    checked: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if value is None:
            continue
        if key in _INT_OPTIONS:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RequestError(500, f'option "{key}" must be of type integer')
            checked[key] = int(value) if math.isfinite(value) else 0
        elif key in _FLOAT_OPTIONS:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RequestError(500, f'option "{key}" must be of type float32')
            checked[key] = float(value)
        elif key in _BOOL_OPTIONS:
            if not isinstance(value, bool):
                raise RequestError(500, f'option "{key}" must be of type boolean')
            checked[key] = value
        elif key == "stop":
            if not isinstance(value, list):
                raise RequestError(500, f'option "{key}" must be of type array')
            if not all(isinstance(s, str) for s in value):
                raise RequestError(500, f'option "{key}" must be of an array of strings')
            checked[key] = value
    return checked

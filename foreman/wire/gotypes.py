"""Binding JSON to Go structs as Ollama's ``encoding/json`` does, with Go's errors.

Ollama binds each request body to a Go struct: field names match
case-insensitively, unknown fields are ignored, ``null`` leaves a field
unset, and a value of the wrong JSON type is refused with ``json: cannot
unmarshal string into Go struct field ChatRequest.model of type
string``-style messages. A :class:`Struct` describes the fields that matter
and :func:`decode_document` binds a decoded JSON value to it, returning a
plain dict keyed by the canonical field names. The simulated Ollama binds
every body with it; ``/jobs`` checks a submission's fields with it before
accepting the job.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from foreman.wire.durations import DurationError, parse_keep_alive
from foreman.wire.gojson import format_float


class RequestError(Exception):
    """A request Ollama refuses before doing any work."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --- Go types ---------------------------------------------------------------


def json_kind(value: object) -> str:
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
            kind = json_kind(value)
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
            errors.append(_TypeMismatch(json_kind(value), path, self.name))
            return None
        return [self.element.decode(item, path, errors) for item in value]


@attrs.frozen
class Struct(GoType):
    fields: Mapping[str, GoType] = attrs.field(factory=dict)

    def decode(self, value: object, path: list[str], errors: list[_TypeMismatch | str]) -> object:
        if value is None:
            return None
        if not isinstance(value, dict):
            errors.append(_TypeMismatch(json_kind(value), path, self.name))
            return None
        return decode_fields(self.fields, value, path, errors)

    def only(self, *names: str) -> Struct:
        """This struct with only ``names`` bound: the others ignored, as unknown fields are."""
        return attrs.evolve(self, fields={name: self.fields[name] for name in names})


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


def go_struct(go_name: str, /, **fields: GoType) -> Struct:
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
            errors.append(_TypeMismatch(json_kind(value), path, self.name))
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


def decode_document(value: object, struct: Struct, *, package: str = "api") -> dict[str, Any]:
    """Bind a decoded JSON ``value`` to ``struct`` as Go's ``Decode`` would.

    Raises :class:`RequestError` (400) with Go's message on failure: for a
    value that is not an object, for a custom unmarshaler's error (Go stops
    there), or for the first value of a wrong type (Go carries on, then
    reports the first). ``package`` names the Go package of ``struct``.
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(400, not_a_struct(json_kind(value), struct, package))
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


def not_a_struct(kind: str, struct: Struct, package: str = "api") -> str:
    """Go's error for a JSON ``kind`` (``array``, ``string`` ...) where ``struct`` was wanted."""
    return f"json: cannot unmarshal {kind} into Go value of type {package}.{struct.name}"

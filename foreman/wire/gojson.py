"""Go's ``encoding/json`` and ``time.Time`` as they look on Ollama's wire.

Clients and proxies see Ollama through the bytes Go writes and the error
strings Go's decoder produces, so the simulator reproduces those: compact
output with ``<``, ``>`` and ``&`` escaped, floats in Go's notation,
RFC 3339 times with trimmed nanoseconds, and decoder errors such as
``invalid character 'x' looking for beginning of value``.
"""

from __future__ import annotations

import datetime
import json
import math
import struct
from collections.abc import Iterable
from typing import Any

from foreman.wire.goscan import first_value_error

#: Go's largest ``time.Duration``, in nanoseconds; Ollama's "forever".
MAX_DURATION_NS = 2**63 - 1

_HTML_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


class GoJSONError(ValueError):
    """A body Go's decoder refuses; ``str()`` is Go's message."""


class EmptyBody(GoJSONError):
    """The body held no JSON value at all (Go's ``io.EOF``)."""


def dumps(value: object) -> str:
    """Serialise like Go's ``json.Marshal`` (compact, HTML-safe)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    if any(c in text for c in _HTML_ESCAPES):
        for raw, escaped in _HTML_ESCAPES.items():
            text = text.replace(raw, escaped)
    return text


def dumps_line(value: object) -> bytes:
    """One NDJSON line as Ollama streams it."""
    return (dumps(value) + "\n").encode("utf-8")


def format_float(value: float, bits: int = 64) -> str:
    """Format a float the way Go's JSON encoder does for float32/float64."""
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign, digits, exponent = _split_digits(_shortest_repr(value, bits))
    if abs(value) < 1e-6 or abs(value) >= 1e21:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        # Go pads the exponent to two digits, then strips the pad from
        # negative ones ("e-07" becomes "e-7").
        suffix = f"e-{-exponent}" if exponent < 0 else f"e+{exponent:02d}"
        return sign + mantissa + suffix
    point = exponent + 1
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return f"{sign}{digits}{'0' * (point - len(digits))}"
    return f"{sign}{digits[:point]}.{digits[point:]}"


def _shortest_repr(value: float, bits: int) -> str:
    if bits == 64:
        return repr(value)
    target = struct.unpack("<f", struct.pack("<f", value))[0]
    for precision in range(1, 10):
        candidate = f"{target:.{precision}g}"
        if struct.unpack("<f", struct.pack("<f", float(candidate)))[0] == target:
            return candidate
    return repr(target)


def _split_digits(text: str) -> tuple[str, str, int]:
    """Return (sign, significant digits, decimal exponent of the first digit)."""
    sign = "-" if text.startswith("-") else ""
    text = text.lstrip("-")
    mantissa, _, exponent = text.partition("e")
    exp = int(exponent) if exponent else 0
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    leading_zeros = len(whole + fraction) - len((whole + fraction).lstrip("0"))
    point = len(whole) + exp - leading_zeros
    return sign, digits.rstrip("0") or "0", point - 1


def float_array(values: Iterable[float], bits: int = 64) -> str:
    """A JSON array of floats in Go's notation."""
    return "[" + ",".join(format_float(v, bits) for v in values) + "]"


def to_ns(seconds: float) -> int:
    """Unix seconds as integer nanoseconds."""
    whole = math.floor(seconds)
    # Split first: at today's magnitudes seconds * 1e9 loses the nanoseconds.
    return whole * 1_000_000_000 + round((seconds - whole) * 1e9)


def rfc3339(seconds: float) -> str:
    """Format a Unix time like Go's ``time.Time`` JSON (RFC 3339, trimmed nanos, UTC)."""
    return rfc3339_ns(to_ns(seconds))


def rfc3339_ns(nanoseconds: int) -> str:
    whole, nanos = divmod(nanoseconds, 1_000_000_000)
    moment = datetime.datetime.fromtimestamp(whole, datetime.UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if nanos:
        text += "." + f"{nanos:09d}".rstrip("0")
    return text + "Z"


def duration_ns(seconds: float) -> int:
    """Seconds as a Go ``time.Duration`` (saturating at Go's maximum)."""
    if math.isinf(seconds) or seconds * 1e9 >= MAX_DURATION_NS:
        return MAX_DURATION_NS
    return round(seconds * 1e9)


# --- decoding -------------------------------------------------------------

_WHITESPACE = b" \t\r\n"

#: The deepest nesting read: Python's decoder recurses once per level, and
#: this leaves room on its stack for the reader's own callers and for
#: whatever walks the value after it (Go reads 10000 levels: ``goscan.GO_MAX_DEPTH``).
MAX_READ_DEPTH = 512


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


class TooDeep(GoJSONError):
    """Well-formed JSON that Go would read, nested deeper than ``MAX_READ_DEPTH``.

    Not one of Go's errors: ``str()`` says what the limit is. ``kind`` is
    the JSON kind of the outermost value (``object`` or ``array``), for a
    reader that can still answer as Go would from that alone.
    """

    def __init__(self, limit: int, kind: str) -> None:
        super().__init__(f"JSON nested deeper than {limit} levels")
        self.limit = limit
        self.kind = kind


def loads(body: bytes, *, max_depth: int = MAX_READ_DEPTH) -> Any:
    """Decode the first JSON value of ``body`` as Go's ``json.Decoder`` does.

    Like Go, trailing bytes after the first value are ignored, an empty body
    is :class:`EmptyBody`, and syntax errors carry Go's wording, including
    Go's own refusal of nesting past ``goscan.GO_MAX_DEPTH``. A value Go would
    read but nested deeper than ``max_depth`` is :class:`TooDeep`: never a
    ``RecursionError``, at any depth.
    """
    start = 0
    while start < len(body) and body[start] in _WHITESPACE:
        start += 1
    if start == len(body):
        raise EmptyBody("EOF")
    text = body[start:].decode("utf-8", errors="replace")
    try:
        value, _ = _DECODER.raw_decode(text)
    except ValueError:
        raise GoJSONError(_syntax_error(body[start:])) from None
    except RecursionError:
        value = _TOO_DEEP
    if value is _TOO_DEEP or (
        # Fewer open brackets than the limit cannot nest past it: no walk.
        body.count(b"[") + body.count(b"{") > max_depth and _deeper_than(value, max_depth)
    ):
        if (error := first_value_error(body[start:])) is not None:
            raise GoJSONError(error)  # Go refuses it too, in these words
        raise TooDeep(max_depth, "object" if body[start] == ord("{") else "array")
    return value


_TOO_DEEP = object()


def _deeper_than(value: object, limit: int) -> bool:
    """Whether ``value`` nests more than ``limit`` arrays and objects (no recursion)."""
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:
        node, depth = pending.pop()
        if not isinstance(node, (dict, list)):
            continue
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        pending.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _syntax_error(data: bytes) -> str:
    error = first_value_error(data)
    # Python refused something the scanner accepts (NaN never reaches here:
    # the scanner rejects it too); fall back to Go's generic wording.
    return error or "invalid character looking for beginning of value"

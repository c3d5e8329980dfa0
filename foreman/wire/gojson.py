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


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def loads(body: bytes) -> Any:
    """Decode the first JSON value of ``body`` as Go's ``json.Decoder`` does.

    Like Go, trailing bytes after the first value are ignored, an empty body
    is :class:`EmptyBody`, and syntax errors carry Go's wording.
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
    return value


def _quote_char(byte: int) -> str:
    if byte == ord("'"):
        return "'\\''"
    if byte == ord('"'):
        return "'\"'"
    char = chr(byte)
    named = {
        "\a": "\\a",
        "\b": "\\b",
        "\f": "\\f",
        "\n": "\\n",
        "\r": "\\r",
        "\t": "\\t",
        "\v": "\\v",
        "\\": "\\\\",
    }
    if char in named:
        return f"'{named[char]}'"
    if byte < 0x20 or byte == 0x7F:
        return f"'\\x{byte:02x}'"
    if 0x80 <= byte < 0xA0:
        return f"'\\u{byte:04x}'"
    if byte == 0xAD:
        return "'\\u00ad'"
    return f"'{char}'"


class _Scanner:
    """Enough of Go's JSON scanner to name the first syntax error."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def error(self, context: str) -> str:
        if self.pos >= len(self.data):
            return "unexpected EOF"
        return f"invalid character {_quote_char(self.data[self.pos])} {context}"

    def skip_space(self) -> None:
        while self.pos < len(self.data) and self.data[self.pos] in _WHITESPACE:
            self.pos += 1

    def peek(self) -> int | None:
        return self.data[self.pos] if self.pos < len(self.data) else None

    def value(self) -> str | None:
        self.skip_space()
        c = self.peek()
        if c is None:
            return "unexpected EOF"
        if c == ord("{"):
            return self.obj()
        if c == ord("["):
            return self.array()
        if c == ord('"'):
            return self.string()
        if c == ord("-") or ord("0") <= c <= ord("9"):
            return self.number()
        for word in (b"true", b"false", b"null"):
            if c == word[0]:
                return self.literal(word)
        return self.error("looking for beginning of value")

    def literal(self, word: bytes) -> str | None:
        for expected in word:
            c = self.peek()
            if c is None:
                return "unexpected EOF"
            if c != expected:
                return self.error(f"in literal {word.decode()} (expecting {_quote_char(expected)})")
            self.pos += 1
        return None

    def number(self) -> str | None:
        if self.peek() == ord("-"):
            self.pos += 1
            c = self.peek()
            if c is None:
                return "unexpected EOF"
            if not ord("0") <= c <= ord("9"):
                return self.error("in numeric literal")
        if self.peek() == ord("0"):
            self.pos += 1
        else:
            self.digits()
        if self.peek() == ord("."):
            self.pos += 1
            c = self.peek()
            if c is None:
                return "unexpected EOF"
            if not ord("0") <= c <= ord("9"):
                return self.error("after decimal point in numeric literal")
            self.digits()
        if self.peek() in (ord("e"), ord("E")):
            self.pos += 1
            if self.peek() in (ord("+"), ord("-")):
                self.pos += 1
            c = self.peek()
            if c is None:
                return "unexpected EOF"
            if not ord("0") <= c <= ord("9"):
                return self.error("in exponent of numeric literal")
            self.digits()
        return None

    def digits(self) -> None:
        while (c := self.peek()) is not None and ord("0") <= c <= ord("9"):
            self.pos += 1

    def string(self) -> str | None:
        self.pos += 1  # opening quote
        while True:
            c = self.peek()
            if c is None:
                return "unexpected EOF"
            if c == ord('"'):
                self.pos += 1
                return None
            if c < 0x20:
                return self.error("in string literal")
            if c == ord("\\"):
                self.pos += 1
                e = self.peek()
                if e is None:
                    return "unexpected EOF"
                if e == ord("u"):
                    self.pos += 1
                    for _ in range(4):
                        h = self.peek()
                        if h is None:
                            return "unexpected EOF"
                        if chr(h) not in "0123456789abcdefABCDEF":
                            return self.error("in \\u hexadecimal character escape")
                        self.pos += 1
                    continue
                if chr(e) not in '"\\/bfnrt':
                    return self.error("in string escape code")
            self.pos += 1

    def obj(self) -> str | None:
        self.pos += 1
        self.skip_space()
        if self.peek() == ord("}"):
            self.pos += 1
            return None
        while True:
            self.skip_space()
            if self.peek() != ord('"'):
                return self.error("looking for beginning of object key string")
            if (err := self.string()) is not None:
                return err
            self.skip_space()
            if self.peek() != ord(":"):
                return self.error("after object key")
            self.pos += 1
            if (err := self.value()) is not None:
                return err
            self.skip_space()
            c = self.peek()
            if c == ord(","):
                self.pos += 1
                continue
            if c == ord("}"):
                self.pos += 1
                return None
            return self.error("after object key:value pair")

    def array(self) -> str | None:
        self.pos += 1
        self.skip_space()
        if self.peek() == ord("]"):
            self.pos += 1
            return None
        while True:
            if (err := self.value()) is not None:
                return err
            self.skip_space()
            c = self.peek()
            if c == ord(","):
                self.pos += 1
                continue
            if c == ord("]"):
                self.pos += 1
                return None
            return self.error("after array element")


def _syntax_error(data: bytes) -> str:
    error = _Scanner(data).value()
    # Python refused something the scanner accepts (NaN never reaches here:
    # the scanner rejects it too); fall back to Go's generic wording.
    return error or "invalid character looking for beginning of value"

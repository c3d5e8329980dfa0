"""Serving a foreign dialect through the native handlers, as Ollama's middlewares do.

Ollama answers ``/v1/...`` with its native handlers: a gin middleware
turns the dialect's request body into a native one, swaps the response
writer for one that re-encodes every native write, and calls the native
handler (``middleware/openai.go``, ``middleware/anthropic.go``). So loads,
keep-alive, queueing, cancellation and metrics are those of the native API.

:func:`run_native` does the same here: the native handler gets a
:class:`NativeExchange` in place of the request. The exchange forwards
everything to the real request except what the dialect changes: the
native ``Content-Type`` and ``Content-Length`` are dropped and each
``write`` goes through a :class:`DialectWriter`, which, like Go's
wrappers, decides by the status already set: not 200 is an error to
re-encode, 200 is one native object (a whole body, or one NDJSON line of
a stream) to translate.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from twisted.web.server import Request

from foreman.testing._http import JSON_UTF8
from foreman.testing._requests import Struct, decode
from foreman.wire.gojson import dumps

if TYPE_CHECKING:
    from foreman.testing._simulator import SimulatedOllama

#: What the dialect writers send (Go's ``Header().Set``), without gin's charset.
JSON = b"application/json"
EVENT_STREAM = b"text/event-stream"

NativeHandler = Callable[["SimulatedOllama", Request, bytes, str], "bytes | int"]
Chunk = dict[str, Any]


class DialectWriter:
    """Re-encodes what a native handler writes; one per request.

    Subclasses implement :meth:`error` and :meth:`response`; both set the
    real request's ``Content-Type`` and return the bytes to send.
    """

    def __init__(self, request: Request) -> None:
        self.request = request

    def encode(self, status: int, data: bytes) -> bytes:
        if status != 200:
            return self.error(status, native_error_message(data))
        out = b""
        # A native stream writes one NDJSON line per write, a whole body one
        # object; split anyway so nothing depends on that.
        for line in data.split(b"\n"):
            if line.strip():
                out += self.response(json.loads(line))
        return out

    def content_type(self, value: bytes) -> None:
        self.request.setHeader(b"content-type", value)

    def error(self, status: int, message: str) -> bytes:
        raise NotImplementedError

    def response(self, chunk: Chunk) -> bytes:
        raise NotImplementedError


def native_error_message(data: bytes) -> str:
    """The message of a native ``{"error": ...}`` body (the raw text if it is not one)."""
    try:
        value = json.loads(data)
    except ValueError:
        return data.decode("utf-8", errors="replace")
    if isinstance(value, dict) and isinstance(value.get("error"), str):
        return str(value["error"])
    return ""


class NativeExchange:
    """The request as a native handler sees it behind a dialect writer."""

    def __init__(self, request: Request, writer: DialectWriter) -> None:
        self._request = request
        self._writer = writer
        self.code = 200
        self._whole_body = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        self.code = code
        self._request.setResponseCode(code)

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        key = name.lower() if isinstance(name, bytes) else name.lower().encode("latin-1")
        if key == b"content-type":
            return  # the dialect writer sets its own
        if key == b"content-length":
            self._whole_body = True  # re-measured after translation
            return
        self._request.setHeader(name, value)

    def write(self, data: bytes) -> None:
        out = self._writer.encode(self.code, data)
        if self._whole_body:
            self._request.setHeader(b"content-length", b"%d" % len(out))
        if out:
            self._request.write(out)

    def translate_returned(self, data: bytes) -> bytes:
        """A body the native handler returned instead of writing (render's bytes)."""
        return self._writer.encode(self.code, data)


def run_native(
    sim: SimulatedOllama,
    request: Request,
    native: NativeHandler,
    native_body: object,
    writer: DialectWriter,
    param: str = "",
) -> bytes | int:
    """Call ``native`` with ``native_body`` (JSON) behind ``writer``."""
    exchange = NativeExchange(request, writer)
    body = json.dumps(native_body, separators=(",", ":")).encode()
    result = native(sim, cast(Request, exchange), body, param)
    if isinstance(result, bytes):
        return exchange.translate_returned(result)
    return result


# --- binding a dialect's request body ------------------------------------------------


def bind(body: bytes, struct: Struct, package: str) -> dict[str, Any]:
    """gin's ``ShouldBindJSON`` into a dialect's request struct (Go's own messages)."""
    return decode(body, struct, package=package, empty_body="EOF")


def abort_json(request: Request, status: int, value: object) -> bytes:
    """gin's ``AbortWithStatusJSON``: the middleware refuses before any native code runs."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", JSON_UTF8)
    return dumps(value).encode("utf-8")


def go_type_name(value: object) -> str:
    """Go's ``%T`` for a JSON value decoded into ``any``."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "[]interface {}"
    return "map[string]interface {}"


def go_number(value: float) -> float | int:
    """A float64 as Go writes it: ``1.0`` is ``1``."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    return value


def unix_seconds(created_at: str) -> int:
    """``time.Time.Unix()`` of a native ``created_at`` (RFC 3339, nanoseconds)."""
    moment = datetime.datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    return int(moment.timestamp() // 1)


# --- ids ---------------------------------------------------------------------------------


def random_int(sim: SimulatedOllama, bound: int) -> int:
    """Go's ``rand.Intn(bound)``, from the simulator's seeded generator (reproducible ids)."""
    return sim.id_random.randrange(bound)


def random_hex(sim: SimulatedOllama, nbytes: int = 12) -> str:
    """``nbytes`` random bytes in hex (Ollama's ``crypto/rand`` ids), reproducibly."""
    return f"{sim.id_random.getrandbits(8 * nbytes):0{2 * nbytes}x}"

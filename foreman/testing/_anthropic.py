"""Ollama's Anthropic dialect: ``POST /v1/messages``.

As in Ollama (``middleware/anthropic.go``, ``anthropic/anthropic.go``), a
middleware binds the Messages body, converts it to an ``/api/chat`` body
and runs the native chat handler behind a writer that re-encodes each
native object: one ``message`` body, or named SSE events from
``message_start`` to ``message_stop``. No ``ping`` and no ``event: error``
are ever sent. Headers such as ``x-api-key`` and ``anthropic-version``
are not read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.web.server import Request

from foreman.testing._anthropic_requests import (
    MESSAGES_REQUEST,
    estimate_input_tokens,
    from_messages_request,
)
from foreman.testing._dialect import (
    EVENT_STREAM,
    JSON,
    Chunk,
    DialectWriter,
    NativeHandler,
    abort_json,
    bind,
    random_hex,
    run_native,
)
from foreman.testing._openai import encoded
from foreman.testing._openai_requests import cap_reply
from foreman.testing._requests import (
    RequestError,
)
from foreman.testing._sse import event_frame
from foreman.wire.gojson import dumps

if TYPE_CHECKING:
    from foreman.testing._simulator import SimulatedOllama


# --- errors --------------------------------------------------------------------------------

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def error_object(sim: SimulatedOllama, status: int, message: str) -> dict[str, Any]:
    """``anthropic.NewError``: the type follows the status, with a fresh ``req_`` id."""
    return {
        "type": "error",
        "error": {"type": _ERROR_TYPES.get(status, "api_error"), "message": message},
        "request_id": f"req_{random_hex(sim)}",
    }


# --- re-encoding the response ----------------------------------------------------------------


def stop_reason(done_reason: str, tool_calls: bool) -> str:
    """``mapStopReason``."""
    if tool_calls:
        return "tool_use"
    if done_reason == "stop":
        return "end_turn"
    if done_reason == "length":
        return "max_tokens"
    return "stop_sequence" if done_reason else ""


class MessagesWriter(DialectWriter):
    """``AnthropicWriter`` and its ``StreamConverter``."""

    def __init__(
        self,
        request: Request,
        sim: SimulatedOllama,
        message_id: str,
        model: str,
        stream: bool,
        estimated_input_tokens: int,
    ) -> None:
        super().__init__(request)
        self.sim = sim
        self.id = message_id
        self.model = model
        self.stream = stream
        self.estimated = estimated_input_tokens
        self.first_write = True
        self.index = 0
        self.thinking_started = False
        self.thinking_done = False
        self.text_started = False
        self.tool_calls_sent: set[str] = set()

    def error(self, status: int, message: str) -> bytes:
        self.content_type(JSON)
        return encoded(error_object(self.sim, status, message))

    def response(self, chunk: Chunk) -> bytes:
        if not self.stream:
            self.content_type(JSON)
            return encoded(self._message(chunk))
        self.content_type(EVENT_STREAM)
        return b"".join(event_frame(name, data) for name, data in self._events(chunk))

    def _message(self, chunk: Chunk) -> dict[str, Any]:
        """``ToMessagesResponse``."""
        message = chunk.get("message") or {}
        content: list[dict[str, Any]] = []
        if message.get("thinking"):
            content.append({"type": "thinking", "thinking": message["thinking"]})
        if message.get("content"):
            content.append({"type": "text", "text": message["content"]})
        calls = message.get("tool_calls") or []
        for call in calls:
            function = call.get("function") or {}
            content.append(
                {
                    "type": "tool_use",
                    "id": call.get("id", ""),
                    "name": function.get("name", ""),
                    "input": function.get("arguments") or {},
                }
            )
        body: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": chunk.get("model", ""),
            "content": content or None,
        }
        if reason := stop_reason(chunk.get("done_reason") or "", bool(calls)):
            body["stop_reason"] = reason
        body["usage"] = {
            "input_tokens": chunk.get("prompt_eval_count", 0),
            "output_tokens": chunk.get("eval_count", 0),
        }
        return body

    def _stop(self) -> tuple[str, dict[str, Any]]:
        return "content_block_stop", {"type": "content_block_stop", "index": self.index}

    def _start(self, block: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return "content_block_start", {
            "type": "content_block_start",
            "index": self.index,
            "content_block": block,
        }

    def _delta(self, delta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return "content_block_delta", {
            "type": "content_block_delta",
            "index": self.index,
            "delta": delta,
        }

    def _events(self, chunk: Chunk) -> list[tuple[str, dict[str, Any]]]:
        """``StreamConverter.Process``: the events one native object makes."""
        events: list[tuple[str, dict[str, Any]]] = []
        message = chunk.get("message") or {}
        if self.first_write:
            self.first_write = False
            input_tokens = chunk.get("prompt_eval_count", 0) or self.estimated
            start = {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "usage": {"input_tokens": input_tokens, "output_tokens": 0},
            }
            events.append(("message_start", {"type": "message_start", "message": start}))
        thinking = message.get("thinking") or ""
        if thinking and not self.thinking_done:
            if self.text_started:
                events.append(self._stop())
                self.index += 1
                self.text_started = False
            if not self.thinking_started:
                self.thinking_started = True
                events.append(self._start({"type": "thinking", "thinking": ""}))
            events.append(self._delta({"type": "thinking_delta", "thinking": thinking}))
        text = message.get("content") or ""
        if text:
            if self.thinking_started and not self.thinking_done:
                self.thinking_done = True
                events.append(self._stop())
                self.index += 1
            if not self.text_started:
                self.text_started = True
                events.append(self._start({"type": "text", "text": ""}))
            events.append(self._delta({"type": "text_delta", "text": text}))
        for call in message.get("tool_calls") or []:
            call_id = call.get("id", "")
            if call_id in self.tool_calls_sent:
                continue
            if self.thinking_started and not self.thinking_done:
                self.thinking_done = True
                events.append(self._stop())
                self.index += 1
            if self.text_started:
                events.append(self._stop())
                self.index += 1
                self.text_started = False
            function = call.get("function") or {}
            events.append(
                self._start(
                    {
                        "type": "tool_use",
                        "id": call_id,
                        "name": function.get("name", ""),
                        "input": {},
                    }
                )
            )
            events.append(
                self._delta(
                    {
                        "type": "input_json_delta",
                        "partial_json": dumps(function.get("arguments") or {}),
                    }
                )
            )
            events.append(self._stop())
            self.tool_calls_sent.add(call_id)
            self.index += 1
        if chunk.get("done"):
            if self.text_started or (self.thinking_started and not self.thinking_done):
                events.append(self._stop())
            delta: dict[str, Any] = {}
            if reason := stop_reason(chunk.get("done_reason") or "", bool(self.tool_calls_sent)):
                delta["stop_reason"] = reason
            events.append(
                (
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": delta,
                        "usage": {
                            "input_tokens": chunk.get("prompt_eval_count", 0),
                            "output_tokens": chunk.get("eval_count", 0),
                        },
                    },
                )
            )
            events.append(("message_stop", {"type": "message_stop"}))
        return events


# --- the middleware ----------------------------------------------------------------------------


def messages(native: NativeHandler) -> NativeHandler:
    """``AnthropicMessagesMiddleware`` in front of the native chat handler."""

    def handle(sim: SimulatedOllama, request: Request, body: bytes, param: str) -> bytes | int:
        try:
            req = bind(body, MESSAGES_REQUEST, "anthropic")
            if not req.get("model"):
                raise RequestError(400, "model is required")
            if req.get("max_tokens", 0) <= 0:
                raise RequestError(400, "max_tokens is required and must be positive")
            if not req.get("messages"):
                raise RequestError(400, "messages is required")
            converted = from_messages_request(sim, req)
        except RequestError as e:
            return abort_json(request, e.status, error_object(sim, e.status, e.message))
        stream = bool(req.get("stream"))
        writer = MessagesWriter(
            request,
            sim,
            f"msg_{random_hex(sim)}",
            req["model"],
            stream,
            estimate_input_tokens(req),
        )
        if stream:
            # Set before the native handler runs, so an error reply carries them too.
            request.setHeader(b"content-type", EVENT_STREAM)
            request.setHeader(b"cache-control", b"no-cache")
            if not request.responseHeaders.hasHeader(b"connection"):
                request.setHeader(b"connection", b"keep-alive")
        return run_native(sim, request, native, cap_reply(sim, converted), writer)

    return handle

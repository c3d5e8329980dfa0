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

import base64
import binascii
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.web.server import Request

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
from foreman.testing._openai import cap_reply, encoded
from foreman.testing._requests import (
    ANY,
    BOOL,
    FLOAT,
    INT,
    STRING,
    RequestError,
    SliceOf,
    _struct,
)
from foreman.testing._sse import event_frame
from foreman.wire.gojson import dumps

if TYPE_CHECKING:
    from foreman.testing._simulator import SimulatedOllama

Handler = Callable[["SimulatedOllama", Request, bytes, str], "bytes | int"]

TOOL = _struct(
    "anthropic.Tool",
    type=STRING,
    name=STRING,
    description=STRING,
    input_schema=ANY,
    max_uses=INT,
)
MESSAGES_REQUEST = _struct(
    "MessagesRequest",
    model=STRING,
    max_tokens=INT,
    messages=SliceOf(
        "[]anthropic.MessageParam",
        lambda v: True,
        element=_struct("anthropic.MessageParam", role=STRING, content=ANY),
    ),
    system=ANY,
    stream=BOOL,
    temperature=FLOAT,
    top_p=FLOAT,
    top_k=INT,
    stop_sequences=SliceOf("[]string", lambda v: True, element=STRING),
    tools=SliceOf("[]anthropic.Tool", lambda v: True, element=TOOL),
    tool_choice=ANY,
    thinking=_struct("anthropic.ThinkingConfig", type=STRING, budget_tokens=INT),
    metadata=ANY,
    output_config=_struct("anthropic.OutputConfig", effort=STRING),
)


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


# --- converting the request ------------------------------------------------------------------


def _content_blocks(message: dict[str, Any]) -> list[Any]:
    """``MessageParam.UnmarshalJSON``: a string is one text block."""
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if content is None:
        return []
    if not isinstance(content, list) or not all(isinstance(b, dict) or b is None for b in content):
        kind = "array" if isinstance(content, list) else type(content).__name__
        kind = {"bool": "bool", "int": "number", "float": "number", "dict": "object"}.get(
            kind, kind
        )
        raise RequestError(
            400, f"json: cannot unmarshal {kind} into Go value of type []anthropic.ContentBlock"
        )
    return [block or {} for block in content]


def _image(source: object) -> str:
    """``resolveImageSource``: base64 only."""
    if not isinstance(source, dict):
        raise RequestError(400, "invalid image source")
    if source.get("type") != "base64":
        raise RequestError(
            400,
            f"invalid image source type: {source.get('type') or ''}. "
            "Only base64 images are supported.",
        )
    data = source.get("data") or ""
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(400, f"invalid base64 image data: {e}") from None
    return str(data)


def _tool_result(content: object) -> tuple[str, list[str]]:
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        return "", []
    text, images = "", []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            text += block["text"]
        elif block.get("type") == "image":
            if not isinstance(block.get("source"), dict):
                raise RequestError(400, "invalid tool_result image source")
            images.append(_image(block["source"]))
    return text, images


def convert_message(message: dict[str, Any]) -> list[dict[str, Any]]:
    """``convertMessage``: one Anthropic message, possibly several native ones."""
    role = (message.get("role") or "").lower()
    text, images, calls, thinking = "", [], [], ""
    results: list[dict[str, Any]] = []
    for block in _content_blocks(message):
        kind = block.get("type")
        if kind == "text":
            text += block.get("text") or ""
        elif kind == "image":
            if block.get("source") is None:
                raise RequestError(400, "invalid image source")
            images.append(_image(block["source"]))
        elif kind in ("tool_use", "server_tool_use"):
            if kind == "tool_use" and not block.get("id"):
                raise RequestError(400, "tool_use block missing required 'id' field")
            if kind == "tool_use" and not block.get("name"):
                raise RequestError(400, "tool_use block missing required 'name' field")
            arguments = block.get("input")
            calls.append(
                {
                    "id": block.get("id") or "",
                    "function": {
                        "name": block.get("name") or "",
                        "arguments": arguments if isinstance(arguments, dict) else {},
                    },
                }
            )
        elif kind in ("tool_result", "web_search_tool_result"):
            content, result_images = _tool_result(block.get("content"))
            result: dict[str, Any] = {"role": "tool", "content": content}
            if result_images:
                result["images"] = result_images
            result["tool_call_id"] = block.get("tool_use_id") or ""
            results.append(result)
        elif kind == "thinking":
            thinking = block.get("thinking") or ""
    converted: list[dict[str, Any]] = []
    if role == "user":
        converted += results
    if text or images or calls or thinking:
        native: dict[str, Any] = {"role": role, "content": text}
        if images:
            native["images"] = images
        if calls:
            native["tool_calls"] = calls
        if thinking:
            native["thinking"] = thinking
        converted.append(native)
    if role != "user":
        converted += results
    return converted


def _system_text(system: object) -> str:
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        return "".join(
            block["text"]
            for block in system
            if isinstance(block, dict)
            and block.get("type") == "text"
            and isinstance(block.get("text"), str)
        )
    return ""


_WEB_SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "web_search",
        "description": (
            "Search the web for current information. "
            "Use this to find up-to-date information about any topic."
        ),
        "parameters": {
            "type": "object",
            "required": ["query"],
            "properties": {
                "query": {
                    "type": "string",
                    "description": "The search query to look up on the web",
                }
            },
        },
    },
}


def _tools(tools: list[Any]) -> list[dict[str, Any]]:
    declared = [t or {} for t in tools]
    builtin_search = any((t.get("type") or "").startswith("web_search") for t in declared)
    converted = []
    for tool in declared:
        if (tool.get("type") or "").startswith("web_search"):
            converted.append(_WEB_SEARCH_TOOL)
            continue
        if builtin_search and tool.get("name") == "web_search":
            continue
        schema = tool.get("input_schema")
        if schema is not None and not isinstance(schema, dict):
            raise RequestError(
                400,
                f'invalid input_schema for tool "{tool.get("name") or ""}": json: cannot '
                "unmarshal into Go value of type api.ToolFunctionParameters",
            )
        function: dict[str, Any] = {"name": tool.get("name") or ""}
        if tool.get("description"):
            function["description"] = tool["description"]
        function["parameters"] = schema or {}
        converted.append({"type": "function", "function": function})
    return converted


def from_messages_request(sim: SimulatedOllama, req: dict[str, Any]) -> dict[str, Any]:
    """``FromMessagesRequest``: an Anthropic request as an ``/api/chat`` body."""
    messages: list[dict[str, Any]] = []
    if system := _system_text(req.get("system")):
        messages.append({"role": "system", "content": system})
    for message in req.get("messages") or []:
        messages += convert_message(message or {})
    options: dict[str, Any] = {"num_predict": req.get("max_tokens", 0)}
    for name in ("temperature", "top_p", "top_k"):
        if name in req:
            options[name] = req[name]
    if req.get("stop_sequences"):
        options["stop"] = req["stop_sequences"]
    think: bool | str | None = None
    thinking = (req.get("thinking") or {}).get("type")
    if thinking == "enabled":
        think = True
    elif thinking == "disabled":
        think = False
    else:
        effort = ((req.get("output_config") or {}).get("effort") or "").strip().lower()
        effort = "high" if effort == "xhigh" else effort
        if effort in ("high", "medium", "low", "max"):
            think = effort
    native: dict[str, Any] = {
        "model": req.get("model", ""),
        "messages": messages,
        "options": options,
        "stream": bool(req.get("stream")),
        "tools": _tools(req.get("tools") or []),
    }
    # Ollama's chat handler relaxes thinking for this dialect ("relax_thinking"):
    # asking a model that cannot think to think is not an error here.
    model = sim.library.get(native["model"]) if native["model"].strip() else None
    if think and model is not None and not model.thinking:
        think = None
    if think is not None:
        native["think"] = think
    return native


def estimate_input_tokens(req: dict[str, Any]) -> int:
    """``EstimateInputTokens``: a quarter of the characters, at least 1."""
    total = 0
    system = req.get("system")
    if isinstance(system, str):
        total += len(system)
    elif isinstance(system, list):
        total += sum(_block_length(b) for b in system if isinstance(b, dict))
    elif system is not None:
        total += len(dumps(system))
    messages = req.get("messages") or []
    for message in messages:
        message = message or {}
        total += len(message.get("role") or "")
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        total += sum(_block_length(b) for b in blocks or [] if isinstance(b, dict))
    for tool in req.get("tools") or []:
        tool = tool or {}
        schema = tool.get("input_schema")
        total += len(tool.get("name") or "") + len(tool.get("description") or "")
        total += len(dumps(schema)) if schema is not None else 0
    tokens = total // 4
    if tokens == 0 and (messages or system is not None):
        tokens = 1
    return tokens


def _block_length(block: dict[str, Any]) -> int:
    length = 0
    if isinstance(block.get("text"), str):
        length += len(block["text"])
    if isinstance(block.get("thinking"), str):
        length += len(block["thinking"])
    if block.get("type") in ("tool_use", "tool_result"):
        length += len(dumps(block))
    return length


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


def messages(native: NativeHandler) -> Handler:
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

"""Reading an Anthropic Messages request as Ollama does: its structs and its
conversion to a native chat request (``anthropic/anthropic.go``).
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

from foreman.testing._requests import (
    ANY,
    BOOL,
    FLOAT,
    INT,
    STRING,
    RequestError,
    SliceOf,
    go_struct,
)
from foreman.wire.gojson import dumps
from foreman.wire.gotypes import decode_document

if TYPE_CHECKING:
    from foreman.testing._simulator import SimulatedOllama


TOOL = go_struct(
    "anthropic.Tool",
    type=STRING,
    name=STRING,
    description=STRING,
    input_schema=ANY,
    max_uses=INT,
)
MESSAGES_REQUEST = go_struct(
    "MessagesRequest",
    model=STRING,
    max_tokens=INT,
    messages=SliceOf(
        "[]anthropic.MessageParam",
        lambda v: True,
        element=go_struct("anthropic.MessageParam", role=STRING, content=ANY),
    ),
    system=ANY,
    stream=BOOL,
    temperature=FLOAT,
    top_p=FLOAT,
    top_k=INT,
    stop_sequences=SliceOf("[]string", lambda v: True, element=STRING),
    tools=SliceOf("[]anthropic.Tool", lambda v: True, element=TOOL),
    tool_choice=ANY,
    thinking=go_struct("anthropic.ThinkingConfig", type=STRING, budget_tokens=INT),
    metadata=ANY,
    output_config=go_struct("anthropic.OutputConfig", effort=STRING),
)

#: A message's content block, bound as Go binds ``[]anthropic.ContentBlock``.
CONTENT_BLOCK = go_struct(
    "ContentBlock",
    type=STRING,
    text=STRING,
    source=go_struct(
        "anthropic.ImageSource", type=STRING, media_type=STRING, data=STRING, url=STRING
    ),
    id=STRING,
    name=STRING,
    input=ANY,
    tool_use_id=STRING,
    content=ANY,
    is_error=BOOL,
    thinking=STRING,
    signature=STRING,
)


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
    return [decode_document(block, CONTENT_BLOCK, package="anthropic") for block in content]


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
    if not isinstance(data, str):
        data = ""  # a tool result's blocks are Go maps: a type assertion, not a type error
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

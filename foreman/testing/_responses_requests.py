"""Reading an OpenAI Responses request as Ollama does: its struct and its
conversion to a native chat request (``openai/responses.go``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from foreman.testing._openai_requests import (
    image_from_url,
    think_from_effort,
)
from foreman.testing._requests import (
    ANY,
    BOOL,
    FLOAT,
    INT,
    MAP,
    STRING,
    RequestError,
    SliceOf,
    Struct,
    go_struct,
    loads_text,
)
from foreman.wire.gotypes import decode_document, json_kind

if TYPE_CHECKING:
    pass


RESPONSES_REQUEST = go_struct(
    "ResponsesRequest",
    model=STRING,
    background=BOOL,
    conversation=ANY,
    include=SliceOf("[]string", lambda v: True, element=STRING),
    input=ANY,
    instructions=STRING,
    max_output_tokens=INT,
    reasoning=go_struct(
        "openai.ResponsesReasoning", effort=STRING, generate_summary=STRING, summary=STRING
    ),
    temperature=FLOAT,
    text=go_struct(
        "openai.ResponsesText",
        format=go_struct(
            "openai.ResponsesTextFormat", type=STRING, name=STRING, schema=ANY, strict=BOOL
        ),
    ),
    top_p=FLOAT,
    truncation=STRING,
    tools=SliceOf(
        "[]openai.ResponsesTool",
        lambda v: True,
        element=go_struct(
            "openai.ResponsesTool",
            type=STRING,
            name=STRING,
            description=STRING,
            strict=BOOL,
            parameters=MAP,
            tools=ANY,
        ),
    ),
    stream=BOOL,
)


def sorted_map(value: Any) -> Any:
    """A Go ``map[string]any`` as ``json.Marshal`` writes it: keys sorted, all the way down."""
    if isinstance(value, dict):
        return {key: sorted_map(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [sorted_map(item) for item in value]
    return value


# --- converting the request ------------------------------------------------------------------


# Each input item and content part is bound to its Go struct by the type it
# names (``unmarshalResponsesInputItem``, ``unmarshalResponsesContent``); the
# anonymous structs Go peeks with print no name in their errors.
_KIND = go_struct("", type=STRING, role=STRING)
_PART_KIND = go_struct("", type=STRING)
_MESSAGE = go_struct("", type=STRING, role=STRING, content=ANY)
_OUTPUT = go_struct("", type=STRING, call_id=STRING, output=ANY)
_FUNCTION_CALL = go_struct(
    "ResponsesFunctionCall", id=STRING, type=STRING, call_id=STRING, name=STRING, arguments=STRING
)
_REASONING = go_struct(
    "ResponsesReasoningInput",
    id=STRING,
    type=STRING,
    summary=SliceOf(
        "[]openai.ResponsesReasoningSummary",
        lambda v: True,
        element=go_struct("ResponsesReasoningSummary", type=STRING, text=STRING),
    ),
    encrypted_content=STRING,
)
_ITEMS = {
    "message": _MESSAGE,
    "function_call": _FUNCTION_CALL,
    "function_call_output": _OUTPUT,
    "reasoning": _REASONING,
}
_PARTS = {
    "input_text": go_struct("ResponsesTextContent", type=STRING, text=STRING),
    "output_text": go_struct("ResponsesOutputTextContent", type=STRING, text=STRING),
    "input_image": go_struct(
        "ResponsesImageContent", type=STRING, detail=STRING, file_id=STRING, image_url=STRING
    ),
    "input_file": go_struct(
        "ResponsesFileContent",
        type=STRING,
        file_data=STRING,
        file_id=STRING,
        file_url=STRING,
        filename=STRING,
    ),
}


def _bound(value: object, struct: Struct, where: str) -> dict[str, Any]:
    """``value``'s fields bound to ``struct``; Go's error prefixed with ``where``."""
    if not isinstance(value, dict):
        value = {}  # judged by what is missing, as before
    try:
        return decode_document(value, struct, package="openai")
    except RequestError as e:
        raise RequestError(e.status, f"{where}: {e.message}") from None


def _content(content: object, where: str = "input") -> tuple[str, list[str]]:
    """A message's content: a string, or input/output text and image parts."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise RequestError(400, "content must be a string or array")
    text, images = "", []
    for index, part in enumerate(content):
        kind = _bound(part, _PART_KIND, f"{where}: content[{index}]").get("type", "")
        if kind not in _PARTS:
            raise RequestError(400, f"input: content[{index}]: unknown content type: {kind}")
        part = _bound(part, _PARTS[kind], f"{where}: content[{index}]")
        if kind in ("input_text", "output_text"):
            text += part.get("text") or ""
        elif kind == "input_image":
            if part.get("image_url"):
                images.append(image_from_url(part["image_url"]))
        else:
            raise RequestError(400, "file inputs are not currently supported")
    return text, images


def _input_items(value: object) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise RequestError(400, "input must be a string or array")
    items = []
    for index, item in enumerate(value):
        item = item if isinstance(item, dict) else {}
        peeked = _bound(item, _KIND, f"input[{index}]")
        kind = peeked.get("type") or ("message" if peeked.get("role") else "")
        if not kind:
            raise RequestError(400, f"input[{index}]: input item missing required 'type' field")
        if kind not in (
            "message",
            "function_call",
            "function_call_output",
            "reasoning",
            "web_search_call",
        ):
            raise RequestError(400, f'input[{index}]: unknown input item type: "{kind}"')
        if kind in _ITEMS:
            item = {**item, **_bound(item, _ITEMS[kind], f"input[{index}]")}
        items.append({**item, "type": kind})
    return items


def native_messages(req: dict[str, Any]) -> list[dict[str, Any]]:
    """``FromResponsesRequest``'s messages (stateless: only what the request holds)."""
    messages: list[dict[str, Any]] = []
    if req.get("instructions"):
        messages.append({"role": "system", "content": req["instructions"]})
    given = req.get("input")
    if isinstance(given, str):
        if given:
            messages.append({"role": "user", "content": given})
        return messages
    pending_thinking = ""
    for item in _input_items(given) if given is not None else []:
        kind = item["type"]
        if kind == "reasoning":
            pending_thinking = item.get("encrypted_content") or ""
        elif kind == "message":
            text, images = _content(item.get("content"))
            message: dict[str, Any] = {"role": item.get("role") or "", "content": text}
            if images:
                message["images"] = images
            if message["role"] == "assistant" and pending_thinking:
                message["thinking"], pending_thinking = pending_thinking, ""
            messages.append(message)
        elif kind == "function_call":
            try:
                arguments = loads_text(item["arguments"]) if item.get("arguments") else {}
            except ValueError as e:
                raise RequestError(400, f"failed to parse function call arguments: {e}") from None
            call = {
                "id": item.get("call_id") or "",
                "function": {"name": item.get("name") or "", "arguments": arguments},
            }
            if messages and messages[-1]["role"] == "assistant":
                messages[-1].setdefault("tool_calls", []).append(call)
                if pending_thinking:
                    messages[-1]["thinking"], pending_thinking = pending_thinking, ""
            else:
                message = {"role": "assistant", "tool_calls": [call]}
                if pending_thinking:
                    message["thinking"], pending_thinking = pending_thinking, ""
                messages.append(message)
        elif kind == "function_call_output":
            text, images = _content(item.get("output"))
            message = {"role": "tool", "content": text, "tool_call_id": item.get("call_id") or ""}
            if images:
                message["images"] = images
            messages.append(message)
    if pending_thinking:
        messages.append({"role": "assistant", "thinking": pending_thinking})
    return messages


def _members(members: object) -> list[dict[str, Any]]:
    """A namespace's tools: Go binds them as ``[]openai.ResponsesTool`` too."""
    where = "Go struct field ResponsesRequest.tools.tools of type"
    if members is None:
        return []
    if not isinstance(members, list):
        kind = json_kind(members)
        raise RequestError(
            400, f"json: cannot unmarshal {kind} into {where} []openai.ResponsesTool"
        )
    for member in members:
        if member is not None and not isinstance(member, dict):
            kind = json_kind(member)
            raise RequestError(
                400, f"json: cannot unmarshal {kind} into {where} openai.ResponsesTool"
            )
    return [member or {} for member in members]


def _tools(tools: list[Any]) -> list[dict[str, Any]]:
    converted = []
    for tool in tools:
        tool = tool or {}
        if tool.get("type") == "web_search":
            converted.append(
                {
                    "type": "function",
                    "function": {
                        "name": "web_search",
                        "description": "Search the web for current information.",
                        "parameters": {
                            "type": "object",
                            "required": ["query"],
                            "properties": {"query": {"type": "string"}},
                        },
                    },
                }
            )
            continue
        members = _members(tool.get("tools")) if tool.get("type") == "namespace" else [tool]
        for member in members:
            name = member.get("name") or ""
            if tool.get("type") == "namespace" and tool.get("name"):
                name = f"{tool['name']}.{name}"
            converted.append(
                {
                    "type": member.get("type") or "",
                    "function": {
                        "name": name,
                        "description": member.get("description") or "",
                        "parameters": member.get("parameters") or {},
                    },
                }
            )
    return converted


def from_responses_request(req: dict[str, Any]) -> dict[str, Any]:
    """``FromResponsesRequest``: a Responses request as an ``/api/chat`` body."""
    options: dict[str, Any] = {"temperature": req.get("temperature", 1.0)}
    if "top_p" in req:
        options["top_p"] = req["top_p"]
    if "max_output_tokens" in req:
        options["num_predict"] = req["max_output_tokens"]
    native: dict[str, Any] = {
        "model": req.get("model", ""),
        "messages": native_messages(req),
        "options": options,
        "tools": _tools(req.get("tools") or []),
        "stream": bool(req.get("stream")),
    }
    text_format = (req.get("text") or {}).get("format") or {}
    if text_format.get("type") == "json_schema" and text_format.get("schema") is not None:
        native["format"] = text_format["schema"]
    think = think_from_effort((req.get("reasoning") or {}).get("effort") or "")
    if think is not None:
        native["think"] = think
    return native

"""Reading an OpenAI request as Ollama does: its structs, bound strictly, and
its conversion to the native chat or generate request (``openai/openai.go``).
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

from foreman.testing._dialect import (
    go_type_name,
)
from foreman.testing._requests import (
    ANY,
    BOOL,
    FLOAT,
    INT,
    STRING,
    TOOL,
    GoType,
    RequestError,
    SliceOf,
    go_struct,
    loads_text,
)

if TYPE_CHECKING:
    from foreman.testing._simulator import SimulatedOllama


FLOAT32 = GoType("float32", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))

# --- the request structs (openai/openai.go) -------------------------------------------

TOOL_CALL = go_struct(
    "openai.ToolCall",
    id=STRING,
    index=INT,
    type=STRING,
    function=go_struct("struct", name=STRING, arguments=STRING),
)
MESSAGE = go_struct(
    "openai.Message",
    role=STRING,
    content=ANY,
    reasoning=STRING,
    tool_calls=SliceOf("[]openai.ToolCall", lambda v: True, element=TOOL_CALL),
    name=STRING,
    tool_call_id=STRING,
)
STREAM_OPTIONS = go_struct("openai.StreamOptions", include_usage=BOOL)
CHAT_REQUEST = go_struct(
    "ChatCompletionRequest",
    model=STRING,
    messages=SliceOf("[]openai.Message", lambda v: True, element=MESSAGE),
    stream=BOOL,
    stream_options=STREAM_OPTIONS,
    max_tokens=INT,
    seed=INT,
    stop=ANY,
    temperature=FLOAT,
    frequency_penalty=FLOAT,
    presence_penalty=FLOAT,
    top_p=FLOAT,
    response_format=go_struct(
        "openai.ResponseFormat",
        type=STRING,
        json_schema=go_struct("openai.JsonSchema", schema=ANY),
    ),
    tools=SliceOf("[]api.Tool", lambda v: True, element=TOOL),
    reasoning=go_struct("openai.Reasoning", effort=STRING),
    reasoning_effort=STRING,
    logprobs=BOOL,
    top_logprobs=INT,
)
COMPLETION_REQUEST = go_struct(
    "CompletionRequest",
    model=STRING,
    prompt=STRING,
    frequency_penalty=FLOAT32,
    max_tokens=INT,
    presence_penalty=FLOAT32,
    seed=INT,
    stop=ANY,
    stream=BOOL,
    stream_options=STREAM_OPTIONS,
    temperature=FLOAT32,
    top_p=FLOAT32,
    suffix=STRING,
    logprobs=INT,
)
EMBED_REQUEST = go_struct(
    "EmbedRequest", input=ANY, model=STRING, dimensions=INT, encoding_format=STRING
)


# --- converting requests --------------------------------------------------------------------

_REASONING_EFFORTS: dict[str, bool | str] = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "max",
    "xhigh": "max",
    "ultra": "max",
}


def think_from_effort(effort: str) -> bool | str | None:
    """``thinkFromReasoningEffort``: OpenAI's scale clamped onto Ollama's."""
    if not effort:
        return None
    if effort not in _REASONING_EFFORTS:
        raise RequestError(
            400,
            f'invalid reasoning value: "{effort}" (must be "minimal", "low", "medium", '
            '"high", "xhigh", "ultra", "max", or "none")',
        )
    return _REASONING_EFFORTS[effort]


def image_from_url(url: str) -> str:
    """``decodeImageURL``: a base64 data URI (jpeg, jpg, png, webp or blank type) only."""
    if url.startswith(("http://", "https://")):
        raise RequestError(
            400,
            "image URLs are not currently supported, please use base64 encoded data instead",
        )
    prefixes = ["data:;base64,"] + [
        f"data:image/{t};base64," for t in ("jpeg", "jpg", "png", "webp")
    ]
    for prefix in prefixes:
        if url.startswith(prefix):
            data = url[len(prefix) :]
            try:
                base64.b64decode(data, validate=True)
            except ValueError:
                raise RequestError(400, "invalid image input") from None
            return data
    raise RequestError(400, "invalid image input")


def native_tool_calls(calls: list[Any] | None) -> list[dict[str, Any]]:
    """``FromCompletionToolCall``: arguments arrive as a JSON string."""
    converted = []
    for call in calls or []:
        call = call or {}
        function = call.get("function") or {}
        try:
            arguments = loads_text(function.get("arguments") or "")
        except ValueError:
            raise RequestError(400, "invalid tool call arguments") from None
        if arguments is not None and not isinstance(arguments, dict):
            raise RequestError(400, "invalid tool call arguments")
        converted.append(
            {
                "id": call.get("id") or "",
                "function": {"name": function.get("name") or "", "arguments": arguments or {}},
            }
        )
    return converted


def _tool_name(messages: list[dict[str, Any]], call_id: str) -> str:
    for message in reversed(messages):
        for call in message.get("tool_calls") or []:
            if (call or {}).get("id") == call_id:
                return str(((call or {}).get("function") or {}).get("name") or "")
    return ""


def native_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``FromChatRequest``'s messages: content parts become messages of their own."""
    converted: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role") or ""
        tool_name = ""
        if role.lower() == "tool":
            tool_name = message.get("name") or ""
            if not tool_name and message.get("tool_call_id"):
                tool_name = _tool_name(messages, message["tool_call_id"])
        content = message.get("content")
        calls = message.get("tool_calls")
        extra = {
            key: value
            for key, value in (
                ("thinking", message.get("reasoning") or ""),
                ("tool_name", tool_name),
                ("tool_call_id", message.get("tool_call_id") or ""),
            )
            if value
        }
        if isinstance(content, str):
            converted.append(
                {"role": role, "content": content, "tool_calls": native_tool_calls(calls), **extra}
            )
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    raise RequestError(400, "invalid message format")
                kind = part.get("type")
                if kind == "text":
                    if not isinstance(part.get("text"), str):
                        raise RequestError(400, "invalid message format")
                    converted.append({"role": role, "content": part["text"]})
                elif kind == "image_url":
                    image = part.get("image_url")
                    url = image.get("url") if isinstance(image, dict) else image
                    if not isinstance(url, str):
                        raise RequestError(400, "invalid message format")
                    converted.append({"role": role, "images": [image_from_url(url)]})
                elif kind == "input_audio":
                    audio = part.get("input_audio")
                    if not isinstance(audio, dict):
                        raise RequestError(400, "invalid input_audio format")
                    if not isinstance(audio.get("data"), str):
                        raise RequestError(400, "invalid input_audio format: missing data")
                    try:
                        base64.b64decode(audio["data"], validate=True)
                    except (binascii.Error, ValueError) as e:
                        raise RequestError(400, f"invalid input_audio base64 data: {e}") from None
                    converted.append({"role": role, "images": [audio["data"]]})
                else:
                    raise RequestError(400, "invalid message format")
            if converted and calls:
                converted[-1].update({"tool_calls": native_tool_calls(calls), **extra})
        else:
            if calls is None:
                raise RequestError(400, f"invalid message content type: {go_type_name(content)}")
            converted.append({"role": role, "tool_calls": native_tool_calls(calls), **extra})
    return converted


def _stop_option(stop: object, *, strict: bool) -> list[str] | None:
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list):
        stops = []
        for item in stop:
            if isinstance(item, str):
                stops.append(item)
            elif strict:
                raise RequestError(400, f"invalid type for 'stop' field: {go_type_name(item)}")
        return stops
    return None


def from_chat_request(req: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
    """``FromChatRequest``: an OpenAI chat request as an ``/api/chat`` body."""
    options: dict[str, Any] = {}
    if (stop := _stop_option(req.get("stop"), strict=False)) is not None:
        options["stop"] = stop
    if "max_tokens" in req:
        options["num_predict"] = req["max_tokens"]
    options["temperature"] = req.get("temperature", 1.0)
    if "seed" in req:
        options["seed"] = req["seed"]
    for penalty in ("frequency_penalty", "presence_penalty"):
        if penalty in req:
            options[penalty] = req[penalty]
    options["top_p"] = req.get("top_p", 1.0)
    native: dict[str, Any] = {"model": req.get("model", ""), "messages": native_messages(messages)}
    response_format = req.get("response_format") or {}
    kind = (response_format.get("type") or "").strip().lower()
    if kind == "json_object":
        native["format"] = "json"
    elif kind == "json_schema" and response_format.get("json_schema") is not None:
        native["format"] = response_format["json_schema"].get("schema")
    effort = (req.get("reasoning") or {}).get("effort", "") if "reasoning" in req else None
    think = think_from_effort(effort if effort is not None else req.get("reasoning_effort", ""))
    native.update(
        {
            "options": options,
            "stream": bool(req.get("stream")),
            "tools": req.get("tools") or [],
            "logprobs": bool(req.get("logprobs")),
            "top_logprobs": req.get("top_logprobs", 0),
        }
    )
    if think is not None:
        native["think"] = think
    return native


def from_completion_request(req: dict[str, Any]) -> dict[str, Any]:
    """``FromCompleteRequest``: an OpenAI completion request as an ``/api/generate`` body."""
    options: dict[str, Any] = {}
    if (stop := _stop_option(req.get("stop"), strict=True)) is not None:
        options["stop"] = stop
    if "max_tokens" in req:
        options["num_predict"] = req["max_tokens"]
    options["temperature"] = req.get("temperature", 1.0)
    if "seed" in req:
        options["seed"] = req["seed"]
    options["frequency_penalty"] = req.get("frequency_penalty", 0.0)
    options["presence_penalty"] = req.get("presence_penalty", 0.0)
    options["top_p"] = req.get("top_p") or 1.0
    logprobs = req.get("logprobs") or 0
    return {
        "model": req.get("model", ""),
        "prompt": req.get("prompt", ""),
        "options": options,
        "stream": bool(req.get("stream")),
        "suffix": req.get("suffix", ""),
        "logprobs": logprobs > 0,
        "top_logprobs": logprobs if logprobs > 0 else 0,
    }


def cap_reply(sim: SimulatedOllama, native: dict[str, Any]) -> dict[str, Any]:
    """Let a dialect's token limit cap the reply instead of setting its length.

    Natively the simulator reads ``num_predict`` as the reply's length (so
    tests can ask for long replies). A real model given ``max_tokens``
    mostly stops on its own before the limit, and Anthropic's requires
    one, so a limit at or above ``reply_tokens`` is dropped: the reply is
    ``reply_tokens`` long and ends ``stop``; a lower one cuts it (``length``).
    """
    options = native.get("options") or {}
    limit = options.get("num_predict")
    if isinstance(limit, int) and limit >= sim.reply_tokens:
        native["options"] = {k: v for k, v in options.items() if k != "num_predict"}
    return native

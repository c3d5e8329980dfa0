"""Ollama's native generation requests: their Go structs, options and formats.

``/api/chat`` and ``/api/generate`` bind their bodies to ``api.ChatRequest``
and ``api.GenerateRequest`` (:data:`CHAT`, :data:`GENERATE`), then check
the ``options`` map (:func:`check_options`) and, when the model runs, the
``format`` (:func:`format_error`). The simulated Ollama answers with these;
``/jobs`` refuses a submission Ollama would refuse, in the same words.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from foreman.wire.gotypes import (
    ANY,
    BOOL,
    IMAGE,
    INT,
    KEEP_ALIVE,
    MAP,
    STRING,
    THINK,
    GoType,
    RequestError,
    SliceOf,
    go_struct,
)

TOOL_CALL = go_struct(
    "api.ToolCall",
    id=STRING,
    function=go_struct("api.ToolCallFunction", index=INT, name=STRING, arguments=MAP),
)
MESSAGE = go_struct(
    "api.Message",
    role=STRING,
    content=STRING,
    thinking=STRING,
    images=SliceOf("[]api.ImageData", lambda v: True, element=IMAGE),
    tool_calls=SliceOf("[]api.ToolCall", lambda v: True, element=TOOL_CALL),
    tool_name=STRING,
    tool_call_id=STRING,
)
TOOL = go_struct(
    "api.Tool",
    type=STRING,
    items=ANY,
    function=go_struct(
        "api.ToolFunction",
        name=STRING,
        description=STRING,
        parameters=go_struct(
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
CHAT = go_struct(
    "ChatRequest",
    messages=SliceOf("[]api.Message", lambda v: True, element=MESSAGE),
    tools=SliceOf("api.Tools", lambda v: True, element=TOOL),
    **_GENERATION_COMMON,
)
GENERATE = go_struct(
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


def format_error(format_value: object) -> str | None:
    """Ollama's runner refuses any format but ``"json"``, a schema, ``""`` or null (a 500)."""
    if format_value is None or format_value in ("", "json") or isinstance(format_value, dict):
        return None
    raw = json.dumps(format_value, separators=(",", ":"))
    quoted = json.dumps(raw)
    return f'invalid format: {quoted}; expected "json" or a valid JSON Schema object'

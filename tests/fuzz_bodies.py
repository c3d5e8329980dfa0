"""Hypothesis strategies for hostile request bodies (tests/fuzz_requests.py).

The richest body each route takes, with one or two of its parts (any field,
at any depth: a message, a content block, a tool's name) replaced by a JSON
value of another kind, nested past the depth limits, or removed; request
shapes with mistyped fields; JSON of the wrong shape; broken JSON; binary;
multipart forms; nothing at all; more than the body limit.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

from hypothesis import strategies as st

#: The body limit of the fuzzed foreman: small, so a 413 is cheap to cause.
BODY_LIMIT = 32 * 1024

MODELS = (
    "llama3.2",
    "llama3.2:latest",
    "qwen3:8b",
    "gemma3:12b",
    "nomic-embed-text",
    "all-minilm",
    "nope",
    "gpt-oss:120b-cloud",
    "",
    " ",
    "../../etc",
    "Llama3.2",
)
IMAGE = "aGVsbG8="

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _deep(depth: int) -> str:
    """A stand-in for ``depth`` nested arrays, put in by :func:`dumps_json` (too deep here)."""
    return f"\x00deep:{depth}\x00"


def dumps_json(value: Any) -> bytes:
    text = json.dumps(value)
    for depth in (600, 5000):
        text = text.replace(json.dumps(_deep(depth)), "[" * depth + "]" * depth)
    return text.encode()


#: Depths around every limit: foreman's 512, Python's ~1000, Go's 10000.
DEPTHS = (100, 512, 513, 999, 1000, 5000, 10000, 10001, 20000)
#: JSON inside a string (tool-call arguments): plain, broken, or nested past the limits.
json_texts = st.one_of(
    st.just('{"city": "Paris"}'),
    st.text(max_size=10),
    st.sampled_from([600, 5000, 10001]).map(lambda n: "[" * n + "]" * n),
    st.sampled_from([600, 5000]).map(lambda n: '{"a":' * n + "1" + "}" * n),
)
#: What replaces a part of a rich body.
replacements = st.one_of(
    json_values,
    st.sampled_from([None, True, 0, -1, 2**64, 1.5, "", "x", [], {}, [1], {"a": 1}]),
    st.sampled_from([600, 5000]).map(_deep),
    json_texts,
)

# --- the richest body of each route ------------------------------------------------------

_SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
_TOOL = {"type": "function", "function": {"name": "f", "description": "d", "parameters": _SCHEMA}}
_OPTIONS = {"temperature": 0.5, "num_ctx": 2048, "num_predict": 8, "stop": ["x"], "seed": 1}
_NATIVE_MESSAGES = [
    {"role": "system", "content": "s"},
    {"role": "user", "content": "hi", "images": [IMAGE]},
    {
        "role": "assistant",
        "content": "",
        "thinking": "t",
        "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": {"a": "x"}}}],
    },
    {"role": "tool", "content": "r", "tool_name": "f", "tool_call_id": "c1"},
]
_CHAT = {
    "messages": _NATIVE_MESSAGES,
    "tools": [_TOOL],
    "format": _SCHEMA,
    "options": _OPTIONS,
    "keep_alive": "5m",
    "think": False,
    "stream": False,
}
_OPENAI_CHAT = {
    "messages": [
        {"role": "system", "content": "s"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hi"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{IMAGE}"}},
            ],
        },
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "r"},
    ],
    "tools": [_TOOL],
    "response_format": {"type": "json_schema", "json_schema": {"schema": _SCHEMA}},
    "stream": False,
    "stream_options": {"include_usage": True},
    "max_tokens": 16,
    "temperature": 0.5,
    "stop": ["x"],
    "seed": 1,
    "reasoning_effort": "low",
}
_RESPONSES = {
    "instructions": "be brief",
    "input": [
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "hi"},
                {"type": "input_image", "image_url": f"data:image/png;base64,{IMAGE}"},
            ],
        },
        {"type": "reasoning", "encrypted_content": "x", "summary": [{"type": "t", "text": "t"}]},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": '{"a":1}'},
        {"type": "function_call_output", "call_id": "c", "output": "r"},
        {"role": "user", "content": "and?"},
    ],
    "tools": [
        {"type": "function", "name": "f", "description": "d", "parameters": _SCHEMA},
        {"type": "namespace", "name": "ns", "tools": [{"type": "function", "name": "g"}]},
    ],
    "text": {"format": {"type": "json_schema", "name": "n", "schema": _SCHEMA}},
    "reasoning": {"effort": "low"},
    "max_output_tokens": 16,
    "stream": False,
}
_ANTHROPIC = {
    "max_tokens": 16,
    "system": [{"type": "text", "text": "s"}],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hi"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": IMAGE},
                },
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "t", "signature": "s"},
                {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": "x"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "t1",
                    "content": [{"type": "text", "text": "r"}],
                }
            ],
        },
    ],
    "tools": [{"name": "f", "description": "d", "input_schema": _SCHEMA}],
    "tool_choice": {"type": "auto"},
    "thinking": {"type": "enabled", "budget_tokens": 1024},
    "stream": False,
    "temperature": 0.5,
    "stop_sequences": ["x"],
    "metadata": {"user_id": "u"},
}
RICH: dict[str, dict[str, Any]] = {
    "/api/chat": _CHAT,
    "/api/generate": {
        "prompt": "hi",
        "system": "s",
        "suffix": "",
        "images": [IMAGE],
        "context": [1, 2],
        "raw": False,
        "format": "json",
        "options": _OPTIONS,
        "keep_alive": 60,
        "stream": False,
    },
    "/v1/chat/completions": _OPENAI_CHAT,
    "/v1/completions": {
        "prompt": "hi",
        "max_tokens": 8,
        "stop": ["x"],
        "suffix": "s",
        "logprobs": 1,
    },
    "/v1/responses": _RESPONSES,
    "/v1/messages": _ANTHROPIC,
    "/api/embed": {"input": ["a", "b"], "truncate": True, "dimensions": 8, "options": {}},
    "/api/embeddings": {"prompt": "a", "keep_alive": "1m"},
    "/v1/embeddings": {"input": ["a"], "dimensions": 8, "encoding_format": "float"},
    "/api/show": {"verbose": True},
    "/api/pull": {"stream": False, "insecure": False},
    "/api/push": {"stream": False},
    "/api/create": {
        "from": "llama3.2",
        "system": "s",
        "template": "t",
        "parameters": {"temperature": 0.5},
        "messages": [{"role": "user", "content": "hi"}],
        "license": "MIT",
        "info": {"parameter_size": "1B", "context_length": 8},
        "stream": False,
    },
    "/api/copy": {"destination": "fuzz-copy"},
    "/api/delete": {},
    "/jobs": {
        **_CHAT,
        "state_webhook_url": "http://127.0.0.1:9/hook",
        "metadata": {"n": 1},
        "priority": "batch",
    },
}


_LENGTHS = frozenset({"num_predict", "max_tokens", "max_output_tokens"})


def _parts(value: Any, where: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Where each part of ``value`` is: the keys and indexes leading to it."""
    found = [where] if where else []
    if isinstance(value, dict):
        for key, inner in value.items():
            found += _parts(inner, (*where, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += _parts(inner, (*where, index))
    return found


def _replaced(value: Any, where: tuple[Any, ...], new: Any, remove: bool) -> Any:
    if not where:
        return new
    head, rest = where[0], where[1:]
    if isinstance(value, dict):
        if remove and not rest:
            return {k: v for k, v in value.items() if k != head}
        return {k: _replaced(v, rest, new, remove) if k == head else v for k, v in value.items()}
    copy = list(value)
    if remove and not rest:
        del copy[head]
    else:
        copy[head] = _replaced(copy[head], rest, new, remove)
    return copy


@st.composite
def rich(draw: st.DrawFn, path: str) -> dict[str, Any]:
    """The route's richest body, with up to two parts replaced or removed."""
    route = unquote(path)
    document: dict[str, Any] = {"model": draw(st.sampled_from(MODELS[:6]))}
    if route.endswith("embed") or route.endswith("embeddings"):
        document["model"] = draw(st.sampled_from(["all-minilm", "nomic-embed-text", "llama3.2"]))
    if route == "/api/copy":
        document = {"source": document["model"]}
    if route == "/jobs":
        document["endpoint"] = draw(st.sampled_from(["chat", "chat", "generate", "/v1/messages"]))
    document.update(RICH.get(route, {}))
    for _ in range(draw(st.integers(0, 2))):
        parts = _parts(document)
        if not parts:
            break
        where = draw(st.sampled_from(parts))
        # A reply's length stays short: the simulator would generate a huge one.
        new = draw(st.integers(-2, 16) if where[-1] in _LENGTHS else replacements)
        document = _replaced(document, where, new, draw(st.integers(0, 5)) == 0)
    return document


# --- other bodies ------------------------------------------------------------------------

_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from(MODELS),
    "messages": st.just(_NATIVE_MESSAGES),
    "prompt": st.text(max_size=40),
    "stream": st.booleans(),
    "options": st.just(_OPTIONS),
    "keep_alive": st.sampled_from([0, -1, "5m", "1h30m", "10", "forever", 3.5]),
    "format": st.sampled_from(["json", "", "xml", _SCHEMA]),
    "think": st.sampled_from([True, False, "high", "extreme"]),
    "endpoint": st.sampled_from(["chat", "generate", "/v1/messages", "/v1/chat/completions", "x"]),
    "state_webhook_url": st.sampled_from(["http://127.0.0.1:9/hook", "ftp://x", "http://"]),
    "priority": st.sampled_from(["interactive", "batch", " Batch ", "urgent"]),
    "max_tokens": st.integers(-3, 40),
    "input": st.one_of(st.text(max_size=20), st.lists(st.text(max_size=10), max_size=3)),
}


@st.composite
def shaped_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A request-like object: known fields, each well or wrongly typed, keys in any case."""
    names = draw(st.lists(st.sampled_from(sorted(_FIELDS)), max_size=6, unique=True))
    document: dict[str, Any] = {}
    for name in names:
        wrong = draw(st.integers(0, 4)) == 0
        key = name.upper() if draw(st.integers(0, 15)) == 0 else name
        document[key] = draw(json_values if wrong else _FIELDS[name])
    return document


@st.composite
def deep_bodies(draw: st.DrawFn) -> bytes:
    depth = draw(st.sampled_from(DEPTHS))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    inner = opener * depth + b"1" + closer * depth
    if draw(st.booleans()):
        inner = inner[: len(inner) - draw(st.integers(1, 3))]  # broken: unclosed
    where = draw(st.sampled_from(["top", "messages", "options", "format", "metadata", "input"]))
    if where == "top":
        return inner
    model = json.dumps(draw(st.sampled_from(MODELS)))
    return b'{"model":' + model.encode() + b',"' + where.encode() + b'":' + inner + b"}"


@st.composite
def broken_json(draw: st.DrawFn) -> bytes:
    text = dumps_json(draw(shaped_documents()))
    cut = draw(st.integers(0, len(text)))
    noise = draw(st.binary(max_size=3))
    return text[:cut] + noise + text[cut + draw(st.integers(0, 2)) :]


def _multipart(fields: dict[str, bytes]) -> bytes:
    parts = [
        b'--fuzz\r\nContent-Disposition: form-data; name="' + name.encode() + b'"\r\n\r\n' + value
        for name, value in fields.items()
    ]
    return b"\r\n".join(parts) + b"\r\n--fuzz--\r\n"


forms = st.dictionaries(
    st.sampled_from(["model", "file", "language", "x"]),
    st.one_of(st.sampled_from([m.encode() for m in MODELS]), st.binary(max_size=30)),
    max_size=3,
).map(_multipart)

_TOO_LARGE = b'{"model":"llama3.2","prompt":"' + b"x" * (BODY_LIMIT + 10) + b'"}'
_BODIES: list[Any] = [
    *[lambda path: rich(path).map(dumps_json)] * 10,
    lambda path: shaped_documents().map(dumps_json),
    lambda path: json_values.map(dumps_json),
    lambda path: broken_json(),
    lambda path: broken_json(),
    lambda path: deep_bodies(),
    lambda path: deep_bodies(),
    lambda path: st.sampled_from([None, b""]),
    lambda path: st.binary(max_size=200),
    lambda path: forms,
    lambda path: st.just(_TOO_LARGE),
]


def bodies(path: str) -> st.SearchStrategy[bytes | None]:
    """A body for a call to ``path``: mostly its own, harmed; sometimes anything."""
    return st.integers(0, len(_BODIES) - 1).flatmap(lambda choice: _BODIES[choice](path))

"""What the simulated models say: deterministic replies, tool calls and embeddings.

Nothing here is random. A reply echoes the words of the last user message
(or the prompt) in a cycle, so a test can predict it exactly:
``"Why is the sky blue?"`` with 6 tokens gives
``"Why is the sky blue? Why"``. With ``token_size`` N every token's text is
exactly N characters, for bulk-transfer tests.
"""

from __future__ import annotations

import hashlib
import json
import math
from array import array
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import attrs

#: Used when the prompt has no words at all.
FALLBACK_WORDS = ("Hello", "from", "the", "simulated", "Ollama.")

#: Tokens a chat template adds around each message (role markers and the like).
TEMPLATE_TOKENS_PER_MESSAGE = 4

_VOCABULARY = 128256


def words_of(text: str) -> list[str]:
    return text.split() or list(FALLBACK_WORDS)


def count_tokens(text: str) -> int:
    """The simulator's tokenizer: one token per whitespace-separated word."""
    return len(text.split())


def prompt_token_count(texts: Sequence[str]) -> int:
    """Prompt tokens for a rendered conversation of ``texts`` (one per message)."""
    return sum(count_tokens(t) + TEMPLATE_TOKENS_PER_MESSAGE for t in texts) or 1


def _fit(text: str, size: int) -> str:
    """Repeat or cut ``text`` to exactly ``size`` characters."""
    if size <= 0:
        return text
    return (text * (size // len(text) + 1))[:size]


def word_tokens(words: Sequence[str], count: int, token_size: int = 0) -> Iterator[str]:
    """``count`` tokens cycling through ``words``; the first without a leading space."""
    for i in range(count):
        word = words[i % len(words)]
        yield _fit(word if i == 0 else " " + word, token_size)


def thinking_token_count(reply_tokens: int) -> int:
    return max(1, reply_tokens // 2)


def thinking_tokens(words: Sequence[str], reply_tokens: int, token_size: int = 0) -> Iterator[str]:
    """What a thinking model "thinks": ``Thinking about`` and then the prompt's words."""
    return word_tokens(
        ["Thinking", "about", *words], thinking_token_count(reply_tokens), token_size
    )


def json_tokens(document: str, count: int, token_size: int = 0) -> Iterator[str]:
    """Split a JSON document into about ``count`` tokens (or ``token_size`` pieces)."""
    size = token_size if token_size > 0 else max(1, math.ceil(len(document) / max(count, 1)))
    for start in range(0, len(document), size):
        yield document[start : start + size]


# --- structured output and tool arguments ------------------------------------


def value_for_schema(schema: object, words: Sequence[str], depth: int = 0) -> Any:
    """A plausible value matching a JSON Schema fragment."""
    if not isinstance(schema, dict) or depth > 6:
        return " ".join(words[:3])
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind is None and isinstance(schema.get("properties"), dict):
        kind = "object"
    if kind == "object":
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return {}
        return {name: value_for_schema(sub, words, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        return [value_for_schema(schema.get("items"), words, depth + 1)]
    if kind == "integer":
        return 42
    if kind == "number":
        return 4.2
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return " ".join(words[:3])


def structured_document(format_value: object, words: Sequence[str], reply_tokens: int) -> str:
    """Valid JSON for ``format: "json"`` or a JSON Schema object."""
    if isinstance(format_value, dict):
        value = value_for_schema(format_value, words)
    else:
        value = {"response": "".join(word_tokens(words, reply_tokens))}
    return json.dumps(value, ensure_ascii=False)


def is_structured(format_value: object) -> bool:
    return format_value == "json" or isinstance(format_value, dict)


def tool_call(tool: dict[str, Any], words: Sequence[str], seed: str) -> dict[str, Any]:
    """The call a model makes to ``tool``, shaped like Ollama's ``api.ToolCall``."""
    function = tool.get("function") or {}
    name = function.get("name") or "tool"
    parameters = function.get("parameters") or {}
    arguments = value_for_schema({**parameters, "type": "object"}, words) if parameters else {}
    digest = hashlib.sha256(f"{seed}\0{name}".encode()).digest()
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    call_id = "call_" + "".join(alphabet[b % len(alphabet)] for b in digest[:8])
    return {"id": call_id, "function": {"index": 0, "name": name, "arguments": arguments}}


# --- replies -----------------------------------------------------------------------


@attrs.frozen
class Piece:
    """One generated token's worth of output."""

    kind: Literal["thinking", "content", "tool_calls"]
    text: str = ""
    tool_calls: tuple[dict[str, Any], ...] = ()


@attrs.frozen
class ReplyPlan:
    """What a generation will produce, decided before the first token."""

    words: tuple[str, ...]
    reply_tokens: int
    token_size: int
    think: bool
    done_reason: str
    tool: dict[str, Any] | None = None
    format_value: object = None
    seed: str = ""

    def pieces(self) -> Iterator[Piece]:
        if self.think:
            for text in thinking_tokens(self.words, self.reply_tokens, self.token_size):
                yield Piece("thinking", text)
        if self.tool is not None:
            yield Piece("tool_calls", tool_calls=(tool_call(self.tool, self.words, self.seed),))
            return
        if is_structured(self.format_value):
            document = structured_document(self.format_value, self.words, self.reply_tokens)
            for text in json_tokens(document, self.reply_tokens, self.token_size):
                yield Piece("content", text)
            return
        for text in word_tokens(self.words, self.reply_tokens, self.token_size):
            yield Piece("content", text)


def plan_reply(
    *,
    source_text: str,
    reply_tokens: int,
    num_predict: int | None,
    token_size: int,
    think: bool,
    tools: Sequence[dict[str, Any]] = (),
    answering_tool_result: bool = False,
    format_value: object = None,
) -> ReplyPlan:
    """Decide a reply: a tool call when tools are offered (unless the last
    message is a tool result), else ``num_predict`` tokens cut at the limit
    (``done_reason: "length"``) or ``reply_tokens`` ending naturally."""
    words = tuple(words_of(source_text))
    tool = tools[0] if tools and not answering_tool_result else None
    count, reason = reply_tokens, "stop"
    if (
        tool is None
        and not is_structured(format_value)
        and num_predict is not None
        and num_predict > 0
    ):
        count, reason = num_predict, "length"
    return ReplyPlan(words, count, token_size, think, reason, tool, format_value, source_text)


def context_ids(seed: str, count: int) -> list[int]:
    """Token ids for ``/api/generate``'s ``context`` (prompt and reply)."""
    start = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:4], "big")
    return [(start + i * 7919) % _VOCABULARY for i in range(count)]


# --- embeddings --------------------------------------------------------------------


def raw_embedding(model_key: str, text: str, dimensions: int) -> list[float]:
    """The runner's un-normalised vector (float32 values), a hash of model and text."""
    stream = hashlib.shake_256(f"{model_key}\0{text}".encode()).digest(4 * dimensions)
    integers = array("I")
    integers.frombytes(stream)
    return list(array("f", (n / 2**31 - 1.0 for n in integers)))


def normalize(vector: Sequence[float]) -> list[float]:
    """Ollama's ``normalize``: L2 norm 1, in float32."""
    norm = math.sqrt(sum(v * v for v in vector))
    scale = 1.0 / max(norm, 1e-12)
    return list(array("f", (v * scale for v in vector)))

"""The tokens Ollama counted for one reply, in whichever dialect it answered.

Ollama counts a generation's tokens itself and says so at the end of its
reply, in the dialect of the call:

- native (``/api/chat``, ``/api/generate``, ``/api/embed``): ``prompt_eval_count``
  and ``eval_count`` at the top of the whole reply, or of a stream's last line
  (Go's ``omitempty`` leaves out a zero, a prompt read from the cache);
- OpenAI (``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``):
  ``usage.prompt_tokens`` and ``usage.completion_tokens``; a stream has them in
  its last chunk only when the caller asked (``stream_options.include_usage``);
- OpenAI's ``/v1/responses``: ``usage.input_tokens`` and ``usage.output_tokens``,
  streamed inside the ``response.completed`` event's ``response``;
- Anthropic (``/v1/messages``): ``usage.input_tokens`` and ``usage.output_tokens``;
  a stream's ``message_delta`` carries them at its end (Ollama puts both there;
  Anthropic's own API leaves the input count in ``message_start``, the first event).

A stream is read from its end backwards, line by line, and only a line that
names a count is parsed; its first piece is looked at only for an input count
the end did not carry. Pure functions, never an exception: a reply that says
nothing countable gives ``None``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import attrs

#: Lines of a stream's end looked at, at most, before giving up.
MOST_LINES = 64
#: What a line must contain to be worth parsing.
_MARKS = (b'usage"', b'eval_count"')


@attrs.frozen
class TokenCounts:
    #: The prompt tokens Ollama read (``prompt_eval_count``, ``prompt_tokens``, ``input_tokens``).
    prompt: int
    #: The tokens it generated (``eval_count``, ``completion_tokens``, ``output_tokens``).
    output: int


def counts_in_reply(body: bytes) -> TokenCounts | None:
    """The counts of a reply received whole (a ``stream: false`` answer); a
    body that is not one JSON document is read as a stream."""
    try:
        document = json.loads(body)
    except ValueError:
        return counts_in_stream(body)
    prompt, output = _counts(document)
    if prompt is None and output is None:
        return None
    return TokenCounts(prompt or 0, output or 0)


def counts_in_stream(tail: bytes, head: bytes = b"") -> TokenCounts | None:
    """The counts of a relayed stream (NDJSON, or Server-Sent Events), from
    ``tail``, its last lines, and, for an input count the end lacks, ``head``,
    its first lines."""
    prompt: int | None = None
    output: int | None = None
    for document in _documents(_lines_backwards(tail)):
        prompt, output = _counts(document)
        if prompt is not None or output is not None:
            break
    else:
        return None
    if prompt is None:
        for document in _documents(_lines_forwards(head)):
            found, _ = _counts(document)
            if found is not None:
                prompt = found
                break
    return TokenCounts(prompt or 0, output or 0)


def _counts(document: Any) -> tuple[int | None, int | None]:
    """(prompt, output) as ``document`` states them; ``None`` for what it does not."""
    if not isinstance(document, dict):
        return None, None
    if "eval_count" in document or "prompt_eval_count" in document:
        return _count(document, "prompt_eval_count"), _count(document, "eval_count")
    for holder in (document, document.get("response"), document.get("message")):
        # The reply's own usage; a streamed response's (response.completed);
        # Anthropic's message_start.
        usage = holder.get("usage") if isinstance(holder, dict) else None
        if isinstance(usage, dict):
            prompt = _count(usage, "prompt_tokens")
            if prompt is None:
                prompt = _count(usage, "input_tokens")
            output = _count(usage, "completion_tokens")
            if output is None:
                output = _count(usage, "output_tokens")
            if prompt is not None or output is not None:
                return prompt, output
    return None, None


def _count(document: dict[str, Any], key: str) -> int | None:
    value = document.get(key)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _documents(lines: Iterator[bytes]) -> Iterator[Any]:
    """The JSON of each line that may hold a count: an NDJSON line, or an
    event's ``data:``."""
    for seen, line in enumerate(lines):
        if seen >= MOST_LINES:
            return
        line = line.strip()
        if line.startswith(b"data:"):
            line = line[5:].lstrip()
        if not line.startswith(b"{") or not any(mark in line for mark in _MARKS):
            continue
        try:
            yield json.loads(line)
        except ValueError:
            continue


def _lines_backwards(text: bytes) -> Iterator[bytes]:
    """The non-empty lines of ``text``, last first, without splitting it all."""
    end = len(text)
    while end > 0:
        start = text.rfind(b"\n", 0, end) + 1
        if text[start:end].strip():
            yield text[start:end]
        end = start - 1


def _lines_forwards(text: bytes) -> Iterator[bytes]:
    start = 0
    while start < len(text):
        end = text.find(b"\n", start)
        if end < 0:
            end = len(text)
        if text[start:end].strip():
            yield text[start:end]
        start = end + 1

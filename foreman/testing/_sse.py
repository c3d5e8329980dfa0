"""Server-sent events as Ollama's dialect writers frame them.

OpenAI chat and completion streams are bare ``data:`` frames ending in
``data: [DONE]``; Anthropic messages and OpenAI responses streams name
each event. Every frame is compact Go JSON followed by a blank line, and
none carries an ``id:`` or a comment.
"""

from __future__ import annotations

from foreman.wire.gojson import dumps

#: The OpenAI stream's end marker.
DONE = b"data: [DONE]\n\n"


def data_frame(value: object) -> bytes:
    """``data: <json>`` and a blank line."""
    return b"data: " + dumps(value).encode("utf-8") + b"\n\n"


def event_frame(event: str, value: object) -> bytes:
    """``event: <name>``, ``data: <json>`` and a blank line."""
    return f"event: {event}\ndata: {dumps(value)}\n\n".encode()

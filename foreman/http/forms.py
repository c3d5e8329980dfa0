"""Reading one field of a ``multipart/form-data`` body (``/v1/audio/transcriptions``).

Only the small text fields matter to foreman (``model``); the body itself is
relayed to Ollama as it came, so this parse never has to be complete.
"""

from __future__ import annotations

from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP


def form_field(content_type: bytes | None, body: bytes, name: str) -> str | None:
    """The text of form field ``name``, or ``None`` when there is none to read."""
    if not content_type or not content_type.lower().startswith(b"multipart/form-data"):
        return None
    head = b"Content-Type: " + content_type + b"\r\nMIME-Version: 1.0\r\n\r\n"
    try:
        message = BytesParser(policy=HTTP).parsebytes(head + body)
    except Exception:
        return None
    if not message.is_multipart():
        return None
    for part in message.iter_parts():
        if (
            isinstance(part, Message)
            and part.get_param("name", header="content-disposition") == name
        ):
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                text = payload.decode("utf-8", "replace").strip()
                return text or None
    return None

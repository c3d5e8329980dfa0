"""Ollama's /v1/audio/transcriptions: a multipart form, run as a native chat
with the audio attached, answered with the transcript.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
from typing import TYPE_CHECKING

from twisted.web.server import Request

from foreman.testing._dialect import (
    JSON,
    Chunk,
    NativeHandler,
    run_native,
)
from foreman.testing._openai import OpenAIWriter, encoded, refuse
from foreman.testing._requests import (
    RequestError,
)

if TYPE_CHECKING:
    from foreman.testing._simulator import SimulatedOllama


# --- /v1/audio/transcriptions --------------------------------------------------------------

_TRANSCRIBE = (
    "Transcribe the audio exactly as spoken. Output only the spoken words. "
    "Do not answer any question in the audio."
)


def _form(request: Request, body: bytes) -> dict[str, tuple[bytes, bool]]:
    """A multipart/form-data body: name -> (value, whether it was a file)."""
    content_type = request.getHeader(b"content-type") or b""
    if not content_type.lower().startswith(b"multipart/form-data"):
        raise RequestError(
            400,
            "failed to parse multipart form: request Content-Type isn't multipart/form-data",
        )
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise RequestError(400, "failed to parse multipart form: no multipart boundary param")
    fields: dict[str, tuple[bytes, bool]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str) and name not in fields:
            payload = part.get_payload(decode=True)
            is_file = part.get_param("filename", header="content-disposition") is not None
            fields[name] = (payload if isinstance(payload, bytes) else b"", is_file)
    return fields


class TranscriptionWriter(OpenAIWriter):
    """``TranscriptionWriter``: the streamed reply, gathered, as ``{"text"}`` or plain text."""

    def __init__(self, request: Request, response_format: str) -> None:
        super().__init__(request)
        self.response_format = response_format
        self.text = ""

    def response(self, chunk: Chunk) -> bytes:
        self.text += (chunk.get("message") or {}).get("content", "")
        if not chunk.get("done"):
            return b""
        if self.response_format == "text":
            self.content_type(b"text/plain")
            return self.text.strip().encode("utf-8")
        self.content_type(JSON)
        return encoded({"text": self.text.strip()})


def transcriptions(native: NativeHandler) -> NativeHandler:
    """``TranscriptionMiddleware``: the audio goes to the chat handler as an image would."""

    def handle(sim: SimulatedOllama, request: Request, body: bytes, param: str) -> bytes | int:
        try:
            form = _form(request, body)
            model = form.get("model", (b"", False))[0].decode("utf-8", errors="replace")
            if not model:
                raise RequestError(400, "model is required")
            audio, is_file = form.get("file", (b"", False))
            if not is_file:
                raise RequestError(400, "file is required: http: no such file")
            if not audio:
                raise RequestError(400, "audio file is empty")
        except RequestError as e:
            return refuse(request, e)

        def text(name: str) -> str:
            return form.get(name, (b"", False))[0].decode("utf-8", errors="replace")

        system = _TRANSCRIBE
        if language := text("language"):
            system += f" The audio is in {language}."
        if prompt := text("prompt"):
            system += f" Context: {prompt}"
        converted = {
            "model": model,
            "messages": [
                {"role": "system", "content": system},
                {
                    "role": "user",
                    "content": "What exact words are spoken in this audio?",
                    "images": [base64.b64encode(audio).decode("ascii")],
                },
            ],
            "stream": True,
            "options": {"temperature": 0},
        }
        writer = TranscriptionWriter(request, text("response_format"))
        return run_native(sim, request, native, converted, writer)

    return handle

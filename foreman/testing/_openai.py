"""Ollama's OpenAI dialect: ``/v1/chat/completions``, ``/v1/completions``,
``/v1/embeddings``, ``/v1/models`` and ``/v1/models/:model``.

Each handler is a middleware in front of a native handler, as in Ollama
(``middleware/openai.go``, ``openai/openai.go``): it binds the OpenAI body
(refusing it with gin's ``application/json; charset=utf-8`` and OpenAI's
error shape), converts it to a native request, and runs the native handler
behind a writer that re-encodes each native object. No field of the
OpenAI request reaches ``keep_alive``: a fresh load gets the default, a
loaded model keeps what it had.

Two things are the simulator's own: ids come from the simulator's seeded
generator, and ``max_tokens`` only caps the reply (see
:func:`cap_reply`).
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.web.server import Request

from foreman.testing._dialect import (
    EVENT_STREAM,
    JSON,
    Chunk,
    DialectWriter,
    NativeHandler,
    abort_json,
    bind,
    random_int,
    run_native,
    unix_seconds,
)
from foreman.testing._openai_requests import (
    CHAT_REQUEST,
    COMPLETION_REQUEST,
    EMBED_REQUEST,
    cap_reply,
    from_chat_request,
    from_completion_request,
)
from foreman.testing._requests import (
    RequestError,
)
from foreman.testing._sse import DONE, data_frame
from foreman.wire.gojson import dumps, float_array

if TYPE_CHECKING:
    from foreman.testing._simulator import SimulatedOllama


FINGERPRINT = "fp_ollama"

# --- errors ------------------------------------------------------------------------------


def error_type(status: int) -> str:
    if status == 400:
        return "invalid_request_error"
    if status == 404:
        return "not_found_error"
    return "api_error"


def error_object(status: int, message: str) -> dict[str, Any]:
    """``openai.NewError``: the type follows the status; ``param`` and ``code`` are null."""
    return {"error": {"message": message, "type": error_type(status), "param": None, "code": None}}


def refuse(request: Request, error: RequestError) -> bytes:
    return abort_json(request, error.status, error_object(error.status, error.message))


class OpenAIWriter(DialectWriter):
    def error(self, status: int, message: str) -> bytes:
        self.content_type(JSON)
        return encoded(error_object(status, message))


def encoded(value: object) -> bytes:
    """Go's ``json.NewEncoder(w).Encode``: compact JSON and a newline."""
    return (dumps(value) + "\n").encode("utf-8")


# --- re-encoding responses -------------------------------------------------------------------


def openai_tool_calls(calls: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """``ToToolCalls``: arguments as a JSON string, ``type: function``."""
    return [
        {
            "id": call.get("id", ""),
            "index": (call.get("function") or {}).get("index", 0),
            "type": "function",
            "function": {
                "name": (call.get("function") or {}).get("name", ""),
                "arguments": dumps((call.get("function") or {}).get("arguments") or {}),
            },
        }
        for call in calls or []
    ]


def usage(chunk: Chunk) -> dict[str, int]:
    prompt = chunk.get("prompt_eval_count", 0)
    completion = chunk.get("eval_count", 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


class ChatWriter(OpenAIWriter):
    """``ChatWriter``: one completion, or a stream of chunks ending ``[DONE]``."""

    def __init__(
        self,
        request: Request,
        now: Callable[[], float],
        completion_id: str,
        stream: bool,
        include_usage: bool,
    ) -> None:
        super().__init__(request)
        self.now = now
        self.id = completion_id
        self.stream = stream
        self.include_usage = include_usage
        self.created: int | None = None
        self.first_sent = False
        self.tool_call_sent = False

    def _created(self, chunk: Chunk) -> int:
        created_at = chunk.get("created_at")
        return unix_seconds(created_at) if created_at else int(self.now())

    def response(self, chunk: Chunk) -> bytes:
        message = chunk.get("message") or {}
        if not self.stream:
            self.content_type(JSON)
            calls = openai_tool_calls(message.get("tool_calls"))
            reason = chunk.get("done_reason") or ""
            if reason == "stop" and calls:
                reason = "tool_calls"
            reply: dict[str, Any] = {
                "role": message.get("role", ""),
                "content": message.get("content", ""),
            }
            if message.get("thinking"):
                reply["reasoning"] = message["thinking"]
            if calls:
                reply["tool_calls"] = calls
            return encoded(
                {
                    "id": self.id,
                    "object": "chat.completion",
                    "created": self._created(chunk),
                    "model": chunk.get("model", ""),
                    "system_fingerprint": FINGERPRINT,
                    "choices": [{"index": 0, "message": reply, "finish_reason": reason or None}],
                    "usage": usage(chunk),
                }
            )
        self.content_type(EVENT_STREAM)
        if self.created is None:
            # OpenAI stamps one ``created`` on every chunk of a stream.
            self.created = self._created(chunk)
        done = bool(chunk.get("done"))
        out = b""
        empty_trailer = (
            done
            and self.first_sent
            and not message.get("content")
            and not message.get("thinking")
            and not message.get("tool_calls")
            and not chunk.get("logprobs")
        )
        if not empty_trailer:
            for piece in self._chunks(chunk, message, include_role=not self.first_sent):
                if piece["choices"][0]["delta"].get("tool_calls"):
                    self.tool_call_sent = True
                out += data_frame(piece)
            self.first_sent = True
        if done:
            reason = chunk.get("done_reason") or "stop"
            if reason == "stop" and self.tool_call_sent:
                reason = "tool_calls"
            finish = self._chunk(chunk, {}, reason)
            out += data_frame(finish)
            if self.include_usage:
                out += data_frame({**finish, "choices": [], "usage": usage(chunk)})
            out += DONE
        return out

    def _chunk(self, chunk: Chunk, delta: dict[str, Any], reason: str | None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": chunk.get("model", ""),
            "system_fingerprint": FINGERPRINT,
            "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
        }

    def _chunks(
        self, chunk: Chunk, message: dict[str, Any], *, include_role: bool
    ) -> list[dict[str, Any]]:
        """``ToStreamChunks``: thinking and content of one object go in two chunks."""
        role = {"role": "assistant"} if include_role else {}
        content = message.get("content", "")
        thinking = message.get("thinking", "")
        calls = openai_tool_calls(message.get("tool_calls"))
        if thinking and (content or calls):
            reasoning = {**role, "reasoning": thinking}
            rest: dict[str, Any] = {"content": content}
            if calls:
                rest["tool_calls"] = calls
            return [self._chunk(chunk, reasoning, None), self._chunk(chunk, rest, None)]
        delta: dict[str, Any] = {**role, "content": content}
        if thinking:
            delta["reasoning"] = thinking
        if calls:
            delta["tool_calls"] = calls
        return [self._chunk(chunk, delta, None)]


class CompletionWriter(OpenAIWriter):
    """``CompleteWriter``: each native object is one chunk; ``finish_reason`` on the last."""

    def __init__(
        self,
        request: Request,
        now: Callable[[], float],
        completion_id: str,
        stream: bool,
        include_usage: bool,
    ) -> None:
        super().__init__(request)
        self.now = now
        self.id = completion_id
        self.stream = stream
        self.include_usage = include_usage

    def response(self, chunk: Chunk) -> bytes:
        choice = {
            "text": chunk.get("response", ""),
            "index": 0,
            "finish_reason": chunk.get("done_reason") or None,
        }
        if not self.stream:
            self.content_type(JSON)
            created_at = chunk.get("created_at")
            return encoded(
                {
                    "id": self.id,
                    "object": "text_completion",
                    "created": unix_seconds(created_at) if created_at else 0,
                    "model": chunk.get("model", ""),
                    "system_fingerprint": FINGERPRINT,
                    "choices": [choice],
                    "usage": usage(chunk),
                }
            )
        self.content_type(EVENT_STREAM)
        piece: dict[str, Any] = {
            "id": self.id,
            "object": "text_completion",
            "created": int(self.now()),
            "choices": [choice],
            "model": chunk.get("model", ""),
            "system_fingerprint": FINGERPRINT,
        }
        if self.include_usage:
            # Ollama puts zero usage on every chunk when usage was asked for.
            piece["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        out = data_frame(piece)
        if chunk.get("done"):
            if self.include_usage:
                out += data_frame({**piece, "choices": [], "usage": usage(chunk)})
            out += DONE
        return out


class EmbeddingWriter(OpenAIWriter):
    """``EmbedWriter``: float32 arrays, or their little-endian bytes in base64."""

    def __init__(self, request: Request, model: str, encoding_format: str) -> None:
        super().__init__(request)
        self.model = model
        self.base64 = encoding_format.lower() == "base64"

    def response(self, chunk: Chunk) -> bytes:
        self.content_type(JSON)
        vectors = chunk.get("embeddings")
        if vectors is None:
            return encoded(
                {
                    "object": "",
                    "data": None,
                    "model": "",
                    "usage": {"prompt_tokens": 0, "total_tokens": 0},
                }
            )
        items = []
        for index, vector in enumerate(vectors):
            if self.base64:
                packed = struct.pack(f"<{len(vector)}f", *vector)
                embedding = dumps(base64.b64encode(packed).decode("ascii"))
            else:
                embedding = float_array(vector, 32)
            items.append(f'{{"object":"embedding","embedding":{embedding},"index":{index}}}')
        tokens = chunk.get("prompt_eval_count", 0)
        data = "[" + ",".join(items) + "]" if items else "null"
        return (
            f'{{"object":"list","data":{data},"model":{dumps(self.model)},'
            f'"usage":{{"prompt_tokens":{tokens},"total_tokens":{tokens}}}}}\n'
        ).encode()


def namespace(name: str) -> str:
    """``model.ParseName(name).Namespace``, which ``/v1/models`` calls ``owned_by``."""
    rest = name.rsplit(":", 1)[0] if name.rfind(":") > name.rfind("/") else name
    parts = rest.split("/")
    if len(parts) >= 3:
        return parts[-2]
    if len(parts) == 2:
        return parts[0]
    return "library"


def model_object(name: str, modified_at: str | None) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": unix_seconds(modified_at) if modified_at else 0,
        "owned_by": namespace(name),
    }


class ListWriter(OpenAIWriter):
    def response(self, chunk: Chunk) -> bytes:
        self.content_type(JSON)
        models = [
            model_object(m.get("model") or m.get("name", ""), m.get("modified_at"))
            for m in chunk.get("models") or []
        ]
        # Go's nil slice: no model installed is ``"data":null``.
        return encoded({"object": "list", "data": models or None})


class RetrieveWriter(OpenAIWriter):
    def __init__(self, request: Request, model: str) -> None:
        super().__init__(request)
        self.model = model

    def response(self, chunk: Chunk) -> bytes:
        self.content_type(JSON)
        return encoded(model_object(self.model, chunk.get("modified_at")))


# --- the middlewares ---------------------------------------------------------------------


def chat_completions(native: NativeHandler) -> NativeHandler:
    """``ChatMiddleware`` in front of the native chat handler."""

    def handle(sim: SimulatedOllama, request: Request, body: bytes, param: str) -> bytes | int:
        try:
            req = bind(body, CHAT_REQUEST, "openai")
            messages = [m or {} for m in req.get("messages") or []]
            if not messages:
                raise RequestError(400, "[] is too short - 'messages'")
            converted = from_chat_request(req, messages)
        except RequestError as e:
            return refuse(request, e)
        writer = ChatWriter(
            request,
            sim.wall,
            f"chatcmpl-{random_int(sim, 999)}",
            bool(req.get("stream")),
            bool((req.get("stream_options") or {}).get("include_usage")),
        )
        return run_native(sim, request, native, cap_reply(sim, converted), writer)

    return handle


def completions(native: NativeHandler) -> NativeHandler:
    """``CompletionsMiddleware`` in front of the native generate handler."""

    def handle(sim: SimulatedOllama, request: Request, body: bytes, param: str) -> bytes | int:
        try:
            req = bind(body, COMPLETION_REQUEST, "openai")
            converted = from_completion_request(req)
        except RequestError as e:
            return refuse(request, e)
        writer = CompletionWriter(
            request,
            sim.wall,
            f"cmpl-{random_int(sim, 999)}",
            bool(req.get("stream")),
            bool((req.get("stream_options") or {}).get("include_usage")),
        )
        return run_native(sim, request, native, cap_reply(sim, converted), writer)

    return handle


def embeddings(native: NativeHandler) -> NativeHandler:
    """``EmbeddingsMiddleware`` in front of the native embed handler."""

    def handle(sim: SimulatedOllama, request: Request, body: bytes, param: str) -> bytes | int:
        try:
            req = bind(body, EMBED_REQUEST, "openai")
            encoding = req.get("encoding_format", "")
            if encoding and encoding.lower() not in ("float", "base64"):
                raise RequestError(
                    400,
                    f"Invalid value for 'encoding_format' = {encoding}. "
                    "Supported values: ['float', 'base64'].",
                )
            inputs = req.get("input")
            if inputs == "":
                inputs = [""]
            if inputs is None or inputs == []:
                raise RequestError(400, "invalid input")
        except RequestError as e:
            return refuse(request, e)
        converted: dict[str, Any] = {"model": req.get("model", ""), "input": inputs}
        if req.get("dimensions"):
            converted["dimensions"] = req["dimensions"]
        writer = EmbeddingWriter(request, req.get("model", ""), encoding)
        return run_native(sim, request, native, converted, writer)

    return handle


def list_models(native: NativeHandler) -> NativeHandler:
    """``ListMiddleware`` in front of the native tags handler."""

    def handle(sim: SimulatedOllama, request: Request, body: bytes, param: str) -> bytes | int:
        return run_native(sim, request, native, None, ListWriter(request))

    return handle


def retrieve_model(native: NativeHandler) -> NativeHandler:
    """``RetrieveMiddleware`` in front of the native show handler (``param`` is the name)."""

    def handle(sim: SimulatedOllama, request: Request, body: bytes, param: str) -> bytes | int:
        return run_native(sim, request, native, {"name": param}, RetrieveWriter(request, param))

    return handle

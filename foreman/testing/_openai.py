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
import binascii
import email.parser
import email.policy
import json
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
    go_type_name,
    random_int,
    run_native,
    unix_seconds,
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
    _struct,
)
from foreman.testing._sse import DONE, data_frame
from foreman.wire.gojson import dumps, float_array

if TYPE_CHECKING:
    from foreman.testing._simulator import SimulatedOllama

Handler = Callable[["SimulatedOllama", Request, bytes, str], "bytes | int"]

FINGERPRINT = "fp_ollama"

FLOAT32 = GoType("float32", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))

# --- the request structs (openai/openai.go) -------------------------------------------

TOOL_CALL = _struct(
    "openai.ToolCall",
    id=STRING,
    index=INT,
    type=STRING,
    function=_struct("struct", name=STRING, arguments=STRING),
)
MESSAGE = _struct(
    "openai.Message",
    role=STRING,
    content=ANY,
    reasoning=STRING,
    tool_calls=SliceOf("[]openai.ToolCall", lambda v: True, element=TOOL_CALL),
    name=STRING,
    tool_call_id=STRING,
)
STREAM_OPTIONS = _struct("openai.StreamOptions", include_usage=BOOL)
CHAT_REQUEST = _struct(
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
    response_format=_struct(
        "openai.ResponseFormat",
        type=STRING,
        json_schema=_struct("openai.JsonSchema", schema=ANY),
    ),
    tools=SliceOf("[]api.Tool", lambda v: True, element=TOOL),
    reasoning=_struct("openai.Reasoning", effort=STRING),
    reasoning_effort=STRING,
    logprobs=BOOL,
    top_logprobs=INT,
)
COMPLETION_REQUEST = _struct(
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
EMBED_REQUEST = _struct(
    "EmbedRequest", input=ANY, model=STRING, dimensions=INT, encoding_format=STRING
)


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
            arguments = json.loads(function.get("arguments") or "")
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


def chat_completions(native: NativeHandler) -> Handler:
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
            sim.clock.seconds,
            f"chatcmpl-{random_int(sim, 999)}",
            bool(req.get("stream")),
            bool((req.get("stream_options") or {}).get("include_usage")),
        )
        return run_native(sim, request, native, cap_reply(sim, converted), writer)

    return handle


def completions(native: NativeHandler) -> Handler:
    """``CompletionsMiddleware`` in front of the native generate handler."""

    def handle(sim: SimulatedOllama, request: Request, body: bytes, param: str) -> bytes | int:
        try:
            req = bind(body, COMPLETION_REQUEST, "openai")
            converted = from_completion_request(req)
        except RequestError as e:
            return refuse(request, e)
        writer = CompletionWriter(
            request,
            sim.clock.seconds,
            f"cmpl-{random_int(sim, 999)}",
            bool(req.get("stream")),
            bool((req.get("stream_options") or {}).get("include_usage")),
        )
        return run_native(sim, request, native, cap_reply(sim, converted), writer)

    return handle


def embeddings(native: NativeHandler) -> Handler:
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


def list_models(native: NativeHandler) -> Handler:
    """``ListMiddleware`` in front of the native tags handler."""

    def handle(sim: SimulatedOllama, request: Request, body: bytes, param: str) -> bytes | int:
        return run_native(sim, request, native, None, ListWriter(request))

    return handle


def retrieve_model(native: NativeHandler) -> Handler:
    """``RetrieveMiddleware`` in front of the native show handler (``param`` is the name)."""

    def handle(sim: SimulatedOllama, request: Request, body: bytes, param: str) -> bytes | int:
        return run_native(sim, request, native, {"name": param}, RetrieveWriter(request, param))

    return handle


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


def transcriptions(native: NativeHandler) -> Handler:
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

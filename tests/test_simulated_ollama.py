"""The simulated Ollama's HTTP surface, driven in memory with a Clock.

``Wire`` is one HTTP/1.1 connection to the simulator's ``Site`` over a
``StringTransport``: tests see the exact bytes, can disconnect or pause the
connection, and move simulated time with ``clock.advance``. The other
``test_simulated_ollama_*`` modules reuse it.
"""

from __future__ import annotations

import hashlib
import json
import math
import socket
from typing import Any

import attrs
import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from foreman.testing import DEFAULT_MODELS, RecordedRequest, SimModel, SimulatedOllama

# --- the harness ----------------------------------------------------------------------


@attrs.frozen
class Reply:
    status: int
    headers: dict[str, list[str]]
    body: bytes
    complete: bool

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)

    def lines(self) -> list[Any]:
        assert self.body.endswith(b"\n") or not self.body
        raw = self.body.split(b"\n")[:-1]
        assert all(raw), "blank line in NDJSON"
        return [json.loads(line) for line in raw]


def parse_response(data: bytes, *, to_head: bool = False) -> Reply | None:
    """Parse one HTTP/1.1 response (possibly still arriving) from raw bytes."""
    head, separator, rest = data.partition(b"\r\n\r\n")
    if not separator:
        return None
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    status = int(status_line.split()[1])
    if to_head:
        return Reply(status, headers, b"", True)
    if headers.get("transfer-encoding") == ["chunked"]:
        pieces, complete, position = [], False, 0
        while position < len(rest):
            end = rest.find(b"\r\n", position)
            if end == -1:
                break
            size = int(rest[position:end], 16)
            if size == 0:
                complete = True
                break
            if len(rest) < end + 2 + size + 2:
                break
            pieces.append(rest[end + 2 : end + 2 + size])
            position = end + 2 + size + 2
        return Reply(status, headers, b"".join(pieces), complete)
    length = int(headers.get("content-length", ["0"])[0])
    return Reply(status, headers, rest[:length], len(rest) >= length)


class PausingTransport(StringTransport):
    """A transport whose buffer "fills" at ``limit`` bytes, pausing its producer."""

    def __init__(self, limit: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.limit = limit
        self.pauses = 0
        self.full = False

    def write(self, data: bytes) -> None:
        super().write(data)
        if (
            self.limit is not None
            and len(self.value()) > self.limit
            and self.producer is not None
            and not self.full
        ):
            self.pauses += 1
            self.full = True
            self.producer.pauseProducing()

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def drain(self) -> bytes:
        """Let the "network" take everything and resume the producer."""
        data: bytes = self.value()
        self.clear()
        if self.producer is not None and self.full:
            self.full = False
            self.producer.resumeProducing()
        return data


class Wire:
    """One in-memory HTTP connection to ``sim``."""

    def __init__(self, sim: SimulatedOllama, clock: Clock, *, limit: int | None = None) -> None:
        self.transport = PausingTransport(
            limit,
            hostAddress=IPv4Address("TCP", "127.0.0.1", 11434),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 50123),
        )
        self.protocol = sim.site(clock).buildProtocol(self.transport.getPeer())
        assert self.protocol is not None
        self.protocol.makeConnection(self.transport)
        self.received = b""
        self.method = ""

    def send(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        host: str | None = "localhost:11434",
        headers: dict[str, str] | None = None,
    ) -> None:
        if body is None:
            data = b""
        elif isinstance(body, bytes):
            data = body
        else:
            data = json.dumps(body).encode()
        self.method = method
        lines = [f"{method} {path} HTTP/1.1"]
        if host is not None:
            lines.append(f"Host: {host}")
        lines.append(f"Content-Length: {len(data)}")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.protocol.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode() + data)

    def reply(self) -> Reply | None:
        self.received += self.transport.drain()
        return parse_response(self.received, to_head=self.method == "HEAD")

    def pause(self) -> None:
        """Stop reading, as a slow client does (the server's transport pauses)."""
        assert self.transport.producer is not None
        self.transport.producer.pauseProducing()

    def resume(self) -> None:
        assert self.transport.producer is not None
        self.transport.producer.resumeProducing()

    def disconnect(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone("client went away")))


def call(
    sim: SimulatedOllama, clock: Clock, method: str, path: str, body: object = None, **kwargs: Any
) -> Reply:
    """Send one request and return its (complete) response."""
    wire = Wire(sim, clock)
    wire.send(method, path, body, **kwargs)
    reply = wire.reply()
    assert reply is not None and reply.complete, reply
    return reply


def chat_body(
    model: str = "llama3.2", text: str = "Why is the sky blue?", **extra: Any
) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sim(clock: Clock) -> SimulatedOllama:
    return SimulatedOllama(clock)


# --- general endpoints ------------------------------------------------------------------


def test_root_says_ollama_is_running(sim: SimulatedOllama, clock: Clock) -> None:
    reply = call(sim, clock, "GET", "/")
    assert (reply.status, reply.body) == (200, b"Ollama is running")
    assert reply.header("content-type") == "text/plain; charset=utf-8"
    assert reply.header("server") is None  # gin sends none

    head = call(sim, clock, "HEAD", "/")
    assert (head.status, head.body) == (200, b"")


def test_version(clock: Clock) -> None:
    sim = SimulatedOllama(clock, version="0.9.9")
    reply = call(sim, clock, "GET", "/api/version")
    assert reply.body == b'{"version":"0.9.9"}'
    assert reply.header("content-type") == "application/json; charset=utf-8"


def test_unknown_path_and_wrong_method(sim: SimulatedOllama, clock: Clock) -> None:
    missing = call(sim, clock, "GET", "/api/nothing")
    assert (missing.status, missing.body) == (404, b"404 page not found")
    assert missing.header("content-type") == "text/plain"
    wrong = call(sim, clock, "GET", "/api/chat")
    assert (wrong.status, wrong.body) == (405, b"405 method not allowed")
    assert call(sim, clock, "POST", "/api/tags").status == 405


@pytest.mark.parametrize(
    "host",
    [
        "localhost:11434",
        "localhost",
        "127.0.0.1:11434",
        "[::1]:11434",
        "10.0.0.7",
        "192.168.1.2:80",
        "172.20.0.1",
        "0.0.0.0:11434",
        "ollama.localhost",
        "mac.local",
        "host.docker.internal:11434",
        socket.gethostname(),
        "",
    ],
)
def test_host_check_accepts_local_hosts(sim: SimulatedOllama, clock: Clock, host: str) -> None:
    assert call(sim, clock, "GET", "/api/version", host=host).status == 200


@pytest.mark.parametrize(
    "host", ["example.com", "8.8.8.8:11434", "ollama.example:11434", "localhost.evil.com", "[::1]"]
)
def test_host_check_refuses_other_hosts(sim: SimulatedOllama, clock: Clock, host: str) -> None:
    reply = call(sim, clock, "POST", "/api/chat", chat_body(), host=host)
    assert (reply.status, reply.body) == (403, b"")
    assert reply.header("content-type") is None
    # The guard runs before routing, as gin's middleware does.
    assert call(sim, clock, "GET", "/nowhere", host=host).status == 403
    assert sim.loads == 0


def test_options_preflight_from_a_local_host(sim: SimulatedOllama, clock: Clock) -> None:
    reply = call(sim, clock, "OPTIONS", "/api/chat")
    assert (reply.status, reply.body) == (204, b"")


def test_host_check_can_be_disabled(clock: Clock) -> None:
    sim = SimulatedOllama(clock, check_host=False)
    assert call(sim, clock, "GET", "/", host="example.com").status == 200


def test_requests_are_recorded_byte_for_byte(sim: SimulatedOllama, clock: Clock) -> None:
    body = b'{"model": "llama3.2",  "messages": [], "x": "\xc3\xa9"}'
    call(sim, clock, "POST", "/api/chat?trace=1", body, headers={"Authorization": "Bearer s3cret"})
    [recorded] = sim.requests
    assert isinstance(recorded, RecordedRequest)
    assert (recorded.method, recorded.path, recorded.uri) == (
        "POST",
        "/api/chat",
        "/api/chat?trace=1",
    )
    assert recorded.body == body
    assert recorded.header("authorization") == "Bearer s3cret"
    assert recorded.header("Host") == "localhost:11434"


# --- tags, show, ps -----------------------------------------------------------------


def test_tags_lists_installed_models(sim: SimulatedOllama, clock: Clock) -> None:
    models = call(sim, clock, "GET", "/api/tags").json()["models"]
    assert [m["name"] for m in models] == [m.name for m in DEFAULT_MODELS]
    first = models[0]
    assert list(first) == ["name", "model", "modified_at", "size", "digest", "details"]
    assert first["model"] == "llama3.2:latest"
    assert first["modified_at"] == "2025-06-01T00:00:00Z"
    assert len(first["digest"]) == 64 and int(first["digest"], 16) >= 0
    assert first["details"] == {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "3.2B",
        "quantization_level": "Q4_K_M",
    }
    assert call(sim, clock, "HEAD", "/api/tags").status == 200


def test_show_describes_capabilities(sim: SimulatedOllama, clock: Clock) -> None:
    shown = call(sim, clock, "POST", "/api/show", {"model": "qwen3:8b"}).json()
    assert shown["capabilities"] == ["completion", "tools", "thinking"]
    assert shown["model_info"]["general.architecture"] == "qwen3"
    assert shown["model_info"]["qwen3.context_length"] == 40960
    assert shown["modelfile"].startswith('# Modelfile generated by "ollama show"')
    assert {"license", "parameters", "template", "details", "modified_at"} <= set(shown)

    legacy = call(sim, clock, "POST", "/api/show", {"name": "nomic-embed-text"}).json()
    assert legacy["capabilities"] == ["embedding"]
    gemma = call(sim, clock, "POST", "/api/show", {"model": "gemma3:12b"}).json()
    assert gemma["capabilities"] == ["completion", "vision"]


def test_show_errors(sim: SimulatedOllama, clock: Clock) -> None:
    missing = call(sim, clock, "POST", "/api/show", {"model": "mistral"})
    assert (missing.status, missing.json()) == (404, {"error": "model 'mistral:latest' not found"})
    required = call(sim, clock, "POST", "/api/show", {})
    assert (required.status, required.json()) == (400, {"error": "model is required"})


def test_ps_is_empty_before_any_load(sim: SimulatedOllama, clock: Clock) -> None:
    assert call(sim, clock, "GET", "/api/ps").json() == {"models": []}


# --- chat and generate ------------------------------------------------------------------


def test_chat_streams_ndjson_by_default(sim: SimulatedOllama, clock: Clock) -> None:
    clock.advance(1_750_000_000.25)
    reply = call(sim, clock, "POST", "/api/chat", chat_body())
    assert reply.status == 200
    assert reply.header("content-type") == "application/x-ndjson"
    assert reply.header("transfer-encoding") == "chunked"
    *chunks, final = reply.lines()
    assert len(chunks) == 12
    assert chunks[0] == {
        "model": "llama3.2",
        "created_at": "2025-06-15T15:06:40.25Z",
        "message": {"role": "assistant", "content": "Why"},
        "done": False,
    }
    text = "".join(c["message"]["content"] for c in chunks)
    assert text == "Why is the sky blue? Why is the sky blue? Why is"
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["message"] == {"role": "assistant", "content": ""}
    assert final["prompt_eval_count"] == 9 and final["eval_count"] == 12
    # Zero durations are omitted, as Go's omitempty does (no time passed).
    assert "eval_duration" not in final and "load_duration" not in final
    assert list(final)[:5] == ["model", "created_at", "message", "done", "done_reason"]
    assert sim.completed_generations == 1 and sim.active_generations == 0


def test_chat_stream_false_concatenates(sim: SimulatedOllama, clock: Clock) -> None:
    reply = call(sim, clock, "POST", "/api/chat", chat_body(stream=False, text="one two"))
    assert reply.header("content-type") == "application/json; charset=utf-8"
    assert reply.header("content-length") == str(len(reply.body))
    body = reply.json()
    assert body["message"] == {
        "role": "assistant",
        "content": "one two one two one two one two one two one two",
    }
    assert body["done"] is True and body["done_reason"] == "stop"


def test_reply_follows_the_last_user_message(sim: SimulatedOllama, clock: Clock) -> None:
    body = {
        "model": "llama3.2",
        "stream": False,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "answer"},
            {"role": "USER", "content": "alpha beta"},
        ],
        "options": {"num_predict": 3},
    }
    reply = call(sim, clock, "POST", "/api/chat", body).json()
    assert reply["message"]["content"] == "alpha beta alpha"
    assert reply["done_reason"] == "length" and reply["eval_count"] == 3


def test_generate_streams_response_and_context(sim: SimulatedOllama, clock: Clock) -> None:
    reply = call(sim, clock, "POST", "/api/generate", {"model": "llama3.2", "prompt": "hi there"})
    *chunks, final = reply.lines()
    assert chunks[0] == {
        "model": "llama3.2",
        "created_at": "1970-01-01T00:00:00Z",
        "response": "hi",
        "done": False,
    }
    assert final["response"] == "" and final["done_reason"] == "stop"
    assert len(final["context"]) == final["prompt_eval_count"] + final["eval_count"]
    assert all(isinstance(t, int) for t in final["context"])

    raw = call(
        sim,
        clock,
        "POST",
        "/api/generate",
        {"model": "llama3.2", "prompt": "x", "raw": True, "stream": False},
    ).json()
    assert "context" not in raw and raw["response"].startswith("x x")


def test_token_size_makes_every_token_that_long(clock: Clock) -> None:
    sim = SimulatedOllama(clock, token_size=7, reply_tokens=5)
    *chunks, _ = call(sim, clock, "POST", "/api/chat", chat_body(text="a bb")).lines()
    assert [c["message"]["content"] for c in chunks] == [
        "aaaaaaa",
        " bb bb ",
        " a a a ",
        " bb bb ",
        " a a a ",
    ]
    big = call(
        sim,
        clock,
        "POST",
        "/api/generate",
        {"model": "llama3.2", "prompt": "x", "stream": False, "options": {"num_predict": 1000}},
    )
    assert len(big.json()["response"]) == 7000


def test_thinking_models_think_unless_told_not_to(sim: SimulatedOllama, clock: Clock) -> None:
    *chunks, _ = call(sim, clock, "POST", "/api/chat", chat_body("qwen3:8b", "sky")).lines()
    thinking = [c["message"]["thinking"] for c in chunks if "thinking" in c["message"]]
    assert "".join(thinking) == "Thinking about sky Thinking about sky"  # reply_tokens // 2
    assert chunks[0]["message"] == {"role": "assistant", "content": "", "thinking": "Thinking"}
    # Thinking comes first, then the answer.
    assert "thinking" not in chunks[-1]["message"]

    off = call(
        sim, clock, "POST", "/api/chat", chat_body("qwen3:8b", "sky", think=False, stream=False)
    ).json()
    assert "thinking" not in off["message"]
    generated = call(
        sim,
        clock,
        "POST",
        "/api/generate",
        {"model": "qwen3:8b", "prompt": "sky", "think": "high", "stream": False},
    ).json()
    assert generated["thinking"].startswith("Thinking about sky")


def test_think_on_a_model_without_thinking(sim: SimulatedOllama, clock: Clock) -> None:
    reply = call(sim, clock, "POST", "/api/chat", chat_body("llama3.2", think=True))
    assert (reply.status, reply.json()) == (400, {"error": '"llama3.2" does not support thinking'})
    bad = call(sim, clock, "POST", "/api/chat", chat_body(think="extreme"))
    assert bad.json()["error"].startswith('invalid think value: "extreme"')
    assert sim.loads == 0


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "required": ["city"],
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
        },
    },
}


def test_tools_produce_a_tool_call(sim: SimulatedOllama, clock: Clock) -> None:
    *chunks, final = call(
        sim, clock, "POST", "/api/chat", chat_body(text="Paris weather", tools=[WEATHER_TOOL])
    ).lines()
    [calling] = chunks
    assert calling["message"]["content"] == ""
    [tool_call] = calling["message"]["tool_calls"]
    assert tool_call["id"].startswith("call_") and len(tool_call["id"]) == 13
    assert tool_call["function"] == {
        "index": 0,
        "name": "get_weather",
        "arguments": {"city": "Paris weather", "days": 42, "unit": "celsius"},
    }
    assert final["done_reason"] == "stop"

    whole = call(
        sim,
        clock,
        "POST",
        "/api/chat",
        chat_body(text="Paris weather", tools=[WEATHER_TOOL], stream=False),
    ).json()
    assert whole["message"]["tool_calls"] == [tool_call]  # deterministic


def test_a_tool_result_gets_a_text_answer(sim: SimulatedOllama, clock: Clock) -> None:
    body = chat_body(text="weather?", tools=[WEATHER_TOOL], stream=False)
    body["messages"] += [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
    ]
    reply = call(sim, clock, "POST", "/api/chat", body).json()
    assert (
        reply["message"]["content"].startswith("weather?") and "tool_calls" not in reply["message"]
    )


def test_tools_on_a_model_without_tools(sim: SimulatedOllama, clock: Clock) -> None:
    reply = call(sim, clock, "POST", "/api/chat", chat_body("gemma3:12b", tools=[WEATHER_TOOL]))
    assert reply.status == 400
    assert reply.json() == {"error": "registry.ollama.ai/library/gemma3:12b does not support tools"}


def test_format_json_gives_valid_json(sim: SimulatedOllama, clock: Clock) -> None:
    plain = call(sim, clock, "POST", "/api/chat", chat_body(format="json", stream=False)).json()
    assert json.loads(plain["message"]["content"]) == {
        "response": "Why is the sky blue? Why is the sky blue? Why is"
    }
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
    }
    *chunks, _ = call(
        sim,
        clock,
        "POST",
        "/api/generate",
        {"model": "llama3.2", "prompt": "Ann Lee", "format": schema},
    ).lines()
    assert json.loads("".join(c["response"] for c in chunks)) == {
        "name": "Ann Lee",
        "age": 42,
        "tags": ["Ann Lee"],
    }


def test_an_unknown_format_fails_after_the_load(sim: SimulatedOllama, clock: Clock) -> None:
    reply = call(sim, clock, "POST", "/api/chat", chat_body(format="xml"))
    assert reply.status == 500
    assert reply.json() == {
        "error": 'invalid format: "\\"xml\\""; expected "json" or a valid JSON Schema object'
    }
    assert reply.header("content-type") == "application/json"
    assert sim.loads == 1 and sim.residency.runners()[0].ref_count == 0


def test_output_is_html_escaped_like_go(sim: SimulatedOllama, clock: Clock) -> None:
    reply = call(sim, clock, "POST", "/api/chat", chat_body(text="<b>&", stream=False))
    assert b"\\u003cb\\u003e\\u0026" in reply.body and b"<" not in reply.body


def test_images_are_accepted(sim: SimulatedOllama, clock: Clock) -> None:
    body = chat_body("gemma3:12b", stream=False)
    body["messages"][0]["images"] = ["iVBORw0KGgo="]
    assert call(sim, clock, "POST", "/api/chat", body).status == 200
    body["messages"][0]["images"] = ["not base64!"]
    bad = call(sim, clock, "POST", "/api/chat", body)
    assert (bad.status, bad.json()) == (400, {"error": "illegal base64 data at input byte 3"})


# --- load and unload calls --------------------------------------------------------------


def test_empty_chat_loads_and_keep_alive_zero_unloads(sim: SimulatedOllama, clock: Clock) -> None:
    loaded = call(sim, clock, "POST", "/api/chat", {"model": "llama3.2", "messages": []})
    assert loaded.header("content-type") == "application/json; charset=utf-8"
    assert loaded.json() == {
        "model": "llama3.2",
        "created_at": "1970-01-01T00:00:00Z",
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "load",
    }
    assert (sim.loads, sim.loaded_models()) == (1, ["llama3.2:latest"])
    assert sim.completed_generations == 0

    unloaded = call(
        sim, clock, "POST", "/api/chat", {"model": "llama3.2", "messages": [], "keep_alive": 0}
    ).json()
    assert unloaded["done_reason"] == "unload"
    assert (sim.unloads, sim.loaded_models()) == (1, [])


def test_empty_generate_loads_and_unloads(sim: SimulatedOllama, clock: Clock) -> None:
    loaded = call(sim, clock, "POST", "/api/generate", {"model": "qwen3:8b"}).json()
    assert loaded == {
        "model": "qwen3:8b",
        "created_at": "1970-01-01T00:00:00Z",
        "response": "",
        "done": True,
        "done_reason": "load",
    }
    unloaded = call(
        sim, clock, "POST", "/api/generate", {"model": "qwen3:8b", "keep_alive": "0s"}
    ).json()
    assert unloaded["done_reason"] == "unload" and sim.loaded_models() == []
    # Unloading a model that is not loaded still says "unload".
    again = call(sim, clock, "POST", "/api/generate", {"model": "qwen3:8b", "keep_alive": 0})
    assert again.json()["done_reason"] == "unload" and sim.unloads == 1


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/api/chat", b"", 400, "missing request body"),
        ("/api/chat", b"  \n", 400, "missing request body"),
        ("/api/chat", b"{", 400, "unexpected EOF"),
        ("/api/chat", b"xyz", 400, "invalid character 'x' looking for beginning of value"),
        (
            "/api/chat",
            b'{"model": "a",}',
            400,
            "invalid character '}' looking for beginning of object key string",
        ),
        (
            "/api/chat",
            b"[]",
            400,
            "json: cannot unmarshal array into Go value of type api.ChatRequest",
        ),
        (
            "/api/chat",
            b'{"model": 7}',
            400,
            "json: cannot unmarshal number into Go struct field ChatRequest.model of type string",
        ),
        (
            "/api/chat",
            b'{"model": "llama3.2", "messages": "hi"}',
            400,
            "json: cannot unmarshal string into Go struct field ChatRequest.messages of type "
            "[]api.Message",
        ),
        (
            "/api/chat",
            b'{"model": "llama3.2", "messages": [{"content": 1}]}',
            400,
            "json: cannot unmarshal number into Go struct field "
            "ChatRequest.messages.content of type string",
        ),
        (
            "/api/generate",
            b'{"model": "llama3.2", "stream": "yes"}',
            400,
            "json: cannot unmarshal string into Go struct field "
            "GenerateRequest.stream of type bool",
        ),
        (
            "/api/chat",
            b'{"model": "llama3.2", "keep_alive": true}',
            400,
            "Unsupported type: 'bool'",
        ),
        (
            "/api/chat",
            b'{"model": "llama3.2", "keep_alive": []}',
            400,
            "Unsupported type: '[]interface {}'",
        ),
        (
            "/api/chat",
            b'{"model": "llama3.2", "keep_alive": "5"}',
            400,
            'time: missing unit in duration "5"',
        ),
        (
            "/api/chat",
            b'{"model": "llama3.2", "keep_alive": "soon"}',
            400,
            'time: invalid duration "soon"',
        ),
        (
            "/api/chat",
            b'{"model": "llama3.2", "top_logprobs": 21}',
            400,
            "top_logprobs must be between 0 and 20",
        ),
        ("/api/chat", b'{"messages": []}', 400, "model is required"),
        ("/api/chat", b'{"model": "bad name!"}', 400, "invalid model name"),
        ("/api/chat", b'{"model": "nope"}', 404, "model 'nope' not found"),
        ("/api/generate", b'{"prompt": "x"}', 404, "model '' not found"),
        ("/api/generate", b'{"model": "nope", "prompt": "x"}', 404, "model 'nope' not found"),
        (
            "/api/embed",
            b'{"model": "nope", "input": "x"}',
            404,
            'model "nope" not found, try pulling it first',
        ),
        ("/api/embed", b'{"model": "all-minilm", "input": 3}', 400, "invalid input type"),
        ("/api/embed", b'{"model": "all-minilm", "input": ["a", 3]}', 400, "invalid input type"),
        ("/api/embeddings", b'{"prompt": "x"}', 400, "model is required"),
        (
            "/api/chat",
            b'{"model": "nomic-embed-text", "messages": []}',
            400,
            '"nomic-embed-text" does not support chat',
        ),
        (
            "/api/generate",
            b'{"model": "all-minilm", "prompt": "x"}',
            400,
            '"all-minilm" does not support generate',
        ),
        (
            "/api/generate",
            b'{"model": "llama3.2", "prompt": "x", "suffix": "y"}',
            400,
            "registry.ollama.ai/library/llama3.2:latest does not support insert",
        ),
        (
            "/api/generate",
            b'{"model": "llama3.2", "prompt": "x", "raw": true, "system": "s"}',
            400,
            "raw mode does not support template, system, or context",
        ),
        (
            "/api/chat",
            b'{"model": "llama3.2", "options": {"num_predict": "ten"}}',
            500,
            'option "num_predict" must be of type integer',
        ),
    ],
)
def test_error_shapes(
    sim: SimulatedOllama, clock: Clock, path: str, body: bytes, status: int, message: str
) -> None:
    reply = call(sim, clock, "POST", path, body)
    assert (reply.status, reply.json()) == (status, {"error": message})
    assert reply.header("content-type") == "application/json; charset=utf-8"
    assert sim.loads == 0


def test_field_names_match_case_insensitively_and_extra_fields_pass(
    sim: SimulatedOllama, clock: Clock
) -> None:
    body = b'{"MODEL": "llama3.2", "Stream": false, "messages": [], "future_field": {"a": 1}}'
    assert call(sim, clock, "POST", "/api/chat", body).json()["done_reason"] == "load"
    trailing = b'{"model": "llama3.2", "messages": []} trailing bytes are ignored'
    assert call(sim, clock, "POST", "/api/chat", trailing).status == 200


# --- embeddings ------------------------------------------------------------------------------


def test_embed_vectors_are_normalised_and_deterministic(sim: SimulatedOllama, clock: Clock) -> None:
    reply = call(
        sim, clock, "POST", "/api/embed", {"model": "all-minilm", "input": ["hello world", "other"]}
    )
    body = reply.json()
    assert list(body) == ["model", "embeddings", "prompt_eval_count"]
    assert body["model"] == "all-minilm" and body["prompt_eval_count"] == 7
    first, second = body["embeddings"]
    assert len(first) == 384 and first != second
    assert math.isclose(math.fsum(v * v for v in first), 1.0, rel_tol=1e-5)
    again = call(sim, clock, "POST", "/api/embed", {"model": "all-minilm", "input": "hello world"})
    assert again.json()["embeddings"] == [first]
    other_model = call(
        sim, clock, "POST", "/api/embed", {"model": "nomic-embed-text", "input": "hello world"}
    ).json()
    assert len(other_model["embeddings"][0]) == 768
    assert sim.load_history == ["all-minilm:latest", "nomic-embed-text:latest"]


def test_embed_dimensions_truncate_and_empty_input(sim: SimulatedOllama, clock: Clock) -> None:
    short = call(
        sim, clock, "POST", "/api/embed", {"model": "all-minilm", "input": "x", "dimensions": 8}
    ).json()
    [vector] = short["embeddings"]
    assert len(vector) == 8 and math.isclose(sum(v * v for v in vector), 1.0, rel_tol=1e-5)
    empty = call(sim, clock, "POST", "/api/embed", {"model": "all-minilm", "input": []})
    assert empty.body == b'{"model":"all-minilm","embeddings":[]}'
    long_text = " ".join(["word"] * 600)  # all-minilm has a 512-token context
    refused = call(
        sim,
        clock,
        "POST",
        "/api/embed",
        {"model": "all-minilm", "input": long_text, "truncate": False},
    )
    assert (refused.status, refused.json()) == (
        400,
        {"error": "the input length exceeds the context length"},
    )
    truncated = call(sim, clock, "POST", "/api/embed", {"model": "all-minilm", "input": long_text})
    assert truncated.json()["prompt_eval_count"] == 512


def test_legacy_embeddings_are_not_normalised(sim: SimulatedOllama, clock: Clock) -> None:
    legacy = call(
        sim, clock, "POST", "/api/embeddings", {"model": "all-minilm", "prompt": "hello"}
    ).json()["embedding"]
    modern = call(
        sim, clock, "POST", "/api/embed", {"model": "all-minilm", "input": "hello"}
    ).json()["embeddings"][0]
    norm = math.sqrt(math.fsum(v * v for v in legacy))
    assert norm > 2
    assert all(math.isclose(a / norm, b, abs_tol=1e-6) for a, b in zip(legacy, modern, strict=True))
    empty = call(sim, clock, "POST", "/api/embeddings", {"model": "all-minilm", "prompt": ""})
    assert empty.body == b'{"embedding":[]}'


def test_generation_models_can_embed(sim: SimulatedOllama, clock: Clock) -> None:
    reply = call(sim, clock, "POST", "/api/embed", {"model": "llama3.2", "input": "x"}).json()
    assert len(reply["embeddings"][0]) == 3072


# --- model management ----------------------------------------------------------------------


def test_pull_streams_statuses_and_installs(sim: SimulatedOllama, clock: Clock) -> None:
    reply = call(sim, clock, "POST", "/api/pull", {"model": "mistral:7b"})
    statuses = reply.lines()
    assert reply.header("content-type") == "application/x-ndjson"
    assert statuses[0] == {"status": "pulling manifest"}
    assert statuses[-3:] == [
        {"status": "verifying sha256 digest"},
        {"status": "writing manifest"},
        {"status": "success"},
    ]
    progress = statuses[1]
    assert progress["status"] == f"pulling {progress['digest'][7:19]}"
    assert progress["total"] == 1_000_000_000
    assert "mistral:7b" in [
        m["name"] for m in call(sim, clock, "GET", "/api/tags").json()["models"]
    ]
    quiet = call(sim, clock, "POST", "/api/pull", {"name": "mistral:7b", "stream": False})
    assert quiet.body == b'{"status":"success"}'
    assert quiet.header("content-type") == "application/json"
    invalid = call(sim, clock, "POST", "/api/pull", {})
    assert (invalid.status, invalid.json()) == (400, {"error": "invalid model name"})


def test_pulled_library_models_keep_their_description(clock: Clock) -> None:
    sim = SimulatedOllama(clock, models=[])
    call(sim, clock, "POST", "/api/pull", {"model": "qwen3:8b", "stream": False})
    [model] = sim.installed_models()
    assert model.thinking and model.size == 5225388164


def test_push(sim: SimulatedOllama, clock: Clock) -> None:
    statuses = call(sim, clock, "POST", "/api/push", {"model": "llama3.2"}).lines()
    assert statuses[0] == {"status": "retrieving manifest"}
    assert statuses[-2:] == [{"status": "pushing manifest"}, {"status": "success"}]
    # An error after the first byte is one last line, with status 200.
    failed = call(sim, clock, "POST", "/api/push", {"model": "nobody/nothing"})
    assert failed.status == 200
    assert failed.lines()[-1] == {
        "error": "open /root/.ollama/models/manifests/"
        "registry.ollama.ai/nobody/nothing/latest: "
        "no such file or directory"
    }
    quiet = call(sim, clock, "POST", "/api/push", {"model": "nothing", "stream": False})
    assert quiet.status == 500
    required = call(sim, clock, "POST", "/api/push", {})
    assert (required.status, required.json()) == (400, {"error": "model is required"})


def test_create_copy_delete(sim: SimulatedOllama, clock: Clock) -> None:
    created = call(
        sim,
        clock,
        "POST",
        "/api/create",
        {"model": "helper", "from": "qwen3:8b", "system": "You help."},
    ).lines()
    assert created[-2:] == [{"status": "writing manifest"}, {"status": "success"}]
    assert any(s["status"].startswith("creating new layer sha256:") for s in created)
    shown = call(sim, clock, "POST", "/api/show", {"model": "helper"}).json()
    assert "thinking" in shown["capabilities"]

    neither = call(sim, clock, "POST", "/api/create", {"model": "x"})
    assert (neither.status, neither.json()) == (
        400,
        {"error": "neither 'from' or 'files' was specified"},
    )

    assert (
        call(sim, clock, "POST", "/api/copy", {"source": "helper", "destination": "helper2"}).body
        == b""
    )
    missing = call(sim, clock, "POST", "/api/copy", {"source": "ghost", "destination": "g2"})
    assert (missing.status, missing.json()) == (404, {"error": 'model "ghost" not found'})

    deleted = call(sim, clock, "DELETE", "/api/delete", {"model": "helper2"})
    assert (deleted.status, deleted.body) == (200, b"")
    gone = call(sim, clock, "DELETE", "/api/delete", {"model": "helper2"})
    assert (gone.status, gone.json()) == (404, {"error": "model 'helper2' not found"})
    chat = call(sim, clock, "POST", "/api/chat", chat_body("helper2"))
    assert chat.status == 404


def test_blobs(sim: SimulatedOllama, clock: Clock) -> None:
    data = b"GGUF" + bytes(100)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert call(sim, clock, "HEAD", f"/api/blobs/{digest}").status == 404
    wrong = call(sim, clock, "POST", f"/api/blobs/{digest}", b"other bytes")
    assert wrong.status == 400
    assert wrong.json()["error"].startswith(f'digest mismatch, expected "{digest}", got "sha256:')
    assert call(sim, clock, "POST", f"/api/blobs/{digest}", data).status == 201
    assert call(sim, clock, "HEAD", f"/api/blobs/{digest}").status == 200
    assert call(sim, clock, "POST", f"/api/blobs/{digest}", data).status == 200
    invalid = call(sim, clock, "POST", "/api/blobs/sha256:xyz", data)
    assert (invalid.status, invalid.json()) == (400, {"error": "invalid digest format"})

    created = call(
        sim,
        clock,
        "POST",
        "/api/create",
        {"model": "custom", "files": {"model.gguf": digest}, "stream": False},
    )
    assert created.json() == {"status": "success"}
    assert sim.add_model is not None and any(
        m.name == "custom:latest" for m in sim.installed_models()
    )


def test_add_model_and_reset_counters(sim: SimulatedOllama, clock: Clock) -> None:
    sim.add_model(SimModel(name="tiny:1b", size=1000))
    call(sim, clock, "POST", "/api/chat", chat_body("tiny:1b"))
    assert (sim.loads, sim.completed_generations, len(sim.requests)) == (1, 1, 1)
    sim.reset_counters()
    assert (sim.loads, sim.load_history, sim.completed_generations, sim.requests) == (0, [], 0, [])
    assert sim.loaded_models() == ["tiny:1b"]


def test_the_resource_works_with_a_dummy_request(clock: Clock) -> None:
    """Tests may drive the resource without HTTP at all (``DummyRequest``)."""
    from io import BytesIO

    from twisted.web.server import NOT_DONE_YET
    from twisted.web.test.requesthelper import DummyRequest

    sim = SimulatedOllama(clock, models=[attrs.evolve(DEFAULT_MODELS[0], load_seconds=1.0)])
    request: Any = DummyRequest([b"api", b"chat"])
    request.method, request.path = b"POST", b"/api/chat"
    request.requestHeaders.setRawHeaders(b"host", [b"localhost"])
    request.content = BytesIO(json.dumps(chat_body(text="hi", stream=False)).encode())
    assert sim.resource().render(request) == NOT_DONE_YET
    assert request.written == []
    clock.advance(1.0)
    assert request.finished
    assert json.loads(b"".join(request.written))["message"]["content"].startswith("hi hi")


def test_recorded_requests_stay_bounded() -> None:
    from treq.testing import StubTreq
    from twisted.internet.task import Clock

    from foreman.testing import SimulatedOllama

    sim = SimulatedOllama(Clock(), check_host=False, max_recorded_requests=10)
    client = StubTreq(sim.resource())
    for _ in range(25):
        client.get("http://ollama.test/api/version")  # type: ignore[attr-defined]
        client.flush()
    assert 5 <= len(sim.requests) <= 10
    assert all(r.path == "/api/version" for r in sim.requests)

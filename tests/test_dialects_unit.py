"""The dialect tables foreman keeps: paths, endpoints, cloud models, error shapes."""

from __future__ import annotations

import json

import pytest

from foreman.http.dialects import broken_stream_event, error_document, retry_after
from foreman.wire.endpoints import Dialect, dialect_of, endpoint_named, is_cloud_model


@pytest.mark.parametrize(
    ("path", "dialect"),
    [
        (b"/api/chat", Dialect.OLLAMA),
        (b"/jobs", Dialect.OLLAMA),
        (b"/v1", Dialect.OPENAI),
        (b"/v1/chat/completions", Dialect.OPENAI),
        (b"/v1/messages", Dialect.ANTHROPIC),
        (b"/v1/messages/count_tokens", Dialect.ANTHROPIC),
        (b"/v1/messagesx", Dialect.OPENAI),
        (b"/v10/chat", Dialect.OLLAMA),
    ],
)
def test_the_path_decides_the_dialect(path: bytes, dialect: Dialect) -> None:
    assert dialect_of(path) is dialect


@pytest.mark.parametrize(
    ("model", "cloud"),
    [
        ("gpt-oss:120b-cloud", True),
        ("glm-4.6:cloud", True),
        ("GLM-4.6:Cloud", True),
        ("hf.co/org/model:cloud", True),
        ("llama3.2", False),
        ("cloud", False),
        ("cloud-model:latest", False),
        ("registry.local:5000/cloud", False),
    ],
)
def test_cloud_models_are_told_by_their_tag(model: str, cloud: bool) -> None:
    assert is_cloud_model(model) is cloud


def test_an_endpoint_is_found_by_name_or_by_path() -> None:
    assert endpoint_named("chat") is endpoint_named("/api/chat")
    assert endpoint_named("/v1/messages").load_path == b"/api/chat"
    assert endpoint_named("/v1/completions").load_path == b"/api/generate"
    assert not endpoint_named("/v1/audio/transcriptions").json_body
    with pytest.raises(KeyError):
        endpoint_named("/api/embed")


@pytest.mark.parametrize(
    ("dialect", "given", "sent"),
    [
        (Dialect.OLLAMA, b"300", b"300"),
        (Dialect.OPENAI, b"300", b"60"),
        (Dialect.ANTHROPIC, b"61", b"60"),
        (Dialect.ANTHROPIC, b"5", b"5"),
        (Dialect.OPENAI, b"soon", b"soon"),
    ],
)
def test_retry_after_is_capped_where_sdks_would_ignore_it(
    dialect: Dialect, given: bytes, sent: bytes
) -> None:
    assert retry_after(dialect, given) == sent


def test_error_documents_in_each_dialect() -> None:
    assert error_document(Dialect.OLLAMA, 503, "busy") == b'{"error":"busy"}'
    openai = json.loads(error_document(Dialect.OPENAI, 400, "bad"))
    assert openai == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": None}
    }
    assert json.loads(error_document(Dialect.OPENAI, 401, "no"))["error"]["type"] == "api_error"
    anthropic = json.loads(error_document(Dialect.ANTHROPIC, 503, "busy"))
    assert anthropic["error"] == {"type": "overloaded_error", "message": "busy"}
    assert json.loads(error_document(Dialect.ANTHROPIC, 418, "x"))["error"]["type"] == "api_error"


def test_a_broken_stream_ends_in_each_dialects_framing() -> None:
    assert broken_stream_event(Dialect.OLLAMA, "cut") == b'{"error":"cut"}\n'
    openai = broken_stream_event(Dialect.OPENAI, "cut")
    assert openai.startswith(b"data: {") and openai.endswith(b"}\n\n")
    anthropic = broken_stream_event(Dialect.ANTHROPIC, "cut")
    assert anthropic.startswith(b"event: error\ndata: {") and anthropic.endswith(b"}\n\n")

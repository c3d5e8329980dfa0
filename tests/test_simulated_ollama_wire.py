"""Go-compatibility helpers of the simulated Ollama: JSON, times, names, hosts."""

from __future__ import annotations

import math

import pytest

from foreman.testing import DEFAULT_MODELS, SimModel
from foreman.testing._generation import normalize, plan_reply, raw_embedding, word_tokens
from foreman.testing._hosts import allowed_host, split_host_port
from foreman.testing._models import display_shortest, full_name, is_valid_name, parameter_count
from foreman.testing._requests import CHAT, RequestError, check_options, decode
from foreman.wire.gojson import (
    MAX_DURATION_NS,
    EmptyBody,
    GoJSONError,
    dumps,
    format_float,
    loads,
    rfc3339,
    rfc3339_ns,
)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "unexpected EOF"),
        (b'{"a"', "unexpected EOF"),
        (b'{"a" 1}', "invalid character '1' after object key"),
        (b'{"a":1 "b":2}', "invalid character '\"' after object key:value pair"),
        (b"[1 2]", "invalid character '2' after array element"),
        (b"trux", "invalid character 'x' in literal true (expecting 'e')"),
        (b"nul!", "invalid character '!' in literal null (expecting 'l')"),
        (b'"a\tb"', "invalid character '\\t' in string literal"),
        (b'"\\q"', "invalid character 'q' in string escape code"),
        (b'"\\u12G4"', "invalid character 'G' in \\u hexadecimal character escape"),
        (b'{"n": -}', "invalid character '}' in numeric literal"),
        (b'{"n": 1.}', "invalid character '}' after decimal point in numeric literal"),
        (b'{"n": 1e}', "invalid character '}' in exponent of numeric literal"),
        (b"NaN", "invalid character 'N' looking for beginning of value"),
        (b"'x'", "invalid character '\\'' looking for beginning of value"),
        (b"\xef\xbb\xbf{}", "invalid character '\u00ef' looking for beginning of value"),
    ],
)
def test_decoder_errors_match_go(body: bytes, message: str) -> None:
    with pytest.raises(GoJSONError) as caught:
        loads(body)
    assert str(caught.value) == message


def test_decoder_reads_only_the_first_value() -> None:
    assert loads(b' {"a": [1, 2.5, "\xc3\xa9"]} {"ignored": true}') == {"a": [1, 2.5, "é"]}
    with pytest.raises(EmptyBody):
        loads(b" \r\n\t")


def test_encoder_is_compact_and_html_safe() -> None:
    assert (
        dumps({"a": "<x> & \u2028", "b": [1, None, True]})
        == '{"a":"\\u003cx\\u003e \\u0026 \\u2028","b":[1,null,true]}'
    )
    assert dumps({"e": "é"}) == '{"e":"é"}'


@pytest.mark.parametrize(
    ("value", "bits", "text"),
    [
        (0.0, 64, "0"),
        (0.1, 64, "0.1"),
        (1 / 3, 64, "0.3333333333333333"),
        (1 / 3, 32, "0.33333334"),
        (-0.000123, 32, "-0.000123"),
        (1e-7, 64, "1e-7"),
        (1.5e-10, 32, "1.5e-10"),
        (1e21, 64, "1e+21"),
        (123456789.0, 64, "123456789"),
        (123456789.0, 32, "123456790"),
    ],
)
def test_floats_are_formatted_like_go(value: float, bits: int, text: str) -> None:
    assert format_float(value, bits) == text


def test_times_are_rfc3339_with_trimmed_nanoseconds() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    assert rfc3339(1_700_000_000.5) == "2023-11-14T22:13:20.5Z"
    assert rfc3339_ns(1_700_000_000_000_000_007) == "2023-11-14T22:13:20.000000007Z"
    assert rfc3339_ns(MAX_DURATION_NS).startswith("2262-04-11T23:47:16.854775807")


@pytest.mark.parametrize(
    ("header", "allowed"),
    [
        (None, True),
        ("", True),
        ("localhost", True),
        ("LOCALHOST:1", True),
        ("127.0.0.2:8080", True),
        ("[::1]:11434", True),
        ("[::ffff:127.0.0.1]:1", True),
        ("10.2.3.4", True),
        ("172.31.255.255", True),
        ("172.32.0.1", False),
        ("192.168.0.1:80", True),
        ("[fd00::1]:1", True),
        ("0.0.0.0", True),
        ("a.b.localhost", True),
        ("printer.local:631", True),
        ("svc.internal", True),
        ("myhost", True),
        ("MYHOST:1", True),
        ("example.com", False),
        ("1.1.1.1", False),
        ("localhost.com", False),
        ("169.254.1.1", False),
        ("[::1]", False),  # Go cannot split "[::1]" without a port
    ],
)
def test_allowed_hosts(header: str | None, allowed: bool) -> None:
    assert allowed_host(header, hostname="myhost") is allowed


def test_split_host_port() -> None:
    assert split_host_port("a:1") == "a"
    assert split_host_port("[::1]:2") == "::1"
    assert split_host_port("::1") == "::1"
    assert split_host_port("plain") == "plain"


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("llama3.2", True),
        ("llama3.2:latest", True),
        ("library/llama3.2:3b", True),
        ("registry.ollama.ai/library/qwen3:8b", True),
        ("hf.co/user/model:Q4_K_M", True),
        ("user/model", True),
        ("", False),
        ("bad name", False),
        ("a:b:c", False),
        ("a/b/c/d", False),
        ("-dash", False),
        ("name.space/model", False),
        ("model:", False),
    ],
)
def test_model_name_validity(name: str, valid: bool) -> None:
    assert is_valid_name(name) is valid


def test_model_name_forms() -> None:
    assert display_shortest("llama3.2") == "llama3.2:latest"
    assert display_shortest("registry.ollama.ai/library/qwen3:8b") == "qwen3:8b"
    assert display_shortest("user/model") == "user/model:latest"
    assert full_name("gemma3:12b") == "registry.ollama.ai/library/gemma3:12b"
    assert full_name("user/m") == "registry.ollama.ai/user/m:latest"
    assert parameter_count("3.2B") == 3_200_000_000 and parameter_count("137M") == 137_000_000


def test_sim_model_validation_and_capabilities() -> None:
    with pytest.raises(ValueError, match="invalid model name"):
        SimModel(name="not valid!", size=1)
    with pytest.raises(ValueError, match="load_seconds"):
        SimModel(name="m", size=1, load_seconds=-1)
    names = [m.name for m in DEFAULT_MODELS]
    assert names == [
        "llama3.2:latest",
        "qwen3:8b",
        "gemma3:12b",
        "nomic-embed-text:latest",
        "all-minilm:latest",
    ]
    assert [m.capabilities() for m in DEFAULT_MODELS] == [
        ["completion", "tools"],
        ["completion", "tools", "thinking"],
        ["completion", "vision"],
        ["embedding"],
        ["embedding"],
    ]
    assert DEFAULT_MODELS[0].digest != DEFAULT_MODELS[1].digest


def test_request_decoding_normalises_field_names() -> None:
    req = decode(
        b'{"Model": "m", "KEEP_ALIVE": "1h", "messages": [{"role": "User"}], '
        b'"x": 1, "think": null}',
        CHAT,
    )
    assert req == {"model": "m", "keep_alive": 3600.0, "messages": [{"role": "User"}]}
    assert decode(b'{"keep_alive": -5}', CHAT)["keep_alive"] == math.inf
    assert decode(b"null", CHAT) == {}


def test_the_first_type_error_is_reported() -> None:
    with pytest.raises(RequestError) as caught:
        decode(b'{"stream": 1, "model": 2}', CHAT)
    assert caught.value.message == (
        "json: cannot unmarshal number into Go struct field ChatRequest.stream of type bool"
    )
    with pytest.raises(RequestError) as caught:
        decode(b'{"top_logprobs": 1.5}', CHAT)
    assert caught.value.message == (
        "json: cannot unmarshal number 1.5 into Go struct field "
        "ChatRequest.top_logprobs of type int"
    )


def test_option_types_are_checked() -> None:
    assert check_options({"num_predict": 3.0, "temperature": 1, "stop": ["x"], "foo": "bar"}) == {
        "num_predict": 3,
        "temperature": 1.0,
        "stop": ["x"],
    }
    with pytest.raises(RequestError) as caught:
        check_options({"stop": [1]})
    assert (caught.value.status, caught.value.message) == (
        500,
        'option "stop" must be of an array of strings',
    )


def test_replies_are_deterministic() -> None:
    assert list(word_tokens(["a", "b"], 3)) == ["a", " b", " a"]
    assert list(word_tokens(["abc"], 2, token_size=2)) == ["ab", " a"]
    plan = plan_reply(source_text="", reply_tokens=5, num_predict=None, token_size=0, think=False)
    assert "".join(p.text for p in plan.pieces()) == "Hello from the simulated Ollama."


def test_embeddings_are_unit_length_float32() -> None:
    raw = raw_embedding("m", "text", 16)
    assert raw == raw_embedding("m", "text", 16) != raw_embedding("m", "other", 16)
    assert all(-1 <= v < 1 for v in raw)
    unit = normalize(raw)
    assert math.isclose(math.fsum(v * v for v in unit), 1.0, rel_tol=1e-6)
    assert all(format_float(v, 32) == format_float(float(f"{v:.9g}"), 32) for v in unit)

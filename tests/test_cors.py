"""CORS as Ollama answers it (gin-contrib/cors in front of every route).

The origin policy and its headers are checked as pure functions (the matcher
also against a transcription of gin-contrib/cors's three wildcard rules);
the gate over real sockets, in front of a scripted upstream or the simulator.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from treq.client import HTTPClient
from twisted.internet.threads import deferToThread
from twisted.web.http_headers import Headers

from foreman.http.cors import (
    DEFAULT_ORIGINS,
    OriginError,
    OriginPolicy,
    Verdict,
    parse_origins,
)
from tests.conftest import RunningSimulator, StartForeman, StartScripted
from tests.http_helpers import StreamingClient, within

TOKEN = "correct horse battery staple"
PAGE = "http://localhost:5173"
STRANGER = "https://evil.example"

#: What Ollama sends on a preflight's 204 (besides Allow-Origin and Vary).
OLLAMA_ALLOW_HEADERS = (
    b"Authorization,Content-Type,User-Agent,Accept,X-Requested-With,Openai-Beta,"
    b"X-Stainless-Arch,X-Stainless-Async,X-Stainless-Custom-Poll-Interval,"
    b"X-Stainless-Helper-Method,X-Stainless-Lang,X-Stainless-Os,"
    b"X-Stainless-Package-Version,X-Stainless-Poll-Helper,X-Stainless-Retry-Count,"
    b"X-Stainless-Runtime,X-Stainless-Runtime-Version,X-Stainless-Timeout"
)
OLLAMA_ALLOW_METHODS = b"GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"
PREFLIGHT_VARY = [b"Origin", b"Access-Control-Request-Method", b"Access-Control-Request-Headers"]


# -- the origin policy --------------------------------------------------------


def test_default_origins_are_ollamas() -> None:
    assert DEFAULT_ORIGINS == (
        "http://localhost",
        "https://localhost",
        "http://localhost:*",
        "https://localhost:*",
        "http://127.0.0.1",
        "https://127.0.0.1",
        "http://127.0.0.1:*",
        "https://127.0.0.1:*",
        "http://0.0.0.0",
        "https://0.0.0.0",
        "http://0.0.0.0:*",
        "https://0.0.0.0:*",
        "app://*",
        "file://*",
        "tauri://*",
        "vscode-webview://*",
        "vscode-file://*",
    )


@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost",
        "https://localhost",
        "http://localhost:3000",
        "https://127.0.0.1:8443",
        "http://0.0.0.0:11434",
        "app://obsidian.md",
        "file://",
        "tauri://localhost",
        "vscode-webview://1b2c3d",
        "vscode-file://vscode-app",
    ],
)
def test_default_policy_allows(origin: str) -> None:
    assert OriginPolicy().allows(origin)


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "http://localhost.evil.example",
        "http://127.0.0.2",
        "http://[::1]:3000",
        "null",
        # Ollama lets these be configured, but does not allow them by default.
        "chrome-extension://abcdefghijklmnop",
        "moz-extension://0f1e2d3c",
        "safari-web-extension://abc",
        # Exact entries ignore case; the browser's origin does not get that favour.
        "HTTP://LOCALHOST",
    ],
)
def test_default_policy_refuses(origin: str) -> None:
    assert not OriginPolicy().allows(origin)


def test_extra_origins_exact_and_wildcard() -> None:
    policy = OriginPolicy(
        ["https://App.Example.com", "https://*.example.org", "chrome-extension://*", "*.test"]
    )
    assert policy.allows("https://app.example.com")
    assert policy.allows("https://docs.example.org")
    assert policy.allows("chrome-extension://abcdefghijklmnop")
    assert policy.allows("http://my.test")
    assert not policy.allows("https://example.com")
    assert not policy.allows("http://docs.example.org")
    assert policy.allows("http://localhost:8080"), "the defaults stay"


def test_star_allows_everyone_and_says_star() -> None:
    policy = OriginPolicy(["*"])
    assert policy.allows(STRANGER)
    assert policy.response_headers(STRANGER) == [(b"Access-Control-Allow-Origin", b"*")]
    preflight = dict(policy.preflight_headers(STRANGER))
    assert preflight[b"Access-Control-Allow-Origin"] == b"*"
    assert b"Vary" not in preflight


def _gin_wildcard_allows(entries: list[str], origin: str) -> bool:
    """gin-contrib/cors's parseWildcardRules and validateWildcardOrigin, transcribed."""
    for entry in entries:
        if "*" not in entry:
            continue
        i = entry.index("*")
        if i == 0:
            rule = ("*", entry[1:])
        elif i == len(entry) - 1:
            rule = (entry[:i], "*")
        else:
            rule = (entry[:i], entry[i + 1 :])
        if rule[0] == "*" and origin.endswith(rule[1]):
            return True
        if rule[1] == "*" and origin.startswith(rule[0]):
            return True
        if origin.startswith(rule[0]) and origin.endswith(rule[1]):
            return True
    return False


_ORIGIN_TEXT = st.text(alphabet="abcehlpst:/.*-0123456789", max_size=24)


@given(
    entries=st.lists(_ORIGIN_TEXT.filter(lambda e: e.count("*") == 1 and e != "*"), max_size=4),
    origin=_ORIGIN_TEXT.filter(lambda o: "*" not in o),
)
def test_wildcards_match_as_gin_contrib_does(entries: list[str], origin: str) -> None:
    policy = OriginPolicy(entries)
    expected = origin in {e.lower() for e in DEFAULT_ORIGINS if "*" not in e} or (
        _gin_wildcard_allows([*entries, *DEFAULT_ORIGINS], origin)
    )
    assert policy.allows(origin) == expected


@given(port=st.integers(min_value=1, max_value=65535), scheme=st.sampled_from(["http", "https"]))
def test_any_local_port_is_allowed(port: int, scheme: str) -> None:
    policy = OriginPolicy()
    for host in ("localhost", "127.0.0.1", "0.0.0.0"):
        assert policy.allows(f"{scheme}://{host}:{port}")


@given(host=st.from_regex(r"[a-z][a-z0-9-]{0,20}\.(com|net|org|dev)", fullmatch=True))
def test_remote_hosts_are_refused_by_default(host: str) -> None:
    policy = OriginPolicy()
    assert not policy.allows(f"https://{host}")
    assert policy.verdict(b"GET", f"https://{host}", "127.0.0.1:11435") is Verdict.REFUSED


def test_verdicts() -> None:
    policy = OriginPolicy()
    host = "192.168.1.5:11435"
    assert policy.verdict(b"OPTIONS", None, host) is Verdict.NOT_CORS
    assert policy.verdict(b"OPTIONS", "", host) is Verdict.NOT_CORS
    # A page served by this very host: not a CORS request, whatever the list says.
    assert policy.verdict(b"POST", f"http://{host}", host) is Verdict.NOT_CORS
    assert policy.verdict(b"OPTIONS", f"https://{host}", host) is Verdict.NOT_CORS
    assert policy.verdict(b"POST", "http://192.168.1.5:3000", host) is Verdict.REFUSED
    assert policy.verdict(b"OPTIONS", STRANGER, host) is Verdict.REFUSED
    assert policy.verdict(b"OPTIONS", PAGE, host) is Verdict.PREFLIGHT
    assert policy.verdict(b"POST", PAGE, host) is Verdict.ALLOWED


def test_headers_are_ollamas() -> None:
    policy = OriginPolicy()
    assert policy.preflight_headers(PAGE) == [
        (b"Access-Control-Allow-Methods", OLLAMA_ALLOW_METHODS),
        (b"Access-Control-Allow-Headers", OLLAMA_ALLOW_HEADERS),
        (b"Access-Control-Max-Age", b"43200"),
        (b"Access-Control-Allow-Origin", PAGE.encode()),
        *((b"Vary", name) for name in PREFLIGHT_VARY),
    ]
    assert policy.response_headers(PAGE) == [
        (b"Access-Control-Allow-Origin", PAGE.encode()),
        (b"Vary", b"Origin"),
    ]


def test_parse_origins() -> None:
    assert parse_origins("") == ()
    assert parse_origins(" https://a.example , ,app://*,") == ("https://a.example", "app://*")
    with pytest.raises(OriginError, match=r"only one \* is allowed"):
        parse_origins("https://*.example:*")
    with pytest.raises(OriginError, match="must contain"):
        parse_origins("example.com")
    with pytest.raises(OriginError):
        OriginPolicy(["ws://example.com"])


# -- over sockets ---------------------------------------------------------------


def _raw(port: int, request: bytes) -> bytes:
    """One request by hand, its answer read to the end (blocking; run in a thread)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def _head_lines(answer: bytes) -> list[bytes]:
    return answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def _preflight(origin: str) -> Headers:
    return Headers(
        {
            b"Origin": [origin.encode()],
            b"Access-Control-Request-Method": [b"POST"],
            b"Access-Control-Request-Headers": [b"authorization,content-type"],
        }
    )


@pytest.mark.parametrize("token", [None, TOKEN])
@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions", "/jobs", "/healthz", "/"])
@pytest_twisted.ensureDeferred
async def test_preflight_from_an_allowed_origin_is_204_without_a_token(
    start_scripted: StartScripted, http: HTTPClient, token: str | None, path: str
) -> None:
    rig = await start_scripted(token=token)
    response = await http.request("OPTIONS", rig.url(path), headers=_preflight(PAGE))
    assert response.code == 204
    headers = response.headers
    assert headers.getRawHeaders(b"access-control-allow-origin") == [PAGE.encode()]
    assert headers.getRawHeaders(b"access-control-allow-methods") == [OLLAMA_ALLOW_METHODS]
    assert headers.getRawHeaders(b"access-control-allow-headers") == [OLLAMA_ALLOW_HEADERS]
    assert headers.getRawHeaders(b"access-control-max-age") == [b"43200"]
    assert headers.getRawHeaders(b"vary") == PREFLIGHT_VARY
    assert headers.getRawHeaders(b"www-authenticate") is None
    assert await response.content() == b""
    assert rig.upstream.requests.pending == []


@pytest_twisted.ensureDeferred
async def test_preflight_on_the_wire(start_scripted: StartScripted) -> None:
    rig = await start_scripted(token=TOKEN)
    port = rig.foreman.port.getHost().port
    request = (
        b"OPTIONS /api/generate HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nOrigin: app://obsidian.md\r\n"
        b"Access-Control-Request-Method: POST\r\nConnection: close\r\n\r\n" % port
    )
    answer = await deferToThread(_raw, port, request)
    lines = _head_lines(answer)
    assert lines[0] == b"HTTP/1.1 204 No Content"
    names = [line.split(b":", 1)[0].lower() for line in lines[1:]]
    assert names.count(b"vary") == 3
    assert b"content-length" not in names
    assert b"content-type" not in names
    assert answer.endswith(b"\r\n\r\n")


@pytest.mark.parametrize("method", ["OPTIONS", "GET", "POST"])
@pytest.mark.parametrize("token", [None, TOKEN])
@pytest_twisted.ensureDeferred
async def test_a_disallowed_origin_is_403_and_empty(
    start_scripted: StartScripted, token: str | None, method: str
) -> None:
    rig = await start_scripted(token=token)
    port = rig.foreman.port.getHost().port
    request = (
        b"%s /api/tags HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nOrigin: %s\r\n"
        b"Access-Control-Request-Method: POST\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        % (method.encode(), port, STRANGER.encode())
    )
    answer = await deferToThread(_raw, port, request)
    lines = _head_lines(answer)
    assert lines[0] == b"HTTP/1.1 403 Forbidden"
    lowered = [line.lower() for line in lines[1:]]
    assert b"content-length: 0" in lowered
    assert not any(line.startswith((b"content-type", b"access-control-")) for line in lowered)
    assert not any(line.startswith(b"www-authenticate") for line in lowered)
    assert answer.endswith(b"\r\n\r\n")


@pytest_twisted.ensureDeferred
async def test_actual_calls_from_an_allowed_origin_carry_the_headers(
    start_scripted: StartScripted, http: HTTPClient
) -> None:
    rig = await start_scripted(token=TOKEN)
    origin = Headers({b"Origin": [PAGE.encode()]})
    expected = [PAGE.encode()]

    # Refused for want of the token: still readable by the page.
    refused = await http.get(rig.url("/api/tags"), headers=origin)
    assert refused.code == 401
    assert refused.headers.getRawHeaders(b"access-control-allow-origin") == expected
    assert refused.headers.getRawHeaders(b"vary") == [b"Origin"]
    assert "unauthorized" in (await refused.json())["error"]

    authorized = origin.copy()
    authorized.setRawHeaders(b"Authorization", [b"Bearer " + TOKEN.encode()])
    tags = await http.get(rig.url("/api/tags"), headers=authorized)
    assert tags.code == 200
    assert tags.headers.getRawHeaders(b"access-control-allow-origin") == expected
    assert (await tags.json())["models"][0]["name"] == "scripted:latest"

    missing = await http.get(rig.url("/nope"), headers=authorized)
    assert missing.code == 404
    assert missing.headers.getRawHeaders(b"access-control-allow-origin") == expected
    assert await missing.text() == "404 page not found"

    health = await http.get(rig.url("/healthz"), headers=origin)
    assert health.code == 200
    assert health.headers.getRawHeaders(b"access-control-allow-origin") == expected


@pytest_twisted.ensureDeferred
async def test_relayed_calls_carry_the_headers_and_origin_stays_with_foreman(
    start_scripted: StartScripted, reactor: Any
) -> None:
    extra = "https://app.example.com"
    rig = await start_scripted(origins=(extra,))
    body = json.dumps(
        {"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "think": False}
    ).encode()
    sent = rig.client.request(b"POST", rig.url("/api/chat"), body, {b"Origin": extra.encode()})
    held = await within(rig.upstream.requests.get(), 5, reactor)
    # Ollama would judge the origin again, by its own list: it is not sent on.
    assert held.headers.getRawHeaders(b"origin") is None
    held.start()
    response = await within(sent, 5, reactor)
    # The headers are on the answer before its first line.
    assert response.headers.getRawHeaders(b"access-control-allow-origin") == [extra.encode()]
    assert response.headers.getRawHeaders(b"vary") == [b"Origin"]
    reader = rig.client.read_lines(response)
    held.send(b'{"done":false}\n')
    assert await within(reader.lines.get(), 5, reactor) == b'{"done":false}'
    held.send(b'{"done":true}\n')
    held.finish()
    assert await within(reader.lines.get(), 5, reactor) == b'{"done":true}'
    await within(reader.ended, 5, reactor)


@pytest_twisted.ensureDeferred
async def test_streaming_from_the_simulator_keeps_streaming(
    reactor: Any, simulator: RunningSimulator, start_foreman: StartForeman
) -> None:
    running = await start_foreman(simulator.url)
    client = StreamingClient(reactor)
    body = json.dumps({"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]})
    response = await within(
        client.request(
            b"POST", running.url + "/api/chat", body.encode(), {b"Origin": b"tauri://localhost"}
        ),
        5,
        reactor,
    )
    assert response.code == 200
    assert response.headers.getRawHeaders(b"access-control-allow-origin") == [b"tauri://localhost"]
    reader = client.read_lines(response)
    await within(reader.ended, 10, reactor)
    lines = reader.json_lines()
    assert len(lines) > 2
    assert lines[-1]["done"] is True


@pytest_twisted.ensureDeferred
async def test_extra_origin_through_the_option(
    start_scripted: StartScripted, http: HTTPClient
) -> None:
    rig = await start_scripted(origins=("https://*.example.com",))
    allowed = await http.request(
        "OPTIONS", rig.url("/api/chat"), headers=_preflight("https://chat.example.com")
    )
    assert allowed.code == 204
    assert allowed.headers.getRawHeaders(b"access-control-allow-origin") == [
        b"https://chat.example.com"
    ]
    refused = await http.request(
        "OPTIONS", rig.url("/api/chat"), headers=_preflight("https://example.org")
    )
    assert refused.code == 403


@pytest_twisted.ensureDeferred
async def test_requests_without_origin_are_unchanged(
    start_scripted: StartScripted, http: HTTPClient
) -> None:
    rig = await start_scripted(token=TOKEN)
    options = await http.request("OPTIONS", rig.url("/api/chat"))
    assert options.code == 401
    tags = await http.get(
        rig.url("/api/tags"), headers=Headers({b"Authorization": [b"Bearer " + TOKEN.encode()]})
    )
    assert tags.code == 200
    for response in (options, tags):
        assert response.headers.getRawHeaders(b"access-control-allow-origin") is None
        assert response.headers.getRawHeaders(b"vary") is None
    # Without a token, an OPTIONS that is no preflight is Ollama's to answer.
    open_rig = await start_scripted()
    answer = http.request("OPTIONS", open_rig.url("/api/chat"))
    held = await open_rig.upstream.next_request()
    assert held.method == b"OPTIONS"
    held.start(405, b"text/plain", length=22)
    held.send(b"405 method not allowed")
    held.finish()
    assert (await answer).code == 405


@pytest_twisted.ensureDeferred
async def test_a_page_of_foremans_own_host_is_not_cors(start_scripted: StartScripted) -> None:
    rig = await start_scripted()
    port = rig.foreman.port.getHost().port

    def get(origin: bytes) -> bytes:
        return (
            b"GET /api/tags HTTP/1.1\r\nHost: foreman.lan:11435\r\nOrigin: %s\r\n"
            b"Connection: close\r\n\r\n" % origin
        )

    # The status page, say, served by foreman at a name that is in no list.
    own = await deferToThread(_raw, port, get(b"http://foreman.lan:11435"))
    assert own.startswith(b"HTTP/1.1 200 ")
    assert b"access-control-allow-origin" not in own.lower()
    other = await deferToThread(_raw, port, get(b"http://foreman.lan:3000"))
    assert other.startswith(b"HTTP/1.1 403 ")


@pytest_twisted.ensureDeferred
async def test_an_oversized_body_is_413_readable_by_an_allowed_page(
    start_scripted: StartScripted,
) -> None:
    rig = await start_scripted(max_body_size=1024)
    port = rig.foreman.port.getHost().port

    def post(origin: bytes) -> bytes:
        return (
            b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nOrigin: %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: 4096\r\n\r\n"
            % (port, origin)
            + b"x" * 4096
        )

    allowed = await deferToThread(_raw, port, post(PAGE.encode()))
    assert allowed.startswith(b"HTTP/1.1 413 ")
    head = allowed.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nAccess-Control-Allow-Origin: " + PAGE.encode() + b"\r\n" in head
    assert b"\r\nVary: Origin\r\n" in head
    refused = await deferToThread(_raw, port, post(STRANGER.encode()))
    assert refused.startswith(b"HTTP/1.1 413 ")
    assert b"access-control" not in refused.lower()

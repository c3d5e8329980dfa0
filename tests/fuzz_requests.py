"""Hypothesis strategies for hostile HTTP requests to foreman (tests/test_fuzz_http.py).

Every route foreman serves or relays, in every dialect, with random methods,
paths, queries, headers and bodies: nothing, binary, broken JSON, JSON of
the wrong shape, request-shaped JSON with fields of the wrong types, JSON
nested past every depth limit, zstd bodies (good and bad), multipart forms,
bodies over the size limit; with the token, without it, or a wrong one.

Requests stay within what an HTTP client can send (methods and header names
are tokens, values have no line breaks): the HTTP parser is Twisted's, and
the aim here is foreman's handling of what it parses.
"""

from __future__ import annotations

from urllib.parse import quote

import attrs
import zstandard
from hypothesis import strategies as st

from tests.fuzz_bodies import BODY_LIMIT, bodies, dumps_json, rich

__all__ = ["BODY_LIMIT", "TOKEN", "FuzzRequest", "requests"]

TOKEN = "fuzz-token"

JOB_ID = "01JDA9Q4V2M7Y8K3N5P6R7S8T9"
DIGEST = "sha256:" + "0" * 64


@attrs.frozen(repr=False)
class FuzzRequest:
    method: str
    #: The path and query, percent-encoded as sent.
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | None
    #: Sent chunked (no Content-Length).
    chunked: bool = False

    def __repr__(self) -> str:
        body = self.body
        shown = (
            repr(body)
            if body is None or len(body) <= 300
            else f"<{len(body)} bytes: {body[:120]!r}…>"
        )
        headers = tuple(
            (name, value if len(value) <= 100 else f"<{len(value)} characters>")
            for name, value in self.headers
        )
        return (
            f"FuzzRequest({self.method} {self.target!r}, headers={headers!r}, "
            f"body={shown}, chunked={self.chunked})"
        )

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


# --- where ---------------------------------------------------------------------------------

GENERATION_PATHS = (
    "/api/chat",
    "/api/generate",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/messages",
)
JSON_PATHS = (
    *GENERATION_PATHS,
    "/api/embed",
    "/api/embeddings",
    "/v1/embeddings",
    "/api/show",
    "/api/pull",
    "/api/push",
    "/api/create",
    "/api/copy",
    "/api/delete",
    "/jobs",
)
OTHER_PATHS = (
    "/",
    "/healthz",
    "/metrics",
    "/api/version",
    "/api/tags",
    "/api/ps",
    "/api/foreman/queue",
    "/v1/models",
    "/v1/models/llama3.2",
    "/v1/audio/transcriptions",
    "/v1/messages/count_tokens",
    f"/api/blobs/{DIGEST}",
    f"/jobs/{JOB_ID}",
    f"/jobs/{JOB_ID}/cancel",
    f"/jobs/{JOB_ID}/artifacts/completion",
    "/ui",
    "/ui/status.json",
    "/v1",
    "/api/experimental/nope",
)
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")

_segment = st.text(alphabet=st.characters(codec="utf-8"), min_size=0, max_size=12).map(
    lambda text: quote(text, safe="")
)


@st.composite
def paths(draw: st.DrawFn) -> str:
    choice = draw(st.integers(0, 10))
    if choice < 5:
        return draw(st.sampled_from(JSON_PATHS))
    if choice < 8:
        return draw(st.sampled_from(OTHER_PATHS))
    if choice == 8:
        # A known path with one character percent-encoded: the same route to gin.
        path = draw(st.sampled_from([p for p in JSON_PATHS + OTHER_PATHS if len(p) > 1]))
        at = draw(st.integers(1, len(path) - 1))
        return path[:at] + f"%{ord(path[at]):02X}" + path[at + 1 :]
    prefix = draw(st.sampled_from(("", "/api", "/v1", "/jobs", "/ui", "/v1/messages")))
    segments = draw(st.lists(_segment, min_size=1, max_size=3))
    return prefix + "/" + "/".join(segments)


_query_value = st.one_of(
    st.sampled_from(["done", "queued", "llama3.2", "1", "0", "500", "501", "-1", JOB_ID, ""]),
    st.text(max_size=30),
    st.just(JOB_ID.lower()),
)


@st.composite
def queries(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return ""
    names = st.one_of(
        st.sampled_from(["state", "model", "limit", "before", "cursor", "after"]),
        st.text(min_size=1, max_size=8),
    )
    pairs = draw(st.lists(st.tuples(names, _query_value), max_size=4))
    return "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs)


# --- headers -------------------------------------------------------------------------------

_header_name = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True)
_header_value = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40
).map(str.strip)

_RIGHT_TOKEN = (("Authorization", f"Bearer {TOKEN}"),)
_other_auth = st.sampled_from(
    [
        (),
        (("Authorization", f"bearer {TOKEN}"),),
        (("x-api-key", TOKEN),),
        (("Authorization", "Bearer wrong"),),
        (("Authorization", "Bearer"),),
        (("Authorization", f"Basic {TOKEN}"),),
    ]
)
_content_types = st.sampled_from(
    [
        "application/json",
        "text/plain",
        "multipart/form-data; boundary=fuzz",
        "multipart/form-data",
        "application/x-www-form-urlencoded",
        "application/x-ndjson",
    ]
)
_extras = st.lists(
    st.one_of(
        st.tuples(st.just("Content-Type"), _content_types),
        st.tuples(st.just("X-Foreman-Priority"), st.sampled_from(["batch", "interactive", "x"])),
        st.tuples(st.just("Idempotency-Key"), st.one_of(_header_value, st.just("k" * 300))),
        st.tuples(
            st.just("Origin"),
            st.sampled_from(["http://localhost", "https://evil.example", "null", "app://x"]),
        ),
        st.tuples(st.just("Accept"), st.sampled_from(["text/html", "*/*", "application/json"])),
        st.tuples(st.just("Content-Encoding"), st.sampled_from(["gzip", "x"])),
        st.tuples(_header_name, _header_value),
        # Past the 16 KiB of headers foreman reads: a 431.
        st.tuples(st.just("X-Big"), st.sampled_from(["x" * 4000, "x" * 20000])),
    ),
    max_size=4,
)


@st.composite
def calls(draw: st.DrawFn) -> FuzzRequest:
    """A route's own call, with the token: its body harmed in a part or two (or not)."""
    path = draw(st.sampled_from(JSON_PATHS))
    method = "DELETE" if path == "/api/delete" else "POST"
    body = draw(rich(path).map(dumps_json))
    return FuzzRequest(method=method, target=path, headers=_RIGHT_TOKEN, body=body)


def requests() -> st.SearchStrategy[FuzzRequest]:
    """Half the route's own calls, harmed; half anything."""
    return st.booleans().flatmap(lambda own: calls() if own else anything())


@st.composite
def anything(draw: st.DrawFn) -> FuzzRequest:
    path = draw(paths())
    # Mostly the route's own method, with the token: the calls that get far.
    if draw(st.integers(0, 9)) < 7:
        proper = "DELETE" if path == "/api/delete" else "POST" if path in JSON_PATHS else "GET"
        method = proper if path in JSON_PATHS or draw(st.booleans()) else "HEAD"
    else:
        method = draw(
            st.one_of(st.sampled_from(METHODS), st.from_regex(r"[A-Z]{1,8}", fullmatch=True))
        )
    auth = _RIGHT_TOKEN if draw(st.integers(0, 9)) < 7 else draw(_other_auth)
    headers = list(auth) + draw(_extras)
    body = draw(bodies(path))
    if body is not None and draw(st.integers(0, 11)) == 0:
        # Compressed as Ollama's /v1 routes accept it (or a body that only says so).
        if draw(st.booleans()):
            body = zstandard.ZstdCompressor().compress(body)
        headers.append(("Content-Encoding", "zstd"))
    return FuzzRequest(
        method=method,
        target=path + draw(queries()),
        headers=tuple(headers),
        body=body,
        chunked=body is not None and draw(st.integers(0, 5)) == 0,
    )

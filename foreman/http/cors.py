"""CORS, answered as Ollama answers it, in front of every path.

Ollama puts gin-contrib/cors in front of all its routes (``server/routes.go``,
``GenerateRoutes``; the module at v1.7.2 in Ollama's ``go.mod``), configured with
the origins of ``envconfig.AllowedOrigins`` (``OLLAMA_ORIGINS`` plus a built-in
list), wildcards on, its own list of request headers, and the middleware's
default methods and max age. What that middleware does, per request:

* No ``Origin``, or an ``Origin`` that is the request's own ``Host`` behind
  ``http://`` or ``https://``: not a CORS request; nothing is checked or added.
* An origin that is not allowed: ``403`` with an empty body, for any method and
  any path, before anything else (so before the token is looked at).
* ``OPTIONS`` from an allowed origin (a preflight; ``Access-Control-Request-Method``
  is not looked at): ``204`` with the preflight headers, the route never runs.
* Any other method from an allowed origin: the call goes on as usual, with
  ``Access-Control-Allow-Origin`` and ``Vary: Origin`` set before the handler
  runs, so they are on its answer, errors included.

The decision is a pure function (:meth:`OriginPolicy.verdict`) and the headers
are plain lists; :class:`CorsGate` is the resource that applies them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

#: Ollama's built-in origins (``envconfig.AllowedOrigins``): these hosts with
#: ``http`` and ``https``, with no port and with any port.
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "0.0.0.0")

DEFAULT_ORIGINS: tuple[str, ...] = (
    *(
        f"{scheme}://{host}{port}"
        for host in _LOCAL_HOSTS
        for port in ("", ":*")
        for scheme in ("http", "https")
    ),
    "app://*",
    "file://*",
    "tauri://*",
    "vscode-webview://*",
    "vscode-file://*",
)

#: The request headers a page may send (Ollama's ``AllowHeaders``, as it lists them).
_REQUEST_HEADERS = (
    "Authorization",
    "Content-Type",
    "User-Agent",
    "Accept",
    "X-Requested-With",
    # The OpenAI client libraries' headers.
    "OpenAI-Beta",
    "x-stainless-arch",
    "x-stainless-async",
    "x-stainless-custom-poll-interval",
    "x-stainless-helper-method",
    "x-stainless-lang",
    "x-stainless-os",
    "x-stainless-package-version",
    "x-stainless-poll-helper",
    "x-stainless-retry-count",
    "x-stainless-runtime",
    "x-stainless-runtime-version",
    "x-stainless-timeout",
)

#: gin-contrib/cors's default methods, which Ollama keeps.
ALLOWED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")

#: gin-contrib/cors's default max age (12 hours), which Ollama keeps.
MAX_AGE_SECONDS = 12 * 3600

#: An origin without a ``*`` must start with one of these (gin-contrib/cors
#: refuses to start otherwise; Ollama allows browser extensions' schemes).
CONFIGURABLE_SCHEMES = (
    "http://",
    "https://",
    "chrome-extension://",
    "safari-extension://",
    "moz-extension://",
    "ms-browser-extension://",
)


def _canonical(name: str) -> str:
    """A header name the way Go's ``http.CanonicalHeaderKey`` writes it."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


ALLOWED_HEADERS: tuple[str, ...] = tuple(_canonical(name) for name in _REQUEST_HEADERS)

_PREFLIGHT_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    # Joined with bare commas, as gin-contrib/cors joins them.
    (b"Access-Control-Allow-Methods", ",".join(ALLOWED_METHODS).encode("ascii")),
    (b"Access-Control-Allow-Headers", ",".join(ALLOWED_HEADERS).encode("ascii")),
    (b"Access-Control-Max-Age", b"%d" % MAX_AGE_SECONDS),
)
_PREFLIGHT_VARY = (b"Origin", b"Access-Control-Request-Method", b"Access-Control-Request-Headers")


class OriginError(ValueError):
    """An origin that cannot be configured; the message says why."""


def check_origin(entry: str) -> None:
    """Refuse an origin as gin-contrib/cors refuses it when Ollama starts."""
    if entry.count("*") > 1:
        raise OriginError(f"{entry!r}: only one * is allowed")
    if "*" not in entry and not entry.startswith(CONFIGURABLE_SCHEMES):
        raise OriginError(
            f"{entry!r}: an origin must contain '*' or start with one of "
            + ", ".join(CONFIGURABLE_SCHEMES)
        )


def parse_origins(text: str) -> tuple[str, ...]:
    """Comma-separated origins (``FOREMAN_ORIGINS``), each checked; blanks ignored."""
    origins = tuple(entry.strip() for entry in text.split(",") if entry.strip())
    for entry in origins:
        check_origin(entry)
    return origins


class Verdict(enum.Enum):
    #: No ``Origin``, or the request's own host: answered as if CORS did not exist.
    NOT_CORS = "not-cors"
    #: An origin that is not allowed: ``403``, empty.
    REFUSED = "refused"
    #: ``OPTIONS`` from an allowed origin: ``204`` with :meth:`OriginPolicy.preflight_headers`.
    PREFLIGHT = "preflight"
    #: Any other method from an allowed origin: served, with
    #: :meth:`OriginPolicy.response_headers`.
    ALLOWED = "allowed"


class OriginPolicy:
    """Which origins may call, and what they are told.

    ``extra`` are added to :data:`DEFAULT_ORIGINS`, as ``OLLAMA_ORIGINS`` is.
    An entry without ``*`` must equal the origin (compared in lower case); an
    entry with one ``*`` matches every origin that starts with what comes
    before the ``*`` and ends with what comes after it (``http://localhost:*``,
    ``*.example.com``, ``https://*.example.com``). An entry that is ``*``
    alone allows every origin, and the answers then say ``*`` instead of
    naming the origin.
    """

    def __init__(self, extra: Iterable[str] = ()) -> None:
        self.extra = tuple(extra)
        for entry in self.extra:
            check_origin(entry)
        self.origins = self.extra + DEFAULT_ORIGINS
        self.allows_all = "*" in self.origins
        self._exact = frozenset(entry.lower() for entry in self.origins if "*" not in entry)
        # As gin-contrib/cors keeps them: not lowercased.
        self._wildcards = tuple(
            (prefix, suffix)
            for prefix, _, suffix in (entry.partition("*") for entry in self.origins)
            if _
        )

    def allows(self, origin: str) -> bool:
        if self.allows_all or origin in self._exact:
            return True
        return any(
            origin.startswith(prefix) and origin.endswith(suffix)
            for prefix, suffix in self._wildcards
        )

    def verdict(self, method: bytes, origin: str | None, host: str | None) -> Verdict:
        """What a request with this method, ``Origin`` and ``Host`` gets."""
        if not origin:
            return Verdict.NOT_CORS
        if host is not None and origin in (f"http://{host}", f"https://{host}"):
            return Verdict.NOT_CORS
        if not self.allows(origin):
            return Verdict.REFUSED
        return Verdict.PREFLIGHT if method == b"OPTIONS" else Verdict.ALLOWED

    def judge(self, method: bytes, headers: Headers) -> tuple[Verdict, str]:
        """:meth:`verdict` for a request's headers, with the ``Origin`` it judged."""
        origin = _first(headers, b"origin")
        return self.verdict(method, origin, _first(headers, b"host")), origin or ""

    def _allow_origin(self, origin: str) -> tuple[bytes, bytes]:
        return (b"Access-Control-Allow-Origin", b"*" if self.allows_all else _latin1(origin))

    def preflight_headers(self, origin: str) -> list[tuple[bytes, bytes]]:
        """The headers of the ``204`` to a preflight from an allowed origin."""
        headers = [*_PREFLIGHT_HEADERS, self._allow_origin(origin)]
        if not self.allows_all:
            headers.extend((b"Vary", name) for name in _PREFLIGHT_VARY)
        return headers

    def response_headers(self, origin: str) -> list[tuple[bytes, bytes]]:
        """The headers of any other answer to an allowed origin."""
        headers = [self._allow_origin(origin)]
        if not self.allows_all:
            headers.append((b"Vary", b"Origin"))
        return headers


def _latin1(text: str) -> bytes:
    return text.encode("latin-1")


def _first(headers: Headers, name: bytes) -> str | None:
    # Go's Header.Get reads the first value; Twisted's getHeader the last.
    values = headers.getRawHeaders(name)
    return values[0].decode("latin-1") if values else None


class CorsGate(Resource):
    """Answers CORS in front of ``inner`` (the whole site), before its token guard."""

    isLeaf = True

    def __init__(self, inner: IResource, policy: OriginPolicy) -> None:
        super().__init__()
        self._inner = inner
        self._policy = policy

    def render(self, request: IRequest) -> bytes | int:
        verdict, origin = self._policy.judge(request.method, request.requestHeaders)
        if verdict is Verdict.NOT_CORS:
            return self._render_inner(request)
        if verdict is Verdict.REFUSED:
            request.setResponseCode(403)
            # An empty body, with its length and no type, as Go sends it.
            request.setHeader(b"Content-Length", b"0")
            request.finish()
            return NOT_DONE_YET
        if verdict is Verdict.PREFLIGHT:
            request.setResponseCode(204)
            for name, value in self._policy.preflight_headers(origin):
                request.responseHeaders.addRawHeader(name, value)
            request.finish()
            return NOT_DONE_YET
        for name, value in self._policy.response_headers(origin):
            request.setHeader(name, value)
        return self._render_inner(request)

    def _render_inner(self, request: IRequest) -> bytes | int:
        result: bytes | int = self._inner.render(request)
        return result

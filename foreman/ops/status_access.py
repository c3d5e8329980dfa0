"""Who may read the status page's data: the session cookie ``/ui/login`` sets.

The page itself holds no data and is open; its data accepts the Bearer
header or this cookie, which is honoured by the status page alone and,
with ``Path=/ui``, never even sent to the API. Sign-in and sign-out are
refused from other sites.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import urllib.parse
from collections.abc import Callable

import attrs
from twisted.web.iweb import IRequest

from foreman.http.errors import write_json_error

PAGE_PATH = b"/ui"
COOKIE_NAME = b"foreman_ui"
#: The browser and foreman forget a session after this long (or at restart).
SESSION_SECONDS = 7 * 24 * 3600
#: Sessions kept at once; signing in beyond that ends the oldest.
MAX_SESSIONS = 100
MAX_FORM_BYTES = 4096


class Sessions:
    """Sign-ins, in memory: a restart signs everyone out, which is fine for a
    page that asks again. Only digests of the cookie values are kept, each
    with the name of the key that signed in (``None``: the token), so that a
    revoked key's sessions end with it."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._started: dict[bytes, float] = {}
        self._owners: dict[bytes, str | None] = {}

    def open(self, owner: str | None = None) -> str:
        value = secrets.token_urlsafe(32)
        if len(self._started) >= MAX_SESSIONS:
            self._forget(min(self._started, key=self._started.__getitem__))
        digest = _digest(value.encode())
        self._started[digest] = self._now()
        self._owners[digest] = owner
        return value

    def owner(self, value: bytes | None) -> str | None:
        """The name of the key that opened the session ``value`` (``None``: the token)."""
        return self._owners.get(_digest(value)) if value else None

    def _forget(self, digest: bytes) -> None:
        self._started.pop(digest, None)
        self._owners.pop(digest, None)

    def valid(self, value: bytes | None) -> bool:
        if not value:
            return False
        started = self._started.get(_digest(value))
        if started is None:
            return False
        if self._now() - started >= SESSION_SECONDS:
            self._forget(_digest(value))
            return False
        return True

    def close(self, value: bytes | None) -> None:
        if value:
            self._forget(_digest(value))


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


@attrs.frozen
class Presented:
    """A sign-in's token, shaped as the one request header the guard reads,
    so that the guard's constant-time comparison is the only one there is."""

    token: bytes
    path: bytes = PAGE_PATH + b"/login"

    def getHeader(self, name: bytes) -> bytes | None:
        return b"Bearer " + self.token if name.lower() == b"authorization" else None


def set_cookie(request: IRequest, value: str, max_age: int) -> None:
    # Written by hand so the attributes are exactly these: HttpOnly keeps it
    # from the page's script, SameSite=Strict from other sites' requests,
    # Path=/ui from the API. Secure only where the request came over TLS:
    # foreman usually serves plain HTTP on loopback.
    cookie = b"%s=%s; Path=%s; Max-Age=%d; HttpOnly; SameSite=Strict" % (
        COOKIE_NAME,
        value.encode("ascii"),
        PAGE_PATH,
        max_age,
    )
    if request.isSecure():
        cookie += b"; Secure"
    request.responseHeaders.addRawHeader(b"Set-Cookie", cookie)


def refuse_cross_site(request: IRequest) -> bytes | None:
    """Sign-in and sign-out are posted by the page itself; a browser says where
    a post comes from in ``Origin``, and one from another host is refused.

    The scheme is not compared: behind a proxy that ends TLS, foreman sees
    plain HTTP for a page the browser loaded over HTTPS.
    """
    origin = request.getHeader(b"origin")
    if origin is None:
        return None  # not a browser, or one that does not say: nothing to protect
    host = request.getHeader(b"host") or b""
    if urllib.parse.urlsplit(origin).netloc.lower() == host.lower():
        return None
    return write_json_error(request, 403, "forbidden: this request came from another site")

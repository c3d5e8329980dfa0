"""Helpers for the tests of keys (docs/keys.md) over real sockets."""

from __future__ import annotations

import json
from typing import Any

from treq.client import HTTPClient
from twisted.web.http_headers import Headers

from tests.jobs_http import Answer

#: The admin token the keys tests start foreman with.
TOKEN = "keys-admin-t0ken"
KEYS = "/api/foreman/keys"


def credential(secret: str | None, how: str = "bearer") -> Headers:
    """``secret`` as an SDK sends it: ``Authorization: Bearer`` or ``x-api-key``."""
    headers = Headers()
    if secret is not None:
        if how == "bearer":
            headers.setRawHeaders(b"Authorization", [f"Bearer {secret}".encode()])
        else:
            headers.setRawHeaders(b"x-api-key", [secret.encode()])
    return headers


async def call(
    http: HTTPClient,
    url: str,
    method: str,
    path: str,
    secret: str | None = None,
    body: Any = None,
    *,
    how: str = "bearer",
    extra: dict[str, str] | None = None,
) -> Answer:
    headers = credential(secret, how)
    for name, value in (extra or {}).items():
        headers.setRawHeaders(name.encode(), [value.encode()])
    data = None if body is None else json.dumps(body).encode()
    response = await http.request(method, url + path, data=data, headers=headers)
    return Answer(response.code, response.headers, await response.content())


async def make_key(
    http: HTTPClient,
    url: str,
    name: str,
    *scopes: str,
    admin: str | None = TOKEN,
    **fields: Any,
) -> str:
    """A new key made with ``admin``'s credential; the key itself."""
    body: dict[str, Any] = {"name": name, **fields}
    if scopes:
        body["scopes"] = list(scopes)
    made = await call(http, url, "POST", KEYS, admin, body)
    assert made.code == 201, made.body
    secret = made.json()["key"]
    assert isinstance(secret, str)
    return secret


def chat_body(model: str = "llama3.2", text: str = "hi") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "stream": False}

"""Helpers for tests of the ``/jobs`` surface over real sockets."""

from __future__ import annotations

import json
from typing import Any

import attrs
from treq.client import HTTPClient
from twisted.internet.task import deferLater
from twisted.web.http_headers import Headers

#: How long a test waits for a job to reach a state before it fails.
STATE_LIMIT = 10.0


@attrs.frozen
class Answer:
    code: int
    headers: Headers
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name.encode())
        return values[-1].decode() if values else None


def chat(model: str = "llama3.2", text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


class JobsClient:
    """``/jobs`` calls against one foreman, with its token if it has one."""

    def __init__(self, http: HTTPClient, base_url: str, token: str | None = None) -> None:
        self.http = http
        self.base_url = base_url
        self.token = token

    def _headers(self, extra: dict[str, str] | None = None) -> Headers:
        headers = Headers()
        if self.token is not None:
            headers.setRawHeaders(b"Authorization", [f"Bearer {self.token}".encode()])
        for name, value in (extra or {}).items():
            headers.setRawHeaders(name.encode(), [value.encode()])
        return headers

    async def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        response = await self.http.request(
            method, self.base_url + path, data=body, headers=self._headers(headers)
        )
        content = await response.content()
        return Answer(response.code, response.headers, content)

    async def submit(self, document: Any, headers: dict[str, str] | None = None) -> Answer:
        return await self.call("POST", "/jobs", json.dumps(document).encode(), headers)

    async def submitted(self, document: Any, headers: dict[str, str] | None = None) -> str:
        """Submit; the new job's id (the submission must be accepted)."""
        answer = await self.submit(document, headers)
        assert answer.code == 202, answer
        job_id: str = answer.json()["job_id"]
        return job_id

    async def job(self, job_id: str) -> dict[str, Any]:
        answer = await self.call("GET", f"/jobs/{job_id}")
        assert answer.code == 200, answer
        view: dict[str, Any] = answer.json()
        return view

    async def cancel(self, job_id: str) -> Answer:
        return await self.call("POST", f"/jobs/{job_id}/cancel")

    async def until(self, job_id: str, *states: str, reactor: Any) -> dict[str, Any]:
        """Poll ``GET /jobs/{id}`` until the job is in one of ``states``."""
        for _ in range(int(STATE_LIMIT / 0.01)):
            view = await self.job(job_id)
            if view["state"] in states:
                return view
            await deferLater(reactor, 0.01, lambda: None)
        raise AssertionError(f"job {job_id} never reached {states}: {view}")

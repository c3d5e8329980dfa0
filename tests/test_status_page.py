"""The status page over real sockets: the page, its data, the sign-in cookie
and where it is (not) honoured, and ``GET /`` for browsers and for clients.

The browser itself is driven in tests/test_status_page_browser.py.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.web.http_headers import Headers

from foreman.ops.status_access import MAX_SESSIONS, SESSION_SECONDS, Sessions
from foreman.ops.status_page import prefers_html
from foreman.queue.job import JobState
from tests.conftest import RunningForeman, RunningSimulator, StartForeman, StartSimulator
from tests.http_helpers import eventually

TOKEN = "status-page-token-7f3a"
_FORM = {"Content_Type": "application/x-www-form-urlencoded"}
BROWSER_ACCEPT = (
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,"
    "image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
)


async def call(
    http: HTTPClient, method: str, url: str, body: bytes | None = None, **headers: str
) -> tuple[Any, bytes]:
    """One request with exactly these headers (no cookie jar, no redirects)."""
    sent = Headers({name.replace("_", "-"): [value] for name, value in headers.items()})
    if not sent.hasHeader("Cookie"):
        # treq keeps a cookie jar; an empty header keeps it out of the test.
        sent.setRawHeaders("Cookie", [""])
    response = await http.request(
        method, url, data=body, headers=sent, allow_redirects=False, browser_like_redirects=False
    )
    return response, await response.content()


def chat_body(model: str = "llama3.2") -> bytes:
    message = {"role": "user", "content": "hello"}
    return json.dumps({"model": model, "messages": [message], "stream": False}).encode()


def session_cookie(response: Any) -> str:
    (cookie,) = response.headers.getRawHeaders(b"set-cookie")
    value: str = cookie.decode().split(";", 1)[0]
    return value


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        (BROWSER_ACCEPT, True),
        ("text/html", True),
        ("TEXT/HTML; q=0.5, application/json; q=0.1", True),
        (None, False),
        ("", False),
        ("*/*", False),
        ("application/json", False),
        ("application/json, text/plain, */*", False),
        ("text/plain, text/html", False),
        ("text/html;q=0.5, text/plain", False),
        ("text/html;q=0", False),
        ("text/html;q=oops", False),
    ],
)
def test_a_browser_is_told_from_a_client_by_accept(accept: str | None, html: bool) -> None:
    assert prefers_html(None if accept is None else accept.encode()) is html


# -- GET / ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_root_stays_ollama_for_clients_and_redirects_browsers(
    simulator: RunningSimulator, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running = await start_foreman(simulator.url)
    for method in ("GET", "HEAD"):
        for accept in (None, "*/*", "application/json"):
            url = running.url + "/"
            asked = (
                call(http, method, url)
                if accept is None
                else call(http, method, url, Accept=accept)
            )
            response, body = await asked
            assert response.code == 200, (method, accept)
            assert body == (b"Ollama is running" if method == "GET" else b"")
            assert response.headers.getRawHeaders(b"content-type") == [b"text/plain; charset=utf-8"]
            assert not response.headers.hasHeader(b"location")

        response, body = await call(http, method, running.url + "/", Accept=BROWSER_ACCEPT)
        assert response.code == 302, method
        assert response.headers.getRawHeaders(b"location") == [b"/ui"]
        assert response.headers.getRawHeaders(b"vary") == [b"Accept"]
        assert body == b""


@pytest_twisted.ensureDeferred
async def test_root_with_a_token_redirects_a_browser_and_still_guards_clients(
    simulator: RunningSimulator, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running = await start_foreman(simulator.url, token=TOKEN)
    response, _ = await call(http, "GET", running.url + "/", Accept=BROWSER_ACCEPT)
    assert (response.code, response.headers.getRawHeaders(b"location")) == (302, [b"/ui"])
    response, _ = await call(http, "GET", running.url + "/", Accept="*/*")
    assert response.code == 401
    response, body = await call(http, "GET", running.url + "/", Authorization=f"Bearer {TOKEN}")
    assert (response.code, body) == (200, b"Ollama is running")


# -- the page ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_page_is_served_without_a_token_and_loads_nothing_from_elsewhere(
    simulator: RunningSimulator, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running = await start_foreman(simulator.url, token=TOKEN)
    for path in ("/ui",):
        response, html = await call(http, "GET", running.url + path)
        assert response.code == 200, path
        assert response.headers.getRawHeaders(b"content-type") == [b"text/html; charset=utf-8"]
        assert b"<title>foreman</title>" in html
        # No external assets: no URL with a host, no script or style file.
        assert not re.search(rb"https?://|//[a-z]", html, re.IGNORECASE)
        assert not re.search(rb"<(script|link)[^>]+(src|href)=", html)
        (policy,) = response.headers.getRawHeaders(b"content-security-policy")
        assert b"default-src 'none'" in policy
        assert b"'unsafe-inline'" not in policy
        assert b"connect-src 'self'" in policy
    response, _ = await call(http, "HEAD", running.url + "/ui")
    assert response.code == 200
    for path in ("/uix", "/ui/nothing", "/ui/status.json/more"):
        response, body = await call(
            http, "GET", running.url + path, Authorization=f"Bearer {TOKEN}"
        )
        assert (response.code, body) == (404, b"404 page not found"), path
    response, body = await call(http, "POST", running.url + "/ui/status.json")
    assert (response.code, body) == (405, b"405 method not allowed")


# -- the data ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_status_document_shows_upstream_residents_queue_and_recent_jobs(
    reactor: Any, simulator: RunningSimulator, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running = await start_foreman(simulator.url, embed_model="all-minilm")
    await eventually(lambda: "all-minilm:latest" in simulator.sim.loaded_models(), reactor)
    response, _ = await call(http, "POST", running.url + "/api/chat", chat_body())
    assert response.code == 200
    # What is resident is read before another model's job can swap it out.
    response, body = await call(http, "GET", running.url + "/ui/status.json")
    resident = {model["name"]: model for model in json.loads(body)["resident"]}
    submitted, body = await call(http, "POST", running.url + "/jobs", chat_body("qwen3:8b"))
    assert submitted.code == 202
    job_id = json.loads(body)["job_id"]

    response, body = await call(http, "GET", running.url + "/ui/status.json")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"cache-control") == [b"no-store"]
    document = json.loads(body)
    assert document["auth"] == "open"
    assert document["health"]["upstream"]["reachable"] is True
    assert document["health"]["upstream"]["ollama_version"] == "0.13.0"
    assert document["health"]["upstream"]["simulated"] is False
    assert {"jobs", "depth", "max_queue", "worker_model"} <= set(document["queue"])
    assert "llama3.2:latest" in resident
    assert isinstance(resident["llama3.2:latest"]["expires_at"], str)
    assert resident["llama3.2:latest"]["role"] == "worker"
    assert resident["all-minilm:latest"]["role"] == "embedder"
    recent = document["recent_jobs"]
    assert recent[0]["job_id"] == job_id
    assert recent[0]["sync"] is False
    assert recent[0]["model"] == "qwen3:8b"
    assert recent[1]["sync"] is True
    assert (recent[1]["model"], recent[1]["endpoint"], recent[1]["state"]) == (
        "llama3.2",
        "chat",
        "done",
    )
    assert set(recent[1]) >= {"job_id", "state", "model", "created_at", "finished_at", "error"}


@pytest_twisted.ensureDeferred
async def test_the_status_document_has_the_timeline_of_runs_and_what_waits(
    reactor: Any, start_simulator: StartSimulator, start_foreman: StartForeman, http: HTTPClient
) -> None:
    sim = await start_simulator()
    running = await start_foreman(sim.url)
    for model in ("llama3.2", "llama3.2", "gemma3:12b"):
        response, _ = await call(http, "POST", running.url + "/api/chat", chat_body(model))
        assert response.code == 200
    # A long job runs while a batch job waits behind it.
    sim.sim.tokens_per_second = 1.0
    interactive = json.dumps({**json.loads(chat_body()), "priority": "interactive"})
    submitted, body = await call(http, "POST", running.url + "/jobs", interactive.encode())
    assert submitted.code == 202
    long_id = json.loads(body)["job_id"]
    worker = running.foreman.queue.worker if running.foreman.queue else None
    assert worker is not None
    # Generating: whether its start was a load is known once the load is over.
    await eventually(
        lambda: (
            worker.current is not None
            and worker.current.id == long_id
            and worker.current.state is JobState.WORKING
        ),
        reactor,
    )
    submitted, body = await call(http, "POST", running.url + "/jobs", chat_body("qwen3:8b"))
    assert submitted.code == 202
    batch_id = json.loads(body)["job_id"]

    response, body = await call(http, "GET", running.url + "/ui/status.json")
    timeline = json.loads(body)["timeline"]
    assert timeline["window_seconds"] == 600.0
    assert (timeline["max_wait_seconds"], timeline["batch_max_wait_seconds"]) == (60.0, 1800.0)
    runs = timeline["runs"]
    assert [run["model"] for run in runs] == [
        "llama3.2:latest",
        "llama3.2:latest",
        "gemma3:12b",
        "llama3.2:latest",
    ]
    assert [run["load"] for run in runs] == ["load", None, "swap", "swap"]
    assert [run["outcome"] for run in runs] == ["done", "done", "done", None]
    assert [run["sync"] for run in runs] == [True, True, True, False]
    assert {run["priority"] for run in runs} == {"interactive"}
    assert runs[-1]["job_id"] == long_id
    for run in runs[:3]:
        assert run["endpoint"] == "chat"
        assert run["queued_at"] <= run["started_at"] <= run["working_at"] <= run["ended_at"]
        assert run["ended_at"] <= timeline["now"]
    (waiting,) = timeline["waiting"]
    assert waiting["job_id"] == batch_id
    # Positions count the running job as ahead, as the queue's do.
    assert (waiting["model"], waiting["priority"], waiting["position"]) == ("qwen3:8b", "batch", 2)
    assert (waiting["bound_seconds"], waiting["overdue"], waiting["ready"]) == (1800.0, False, True)
    assert waiting["waited_seconds"] >= 0
    assert timeline["more_waiting"] == 0
    # Let the long job go, so that nothing runs on when the test ends.
    cancelled, _ = await call(http, "POST", running.url + f"/jobs/{long_id}/cancel")
    assert cancelled.code == 200


@pytest_twisted.ensureDeferred
async def test_without_the_queue_the_document_says_so(
    simulator: RunningSimulator, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running = await start_foreman(simulator.url, queue=False)
    response, body = await call(http, "GET", running.url + "/ui/status.json")
    assert response.code == 200
    document = json.loads(body)
    assert (document["queue"], document["recent_jobs"], document["timeline"]) == (None, None, None)
    assert document["health"]["queue"] is None


@pytest_twisted.ensureDeferred
async def test_a_degraded_upstream_is_reported_with_the_last_known_residents(
    start_simulator: StartSimulator, start_foreman: StartForeman, http: HTTPClient
) -> None:
    sim = await start_simulator()
    running = await start_foreman(sim.url)
    response, _ = await call(http, "POST", running.url + "/api/chat", chat_body())
    assert response.code == 200
    await running.foreman.inventory.refresh()
    # The target goes away: no listener, no open connection.
    await sim.port.stopListening()
    await running.foreman.pool.closeCachedConnections()
    await running.foreman.inventory.refresh()
    response, body = await call(http, "GET", running.url + "/ui/status.json")
    document = json.loads(body)
    assert document["health"]["status"] == "degraded"
    assert document["resident"] == [
        {"name": "llama3.2:latest", "expires_at": None, "role": "worker"}
    ]


# -- the token and the cookie --------------------------------------------------------


@pytest_twisted.async_fixture
async def guarded(simulator: RunningSimulator, start_foreman: StartForeman) -> RunningForeman:
    return await start_foreman(simulator.url, token=TOKEN)


@pytest_twisted.ensureDeferred
async def test_sign_in_sets_a_cookie_only_the_page_data_honours(
    guarded: RunningForeman, http: HTTPClient
) -> None:
    url = guarded.url
    response, body = await call(http, "GET", url + "/ui/status.json")
    assert response.code == 401
    assert "error" in json.loads(body)

    wrong, _ = await call(http, "POST", url + "/ui/login", b"token=nope", **_FORM)
    assert wrong.code == 401
    assert not wrong.headers.hasHeader(b"set-cookie")
    empty, _ = await call(http, "POST", url + "/ui/login", b"", **_FORM)
    assert empty.code == 401
    assert not empty.headers.hasHeader(b"set-cookie")
    huge, _ = await call(http, "POST", url + "/ui/login", b"token=" + b"x" * 5000, **_FORM)
    assert huge.code == 413
    odd, _ = await call(http, "POST", url + "/ui/login", b"a=1&b=2&c=3&d=4&token=x", **_FORM)
    assert odd.code == 400

    signed_in, body = await call(
        http, "POST", url + "/ui/login", b"token=" + TOKEN.encode(), **_FORM
    )
    assert (signed_in.code, body) == (204, b"")
    (set_cookie,) = signed_in.headers.getRawHeaders(b"set-cookie")
    attributes = [part.strip() for part in set_cookie.decode().split(";")]
    assert attributes[0].startswith("foreman_ui=")
    assert {"HttpOnly", "SameSite=Strict", "Path=/ui"} <= set(attributes)
    assert "Secure" not in attributes  # plain HTTP on loopback
    assert TOKEN not in set_cookie.decode()
    cookie = session_cookie(signed_in)

    response, body = await call(http, "GET", url + "/ui/status.json", Cookie=cookie)
    assert response.code == 200
    assert json.loads(body)["auth"] == "cookie"
    assert TOKEN.encode() not in body

    # Everything else still wants the Bearer header, cookie or not.
    for method, path in [
        ("GET", "/api/foreman/queue"),
        ("GET", "/jobs"),
        ("GET", "/metrics"),
        ("GET", "/api/tags"),
        ("GET", "/api/ps"),
        ("POST", "/jobs"),
        ("GET", "/"),
    ]:
        response, _ = await call(http, method, url + path, Cookie=cookie)
        assert response.code == 401, path
    # A path that merely starts under /ui cannot reach the API either.
    response, _ = await call(http, "GET", url + "/ui/../jobs", Cookie=cookie)
    assert response.code == 404
    response, _ = await call(http, "GET", url + "/ui%2f..%2fjobs", Cookie=cookie)
    assert response.code == 401
    # A wrong Bearer header is not rescued by a good cookie.
    response, _ = await call(
        http, "GET", url + "/ui/status.json", Cookie=cookie, Authorization="Bearer nope"
    )
    assert response.code == 401

    response, body = await call(
        http, "GET", url + "/ui/status.json", Authorization=f"Bearer {TOKEN}"
    )
    assert (response.code, json.loads(body)["auth"]) == (200, "bearer")

    signed_out, _ = await call(http, "POST", url + "/ui/logout", Cookie=cookie)
    assert signed_out.code == 204
    (cleared,) = signed_out.headers.getRawHeaders(b"set-cookie")
    assert cleared.startswith(b"foreman_ui=;")
    assert b"Max-Age=0" in cleared
    response, _ = await call(http, "GET", url + "/ui/status.json", Cookie=cookie)
    assert response.code == 401


@pytest_twisted.ensureDeferred
async def test_sign_in_from_another_site_is_refused(
    guarded: RunningForeman, http: HTTPClient
) -> None:
    host = guarded.url.removeprefix("http://")
    token = b"token=" + TOKEN.encode()
    elsewhere, _ = await call(
        http, "POST", guarded.url + "/ui/login", token, Origin="http://evil.example", **_FORM
    )
    assert elsewhere.code == 403
    assert not elsewhere.headers.hasHeader(b"set-cookie")
    same, _ = await call(
        http, "POST", guarded.url + "/ui/login", token, Origin=f"http://{host}", **_FORM
    )
    assert same.code == 204
    response, _ = await call(http, "POST", guarded.url + "/ui/logout", Origin="http://evil.example")
    assert response.code == 403


@pytest_twisted.ensureDeferred
async def test_without_a_token_sign_in_has_nothing_to_do(
    foreman: RunningForeman, http: HTTPClient
) -> None:
    response, _ = await call(http, "POST", foreman.url + "/ui/login", b"token=x", **_FORM)
    assert response.code == 204
    assert not response.headers.hasHeader(b"set-cookie")


def test_sessions_expire_and_are_bounded() -> None:
    now = [1000.0]
    sessions = Sessions(lambda: now[0])
    first = sessions.open()
    assert sessions.valid(first.encode())
    assert not sessions.valid(b"made-up")
    assert not sessions.valid(None)
    now[0] += SESSION_SECONDS
    assert not sessions.valid(first.encode())

    oldest = sessions.open()
    now[0] += 1
    others = [sessions.open() for _ in range(MAX_SESSIONS)]
    assert not sessions.valid(oldest.encode())
    assert all(sessions.valid(value.encode()) for value in others)
    sessions.close(others[0].encode())
    assert not sessions.valid(others[0].encode())

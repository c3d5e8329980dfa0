"""Keys over real sockets (docs/keys.md): the guard's 401 and 403 in each dialect,
the first-key rule on an open loopback, revocation on the next call, each key's
own jobs, the keys API, the status page's sign-in, and what never leaks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, cast

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.web.http_headers import Headers

from foreman.config import StartupRefused
from foreman.http.access_log import flush_access_log
from tests.conftest import RunningForeman, RunningSimulator, StartForeman
from tests.jobs_http import JobsClient, chat
from tests.keys_helpers import KEYS, TOKEN, call, chat_body, make_key

USER = [{"role": "user", "content": "hi"}]
OPENAI_CHAT = {"model": "llama3.2", "messages": USER}
ANTHROPIC = {"model": "llama3.2", "max_tokens": 16, "messages": USER}
EMBED = {"model": "all-minilm", "input": "hi"}


@pytest_twisted.async_yield_fixture
async def guarded(simulator: RunningSimulator, start_foreman: StartForeman) -> Any:
    yield await start_foreman(simulator.url, token=TOKEN)


@pytest.fixture
def log_events() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


@pytest_twisted.ensureDeferred
async def test_no_token_and_no_keys_is_open_on_loopback_until_the_first_key(
    simulator: RunningSimulator, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running = await start_foreman(simulator.url)
    url = running.url
    assert (await call(http, url, "GET", "/api/tags")).code == 200
    assert (await call(http, url, "GET", "/api/foreman/queue", "anything")).code == 200
    health = (await call(http, url, "GET", "/healthz")).json()
    assert health["keys"] == {"loaded": True, "error": None} and health["status"] == "ok"
    # The first key must be an admin's: else nobody could manage keys any more.
    first = await call(http, url, "POST", KEYS, None, {"name": "alice", "scopes": ["generate"]})
    assert first.code == 400 and "admin" in first.json()["error"]
    root = await make_key(http, url, "root", "admin", admin=None)
    # Now a key is needed everywhere but /healthz.
    refused = await call(http, url, "GET", "/api/tags")
    assert refused.code == 401 and refused.header("www-authenticate") == 'Bearer realm="foreman"'
    assert "required" in refused.json()["error"]
    assert (await call(http, url, "GET", "/healthz")).code == 200
    assert (await call(http, url, "GET", "/api/tags", root)).code == 200
    alice = await make_key(http, url, "alice", "generate", admin=root)
    assert (await call(http, url, "POST", "/api/chat", alice, chat_body())).code == 200
    # Every key revoked: loopback is open again, as before keys.
    for name in ("alice", "root"):
        assert (await call(http, url, "DELETE", f"{KEYS}/{name}", root)).code == 200
    assert (await call(http, url, "GET", "/api/tags")).code == 200


@pytest.mark.parametrize(
    ("path", "body", "dialect"),
    [
        ("/api/chat", chat_body(), "native"),
        ("/v1/chat/completions", OPENAI_CHAT, "openai"),
        ("/v1/messages", ANTHROPIC, "anthropic"),
        ("/jobs", chat(), "native"),
        ("/v1/batches", {}, "openai"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_wrong_key_is_401_and_a_missing_scope_403_in_the_callers_dialect(
    guarded: RunningForeman, http: HTTPClient, path: str, body: Any, dialect: str
) -> None:
    url = guarded.url
    embedder = await make_key(http, url, "embedder", "embed")
    for how in ("bearer", "x-api-key"):
        wrong = await call(http, url, "POST", path, "fk-wrong", body, how=how)
        assert wrong.code == 401
        error = wrong.json()
        if dialect == "native":
            assert set(error) == {"error"} and "unauthorized" in error["error"]
        elif dialect == "openai":
            assert error["error"]["type"] == "api_error"
            assert error["error"]["code"] == "invalid_api_key"
        else:
            assert error["type"] == "error"
            assert error["error"]["type"] == "authentication_error"
        missing = await call(http, url, "POST", path, embedder, body, how=how)
        assert missing.code == 403
        error = missing.json()
        if dialect == "native":
            assert set(error) == {"error"} and "forbidden" in error["error"]
        elif dialect == "openai":
            assert error["error"]["code"] == "insufficient_permissions"
            assert "'embedder'" in error["error"]["message"]
        else:
            assert error["error"]["type"] == "permission_error"


@pytest_twisted.ensureDeferred
async def test_each_scope_opens_its_own_paths_and_admin_all(
    guarded: RunningForeman, http: HTTPClient
) -> None:
    url = guarded.url
    generate = await make_key(http, url, "gen", "generate")
    embed = await make_key(http, url, "emb", "embed")
    jobs = await make_key(http, url, "jobs", "jobs")
    admin = await make_key(http, url, "ops", "admin")
    calls = {
        "generate": ("POST", "/v1/chat/completions", OPENAI_CHAT),
        "embed": ("POST", "/api/embed", EMBED),
        "jobs": ("GET", "/jobs", None),
        "admin": ("GET", "/api/foreman/queue", None),
        "any": ("GET", "/v1/models", None),
    }
    allowed = {
        generate: {"generate", "any"},
        embed: {"embed", "any"},
        jobs: {"jobs", "any"},
        admin: set(calls),
        TOKEN: set(calls),
    }
    for secret, may in allowed.items():
        for what, (method, path, body) in calls.items():
            answer = await call(http, url, method, path, secret, body)
            assert answer.code == (200 if what in may else 403), (what, answer.body)
    assert (await call(http, url, "GET", "/metrics", generate)).code == 403
    assert (await call(http, url, "GET", "/metrics", admin)).code == 200
    assert (await call(http, url, "POST", "/api/pull", jobs, {"model": "x"})).code == 403
    # A missing scope counts as the key's refusal (usage per key).
    queue = guarded.foreman.queue
    assert queue is not None and queue.usage is not None
    assert queue.usage.since_start()["gen"].refusals == 4


@pytest_twisted.ensureDeferred
async def test_a_revoked_key_is_refused_on_its_next_call(
    guarded: RunningForeman, http: HTTPClient
) -> None:
    url = guarded.url
    alice = await make_key(http, url, "alice", "generate")
    for how in ("bearer", "x-api-key"):
        answer = await call(http, url, "POST", "/api/chat", alice, chat_body(), how=how)
        assert answer.code == 200
    revoked = await call(http, url, "DELETE", f"{KEYS}/alice", TOKEN)
    assert revoked.code == 200 and revoked.json()["revoked_at"] is not None
    for how in ("bearer", "x-api-key"):
        answer = await call(http, url, "POST", "/api/chat", alice, chat_body(), how=how)
        assert answer.code == 401 and "revoked" in answer.json()["error"]


@pytest_twisted.ensureDeferred
async def test_a_jobs_key_sees_and_touches_only_its_own_jobs(
    guarded: RunningForeman, http: HTTPClient, reactor: Any
) -> None:
    url = guarded.url
    a = JobsClient(http, url, await make_key(http, url, "a", "jobs"))
    b = JobsClient(http, url, await make_key(http, url, "b", "jobs"))
    admin = JobsClient(http, url, TOKEN)
    job_id = await a.submitted(chat(), {"Idempotency-Key": "once"})
    await a.until(job_id, "done", reactor=reactor)
    batch = (await a.submit([chat(), chat()])).json()
    line_id = batch["jobs"][0]["job_id"]
    for foreign in (job_id, line_id):
        for method, path in [
            ("GET", f"/jobs/{foreign}"),
            ("GET", f"/jobs/{foreign}/artifacts/completion"),
            ("POST", f"/jobs/{foreign}/cancel"),
        ]:
            answer = await b.call(method, path)
            assert answer.code == 404 and "not found" in answer.json()["error"], path
    assert (await b.call("GET", "/jobs")).json()["jobs"] == []
    # Another key's Idempotency-Key tells no more than that it is taken.
    reused = await b.submit(chat(), {"Idempotency-Key": "once"})
    assert reused.code == 422 and job_id not in reused.body.decode()
    assert (await a.call("GET", f"/jobs/{job_id}")).code == 200
    assert (await a.call("GET", f"/jobs/{job_id}/artifacts/completion")).code == 200
    own = {job["job_id"] for job in (await a.call("GET", "/jobs")).json()["jobs"]}
    assert job_id in own and line_id in own
    everyone = {job["job_id"] for job in (await admin.call("GET", "/jobs")).json()["jobs"]}
    assert own <= everyone
    assert (await admin.call("GET", f"/jobs/{job_id}")).code == 200
    store = guarded.foreman.queue
    assert store is not None
    stored = await store.store.get(job_id)
    line = await store.store.get(line_id)
    assert stored is not None and stored.caller == "a"
    assert line is not None and line.caller == "a"


@pytest_twisted.ensureDeferred
async def test_a_sync_call_is_its_keys_and_a_caller_header_without_the_fleet_secret_is_ignored(
    guarded: RunningForeman, http: HTTPClient
) -> None:
    url = guarded.url
    alice = await make_key(http, url, "alice", "generate")
    pretend = {"X-Foreman-Caller": "bob"}
    answer = await call(http, url, "POST", "/api/chat", alice, chat_body(), extra=pretend)
    assert answer.code == 200
    by_token = await call(http, url, "POST", "/api/chat", TOKEN, chat_body(), extra=pretend)
    assert by_token.code == 200
    queue = guarded.foreman.queue
    assert queue is not None
    rows = await queue.store.transact(
        lambda db: db.execute("SELECT caller FROM jobs WHERE sync = 1 ORDER BY id").fetchall()
    )
    assert [row[0] for row in rows] == ["alice", None]


@pytest_twisted.ensureDeferred
async def test_the_keys_api_lists_makes_and_revokes_and_never_shows_a_digest(
    guarded: RunningForeman, http: HTTPClient
) -> None:
    url = guarded.url
    made = await call(
        http,
        url,
        "POST",
        KEYS,
        TOKEN,
        {"name": "team.a", "scopes": ["jobs", "generate"], "weight": 2, "max_waiting": 10},
    )
    assert made.code == 201
    shown = made.json()
    assert shown["key"].startswith("fk-") and shown["scopes"] == ["generate", "jobs"]
    assert (shown["weight"], shown["max_waiting"]) == (2.0, 10)
    default = await call(http, url, "POST", KEYS, TOKEN, {"name": "plain"})
    assert default.json()["scopes"] == ["generate", "embed", "jobs"]
    await call(http, url, "POST", "/api/chat", shown["key"], chat_body())
    listed = await call(http, url, "GET", KEYS, TOKEN)
    assert listed.code == 200 and listed.header("cache-control") == "no-store"
    keys = {key["name"]: key for key in listed.json()["keys"]}
    assert list(keys) == ["plain", "team.a"]
    for key in keys.values():
        assert set(key) == {
            "name",
            "scopes",
            "weight",
            "max_waiting",
            "created_at",
            "last_used_at",
            "revoked_at",
            "usage",
        }
    assert keys["team.a"]["last_used_at"] is not None and keys["plain"]["last_used_at"] is None
    assert keys["team.a"]["usage"]["calls"] == 1 and keys["plain"]["usage"] == {}
    assert shown["key"] not in listed.body.decode()
    for body, status in [
        ({"name": "team.a"}, 409),
        ({"name": "bad name"}, 400),
        ({"name": "x" * 65}, 400),
        ({"name": "s", "scopes": ["root"]}, 400),
        ({"name": "s", "scopes": []}, 400),
        ({"name": "s", "scopes": "admin"}, 400),
        ({"name": "w", "weight": 0}, 400),
        ({"name": "w", "weight": True}, 400),
        ({"name": "m", "max_waiting": 0}, 400),
        ([], 400),
    ]:
        refused = await call(http, url, "POST", KEYS, TOKEN, body)
        assert refused.code == status, (body, refused.body)
        assert set(refused.json()) == {"error"}
    assert (await call(http, url, "DELETE", f"{KEYS}/nobody", TOKEN)).code == 404
    assert (await call(http, url, "PUT", KEYS, TOKEN)).code == 405


@pytest_twisted.ensureDeferred
async def test_the_status_page_takes_an_admin_key_and_no_other(
    guarded: RunningForeman, http: HTTPClient
) -> None:
    url = guarded.url
    admin = await make_key(http, url, "ops", "admin")
    other = await make_key(http, url, "gen", "generate")
    assert (await call(http, url, "GET", "/ui/status.json", admin)).code == 200
    assert (await call(http, url, "GET", "/ui/status.json", other)).code == 401
    form = Headers({b"Content-Type": [b"application/x-www-form-urlencoded"]})
    cookies = []
    for secret, status in [(admin, 204), (other, 401), (TOKEN, 204)]:
        signed = await http.post(url + "/ui/login", data=f"token={secret}".encode(), headers=form)
        assert signed.code == status
        await signed.content()
        if status == 204:
            cookie = signed.headers.getRawHeaders(b"set-cookie")[0].split(b";")[0]
            cookies.append(Headers({b"Cookie": [cookie]}))

    async def data(cookie: Headers) -> int:
        response = await http.get(url + "/ui/status.json", headers=cookie)
        await response.content()
        return int(response.code)

    assert [await data(cookie) for cookie in cookies] == [200, 200]
    # A session an admin key opened ends when the key is revoked; the token's stays.
    assert (await call(http, url, "DELETE", f"{KEYS}/ops", TOKEN)).code == 200
    assert [await data(cookie) for cookie in cookies] == [401, 200]


@pytest_twisted.ensureDeferred
async def test_keys_reach_neither_the_access_log_nor_ollama(
    guarded: RunningForeman,
    simulator: RunningSimulator,
    http: HTTPClient,
    log_events: list[LogEvent],
) -> None:
    url = guarded.url
    alice = await make_key(http, url, "alice", "generate", "embed")
    for how in ("bearer", "x-api-key"):
        assert (await call(http, url, "POST", "/api/chat", alice, chat_body(), how=how)).code == 200
        assert (await call(http, url, "POST", "/api/embed", alice, EMBED, how=how)).code == 200
        assert (await call(http, url, "GET", "/api/tags", alice, how=how)).code == 200
    await call(http, url, "GET", "/api/tags", alice + "x")
    flush_access_log()
    logged = [event for event in log_events if event.get("log_namespace") == "foreman.access"]
    assert len(logged) >= 7
    text = repr(log_events)
    assert alice not in text and alice[3:] not in text and TOKEN not in text
    for request in simulator.sim.requests:
        assert request.header("authorization") is None and request.header("x-api-key") is None


@pytest_twisted.ensureDeferred
async def test_beyond_loopback_keys_count_as_a_credential(
    simulator: RunningSimulator, start_foreman: StartForeman, http: HTTPClient, tmp_path: Any
) -> None:
    public = "tcp:0:interface=0.0.0.0"
    with pytest.raises(StartupRefused, match="foreman keys add"):
        await start_foreman(simulator.url, listen=public, data_dir=tmp_path / "refused")
    first = await start_foreman(simulator.url, data_dir=tmp_path / "keys")
    root = await make_key(http, first.url, "root", "admin", admin=None)
    await first.foreman.root.stopService()  # its store closed: the next one opens it
    exposed = await start_foreman(simulator.url, listen=public, data_dir=tmp_path / "keys")
    assert (await call(http, exposed.url, "GET", "/api/tags")).code == 401
    assert (await call(http, exposed.url, "GET", "/api/tags", root)).code == 200
    # The last key revoked shuts the door of a public listener; it never opens it.
    assert (await call(http, exposed.url, "DELETE", f"{KEYS}/root", root)).code == 200
    assert (await call(http, exposed.url, "GET", "/api/tags")).code == 401
    health = json.loads((await call(http, exposed.url, "GET", "/healthz")).body)
    assert health["keys"]["loaded"] is True


@pytest_twisted.ensureDeferred
async def test_embeddings_count_as_calls_of_their_key_with_their_prompt_tokens(
    guarded: RunningForeman, http: HTTPClient
) -> None:
    url = guarded.url
    embedder = await make_key(http, url, "embedder", "embed")
    native = await call(http, url, "POST", "/api/embed", embedder, EMBED)
    assert native.code == 200
    openai = await call(http, url, "POST", "/v1/embeddings", embedder, EMBED)
    assert openai.code == 200
    # A refused one (no such model) is Ollama's 404, relayed: not a call served.
    missing = await call(http, url, "POST", "/api/embed", embedder, {**EMBED, "model": "nope"})
    assert missing.code == 404
    listed = await call(http, url, "GET", KEYS, TOKEN)
    usage = {key["name"]: key["usage"] for key in listed.json()["keys"]}["embedder"]
    counted = native.json()["prompt_eval_count"] + openai.json()["usage"]["prompt_tokens"]
    assert (usage["calls"], usage["prompt_tokens"], usage["output_tokens"]) == (2, counted, 0)
    assert counted > 0

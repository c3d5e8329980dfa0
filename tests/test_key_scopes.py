"""The scope each path needs (foreman/http/scopes.py), every route foreman has,
and what a caller with each set of scopes may do (docs/keys.md)."""

from __future__ import annotations

import itertools

import pytest
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from foreman.front.api import ForemanAPI
from foreman.http.auth import TOKEN_CALLER, Caller, Scope
from foreman.http.scopes import ANY_KEY, scope_for

GENERATION = [
    "/api/chat",
    "/api/generate",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/messages",
    "/v1/audio/transcriptions",
]
EMBEDDING = ["/api/embed", "/api/embeddings", "/v1/embeddings"]
JOBS = [
    "/jobs",
    "/jobs/",
    "/jobs/01JABCDEFGHJKMNPQRSTVWXYZ0",
    "/jobs/01JABCDEFGHJKMNPQRSTVWXYZ0/cancel",
    "/jobs/01JABCDEFGHJKMNPQRSTVWXYZ0/artifacts/completion",
    "/v1/files",
    "/v1/files/file-abc",
    "/v1/files/file-abc/content",
    "/v1/batches",
    "/v1/batches/batch_abc",
    "/v1/batches/batch_abc/cancel",
]
READ_ONLY = [
    ("GET", "/"),
    ("HEAD", "/"),
    ("GET", "/api/tags"),
    ("HEAD", "/api/tags"),
    ("GET", "/api/ps"),
    ("GET", "/api/version"),
    ("POST", "/api/show"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/llama3.2"),
    ("HEAD", "/v1/models/llama3.2:latest"),
]
ADMIN = [
    ("GET", "/api/foreman/queue"),
    ("GET", "/api/foreman/keys"),
    ("POST", "/api/foreman/keys"),
    ("DELETE", "/api/foreman/keys/alice"),
    ("GET", "/metrics"),
    ("GET", "/ui/status.json"),
    ("POST", "/api/pull"),
    ("POST", "/api/push"),
    ("POST", "/api/create"),
    ("POST", "/api/copy"),
    ("DELETE", "/api/delete"),
    ("HEAD", "/api/blobs/sha256:abc"),
    ("POST", "/api/blobs/sha256:abc"),
    # What foreman does not know, relayed to Ollama as it is.
    ("POST", "/api/something-new"),
    ("GET", "/v1/something-new"),
    ("GET", "/v1"),
    ("GET", "/nope"),
    # A known path with a method its route does not take: relayed too.
    ("GET", "/api/chat"),
    ("DELETE", "/api/tags"),
    ("PUT", "/v1/embeddings"),
    ("POST", "/v1/models"),
    ("DELETE", "/v1/models/llama3.2"),
    ("GET", "/v1/models/a/b"),
    ("GET", "/v1/models/"),
    # Not the paths they look like.
    ("POST", "/api/chat/"),
    ("POST", "/api//chat"),
    ("GET", "/jobsx"),
    ("GET", "/v1/filesystem"),
]


@pytest.mark.parametrize("path", GENERATION)
def test_generation_in_every_dialect_needs_generate(path: str) -> None:
    assert scope_for(b"POST", path.encode()) is Scope.GENERATE


@pytest.mark.parametrize("path", EMBEDDING)
def test_embeddings_need_embed(path: str) -> None:
    assert scope_for(b"POST", path.encode()) is Scope.EMBED


EVERY_JOBS_CALL = list(itertools.product(["GET", "POST", "DELETE"], JOBS))


@pytest.mark.parametrize(("method", "path"), EVERY_JOBS_CALL)
def test_the_job_surfaces_need_jobs_whatever_the_method(method: str, path: str) -> None:
    assert scope_for(method.encode(), path.encode()) is Scope.JOBS


@pytest.mark.parametrize(("method", "path"), READ_ONLY)
def test_reading_what_models_there_are_needs_any_key(method: str, path: str) -> None:
    assert scope_for(method.encode(), path.encode()) is ANY_KEY


@pytest.mark.parametrize(("method", "path"), ADMIN)
def test_everything_else_needs_admin(method: str, path: str) -> None:
    assert scope_for(method.encode(), path.encode()) is Scope.ADMIN


@pytest.mark.parametrize(
    ("path", "scope"),
    [
        (b"/api/%63hat", Scope.GENERATE),
        (b"/v1/%6Dessages", Scope.GENERATE),
        (b"/api/%65mbed", Scope.EMBED),
        (b"/%6Aobs/x", Scope.JOBS),
        (b"/api/foreman/%6Beys", Scope.ADMIN),
        (b"/v1/models/a%2Fb", Scope.ADMIN),
        (b"/api/%2e%2e/api/pull", Scope.ADMIN),
    ],
)
def test_the_path_is_read_as_the_router_reads_it(path: bytes, scope: Scope) -> None:
    assert scope_for(b"POST" if scope is not Scope.JOBS else b"GET", path) is scope


def _routes() -> list[tuple[str, frozenset[str]]]:
    # A route without methods (a mounted app, the catch-all) takes any.
    anything = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE"})
    rules = ForemanAPI.app.url_map.iter_rules()
    return [(rule.rule, frozenset(rule.methods or anything)) for rule in rules]


def test_every_route_of_foreman_is_in_the_table() -> None:
    """Each route foreman serves, with each method it takes: the scope is
    the table's, and nothing but the catch-all and foreman's own views falls
    to admin by default."""
    admin_routes = {
        "/metrics",
        "/api/foreman/queue",
        "/api/foreman/keys",
        "/api/foreman/keys/<path:__rest__>",
        "/ui",
        "/ui/<path:__rest__>",
        "/api/pull",
        "/api/push",
        "/api/create",
        "/api/copy",
        "/api/delete",
        "/api/blobs/<string:digest>",
        "/api/<path:rest>",
        "/v1/<path:rest>",
        "/v1",
    }
    seen = set()
    for rule, methods in _routes():
        path = rule.replace("<string:digest>", "sha256:1").replace("<string:model>", "m")
        path = path.replace("<path:rest>", "x/y").replace("<path:__rest__>", "x/y")
        for method in methods - {"OPTIONS"}:
            scope = scope_for(method.encode(), path.encode())
            seen.add(rule)
            if rule == "/healthz":
                continue  # open: the guard's own list, before the table
            if rule in admin_routes:
                assert scope is Scope.ADMIN, (method, rule)
            else:
                assert scope is not Scope.ADMIN, (method, rule)
    assert {"/api/chat", "/jobs", "/v1/files", "/v1/batches", "/api/foreman/keys"} <= seen


def test_the_routes_the_table_names_are_routes() -> None:
    """The table and the router agree: each path the table grants to less
    than admin reaches the route it is named for, with that method."""
    adapter = ForemanAPI.app.url_map.bind("foreman")
    for method, path in [
        *(("POST", path) for path in GENERATION + EMBEDDING),
        *READ_ONLY,
    ]:
        try:
            rule, _ = adapter.match(path, method=method, return_rule=True)
        except (NotFound, MethodNotAllowed, RequestRedirect) as e:  # pragma: no cover
            raise AssertionError((method, path)) from e
        assert "<path:rest>" not in rule.rule, (method, path)


@pytest.mark.parametrize("scope", list(Scope))
def test_a_caller_may_what_its_scopes_say_and_admin_all(scope: Scope) -> None:
    only = Caller("k", frozenset({scope}))
    for needed in Scope:
        assert only.may(needed) == (needed is scope or scope is Scope.ADMIN)
    assert only.may(ANY_KEY)
    assert TOKEN_CALLER.may(scope)


def test_a_key_sees_its_own_work_and_an_admin_everyones() -> None:
    alice = Caller("alice", frozenset({Scope.JOBS}))
    assert alice.sees("alice") and not alice.sees("bob") and not alice.sees(None)
    assert alice.only == "alice"
    root = Caller("root", frozenset({Scope.ADMIN, Scope.JOBS}))
    assert root.sees("alice") and root.sees(None) and root.only is None
    assert TOKEN_CALLER.sees("bob") and TOKEN_CALLER.only is None
    with pytest.raises(ValueError):
        Caller(None, frozenset({Scope.JOBS}))

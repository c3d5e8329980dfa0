"""Keys across a fleet (docs/keys.md): one PostgreSQL, boxes that share its keys. A
key revoked at one box is refused at another within about a second; a call one
box forwards to another runs there in the name of the caller's key."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_twisted
from treq.client import HTTPClient

from tests.conftest import RunningForeman, StartForeman, StartSimulator
from tests.fault_helpers import until
from tests.fleet_rig import Fleet
from tests.keys_helpers import KEYS, TOKEN, call, chat_body, make_key
from tests.test_fleet_forwarding import OLLAMA, knows

pytestmark = pytest.mark.postgres


@pytest_twisted.ensureDeferred
async def test_a_key_revoked_at_one_box_is_refused_at_another_within_a_second(
    start_simulator: StartSimulator,
    start_foreman: StartForeman,
    postgres_url: str,
    tmp_path: Path,
    http: HTTPClient,
    reactor: Any,
) -> None:
    boxes: list[RunningForeman] = []
    for name in ("a", "b"):
        sim = await start_simulator()
        boxes.append(
            await start_foreman(
                sim.url,
                token=TOKEN,
                database=postgres_url,
                data_dir=tmp_path / name,
                box_name=name,
                box_lease=1.5,
            )
        )
    a, b = boxes
    secret = await make_key(http, a.url, "alice", "generate")

    async def answered_at_b() -> bool:
        return (await call(http, b.url, "GET", "/api/tags", secret)).code == 200

    await until(reactor, answered_at_b, "b to know alice's key", 5)
    assert (await call(http, b.url, "POST", "/api/chat", secret, chat_body())).code == 200
    assert (await call(http, a.url, "DELETE", f"{KEYS}/alice", TOKEN)).code == 200
    revoked = time.monotonic()
    # Refused at once where it was revoked.
    assert (await call(http, a.url, "GET", "/api/tags", secret)).code == 401

    async def refused_at_b() -> bool:
        return (await call(http, b.url, "GET", "/api/tags", secret)).code == 401

    await until(reactor, refused_at_b, "b to refuse alice's key", 5)
    assert time.monotonic() - revoked < 1.5
    listed = (await call(http, b.url, "GET", KEYS, TOKEN)).json()["keys"]
    assert [(key["name"], key["revoked_at"] is not None) for key in listed] == [("alice", True)]


@pytest_twisted.ensureDeferred
async def test_a_forwarded_call_runs_in_the_name_of_the_callers_key(fleet: Fleet) -> None:
    token_file = fleet.tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    guarded = ("--token-file", str(token_file))
    a = await fleet.start_box("a", *OLLAMA, "--models", "llama3.2", extra=guarded)
    b = await fleet.start_box("b", *OLLAMA, "--models", "qwen3:8b", extra=guarded)
    await until(
        fleet.reactor, lambda: knows(fleet, a, "b", TOKEN, model="qwen3"), "a to know b", 10
    )
    secret = await make_key(fleet.http, a.url, "alice", "generate")

    async def a_knows_alice() -> bool:
        return (await call(fleet.http, a.url, "GET", "/api/tags", secret)).code == 200

    await until(fleet.reactor, a_knows_alice, "a to know alice's key", 5)
    # Sent to a, for the model only b has; a name b must not believe from a caller.
    answered = await call(
        fleet.http,
        a.url,
        "POST",
        "/api/chat",
        secret,
        chat_body("qwen3:8b", "far-away"),
        extra={"X-Foreman-Caller": "mallory"},
    )
    assert answered.code == 200, answered.body
    assert answered.header("x-foreman-box") == "b"
    assert b.generations("far-away") == 1 and a.generations("far-away") == 0
    with psycopg.connect(fleet.database) as db:
        rows = db.execute(
            "SELECT caller, box FROM jobs WHERE sync = 1 AND position('far-away' in"
            " convert_from(body, 'UTF8')) > 0"
        ).fetchall()
    assert len(rows) == 1
    caller, box = rows[0]
    assert caller == "alice" and box is not None

"""``foreman keys add|list|revoke`` against a running foreman (docs/keys.md), in-process
over real sockets, as ``foreman ps`` is run."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest_twisted
from treq.client import HTTPClient

from foreman.client.key_commands import keys_table
from tests.cli_helpers import foreman
from tests.conftest import RunningSimulator, StartForeman
from tests.keys_helpers import TOKEN, call, chat_body


@pytest_twisted.ensureDeferred
async def test_add_list_and_revoke_keys_from_the_command_line(
    reactor: Any, simulator: RunningSimulator, start_foreman: StartForeman, http: HTTPClient
) -> None:
    running = await start_foreman(simulator.url, token=TOKEN)
    env = {"FOREMAN_URL": running.url, "FOREMAN_TOKEN": TOKEN}

    added = await foreman(reactor, "keys", "add", "alice", env=env)
    assert added.code == 0, added.err
    secret = added.out.strip()
    assert re.fullmatch(r"fk-[A-Za-z0-9_-]{43}", secret), added.out
    assert "shown this once" in added.err and "generate embed jobs" in added.err
    assert (await call(http, running.url, "POST", "/api/chat", secret, chat_body())).code == 200

    ops = await foreman(
        reactor,
        "keys",
        "add",
        "ops",
        "--scope",
        "admin",
        "--weight",
        "2",
        "--max-waiting",
        "5",
        "--json",
        env=env,
    )
    assert ops.code == 0, ops.err
    made = json.loads(ops.out)
    assert made["scopes"] == ["admin"] and (made["weight"], made["max_waiting"]) == (2.0, 5)
    # An admin key works for the commands as the token does.
    as_ops = {"FOREMAN_URL": running.url, "FOREMAN_TOKEN": made["key"]}

    listed = await foreman(reactor, "keys", "list", env=as_ops)
    assert listed.code == 0, listed.err
    lines = listed.out.splitlines()
    assert re.match(r"NAME +SCOPES +CREATED +LAST USED +REVOKED", lines[0])
    assert lines[1].startswith("alice") and "generate,embed,jobs" in lines[1]
    assert lines[2].startswith("ops") and "admin" in lines[2]
    assert secret not in listed.out and made["key"] not in listed.out
    as_json = json.loads((await foreman(reactor, "keys", "list", "--json", env=env)).out)
    assert [key["name"] for key in as_json["keys"]] == ["alice", "ops"]

    revoked = await foreman(reactor, "keys", "revoke", "alice", env=env)
    assert revoked.code == 0 and revoked.out.startswith("alice revoked 20"), revoked.out
    assert (await call(http, running.url, "POST", "/api/chat", secret, chat_body())).code == 401

    again = await foreman(reactor, "keys", "add", "alice", env=env)
    assert again.code == 3 and "exists already" in again.err
    missing = await foreman(reactor, "keys", "revoke", "nobody", env=env)
    assert missing.code == 3 and "no key named" in missing.err
    bad = await foreman(reactor, "keys", "add", "bob", "--scope", "root", env=env)
    assert bad.code == 2
    not_admin = await foreman(reactor, "keys", "add", "bob", env=env | {"FOREMAN_TOKEN": secret})
    assert not_admin.code == 3 and "401" in not_admin.err


@pytest_twisted.ensureDeferred
async def test_the_first_key_from_an_open_loopback_must_be_an_admin(
    reactor: Any, simulator: RunningSimulator, start_foreman: StartForeman
) -> None:
    running = await start_foreman(simulator.url)
    env = {"FOREMAN_URL": running.url}
    refused = await foreman(reactor, "keys", "add", "alice", env=env)
    assert refused.code == 3 and "admin scope" in refused.err
    empty = await foreman(reactor, "keys", "list", env=env)
    assert empty.code == 0 and "no keys" in empty.out
    first = await foreman(reactor, "keys", "add", "root", "--scope", "admin", env=env)
    assert first.code == 0
    # Loopback is no longer open: the command needs the key now.
    assert (await foreman(reactor, "keys", "list", env=env)).code == 3
    env["FOREMAN_TOKEN"] = first.out.strip()
    assert (await foreman(reactor, "keys", "list", env=env)).code == 0


def test_the_table_shows_usage_columns_when_foreman_counts_usage() -> None:
    keys: list[dict[str, Any]] = [
        {
            "name": "a",
            "scopes": ["generate"],
            "created_at": "2026-12-08T01:33:20Z",
            "last_used_at": None,
            "revoked_at": None,
            "usage": {"calls": 3, "prompt_tokens": 10, "worker_seconds": 1.5},
        },
        {"name": "b", "scopes": [], "created_at": None, "usage": {}},
    ]
    lines = keys_table(keys).splitlines()
    assert lines[0].split("  ")[0] == "NAME"
    assert "CALLS" in lines[0] and "PROMPT TOKENS" in lines[0] and "WORKER S" in lines[0]
    assert "LOADS" not in lines[0]
    assert "2026-12-08 01:33Z" in lines[1] and lines[1].rstrip().endswith("1.5")
    assert lines[2].startswith("b") and " - " in lines[2]
    plain = keys_table([{"name": "c", "scopes": ["jobs"]}]).splitlines()[0]
    assert plain.split() == ["NAME", "SCOPES", "CREATED", "LAST", "USED", "REVOKED"]

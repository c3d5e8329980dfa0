"""``foreman keys``: make, list and revoke API keys on a running foreman (docs/keys.md).

They call ``/api/foreman/keys`` with the command's token or key, which must
be an admin's, as ``foreman ps`` calls the queue report. A new key is
printed once, alone on stdout (so a script can keep it), with a hint on
stderr; foreman keeps only its digest.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from foreman.client.commands import EPILOG, Context, ExitCode, HelpFormatter, command
from foreman.client.commands import global_options as _global_options
from foreman.client.output import plain, table, timestamp

#: The scopes a key may have (docs/keys.md); ``admin`` implies the others.
SCOPES = ("generate", "embed", "jobs", "admin")
#: What ``foreman keys add`` gives a key unless told.
DEFAULT_SCOPES = ("generate", "embed", "jobs")
#: The usage columns ``foreman keys list`` shows when foreman counts usage.
USAGE_COLUMNS = (
    ("calls", "CALLS"),
    ("prompt_tokens", "PROMPT TOKENS"),
    ("output_tokens", "OUTPUT TOKENS"),
    ("worker_seconds", "WORKER S"),
    ("loads", "LOADS"),
    ("refusals", "REFUSED"),
)


def register(subparsers: Any) -> None:
    keys = subparsers.add_parser(
        "keys",
        help="make, list and revoke API keys (needs an admin token or key)",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    _global_options(keys, default=argparse.SUPPRESS)
    actions = keys.add_subparsers(title="actions", dest="keys_action", metavar="ACTION")
    actions.required = True

    add = command(actions, "add", _add, help="make a key; it is printed this once")
    add.add_argument("name", help="1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '-'")
    add.add_argument(
        "--scope",
        action="append",
        choices=SCOPES,
        dest="scopes",
        help=f"what the key may do; repeat for more (default: {' '.join(DEFAULT_SCOPES)})",
    )
    add.add_argument("--weight", type=_weight, help="its share of the queue (default 1)")
    add.add_argument(
        "--max-waiting", type=_count, metavar="N", help="its jobs that may wait at once"
    )
    command(actions, "list", _list, help="every key, revoked ones too, with its usage")
    revoke = command(actions, "revoke", _revoke, help="refuse a key from now on, at every box")
    revoke.add_argument("name")


async def _add(context: Context) -> int:
    args = context.args
    made = await context.client().add_key(
        args.name,
        args.scopes or list(DEFAULT_SCOPES),
        weight=args.weight,
        max_waiting=args.max_waiting,
    )
    if args.json:
        context.say(json.dumps(made, indent=2))
    else:
        context.say(plain(made.get("key")))
    scopes = " ".join(str(scope) for scope in made.get("scopes") or [])
    print(
        f"foreman: the key {args.name!r} ({scopes}) is shown this once; foreman keeps only"
        " its digest. Its holder sends it as Authorization: Bearer, or x-api-key.",
        file=context.stderr,
    )
    return ExitCode.OK


async def _list(context: Context) -> int:
    keys = await context.client().keys()
    if context.args.json:
        context.say(json.dumps({"keys": keys}, indent=2))
    elif keys:
        context.say(keys_table(keys))
    else:
        context.say("no keys (foreman keys add NAME makes one)")
    return ExitCode.OK


async def _revoke(context: Context) -> int:
    revoked = await context.client().revoke_key(context.args.name)
    if context.args.json:
        context.say(json.dumps(revoked, indent=2))
    else:
        context.say(f"{plain(revoked.get('name'))} revoked {when(revoked.get('revoked_at'))}")
    return ExitCode.OK


def keys_table(keys: Sequence[Mapping[str, Any]]) -> str:
    """Name, scopes, times; the usage columns when foreman reports usage."""
    usage: list[Mapping[str, Any]] = [_usage(key) for key in keys]
    counted = [(name, title) for name, title in USAGE_COLUMNS if any(name in u for u in usage)]
    headers = ["NAME", "SCOPES", "CREATED", "LAST USED", "REVOKED"]
    headers += [title for _, title in counted]
    rows = [
        [
            plain(key.get("name")),
            ",".join(str(scope) for scope in key.get("scopes") or []) or "-",
            when(key.get("created_at")),
            when(key.get("last_used_at")),
            when(key.get("revoked_at")),
            *(number(used.get(name)) for name, _ in counted),
        ]
        for key, used in zip(keys, usage, strict=True)
    ]
    return table(headers, rows)


def _usage(key: Mapping[str, Any]) -> Mapping[str, Any]:
    used = key.get("usage")
    return used if isinstance(used, Mapping) else {}


def when(value: Any) -> str:
    """A stamp to the minute, in UTC: ``2026-12-08 01:33Z``."""
    seconds = timestamp(value)
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%MZ")


def number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _weight(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"not a number above 0: {text!r}")
    return value


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a whole number above 0: {text!r}")
    return int(text)

"""Tell whether a Twisted server endpoint string listens only on loopback.

foreman refuses to listen beyond loopback without a token (ADR-0010), so it
needs to read the ``interface`` out of strings like
``tcp:11435:interface=127.0.0.1`` without binding anything.
"""

from __future__ import annotations

import ipaddress


def _split_description(description: str) -> list[str]:
    # Twisted's endpoint grammar: ':' separates fields and '\' escapes.
    fields: list[str] = []
    current: list[str] = []
    escaped = False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    fields.append("".join(current))
    return fields


def is_loopback_only(description: str) -> bool:
    """True when the endpoint cannot be reached from another machine.

    UNIX sockets are local by nature. TCP endpoints are local only with an
    explicit loopback ``interface``; the default interface is every address.
    Endpoint types foreman does not understand are treated as exposed.
    """
    fields = _split_description(description.strip())
    kind = fields[0].lower()
    if kind == "unix":
        return True
    if kind not in ("tcp", "tcp6", "ssl"):
        return False
    interface = ""
    for field in fields[1:]:
        key, sep, value = field.partition("=")
        if sep and key == "interface":
            interface = value
    if not interface:
        return False
    if interface.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False

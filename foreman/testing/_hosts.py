"""Ollama's DNS-rebinding guard: which ``Host`` headers a loopback Ollama accepts.

Ollama bound to a loopback address answers 403 (empty body) unless the
request's ``Host`` is local: empty, ``localhost``, the machine's hostname,
a name under ``.localhost``, ``.local`` or ``.internal``, or a loopback,
private or unspecified IP address (``server/routes.go``, ``allowedHost``).
"""

from __future__ import annotations

import ipaddress
import socket

_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")

# Go's netip.Addr.IsPrivate: RFC 1918 and RFC 4193 only.
_PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)


def split_host_port(host: str) -> str:
    """Go's ``net.SplitHostPort``, falling back to the whole value as Ollama does."""
    if host.startswith("["):
        end = host.find("]")
        if end != -1 and host[end + 1 : end + 2] == ":" and host.count("]") == 1:
            return host[1:end]
        return host
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def _is_local_ip(text: str) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (
        address.is_loopback
        or address.is_unspecified
        or any(address in network for network in _PRIVATE_NETWORKS)
    )


def allowed_host(host_header: str | None, hostname: str | None = None) -> bool:
    """Whether a loopback-bound Ollama would serve a request with this ``Host``."""
    host = split_host_port(host_header or "")
    if _is_local_ip(host):
        return True
    host = host.lower()
    if host in ("", "localhost"):
        return True
    if host == (hostname if hostname is not None else socket.gethostname()).lower():
        return True
    return host.endswith(_LOCAL_SUFFIXES)

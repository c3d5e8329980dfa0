from __future__ import annotations

import pytest

from foreman.http.listen_address import is_loopback_only


@pytest.mark.parametrize(
    "description",
    [
        "tcp:11435:interface=127.0.0.1",
        "tcp:11435:interface=127.0.0.2",
        "tcp6:11435:interface=\\:\\:1",
        "tcp:port=11435:interface=localhost",
        "unix:/tmp/foreman.sock",
    ],
)
def test_loopback_endpoints(description: str) -> None:
    assert is_loopback_only(description)


@pytest.mark.parametrize(
    "description",
    [
        "tcp:11435",
        "tcp:11435:interface=0.0.0.0",
        "tcp:11435:interface=100.64.1.2",
        "tcp6:11435:interface=\\:\\:",
        "ssl:443:privateKey=key.pem",
        "systemd:domain=INET:index=0",
    ],
)
def test_exposed_endpoints(description: str) -> None:
    assert not is_loopback_only(description)

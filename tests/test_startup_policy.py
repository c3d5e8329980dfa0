"""Refusals at start-up: exposure without a token, an unusable data directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread
from twisted.web.resource import Resource
from twisted.web.server import Site

from foreman.config import Config, StartupRefused, check_exposure
from foreman.service import ollama_answers


def test_loopback_without_token_is_fine() -> None:
    check_exposure(Config(listen="tcp:11435:interface=127.0.0.1"))


def test_exposed_without_token_is_refused() -> None:
    with pytest.raises(StartupRefused) as caught:
        check_exposure(Config(listen="tcp:11435:interface=0.0.0.0"))
    message = str(caught.value)
    assert "\n" not in message
    assert "FOREMAN_TOKEN" in message and "--allow-unauthenticated" in message


def test_exposed_with_token_or_explicit_permission_is_fine() -> None:
    check_exposure(Config(listen="tcp:11435", token="t"))
    check_exposure(Config(listen="tcp:11435", allow_unauthenticated=True))


def test_probe_of_a_closed_port_says_no() -> None:
    assert not ollama_answers("http://127.0.0.1:9", None, timeout=0.5)


def test_unusable_data_dir_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    from foreman.service import build_foreman

    with pytest.raises(StartupRefused, match="data directory"):
        build_foreman(Config(data_dir=blocker / "sub"), reactor=None)


@pytest_twisted.ensureDeferred
async def test_probe_counts_any_http_answer(reactor: Any) -> None:
    # Even a 404 means something answers at the URL: it is not replaced.
    port = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}"
    try:
        assert await deferToThread(ollama_answers, url, None, 2.0)
    finally:
        await port.stopListening()

"""The official ``ollama`` JavaScript client, run by Node, against foreman.

The JS client is the strictest about streams: one that ends without
``done: true`` (or an ``error`` line) is an exception there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.conftest import RunningSimulator, StartForeman

HERE = Path(__file__).parent / "js"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(
    NODE is None or not (HERE / "node_modules" / "ollama").is_dir(),
    reason="needs Node.js and `npm install` in tests/js (make test does both when npm exists)",
)


def run_node(url: str, token: str) -> dict[str, Any]:
    assert NODE is not None
    finished = subprocess.run(
        [NODE, str(HERE / "client_check.mjs"), url, token],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    results: dict[str, Any] = json.loads(finished.stdout)
    return results


@pytest_twisted.ensureDeferred
async def test_javascript_client_through_foreman(
    simulator: RunningSimulator, start_foreman: StartForeman
) -> None:
    running = await start_foreman(simulator.url, token="js-token")
    results = await deferToThread(run_node, running.url, "js-token")
    for name in ["chat", "chat_stream", "generate", "embed", "list", "ps", "show"]:
        assert results[name]["ok"], (name, results[name])
    assert results["chat"]["value"]["done_reason"] == "stop"
    stream = results["chat_stream"]["value"]
    assert stream["chunks"] > 2 and stream["done"] is True
    assert stream["content"] == results["chat"]["value"]["content"]
    assert results["embed"]["value"] == 2
    assert "llama3.2:latest" in results["list"]["value"]
    assert results["unknown_model"] == {
        "ok": False,
        "error": "model 'no-such-model' not found",
        "status": 404,
    }


@pytest_twisted.ensureDeferred
async def test_javascript_client_is_refused_without_the_token(
    simulator: RunningSimulator, start_foreman: StartForeman
) -> None:
    running = await start_foreman(simulator.url, token="js-token")
    results = await deferToThread(run_node, running.url, "wrong")
    assert results["list"]["ok"] is False
    assert results["list"]["status"] == 401
